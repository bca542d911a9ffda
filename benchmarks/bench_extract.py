"""Sparse marching cubes of thin-shell narrow bands: the fast paths vs the skimage-per-brick reference.

Inputs, each at every resolution asked for:

- ``torus``: the thin shell of an analytic torus, built directly on the band voxels in NumPy (coarse blocks
  first, then only the voxels of blocks near the surface), value ``(|d| - 1 h) / (1 h)`` on voxels with
  ``|d| < 2 h`` — the convention of :func:`consistent3dgen.geometry.shell.thin_shell_sdf`; seconds even at 1024³.
- ``--mesh NAME``: the thin shell of a real mesh from ../shared/data/meshes via ``thin_shell_sdf``
  (``--mesh-resolutions``, default 512 1024).

For each input the script times :func:`consistent3dgen.geometry.marching_cubes.sparse_marching_cubes` with each of
``--methods`` in the same run (default: auto = Warp kernels if importable, numpy, skimage), reports medians
over ``--repeats`` runs of wall and CPU time (CPU time of all threads: less sensitive to a shared machine's
load), the speed-up over ``skimage``, the peak memory of one run (tracemalloc, which sees NumPy buffers; the
Warp path runs its kernels on NumPy-owned buffers, so it is counted too), the 1-minute load average beside each
figure, and whether the mesh is watertight (``--check``; slow at 1024³).

    python benchmarks/bench_extract.py --resolutions 256 512 1024 --mesh stanford-bunny --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
import tracemalloc
from pathlib import Path

import numpy as np

from consistent3dgen.geometry.marching_cubes import sparse_marching_cubes
from consistent3dgen.geometry.voxels import SparseVoxels, voxel_centers
from consistent3dgen.geometry.warp_runtime import warp_available

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared"


def torus_shell(resolution: int, major: float = 0.55, minor: float = 0.25, band: float = 2.0) -> SparseVoxels:
    """Thin-shell SDF band of a torus surface, evaluated only near the surface (blocks of 8³ voxels first)."""
    h = 2.0 / resolution

    def dist(p: np.ndarray) -> np.ndarray:
        return np.abs(np.hypot(np.hypot(p[:, 0], p[:, 2]) - major, p[:, 1]) - minor)

    block = 8
    n = resolution // block
    blocks = np.stack(np.meshgrid(*[np.arange(n)] * 3, indexing="ij"), -1).reshape(-1, 3)
    centres = -1.0 + (blocks + 0.5) * block * h
    near = dist(centres) < band * h + np.sqrt(3) * block * h / 2  # the block's ball reaches the band
    offsets = np.stack(np.meshgrid(*[np.arange(block)] * 3, indexing="ij"), -1).reshape(-1, 3)
    coords = (blocks[near][:, None, :] * block + offsets[None]).reshape(-1, 3).astype(np.int32)
    d = dist(voxel_centers(coords, resolution).astype(np.float64)) / h
    keep = d < band
    values = np.clip(d[keep] - 1.0, -1.0, 1.0).astype(np.float32)
    return SparseVoxels(coords[keep], resolution, values[:, None])


def mesh_shell(name: str, resolution: int) -> SparseVoxels:
    import trimesh

    from consistent3dgen.geometry.shell import thin_shell_sdf

    path = SHARED / "data" / "meshes" / f"{name}.obj"
    if not path.is_file():
        raise SystemExit(f"mesh not found: {path} (--mesh needs ../shared/data/meshes)")
    mesh = trimesh.load(path, force="mesh", process=False)
    lo, hi = mesh.bounds
    mesh.apply_translation(-(lo + hi) / 2)
    mesh.apply_scale(1.9 / float(np.max(hi - lo)))  # largest extent fills [-0.95, 0.95]
    return thin_shell_sdf(mesh.vertices, mesh.faces, resolution)


def load() -> float:
    return round(os.getloadavg()[0], 2)


def timed(fn, repeats: int) -> dict:  # noqa: ANN001
    wall, cpu, loads, out = [], [], [], None
    for _ in range(repeats):
        loads.append(load())
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return {
        "median_s": round(statistics.median(wall), 3),
        "runs_s": [round(t, 3) for t in wall],
        "cpu_median_s": round(statistics.median(cpu), 3),
        "load_1min": loads,
        "out": out,
    }


def peak_mb(fn) -> float:  # noqa: ANN001
    tracemalloc.start()
    try:
        fn()
        return round(tracemalloc.get_traced_memory()[1] / 2**20, 1)
    finally:
        tracemalloc.stop()


def bench_input(label: str, sdf: SparseVoxels, build_s: float, args: argparse.Namespace) -> dict:
    row: dict = {"input": label, "resolution": sdf.resolution, "voxels": len(sdf), "band_build_s": round(build_s, 2)}
    for method in args.methods:
        run = timed(lambda m=method: sparse_marching_cubes(sdf, method=m), args.repeats)
        v, f = run.pop("out")
        run["peak_mb"] = peak_mb(lambda m=method: sparse_marching_cubes(sdf, method=m))
        run["vertices"], run["faces"] = len(v), len(f)
        if args.check:
            import trimesh

            mesh = trimesh.Trimesh(v, f, process=False)
            run["watertight"] = bool(mesh.is_watertight)
        del v, f
        row[method] = run
    if "skimage" in args.methods:
        for method in args.methods:
            if method != "skimage":
                row[f"skimage_over_{method}"] = round(row["skimage"]["median_s"] / row[method]["median_s"], 2)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--resolutions", type=int, nargs="+", default=[256, 512, 1024], help="torus band resolutions")
    ap.add_argument("--mesh", default=None, help="also a real thin shell of this mesh (e.g. stanford-bunny)")
    ap.add_argument("--mesh-resolutions", type=int, nargs="+", default=[512, 1024])
    ap.add_argument("--methods", nargs="+", default=["auto", "numpy", "skimage"])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--check", action=argparse.BooleanOptionalAction, default=True, help="watertight check")
    ap.add_argument("--json", type=Path, help="also write the rows as JSON here")
    args = ap.parse_args()
    env = {"warp_available": warp_available("marching_cubes"), "cpus": os.cpu_count(), "load_1min": load()}
    print(json.dumps(env), flush=True)

    rows = []
    inputs = [("torus", r, lambda r=r: torus_shell(r)) for r in args.resolutions]
    if args.mesh:
        inputs += [(args.mesh, r, lambda r=r: mesh_shell(args.mesh, r)) for r in args.mesh_resolutions]
    for label, _, build in inputs:
        t0 = time.perf_counter()
        sdf = build()
        row = bench_input(label, sdf, time.perf_counter() - t0, args)
        del sdf
        rows.append(row)
        print(json.dumps(row), flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
