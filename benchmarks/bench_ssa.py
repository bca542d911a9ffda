"""Selection branch of spatial sparse attention at the 1024 stage's size: the tiled ``ssa.selection_attention``
against the per-(kv head, block) Python loop it replaced (issue 11), in one process on the same inputs.

Configuration of the official ``sparse_dit_1024`` (v1.1 by default; ``--version v1.0`` only changes the
compression block): 32 query heads, 2 kv heads, head_dim 1024 / 32 = 32, selection blocks 8³, top-8 blocks,
on a 128³ grid. Tokens are the cells nearest a centred sphere (radius 52: ~850 selection blocks at 80 k tokens,
the size quoted in the issue), in block order like the pipeline's ``sort_block``. The block choice comes from
``ssa.compressed_attention_topk`` on queries / compressed keys that carry their position (score ∝ −distance²
to the block, plus noise), so each query picks nearby blocks as a trained model does; ``--selection random``
uses pure noise instead (choices spread over the whole shape: the worst case for tile filling).

Reported: the number of blocks and of (kv head, block) pairs (iterations of the old loop, each with two host
syncs), median and best wall and CPU (process) seconds of each version over ``--repeats`` (run alternately, no
grad; on a shared machine the best run is the one least disturbed), their ratios, and the max abs difference
of the outputs (both are float32; the tests bound it against float64). ``--threads 1`` compares the work alone:
with several threads, CPU time also counts threads waiting on each other in small ops.

    python benchmarks/bench_ssa.py                       # 80 000 tokens, 3 repeats
    python benchmarks/bench_ssa.py --tokens 20000 --repeats 1 --selection random
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch

from bench_sparse_dit import shell_coords  # the same sphere-shell tokens (benchmarks/ is the script's folder)
from consistent3dgen.generators.direct3d_s2 import ssa

# official sparse_dit_1024 (configs_v1_1.yaml; v1.0 differs in compression_block_size 4)
CONFIG = dict(num_heads=32, num_kv_heads=2, head_dim=1024 // 32, selection_block_size=8, topk=8, resolution=128)
COMPRESSION_BLOCK = {"v1.1": 8, "v1.0": 4}


def _selection_attention_loop(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    topk_blocks: torch.Tensor,
    layout: ssa.BlockLayout,
    chunk_bytes: int = ssa.DEFAULT_CHUNK_BYTES,
) -> torch.Tensor:
    """The replaced implementation (no-grad branch), verbatim in behaviour: for each (kv head, block) pair, one
    matmul of the queries that selected it against the block's tokens, merged online by log-sum-exp."""
    n, hq, dim = q.shape
    hkv = topk_blocks.shape[0]
    group = hq // hkv
    scale = 1.0 / math.sqrt(dim)
    acc = torch.zeros(n, hkv, group, dim, dtype=torch.float32, device=q.device)
    lse = torch.full((n, hkv, group), float("-inf"), dtype=torch.float32, device=q.device)
    if n == 0:
        return acc.view(n, hq, dim)
    qg = q.view(n, hkv, group, dim)
    head = torch.arange(hkv, device=q.device).view(hkv, 1, 1).expand_as(topk_blocks)
    query = torch.arange(n, device=q.device).view(1, n, 1).expand_as(topk_blocks)
    valid = topk_blocks >= 0
    key = (head * layout.num_blocks + topk_blocks)[valid]
    query = query[valid]
    order = torch.argsort(key, stable=True)
    key, query = key[order], query[order]
    pairs, counts = torch.unique_consecutive(key, return_counts=True)
    sizes = (layout.block_tokens >= 0).sum(1)
    start = 0
    for pair, count in zip(pairs.tolist(), counts.tolist(), strict=True):
        g, block = divmod(pair, layout.num_blocks)
        queries = query[start : start + count]
        start += count
        tokens = layout.block_tokens[block, : int(sizes[block])]
        kb = k[tokens, g].float()
        vb = v[tokens, g].float()
        rows = max(1, int(chunk_bytes // max(4.0 * group * (2 * tokens.numel() + 2 * dim), 1.0)))
        for c in range(0, count, rows):
            qi = queries[c : c + rows]
            scores = torch.matmul(qg[qi, g].float(), kb.T).mul_(scale)
            part_lse = torch.logsumexp(scores, dim=-1)
            probs = scores.sub_(part_lse.unsqueeze(-1)).exp_()
            part = torch.matmul(probs, vb)
            old_lse = lse[qi, g]
            new_lse = torch.logaddexp(old_lse, part_lse)
            acc[qi, g] = acc[qi, g] * (old_lse - new_lse).exp().unsqueeze(-1) + part * (
                part_lse - new_lse
            ).exp().unsqueeze(-1)
            lse[qi, g] = new_lse
    return acc.view(n, hq, dim)


def inputs(num_tokens: int, version: str, radius: float, selection: str, seed: int = 0):
    """q, k, v, the block layout and the top-k block choice of the compressed branch."""
    gen = torch.Generator().manual_seed(seed)
    hq, hkv, dim = CONFIG["num_heads"], CONFIG["num_kv_heads"], CONFIG["head_dim"]
    cbs, sbs = COMPRESSION_BLOCK[version], CONFIG["selection_block_size"]
    coords = shell_coords(num_tokens, CONFIG["resolution"], radius, sbs)
    ccoords = coords.clone()
    ccoords[:, 1:] //= cbs
    ccoords = torch.unique(ccoords, dim=0)
    n, m = coords.shape[0], ccoords.shape[0]
    q = torch.randn(n, hq, dim, generator=gen)
    k = torch.randn(n, hkv, dim, generator=gen)
    v = torch.randn(n, hkv, dim, generator=gen)
    ck = torch.randn(m, hkv, dim, generator=gen)
    cv = torch.randn(m, hkv, dim, generator=gen)
    if selection == "local":
        # q·ck ∝ x·c − |c|²/2 = −|x − c|²/2 + const(x): the softmax favours the compressed cells nearest the query
        pos = (coords[:, 1:].float() - CONFIG["resolution"] / 2) / sbs
        cpos = ((ccoords[:, 1:].float() + 0.5) * cbs - CONFIG["resolution"] / 2) / sbs
        alpha = 8.0
        q[..., :3] = alpha * pos[:, None]
        q[..., 3] = alpha
        ck[..., :3] = cpos[:, None]
        ck[..., 3] = -0.5 * (cpos**2).sum(-1, keepdim=True)
    layout = ssa.block_layout(coords, ccoords, cbs, sbs)
    _, _, topk_blocks = ssa.compressed_attention_topk(
        q, ck, cv, ssa.batch_slices(coords[:, 0]), ssa.batch_slices(ccoords[:, 0]), layout, CONFIG["topk"]
    )
    return q, k, v, layout, topk_blocks


def _timed(fn):
    start, cpu_start = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - start, time.process_time() - cpu_start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=80_000)
    ap.add_argument("--version", default="v1.1", choices=sorted(COMPRESSION_BLOCK))
    ap.add_argument("--radius", type=float, default=52.0, help="sphere radius in cells of the 128³ grid")
    ap.add_argument("--selection", default="local", choices=["local", "random"])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    q, k, v, layout, topk_blocks = inputs(args.tokens, args.version, args.radius, args.selection)
    valid = topk_blocks >= 0
    head = torch.arange(topk_blocks.shape[0]).view(-1, 1, 1).expand_as(topk_blocks)
    pairs = torch.unique((head * layout.num_blocks + topk_blocks)[valid]).numel()
    print(
        f"tokens {args.tokens}  {args.version}  selection {args.selection}  threads {torch.get_num_threads()}  "
        f"blocks {layout.num_blocks} (max {layout.block_tokens.shape[1]} tokens)  "
        f"(kv head, block) pairs = old loop iterations {pairs}",
        flush=True,
    )
    walls: dict[str, list[float]] = {"loop": [], "tiled": []}
    cpus: dict[str, list[float]] = {"loop": [], "tiled": []}
    outs = {}
    with torch.no_grad():
        for r in range(args.repeats):
            for name, fn in (("loop", _selection_attention_loop), ("tiled", ssa.selection_attention)):
                outs[name], wall, cpu = _timed(lambda fn=fn: fn(q, k, v, topk_blocks, layout))
                walls[name].append(wall)
                cpus[name].append(cpu)
                print(f"  repeat {r}: {name:5s} {wall:7.2f} s wall  {cpu:7.2f} s CPU", flush=True)
    diff = (outs["loop"] - outs["tiled"]).abs().max().item()
    med = {name: (statistics.median(walls[name]), statistics.median(cpus[name])) for name in walls}
    best = {name: (min(walls[name]), min(cpus[name])) for name in walls}
    for name in walls:
        print(
            f"{name:5s} median {med[name][0]:.2f} s wall, {med[name][1]:.2f} s CPU;  "
            f"best {best[name][0]:.2f} s wall, {best[name][1]:.2f} s CPU"
        )
    print(
        f"speed-up (loop / tiled): median {med['loop'][0] / med['tiled'][0]:.2f}x wall, "
        f"{med['loop'][1] / med['tiled'][1]:.2f}x CPU;  best {best['loop'][0] / best['tiled'][0]:.2f}x wall, "
        f"{best['loop'][1] / best['tiled'][1]:.2f}x CPU   max |loop - tiled| = {diff:.3g} "
        f"(max |out| {outs['tiled'].abs().max().item():.3g})"
    )


if __name__ == "__main__":
    main()
