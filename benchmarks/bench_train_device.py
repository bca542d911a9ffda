"""Training on a device: seconds per step of each stage of the mini prior, on ``--device`` and on the CPU, in one
process on the same shapes, batches and noise (batches are drawn on the CPU, so the work is the same).

The model sizes and batch sizes are those of ``--config`` (default: the built-in config with a 256³ second stage,
as the two-stage prior trains); the data are ``--shapes`` procedural shapes at each resolution (built with
``--data-workers`` processes, not timed). Each stage runs ``--steps`` steps on each device from the same initial
weights; reported: the median seconds of a step after the first (warm-up) and the ratio CPU / device. This is the
figure that sizes a training run on a lent GPU (how many steps fit in its minutes).

    python benchmarks/bench_train_device.py --device cuda            # on a GPU machine (~2 min there)
    python benchmarks/bench_train_device.py --device cpu --steps 3   # the same logic on a CPU (smoke)
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from consistent3dgen.devices import resolve_device
from consistent3dgen.train.config import MiniPriorConfig
from consistent3dgen.train.data import SampleSet, build_dataset, default_sources
from consistent3dgen.train.trainer import (
    StageTrainer,
    build_models,
    dense_dit_objective,
    dense_vae_objective,
    encode_dense_latents,
    encode_sparse_latents,
    latent_scale,
    sparse_dit_objective,
    sparse_vae_objective,
)


def objectives(cfg: MiniPriorConfig, models: dict, first: SampleSet, second: SampleSet | None) -> dict:
    """Each stage's loss function, on latents encoded by the (untrained) VAEs on the CPU: the step cost only
    depends on the shapes and token counts, not on the weights."""
    block = int(cfg.sparse_dit["params"]["selection_block_size"])
    dense = encode_dense_latents(models["dense_vae"], first)
    tokens = encode_sparse_latents(models["sparse_vae"], first, block)
    scale = latent_scale(np.concatenate([z for _, z in tokens]))
    out = {
        "dense_vae": dense_vae_objective(first, cfg.train_dense_vae),
        "sparse_vae": sparse_vae_objective(first, cfg.train_sparse_vae),
        "dense_dit": dense_dit_objective(dense * latent_scale(dense), cfg.train_dense_dit, cfg.null_cond_tokens),
        "sparse_dit": sparse_dit_objective([(c, z * scale) for c, z in tokens], cfg.train_sparse_dit,
                                           cfg.null_cond_tokens),
    }
    if second is not None:
        tokens2 = encode_sparse_latents(models["sparse_vae_2"], second, block)
        out["sparse_vae_2"] = sparse_vae_objective(second, cfg.train_sparse_vae_2)
        out["sparse_dit_2"] = sparse_dit_objective(tokens2, cfg.train_sparse_dit_2, cfg.null_cond_tokens)
    return out


def step_seconds(name: str, model: torch.nn.Module, cfg: MiniPriorConfig, loss_fn, device, steps: int,
                 run_dir: Path) -> list[float]:
    """Seconds of each of ``steps`` training steps (the trainer's own loop; each step ends in a device sync, as
    its logged terms are read back; no checkpoint or curve is written between steps)."""
    tc = dataclasses.replace(cfg.training(name), checkpoint_every=10**9, log_every=10**9)
    tr = StageTrainer(name, copy.deepcopy(model).to(device), tc, run_dir / str(device), seed=0)
    tr.run(loss_fn, steps=steps, log=None)
    ends = [row["seconds"] for row in tr.history]
    return [b - a for a, b in zip([0.0, *ends[:-1]], ends, strict=True)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--config", default=None, help="training config JSON (default: built-in + 256³ second stage)")
    ap.add_argument("--shapes", type=int, default=8)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--cpu-steps", type=int, default=3, help="steps on the CPU baseline (0: skip it)")
    ap.add_argument("--data-workers", type=int, default=4)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--json", default=None, help="also write the figures here")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    cfg = MiniPriorConfig.load(args.config) if args.config else MiniPriorConfig()
    if not args.config:
        cfg.data.second_resolution = 256
    cfg.data.num_procedural, cfg.data.meshes = args.shapes, []
    cfg.fill_second_stage_entries()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t0 = time.time()
        first = SampleSet.from_paths(build_dataset(tmp / "data", cfg.data, None, None, log=None,
                                                   workers=args.data_workers))
        second = None
        if cfg.has_second_stage:
            data2 = cfg.data.at_second_resolution()
            second = SampleSet.from_paths(build_dataset(tmp / "data", data2, default_sources(data2), None, log=None,
                                                        workers=args.data_workers))
        print(f"data: {len(first)} shapes at {cfg.data.sparse_resolution}³"
              + (f" and {cfg.data.second_resolution}³" if second else "") + f" ({time.time() - t0:.0f} s)")
        models = build_models(cfg)
        rows = {}
        for name, loss_fn in objectives(cfg, models, first, second).items():
            dev = step_seconds(name, models[name], cfg, loss_fn, device, args.steps, tmp)
            row = {"device_s": statistics.median(dev[1:] or dev)}
            if args.cpu_steps and device.type != "cpu":
                cpu = step_seconds(name, models[name], cfg, loss_fn, torch.device("cpu"), args.cpu_steps, tmp)
                row["cpu_s"] = statistics.median(cpu[1:] or cpu)
                row["ratio"] = row["cpu_s"] / row["device_s"]
            rows[name] = row
            print(f"{name:13s} batch {cfg.training(name).batch_size:3d}: {row['device_s']:.3f} s/step on {device}"
                  + (f", {row['cpu_s']:.3f} on the CPU ({row['ratio']:.1f}x)" if "cpu_s" in row else ""), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"device": str(device), "stages": rows}, indent=1))


if __name__ == "__main__":
    main()
