"""Sparse-convolution neighbour maps: direct addressing over the coordinates' box against sorted keys +
searchsorted (what every map used before), in one process on the same voxels.

The voxels are those a sparse SDF decoder's last level holds: every voxel of the latent cells nearest a centred
sphere (``--cells`` cells of ``--factor``³ voxels in a ``--resolution``³ grid; the defaults are the mini prior's
256³ stage, ~4 k cells → ~2 M voxels). Reported: median and best wall seconds of a 3×3×3 submanifold map over
``--repeats`` (run alternately), the ratio, and whether the maps are equal.

    python benchmarks/bench_neighbor_map.py
    python benchmarks/bench_neighbor_map.py --resolution 128 --cells 1000   # the 128³ stage
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from bench_sparse_dit import shell_coords  # cells nearest a sphere (benchmarks/ is the script's folder)
from consistent3dgen.generators.direct3d_s2.sparse_conv import DENSE_TABLE_ENTRIES, build_neighbor_map


def decoder_voxels(cells: int, resolution: int, factor: int) -> torch.Tensor:
    grid = resolution // factor
    c = shell_coords(cells, grid=grid, radius=grid * 0.38, block=8).long()
    sub = torch.stack(torch.meshgrid(*[torch.arange(factor)] * 3, indexing="ij"), -1).reshape(-1, 3)
    xyz = (c[:, None, 1:] * factor + sub[None]).reshape(-1, 3)
    return torch.cat([torch.zeros(len(xyz), 1, dtype=torch.long), xyz], 1).int()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--resolution", type=int, default=256)
    ap.add_argument("--factor", type=int, default=8)
    ap.add_argument("--cells", type=int, default=4000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    coords = decoder_voxels(args.cells, args.resolution, args.factor)
    times: dict[str, list[float]] = {"sorted keys": [], "direct address": []}
    maps = {}
    for _ in range(args.repeats):
        for name, limit in (("sorted keys", 0), ("direct address", DENSE_TABLE_ENTRIES)):
            t0 = time.perf_counter()
            maps[name] = build_neighbor_map(coords, coords, (3, 3, 3), padding=(1, 1, 1), dense_entries=limit)
            times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"{len(coords)} voxels ({args.cells} cells of {args.factor}³ at {args.resolution}³), 3×3×3 submanifold map, "
          f"{torch.get_num_threads()} threads")
    for k, v in times.items():
        print(f"  {k:15s} median {med[k]:.3f} s, best {min(v):.3f} s")
    print(f"  ratio {med['sorted keys'] / med['direct address']:.1f}x; maps equal: "
          f"{torch.equal(maps['sorted keys'], maps['direct address'])}")


if __name__ == "__main__":
    main()
