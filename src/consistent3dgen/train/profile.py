"""Per-step cost of each training stage at the mini config: ``python -m consistent3dgen.train.profile``.

Reports the median CPU seconds (``time.process_time``, this process only, so the figure does not depend on
other load on a shared machine) and wall seconds of a training step (forward + backward + AdamW) on a few
real samples, and the implied time of the configured number of steps, plus the data-generation time per
sample. ``--threads 1`` (default) makes CPU time ≈ the wall time of an otherwise idle single core.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from .config import MiniPriorConfig
from .data import SampleSet, build_dataset, build_sample, parse_source
from .trainer import (
    build_models,
    dense_dit_objective,
    dense_vae_objective,
    encode_dense_latents,
    encode_sparse_latents,
    sparse_dit_objective,
    sparse_vae_objective,
)

PROFILE_SOURCES = ["coin:0", "vase:1", "furniture:2", "figure:3", "blob:4", "csg:5"]


def _time_steps(model, loss_fn, repeats: int) -> tuple[float, float]:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    gen, rng = torch.Generator().manual_seed(0), np.random.default_rng(0)
    cpu, wall = [], []
    for i in range(repeats + 1):
        c0, w0 = time.process_time(), time.perf_counter()
        out = loss_fn(model, i, gen, rng)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        if i:  # the first step warms caches up
            cpu.append(time.process_time() - c0)
            wall.append(time.perf_counter() - w0)
    return statistics.median(cpu), statistics.median(wall)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--cache", default="/tmp/consistent3dgen-profile", help="sample cache folder")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--stages", default="dense_vae,sparse_vae,dense_dit,sparse_dit")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = MiniPriorConfig()
    stages = args.stages.split(",")

    c0 = time.process_time()
    build_sample(parse_source("csg:99"), cfg.data, "csg:99")
    print(f"data: {time.process_time() - c0:.2f} CPU s for one procedural sample")
    data = SampleSet.from_paths(build_dataset(Path(args.cache), cfg.data, PROFILE_SOURCES, log=None))
    models = build_models(cfg)
    rows = []
    if "dense_vae" in stages:
        rows.append(
            (
                "dense_vae",
                *_time_steps(models["dense_vae"], dense_vae_objective(data, cfg.train_dense_vae), args.repeats),
            )
        )
    if "sparse_vae" in stages:
        rows.append(
            (
                "sparse_vae",
                *_time_steps(models["sparse_vae"], sparse_vae_objective(data, cfg.train_sparse_vae), args.repeats),
            )
        )
    if "dense_dit" in stages:
        lat = encode_dense_latents(models["dense_vae"], data)
        obj = dense_dit_objective(lat, cfg.train_dense_dit, cfg.null_cond_tokens)
        rows.append(("dense_dit", *_time_steps(models["dense_dit"], obj, args.repeats)))
    if "sparse_dit" in stages:
        toks = encode_sparse_latents(models["sparse_vae"], data, int(cfg.sparse_dit["params"]["selection_block_size"]))
        obj = sparse_dit_objective(toks, cfg.train_sparse_dit, cfg.null_cond_tokens)
        try:
            rows.append(("sparse_dit", *_time_steps(models["sparse_dit"], obj, args.repeats)))
        except RuntimeError as e:
            print(f"sparse_dit: cannot train ({e.__class__.__name__}: {str(e)[:120]})")
    print(f"{'stage':<11} {'CPU s/step':>10} {'wall s/step':>11} {'steps':>6} {'est. CPU min':>12}")
    for name, cpu, wall in rows:
        steps = cfg.training(name).steps
        print(f"{name:<11} {cpu:>10.2f} {wall:>11.2f} {steps:>6} {cpu * steps / 60:>12.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
