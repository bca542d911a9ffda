"""``consistent3dgen train``: data → dense VAE → sparse VAE → dense DiT → sparse DiT → the bundled mini prior.

Every stage resumes from its checkpoint in the run folder, so an interrupted run is continued by running the
same command again; a finished stage is skipped. The export writes the prior folder through
:func:`consistent3dgen.generators.mini.save_mini_prior` (EMA weights, one ``<component>.json`` +
``<component>.safetensors`` pair per model, ``pipeline.json``), ``training.json`` (:class:`MiniPriorConfig`,
with the latent scales measured on the data) and ``MODEL_CARD.md``.

With a second sparse stage (``data.second_resolution``, off by default) the chain goes on → sparse VAE 2 →
sparse DiT 2: fine-tunes that start from the trained sparse VAE's / sparse DiT's EMA weights, on samples built at
the second resolution (a subset of the training shapes, the held-out ones kept out), exported as a second entry
of ``stages.sparse`` (``sparse_vae_<R2>``, ``sparse_dit_<R2>``).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from ..devices import module_device
from ..errors import InputError
from ..generators.mini import build_component
from ..io.atomic import atomic_write_text
from .config import INITIALISED_FROM, SECOND_STAGES, MiniPriorConfig, smoke_config
from .data import SampleSet, band_mask, build_dataset, default_sources, second_stage_indices
from .shapes import FAMILIES
from .trainer import (
    StageTrainer,
    batch_band_tensor,
    build_models,
    count_bytes,
    dense_dit_objective,
    dense_vae_objective,
    encode_dense_latents,
    encode_sparse_latents,
    latent_scale,
    sparse_dit_objective,
    sparse_vae_objective,
)
from .training_meshes import TRAINING_MESH_SOURCES

MAX_WEIGHT_BYTES = 40 * 10**6  # the committed prior's budget (issue 12: weights <= 40 MB)


def train_main(args: argparse.Namespace) -> int:
    """Entry point of ``consistent3dgen train`` (arguments: ``cli._add_train``).

    ``--stages``: a comma list out of the config's stages (``cfg.stages()``: :data:`STAGES`, plus
    ``sparse_vae_2,sparse_dit_2`` with a second sparse stage); none given means every stage of the config.
    """
    if args.threads:
        torch.set_num_threads(args.threads)
    from ..devices import resolve_device

    device = resolve_device(getattr(args, "device", "auto"))  # CUDA asked for and missing: one line, before any work
    cfg = MiniPriorConfig.load(args.config) if args.config else (smoke_config() if args.smoke else MiniPriorConfig())
    for part in cfg.stages():  # every model entry builds (targets, keywords) before hours of data and training
        build_component(cfg.model_entry(part), device="meta")
    stages = [s.strip() for s in (args.stages or "").split(",") if s.strip()]
    if not stages:  # every stage of this config
        stages = list(cfg.stages())
    unknown = [s for s in stages if s not in cfg.stages()]
    if unknown:
        hint = "" if cfg.has_second_stage else f" ({', '.join(SECOND_STAGES)} need data.second_resolution)"
        raise InputError(f"unknown stages {unknown}; choose from {', '.join(cfg.stages())}{hint}")
    run_dir = Path(args.out)
    cache = Path(args.data_cache) if args.data_cache else run_dir / "data"
    export = Path(args.export) if args.export else run_dir / "mini"
    train_mini_prior(cfg, run_dir, cache, stages, args.meshes_dir, export, data_workers=args.data_workers,
                     device=device)
    return 0


def split_indices(n: int, held_out_fraction: float = 0.05, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Seeded train / held-out split (at least one held-out sample when n > 1)."""
    perm = np.random.default_rng(seed).permutation(n)
    k = max(1, int(round(n * held_out_fraction))) if n > 1 else 0
    return np.sort(perm[k:]), np.sort(perm[:k])


