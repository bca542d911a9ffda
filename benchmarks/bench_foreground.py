"""Foreground timing: 518x518 point map of a real mesh → seen-surface mesh → thin shell (512, 1024) → front cells.

Times our pipeline (column candidates + adjacency walk) against a straightforward reference (same candidates,
exact BVH closest points for every candidate: Warp ``mesh_query_point`` or point-cloud-utils) in one process;
medians over ``--runs`` runs, their ratio, peak traced memory (tracemalloc, separate untimed run) and the
maximum distance error of ours against the reference. Usage:

    python benchmarks/bench_foreground.py [--mesh spot.obj] [--runs 5] [--res 512 1024] [--band 2] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import tracemalloc
from pathlib import Path

import numpy as np

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared"


def render(mesh_path: Path, size: int = 518):
    import trimesh

    from consistent3dgen.geometry.render import render_pointmap

    m = trimesh.load(mesh_path, force="mesh")
    v = (m.vertices - m.bounds.mean(0)) / np.ptp(m.bounds, axis=0).max()
    rot = trimesh.transformations.rotation_matrix(0.6, [0, 1, 0])[:3, :3]
    cam = np.eye(4)
    cam[:3, :3] = np.diag([1.0, -1.0, -1.0]) @ rot
    cam[2, 3] = 1.5
    f = 1.1 * size  # the object fills most of the frame
    k = np.array([[f, 0, size / 2], [0, f, size / 2], [0, 0, 1.0]])
    return render_pointmap(v, m.faces, k, size, size, cam_from_world=cam)


def ours(pm, res: int, band: float):
    from consistent3dgen.geometry import shell, surface

    mesh, _ = surface.pointmap_to_canonical_mesh(pm)
    r = shell.thin_shell(mesh.vertices, mesh.faces, res, band=band)
    cells = r.sdf.downsample(8)
    keep = shell.front_half_mask(cells, r.sdf, r.front_side)
    return r, cells, keep, mesh


def reference(pm, res: int, band: float):
    from consistent3dgen.geometry import shell, surface

    mesh, _ = surface.pointmap_to_canonical_mesh(pm)
    sdf = shell.thin_shell_sdf_reference(mesh.vertices, mesh.faces, res, band=band)
    cells = sdf.downsample(8)
    keep = shell.front_half_mask(cells)
    return sdf, cells, keep


def timed(fn, runs: int) -> float:
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def peak_mib(fn) -> float:
    tracemalloc.start()
    fn()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak / 2**20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mesh", default="spot.obj")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--res", type=int, nargs="+", default=[512, 1024])
    ap.add_argument("--band", type=float, default=2.0)
    ap.add_argument("--threads", type=int, default=None, help="cap BLAS/OpenMP threads (env) before importing")
    args = ap.parse_args()
    if args.threads:
        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[var] = str(args.threads)
    mesh_path = SHARED / "data" / "meshes" / args.mesh
    if not mesh_path.is_file():
        raise SystemExit(f"mesh not found: {mesh_path} (the shared data folder sits beside the repo)")
    from consistent3dgen.geometry import shell

    pm = render(mesh_path)
    print(f"point map {pm.shape[0]}x{pm.shape[1]}, {int(pm.mask.sum())} object pixels; warp: {shell._warp_available()}")
    for res in args.res:  # warm-up (Warp kernel compile / cache load)
        ours(pm, res, args.band)
        reference(pm, res, args.band)
    rows = []
    for res in args.res:
        r, cells, keep, mesh = ours(pm, res, args.band)
        exact = shell.exact_distance(
            r.sdf.coords.astype(np.float64), shell.to_voxel_units(mesh.vertices, res), mesh.faces
        )
        err = np.abs(r.udf - exact)
        ref_sdf, _, _ = reference(pm, res, args.band)
        t_ours = timed(lambda res=res: ours(pm, res, args.band), args.runs)
        t_ref = timed(lambda res=res: reference(pm, res, args.band), args.runs)
        m_ours = peak_mib(lambda res=res: ours(pm, res, args.band))
        m_ref = peak_mib(lambda res=res: reference(pm, res, args.band))
        rows.append(
            (
                res,
                len(r.sdf),
                len(ref_sdf),
                r.n_candidates,
                len(cells),
                int(keep.sum()),
                t_ours,
                t_ref,
                m_ours,
                m_ref,
                float(err.max()),
                float((err > 1e-3).mean()),
            )
        )
    print(
        "| res | voxels ours | voxels ref | candidates | cells | front cells | ours s (median) | ref s (median) "
        "| ref/ours | peak MiB ours | peak MiB ref | max err (vox) | frac err>1e-3 |"
    )
    print("|" + "---|" * 13)
    for res, n, nref, nc, ncell, nkeep, to, tr, mo, mr, emax, efrac in rows:
        print(
            f"| {res} | {n} | {nref} | {nc} | {ncell} | {nkeep} | {to:.2f} | {tr:.2f} | {tr / to:.2f} "
            f"| {mo:.0f} | {mr:.0f} | {emax:.3f} | {efrac:.4f} |"
        )


if __name__ == "__main__":
    main()
