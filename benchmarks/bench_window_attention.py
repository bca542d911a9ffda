"""Window branch of spatial sparse attention, chunked path: ``ssa.window_attention`` (fused
``scaled_dot_product_attention`` per group of padded windows) against the same loop with the softmax written out
(``ssa.attend``, what it used before), in one process on the same inputs.

Configurations: ``--config 1024`` the official ``sparse_dit_1024`` (32 query heads, 2 kv heads, head_dim 32,
window 8 on a 128³ grid); ``--config mini256`` the mini prior's 256³ stage (4 query heads, 2 kv heads,
head_dim 24, window 8 on its 32³ grid). Tokens are the cells nearest a centred sphere (``bench_sparse_dit``).
Reported: median and best wall seconds of each over ``--repeats`` (run alternately, no grad), their ratio, and
the max abs difference of the outputs (float32 both).

    python benchmarks/bench_window_attention.py                          # 1024 config, 20 000 tokens
    python benchmarks/bench_window_attention.py --config mini256 --tokens 5000
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from bench_sparse_dit import shell_coords  # the same sphere-shell tokens (benchmarks/ is the script's folder)
from consistent3dgen.generators.direct3d_s2 import ssa

CONFIGS = {
    "1024": dict(num_heads=32, num_kv_heads=2, head_dim=32, window=8, grid=128),
    "mini256": dict(num_heads=4, num_kv_heads=2, head_dim=24, window=8, grid=32),
}


def window_attention_written_out(q, k, v, coords, window_size, shift, chunk_bytes=ssa.DEFAULT_CHUNK_BYTES):
    """The replaced version: the same windows, groups and padding, the softmax by ``ssa.attend``."""
    n, hq, dim = q.shape
    hkv = k.shape[1]
    out = torch.empty(n, hq, dim, dtype=torch.float32)
    window_of_token, sizes = ssa.window_partition(coords, window_size, shift)
    order = torch.argsort(window_of_token, stable=True)
    starts = torch.cumsum(sizes, 0) - sizes
    slot = torch.arange(n) - starts[window_of_token[order]]
    by_size = torch.argsort(sizes, descending=True, stable=True)
    rank = torch.empty_like(by_size)
    rank[by_size] = torch.arange(by_size.numel())
    table = torch.full((sizes.numel(), int(sizes.max())), -1, dtype=torch.long)
    table[rank[window_of_token[order]], slot] = order
    sizes_sorted = sizes[by_size].tolist()
    w = 0
    while w < len(sizes_sorted):
        pad = sizes_sorted[w]
        count = max(1, int(chunk_bytes // (4.0 * pad * (2 * hq * pad + 2 * hkv * dim + 2 * hq * dim))))
        idx = table[w : w + count, :pad]
        valid = idx >= 0
        safe = idx.clamp(min=0)
        o, _, _ = ssa.attend(q[safe], k[safe], v[safe], key_mask=valid)
        out[idx[valid]] = o[valid]
        w += count
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", choices=sorted(CONFIGS), default="1024")
    ap.add_argument("--tokens", type=int, default=20000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = CONFIGS[args.config]
    coords = shell_coords(args.tokens, cfg["grid"], radius=0.4 * cfg["grid"], block=cfg["window"])
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(len(coords), cfg["num_heads"], cfg["head_dim"], generator=gen)
    k = torch.randn(len(coords), cfg["num_kv_heads"], cfg["head_dim"], generator=gen)
    v = torch.randn(len(coords), cfg["num_kv_heads"], cfg["head_dim"], generator=gen)
    shift = cfg["window"] // 2
    versions = {"fused (current)": ssa.window_attention, "written out (before)": window_attention_written_out}
    times: dict[str, list[float]] = {name: [] for name in versions}
    outs = {}
    with torch.no_grad():
        for _ in range(args.repeats):
            for name, fn in versions.items():
                t = time.perf_counter()
                outs[name] = fn(q, k, v, coords, cfg["window"], shift)
                times[name].append(time.perf_counter() - t)
    print(f"config {args.config}: {len(coords)} tokens, {torch.get_num_threads()} threads, {args.repeats} repeats")
    for name, ts in times.items():
        print(f"  {name:>22s}: median {statistics.median(ts):.3f} s, best {min(ts):.3f} s")
    fused, before = (statistics.median(times[n]) for n in versions)
    diff = (outs["fused (current)"] - outs["written out (before)"]).abs().max().item()
    print(f"  ratio before / current: {before / fused:.2f}x; max abs difference {diff:.2e}")


if __name__ == "__main__":
    main()