def train_mini_prior(
    cfg: MiniPriorConfig,
    run_dir: Path,
    cache_dir: Path,
    stages: list[str] | None = None,
    meshes_dir: str | None = None,
    export_dir: Path | None = None,
    log=print,
    data_workers: int = 1,
    device: torch.device | str = "cpu",
) -> dict:
    """Train ``stages`` (default: every stage of ``cfg.stages()``) in order, resuming each from its checkpoint;
    with ``export_dir``, export the prior. With a second sparse stage (``cfg.data.second_resolution``), its VAE
    and DiT start from the trained first-stage VAE's and DiT's EMA weights (:meth:`StageTrainer.init_from`) and
    are fine-tuned on the samples at the second resolution. The models train on ``device`` (their batches are
    drawn on the CPU and moved, so the batches do not depend on it); checkpoints and exports are stored from
    the CPU."""
    stages = list(cfg.stages()) if stages is None else list(stages)
    cfg.data.check()
    cfg.fill_second_stage_entries()  # the derived second-stage entries, recorded in config.json / training.json
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "config.json", cfg.to_json())
    t0 = time.time()
    sources = default_sources(cfg.data)
    paths = build_dataset(cache_dir, cfg.data, sources, meshes_dir, log=log, workers=data_workers)
    data_seconds = time.time() - t0
    everything = SampleSet.from_paths(paths)
    train_idx, held_idx = split_indices(len(everything), seed=cfg.seed)
    train = SampleSet([everything[int(i)] for i in train_idx])
    held = SampleSet([everything[int(i)] for i in held_idx]) if len(held_idx) else train
    log(f"data: {len(train)} training / {len(held_idx)} held-out samples ({data_seconds:.0f} s)")
    timings = {"data": data_seconds}
    train2 = held2 = None
    if cfg.has_second_stage and (set(stages) & set(SECOND_STAGES) or export_dir is not None):
        t0 = time.time()
        idx2, held_idx2 = second_stage_indices(train_idx, held_idx, cfg.data)
        data2 = cfg.data.at_second_resolution()
        paths2 = build_dataset(cache_dir, data2, [sources[int(i)] for i in np.r_[idx2, held_idx2]], meshes_dir,
                               log=log, workers=data_workers)
        train2 = SampleSet.from_paths(paths2[: len(idx2)])
        held2 = SampleSet.from_paths(paths2[len(idx2):]) if len(held_idx2) else train2
        timings["data_2"] = time.time() - t0
        log(f"data at {data2.sparse_resolution}³: {len(train2)} training / {len(held_idx2)} held-out samples "
            f"({timings['data_2']:.0f} s)")

    models = {name: m.to(device) for name, m in build_models(cfg).items()}
    total = sum(count_bytes(m) for m in models.values())
    if export_dir is not None and total > MAX_WEIGHT_BYTES:  # refused now, not after hours of training
        raise InputError(f"mini prior weights would be {total / 1e6:.1f} MB, above the "
                         f"{MAX_WEIGHT_BYTES / 1e6:.0f} MB budget")
    trainers = {
        s: StageTrainer(s, models[s], cfg.training(s), run_dir, seed=cfg.seed + i) for i, s in enumerate(cfg.stages())
    }
    for s, tr in trainers.items():
        if tr.load():
            log(f"{s}: resumed at step {tr.step}")

    def run(stage, objective):
        if stage in stages:
            start = time.time()
            trainers[stage].run(objective, log=log)
            timings[stage] = time.time() - start

    def start_from_first_stage(stage):
        """A second-stage model that has not started takes its first-stage model's EMA weights."""
        tr, src = trainers[stage], trainers[INITIALISED_FROM[stage]]
        if tr.step:
            return
        if stage in stages and src.step < src.tc.steps:
            raise InputError(f"{stage} is fine-tuned from the trained {src.name}, which is at step {src.step} of "
                             f"{src.tc.steps}: train it first (--stages {src.name},{stage})")
        tr.init_from(src.ema.model)
        if stage in stages:
            log(f"{stage}: initialised from the {src.name} EMA weights (step {src.step})")

    run("dense_vae", dense_vae_objective(train, cfg.train_dense_vae))
    run("sparse_vae", sparse_vae_objective(train, cfg.train_sparse_vae))

    # diffusion spaces: EMA VAE posterior means scaled to unit variance (official latents_scale)
    dense_vae = trainers["dense_vae"].ema.model
    dense_latents = encode_dense_latents(dense_vae, train)
    cfg.dense_vae["params"]["latents_scale"] = latent_scale(dense_latents)
    if "dense_dit" in stages:
        if cfg.train_dense_dit.symmetries > 1:  # the scale stays the shapes' own; the DiT sees their images too
            dense_latents = encode_dense_latents(dense_vae, train, symmetries=cfg.train_dense_dit.symmetries)
        scaled = dense_latents * cfg.dense_vae["params"]["latents_scale"]
        run("dense_dit", dense_dit_objective(scaled, cfg.train_dense_dit, cfg.null_cond_tokens))
    sparse_vae = trainers["sparse_vae"].ema.model
    block = int(cfg.sparse_dit["params"]["selection_block_size"])
    if "sparse_dit" in stages or export_dir is not None:
        tokens = encode_sparse_latents(sparse_vae, train, block)
        scale = latent_scale(np.concatenate([z for _, z in tokens]))
        cfg.sparse_vae["params"]["latents_scale"] = scale
        tokens = [(c, z * scale) for c, z in tokens]
        run("sparse_dit", sparse_dit_objective(tokens, cfg.train_sparse_dit, cfg.null_cond_tokens))

    metrics = evaluate_vaes(dense_vae, sparse_vae, held)
    metrics["held_out_samples"] = len(held_idx)
    if train2 is not None:  # the second sparse stage, fine-tuned from the first
        start_from_first_stage("sparse_vae_2")
        run("sparse_vae_2", sparse_vae_objective(train2, cfg.train_sparse_vae_2))
        sparse_vae_2 = trainers["sparse_vae_2"].ema.model
        if "sparse_dit_2" in stages or export_dir is not None:
            block2 = int(cfg.sparse_dit_2["params"]["selection_block_size"])
            tokens2 = encode_sparse_latents(sparse_vae_2, train2, block2)
            scale2 = latent_scale(np.concatenate([z for _, z in tokens2]))
            cfg.sparse_vae_2["params"]["latents_scale"] = scale2
            start_from_first_stage("sparse_dit_2")
            tokens2 = [(c, z * scale2) for c, z in tokens2]
            run("sparse_dit_2", sparse_dit_objective(tokens2, cfg.train_sparse_dit_2, cfg.null_cond_tokens))
        metrics.update({f"sparse_vae_2_{k[len('sparse_vae_'):]}": v
                        for k, v in evaluate_sparse_vae(sparse_vae_2, held2).items()})
        metrics["second_stage_training_samples"] = len(train2)
        metrics["second_stage_held_out_samples"] = len(held2) if held2 is not train2 else 0
    report = {"metrics": metrics, "timings_s": timings, "steps": {s: trainers[s].step for s in cfg.stages()}}
    atomic_write_text(run_dir / "report.json", json.dumps(report, indent=1))
    log(f"metrics: {json.dumps(metrics)}")
    if export_dir is not None:
        export_mini_prior(cfg, trainers, export_dir, report)
        log(f"mini prior written to {export_dir}")
    return report


