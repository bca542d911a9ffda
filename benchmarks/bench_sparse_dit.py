"""Time and peak memory of one full-size sparse DiT step (v1.1 512 config, random weights) on CPU.

Tokens are the cells of a 64³ latent grid nearest to a sphere of radius 24 (a shell whose thickness grows with
the token count, in block order like the pipeline's ``sort_block``); one condition set of 1374 DINOv2-sized
tokens. Each token count runs in its own subprocess so the peak RSS (``ru_maxrss``) belongs to that size alone.
Reported per size: median wall and CPU (process) seconds per step over ``--repeats`` (CPU time is the
figure to compare on a shared machine), the RSS of the built model, the peak RSS above
it during the steps (activations + attention scratch), and that peak per token; the last line gives the ratio
of memory per token between the largest and smallest size (≈ 1 means memory grows linearly in tokens).

    python benchmarks/bench_sparse_dit.py --tokens 20000 100000 --dtype bfloat16
    python benchmarks/bench_sparse_dit.py --tokens 20000 100000 --blocks 2   # per-block figures, faster

With ``--blocks`` below 24 the step time is also extrapolated linearly to 24 blocks (clearly labelled):
blocks are identical in cost, and the activation peak does not depend on the number of blocks.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

FULL_BLOCKS = 24
V11_512 = dict(
    resolution=64,
    in_channels=16,
    out_channels=16,
    model_channels=1024,
    cond_channels=1024,
    num_heads=32,
    num_kv_heads=2,
    compression_block_size=8,
    selection_block_size=8,
    topk=8,
    compression_version="v1",
    pe_mode="ape",
    factor=1.0,
    sparse_conditions=False,
    qk_rms_norm=True,
    use_shift=True,
)


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def shell_coords(num_tokens: int, grid: int = 64, radius: float = 24.0, block: int = 8):
    """(num_tokens, 4) int32 coords (batch 0) of the cells nearest a centred sphere, in ``block``³ block order."""
    import torch

    from consistent3dgen.generators.direct3d_s2.block_order import block_order

    axis = torch.arange(grid, dtype=torch.float32) + 0.5 - grid / 2
    x, y, z = torch.meshgrid(axis, axis, axis, indexing="ij")
    dist = ((x**2 + y**2 + z**2).sqrt() - radius).abs().reshape(-1)
    if num_tokens > dist.numel():
        raise SystemExit(f"{num_tokens} tokens do not fit a {grid}³ grid")
    cells = torch.argsort(dist, stable=True)[:num_tokens]
    xyz = torch.stack([cells // grid**2, (cells // grid) % grid, cells % grid], 1)
    coords = torch.cat([torch.zeros(num_tokens, 1, dtype=torch.long), xyz], 1).int()
    return coords[block_order(coords, block)]


def child(num_tokens: int, blocks: int, dtype_name: str, repeats: int, threads: int | None) -> dict:
    import torch

    from consistent3dgen.generators.direct3d_s2.sparse_dit import SparseDiT
    from consistent3dgen.generators.direct3d_s2.sparse_tensor import SparseTensor

    if threads:
        torch.set_num_threads(threads)
    dtype = getattr(torch, dtype_name)
    torch.manual_seed(0)
    coords = shell_coords(num_tokens)
    x = SparseTensor(torch.randn(num_tokens, 16), coords)
    cond = torch.randn(1, 1374, 1024)
    t = torch.tensor([500.0])
    rss_start = _rss_bytes()
    with torch.device("meta"):
        model = SparseDiT(num_blocks=blocks, **V11_512)
    model = model.to_empty(device="cpu").eval()
    with torch.no_grad():
        for name, p in model.named_parameters():  # random weights, O(1) activations
            if p.ndim == 1:
                p.fill_(1.0) if name.endswith("weight") else p.normal_(0, 0.02)
            else:
                p.normal_(0, 1.0 / p.shape[-1] ** 0.5)
    model.convert_to(dtype)
    params = sum(p.numel() for p in model.parameters())
    rss_model = _rss_bytes()
    times, cpu_times = [], []
    with torch.no_grad():
        for _ in range(repeats):
            start, cpu_start = time.perf_counter(), time.process_time()
            out = model(x, t, cond)
            times.append(time.perf_counter() - start)
            cpu_times.append(time.process_time() - cpu_start)
            assert out.feats.shape == (num_tokens, 16) and torch.isfinite(out.feats).all()
            del out
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return dict(
        tokens=num_tokens,
        blocks=blocks,
        dtype=dtype_name,
        params=params,
        threads=torch.get_num_threads(),
        median_s=statistics.median(times),
        times_s=times,
        median_cpu_s=statistics.median(cpu_times),
        model_rss_gb=(rss_model - rss_start) / 1e9,
        step_peak_above_model_gb=(peak - rss_model) / 1e9,
        bytes_per_token=(peak - rss_model) / num_tokens,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, nargs="+", default=[20000, 100000])
    ap.add_argument("--blocks", type=int, default=FULL_BLOCKS, help="DiT blocks (24 = full model)")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child is not None:
        print(json.dumps(child(args.child, args.blocks, args.dtype, args.repeats, args.threads)))
        return
    rows = []
    for n in args.tokens:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child", str(n), "--blocks", str(args.blocks)]
        cmd += ["--dtype", args.dtype, "--repeats", str(args.repeats)]
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        res = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if res.returncode:
            sys.exit(f"size {n} failed:\n{res.stderr[-3000:]}")
        row = json.loads(res.stdout.strip().splitlines()[-1])
        rows.append(row)
        scale = FULL_BLOCKS / row["blocks"]
        wall, cpu = row["median_s"], row["median_cpu_s"]
        extra = ""
        if row["blocks"] != FULL_BLOCKS:
            extra = f" (x{scale:g} = {wall * scale:.0f} s wall, {cpu * scale:.0f} s CPU for 24 blocks)"
        print(
            f"tokens {n:>7}  blocks {row['blocks']}  {row['dtype']}  threads {row['threads']}  "
            f"params {row['params'] / 1e6:.1f} M  model {row['model_rss_gb']:.2f} GB  "
            f"step median {wall:.1f} s wall, {cpu:.1f} s CPU{extra}  "
            f"peak above model {row['step_peak_above_model_gb']:.2f} GB"
            f" = {row['bytes_per_token'] / 1024:.1f} KiB/token",
            flush=True,
        )
    if len(rows) > 1:
        lo, hi = rows[0], rows[-1]
        extra_bytes = (hi["step_peak_above_model_gb"] - lo["step_peak_above_model_gb"]) * 1e9
        cpu_ratio = (hi["median_cpu_s"] / hi["tokens"]) / (lo["median_cpu_s"] / lo["tokens"])
        print(
            f"memory per token ratio ({hi['tokens']} / {lo['tokens']} tokens): "
            f"{hi['bytes_per_token'] / lo['bytes_per_token']:.2f}   "
            f"incremental memory {extra_bytes / (hi['tokens'] - lo['tokens']) / 1024:.1f} KiB/token   "
            f"CPU time per token ratio: {cpu_ratio:.2f}"
        )


if __name__ == "__main__":
    main()
