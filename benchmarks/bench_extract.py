"""Sparse marching cubes on a thin-shell narrow band vs dense skimage marching cubes.

The input is the thin shell of a real mesh from ../shared/data/meshes (unsigned distance from Warp's
``mesh_query_point_no_sign``): voxels within ``2`` voxels of the surface, value ``(d - 0.75 h) / 1.25 h``,
which is what the project's shell SDF looks like. For each resolution the script times
:func:`consistent3dgen.geometry.extract.sparse_marching_cubes` and, where a dense grid is affordable,
skimage's marching cubes on the same SDF filled into a dense array (absent voxels = +1). Reports medians over
``--repeats`` runs, the dense/sparse time ratio, and the peak Python-tracked memory (tracemalloc, which sees
NumPy buffers) of one run of each.

    python benchmarks/bench_extract.py --mesh stanford-bunny --resolutions 256 512 1024 --dense-max 512
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import tracemalloc
from pathlib import Path

import numpy as np
import trimesh

from consistent3dgen.geometry.extract import sparse_marching_cubes
from consistent3dgen.geometry.voxels import SparseVoxels, linear_index, points_to_voxels, voxel_centers
from consistent3dgen.metrics import sample_surface

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared"


def load_normalised(name: str) -> trimesh.Trimesh:
    path = SHARED / "data" / "meshes" / f"{name}.obj"
    if not path.is_file():
        raise SystemExit(f"mesh not found: {path} (the benchmark needs ../shared/data/meshes)")
    mesh = trimesh.load(path, force="mesh", process=False)
    lo, hi = mesh.bounds
    mesh.apply_translation(-(lo + hi) / 2)
    mesh.apply_scale(1.9 / float(np.max(hi - lo)))  # largest extent fills [-0.95, 0.95]
    return mesh


def unsigned_distance(mesh: trimesh.Trimesh, points: np.ndarray, max_dist: float) -> np.ndarray:
    """Distance from each point to the mesh (Warp BVH query); ``max_dist`` where nothing is closer."""
    import warp as wp

    wp.config.log_level = 40

    @wp.kernel
    def closest(mesh_id: wp.uint64, pts: wp.array(dtype=wp.vec3), max_d: float, out: wp.array(dtype=float)):
        i = wp.tid()
        q = wp.mesh_query_point_no_sign(mesh_id, pts[i], max_d)
        if q.result:
            out[i] = wp.length(pts[i] - wp.mesh_eval_position(mesh_id, q.face, q.u, q.v))
        else:
            out[i] = max_d

    wmesh = wp.Mesh(
        points=wp.array(mesh.vertices.astype(np.float32), dtype=wp.vec3),
        indices=wp.array(mesh.faces.astype(np.int32).reshape(-1), dtype=wp.int32),
    )
    pts = wp.array(points.astype(np.float32), dtype=wp.vec3)
    out = wp.empty(len(points), dtype=float)
    wp.launch(closest, dim=len(points), inputs=[wmesh.id, pts, float(max_dist)], outputs=[out])
    return out.numpy()


def shell_sdf(mesh: trimesh.Trimesh, resolution: int, seed: int = 0) -> SparseVoxels:
    """Thin-shell SDF on the narrow band, built sparsely: voxelise dense surface samples, dilate by 2 voxels
    (separably, on voxel keys), then keep centres within 2 voxels of the surface."""
    h = 2.0 / resolution
    n_samples = int(4.0 * mesh.area / h**2) + 1000  # about two samples per voxel face: no gaps
    pts = sample_surface(mesh.vertices, mesh.faces, n_samples, seed=seed)
    keys = np.unique(linear_index(points_to_voxels(pts, resolution), resolution))
    del pts
    for axis in range(3):
        c = np.stack(np.unravel_index(keys, (resolution,) * 3), axis=1)
        grown = []
        for off in (-2, -1, 0, 1, 2):
            cc = c.copy()
            cc[:, axis] += off
            ok = (cc[:, axis] >= 0) & (cc[:, axis] < resolution)
            grown.append(linear_index(cc[ok], resolution))
        keys = np.unique(np.concatenate(grown))
    coords = np.stack(np.unravel_index(keys, (resolution,) * 3), axis=1).astype(np.int32)
    d = unsigned_distance(mesh, voxel_centers(coords, resolution), max_dist=3 * h)
    keep = d < 2 * h
    values = np.clip((d[keep] - 0.75 * h) / (1.25 * h), -1.0, 1.0).astype(np.float32)
    return SparseVoxels(coords[keep], resolution, values[:, None])


def dense_marching_cubes(sdf: SparseVoxels) -> tuple[np.ndarray, np.ndarray]:
    from skimage.measure import marching_cubes

    r = sdf.resolution
    grid = np.ones((r + 2,) * 3, np.float32)  # padded by one outside layer, as the sparse path does
    i, j, k = (sdf.coords.astype(np.intp) + 1).T
    grid[i, j, k] = sdf.feats[:, 0]
    verts, faces, _, _ = marching_cubes(grid, level=0.0)
    return verts, faces


def timed(fn, repeats: int) -> tuple[float, list[float], object]:  # noqa: ANN001
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times, out


def peak_mb(fn) -> float:  # noqa: ANN001
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mesh", default="stanford-bunny")
    ap.add_argument("--resolutions", type=int, nargs="+", default=[256, 512, 1024])
    ap.add_argument("--dense-max", type=int, default=512, help="largest resolution timed densely")
    ap.add_argument("--brick", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", type=Path, help="also write the rows as JSON here")
    args = ap.parse_args()

    mesh = load_normalised(args.mesh)
    rows = []
    for r in args.resolutions:
        t0 = time.perf_counter()
        sdf = shell_sdf(mesh, r)
        band_s = time.perf_counter() - t0
        sparse_med, sparse_all, (v, f) = timed(
            lambda sdf=sdf: sparse_marching_cubes(sdf, brick=args.brick), args.repeats
        )
        watertight = trimesh.Trimesh(v, f, process=False).is_watertight
        row = {
            "mesh": args.mesh,
            "resolution": r,
            "voxels": len(sdf),
            "band_build_s": round(band_s, 2),
            "sparse_median_s": round(sparse_med, 3),
            "sparse_runs_s": [round(t, 3) for t in sparse_all],
            "sparse_peak_mb": round(peak_mb(lambda sdf=sdf: sparse_marching_cubes(sdf, brick=args.brick)), 1),
            "faces": len(f),
            "watertight": bool(watertight),
        }
        if r <= args.dense_max:
            dense_med, dense_all, (dv, df) = timed(lambda sdf=sdf: dense_marching_cubes(sdf), args.repeats)
            row.update(
                dense_median_s=round(dense_med, 3),
                dense_runs_s=[round(t, 3) for t in dense_all],
                dense_peak_mb=round(peak_mb(lambda sdf=sdf: dense_marching_cubes(sdf)), 1),
                dense_faces=len(df),
                dense_over_sparse_time=round(dense_med / sparse_med, 2),
            )
        rows.append(row)
        print(json.dumps(row), flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