@torch.no_grad()
def evaluate_vaes(dense_vae, sparse_vae, held: SampleSet) -> dict:
    """Held-out reconstruction: dense occupancy IoU; sparse SDF L1 on all voxels and sign accuracy in the band."""
    occ = torch.from_numpy(held.occupancy_batch(range(len(held)))).to(module_device(dense_vae))
    logits = dense_vae.decode(dense_vae.encode_moments(occ)[0])
    pred, truth = logits > 0, occ > 0.5
    iou = float((pred & truth).sum() / (pred | truth).sum().clamp(min=1))
    return {"dense_vae_iou": iou, **evaluate_sparse_vae(sparse_vae, held)}


@torch.no_grad()
def evaluate_sparse_vae(sparse_vae, held: SampleSet) -> dict:
    """Held-out sparse SDF L1 on all decoded voxels and sign accuracy in the band."""
    l1, sign_ok, n_all, n_band = 0.0, 0.0, 0, 0
    for i in range(len(held)):
        s = held[i]
        h = sparse_vae.encoder(batch_band_tensor([s], device=module_device(sparse_vae)))
        mean = torch.chunk(h.feats, 2, dim=1)[0]
        sdf = sparse_vae.decoder(h.replace(mean)).to("cpu")
        target = torch.from_numpy(s.lookup(sdf.coords[:, 1:].numpy()))
        pred_v = sdf.feats[:, 0]
        l1 += float((pred_v - target).abs().sum())
        band = torch.from_numpy(band_mask(target.numpy(), s.convention))
        sign_ok += float(((pred_v[band] > 0) == (target[band] > 0)).sum())
        n_all += len(target)
        n_band += int(band.sum())
    return {
        "sparse_vae_l1": l1 / max(n_all, 1),
        "sparse_vae_band_sign_accuracy": sign_ok / max(n_band, 1),
    }


def export_mini_prior(cfg: MiniPriorConfig, trainers: dict[str, StageTrainer], out: Path, report: dict) -> None:
    """EMA weights, one config + safetensors pair per component, ``pipeline.json``, the training config and the
    model card into ``out`` (refuses weights above MAX_WEIGHT_BYTES)."""
    from ..generators.mini import save_mini_prior

    total = sum(count_bytes(tr.ema.model) for tr in trainers.values())
    if total > MAX_WEIGHT_BYTES:
        raise InputError(f"mini prior weights are {total / 1e6:.1f} MB, above the "
                         f"{MAX_WEIGHT_BYTES / 1e6:.0f} MB budget")
    names = cfg.component_names()
    components = {names[part]: (cfg.model_entry(part), tr.ema.model) for part, tr in trainers.items()}
    save_mini_prior(out, components, cfg.prior_spec())
    atomic_write_text(out / "training.json", cfg.to_json())
    atomic_write_text(out / "MODEL_CARD.md", model_card(cfg, trainers, report, total))


def model_card(cfg: MiniPriorConfig, trainers: dict[str, StageTrainer], report: dict, total_bytes: int) -> str:
    d = cfg.data
    r2 = d.second_resolution
    final = d.sparse_resolution if r2 is None else r2
    if r2 is None:
        intro = ["A tiny Direct3D-S2-shaped prior (dense VAE + dense DiT + one sparse SDF stage), trained from "
                 "scratch by",
                 "`consistent3dgen train` on procedural shapes, so the pipeline runs offline. Unconditional: the"]
    else:
        intro = [f"A tiny Direct3D-S2-shaped prior (dense VAE + dense DiT + two sparse SDF stages, "
                 f"{d.sparse_resolution}³ → {r2}³),",
                 "trained from scratch by `consistent3dgen train` on procedural shapes, so the pipeline runs offline.",
                 "Unconditional: the"]
    lines = [
        "# consistent3dgen mini prior",
        "",
        *intro,
        "cross-attention layers only ever saw all-zero condition tokens; the image enters through guidance.",
        "",
        "## Data",
        f"- {d.num_procedural} procedural shapes (families: {', '.join(d.families or FAMILIES)}; seed {d.seed}),",
        f"  plus {d.mesh_views} yaw views each of: {', '.join(d.meshes) or 'none'}.",
        "  Held out, never trained on: spot, stanford-bunny, teapot, suzanne.",
        *(["", "| mesh | model and origin | source | licence |", "|---|---|---|---|"] if d.meshes else []),
        *(f"| {m} | {TRAINING_MESH_SOURCES.get(m, 'unknown')} | `../shared/data/meshes/{m}.obj` (the common-3d-test-"
          "models collection's copy) | not stated by the source's README |" for m in d.meshes),
        *([""] if d.meshes else []),
        f"- Sparse SDF at {d.sparse_resolution}³, latent factor {d.latent_factor}",
        f"  ({d.occupancy_resolution}³ cells = the dense occupancy), convention `{d.convention}`,",
        f"  band {d.band_voxels} voxels, shell {d.shell_voxels} voxels (see train.data.distance_to_value).",
    ]
    if r2 is not None:
        metrics = report.get("metrics", {})
        n2 = metrics.get("second_stage_training_samples", d.second_samples or "all")
        lines += [
            f"- Second sparse stage: {n2} of the training shapes (and the held-out ones) also at {r2}³",
            f"  ({r2 // d.latent_factor}³ latent cells), same convention; band and shell in voxels of {r2}³.",
        ]
    lines += [
        "- The pipeline builds the seen-side target with the same convention and extracts the mesh at level",
        f"  {cfg.field_convention()['mc_level']:g} (the `defaults` of its `pipeline.json`).",
        "",
        "## Training",
        "| stage | steps | batch | lr | final loss (mean of last 50) | seconds |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for s, tr in trainers.items():
        tail = [r["loss"] for r in tr.history[-50:]]
        secs = tr.history[-1]["seconds"] if tr.history else 0.0
        lines.append(
            f"| {s} | {tr.step} | {tr.tc.batch_size} | {tr.tc.lr:g} | "
            f"{np.mean(tail) if tail else float('nan'):.4g} | {secs:.0f} |"
        )
    if r2 is not None:
        names = cfg.component_names()
        lines += [
            "",
            f"Sparse stages: `{names['sparse_vae']}` + `{names['sparse_dit']}` at {d.sparse_resolution}³, then "
            f"`{names['sparse_vae_2']}` + `{names['sparse_dit_2']}`",
            f"at {r2}³ on the cells within 4 voxels of the first stage's mesh (the inference cascade). The second",
            "stage is a fine-tune: sparse_vae_2 and sparse_dit_2 started from the trained sparse_vae / sparse_dit",
            f"EMA weights; the second DiT's positional factor {cfg.model_entry('sparse_dit_2')['params']['factor']:g}"
            " maps its token coordinates into the",
            "first stage's range (as Direct3D-S2's 1024 DiT does with factor 0.5).",
        ]
    lines += [
        "",
        f"Weights: {total_bytes / 2**20:.2f} MiB (float32 EMA weights).",
        "",
        "## Metrics (held-out procedural/mesh samples)",
        "```json",
        json.dumps(report.get("metrics", {}), indent=1),
        "```",
        "",
        "## Limits",
        f"- Final meshes come from a {final}³ SDF: coarse; thin parts below ~2 voxels are lost.",
        "- Trained on a few hundred synthetic shapes: it knows coins, vases, furniture, capsule figures, blobs and",
        "  CSG parts, not real object categories; it is a stand-in so the method runs offline, not a quality prior.",
        "- Unconditional: without guidance it samples random shapes of those families.",
        "",
        "## Config",
        "`training.json` beside this card (`consistent3dgen train --config training.json` retrains it).",
        "Files: `pipeline.json` (stages, default sampler settings, generation-option defaults) and one",
        "`<component>.json` + `<component>.safetensors` pair per model, read by",
        "`consistent3dgen.generators.mini.load_mini_prior`.",
        "",
    ]
    return "\n".join(lines)
