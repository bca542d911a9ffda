"""Foreground timing: 518x518 point map of a real mesh → seen-surface mesh → thin shell (512, 1024) → front cells.

Times our pipeline (exact per-triangle column scatter, Warp kernels on ``--threads`` x slabs) against a
straightforward reference run in the same process (column candidates from 2-D min/max filters, exact BVH
closest points for every candidate: Warp ``mesh_query_point`` or point-cloud-utils; latent cells by sort, front
half by column). Prints medians over ``--runs`` runs, their ratio, the peak memory of each (resident-set
high-water mark over the call, so Warp's native buffers count too), the error of our distances against exact
BVH distances (max and fraction above 1e-3 voxel), the voxel-set difference to the reference, and the time and
peak memory of sparse marching cubes (``geometry.marching_cubes.sparse_marching_cubes``) on the largest band. The
1-minute load average (``os.getloadavg``) is printed beside each figure: the machine is shared. Usage:

    python benchmarks/bench_foreground.py [--mesh spot.obj] [--runs 5] [--res 512 1024] [--band 2] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
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


def ours(pm, res: int, band: float, threads: int | None):
    from consistent3dgen.geometry import shell, surface, voxels

    mesh, _ = surface.pointmap_to_canonical_mesh(pm)
    r = shell.thin_shell(mesh.vertices, mesh.faces, res, band=band, threads=threads)
    cells = voxels.latent_cells(r.sdf, 8)
    keep = shell.front_half_mask(cells, r.sdf, r.front_side)
    return r, cells, keep, mesh


def reference(pm, res: int, band: float):
    from consistent3dgen.geometry import shell, surface
    from consistent3dgen.geometry.voxels import SparseVoxels

    mesh, _ = surface.pointmap_to_canonical_mesh(pm)
    sdf = shell.thin_shell_sdf_reference(mesh.vertices, mesh.faces, res, band=band)
    cells = SparseVoxels(sdf.coords, res).downsample(8)
    keep = shell.front_half_mask(cells)
    return sdf, cells, keep


def load() -> float:
    return os.getloadavg()[0]


def timed(fn, runs: int) -> tuple[float, float]:
    """(median seconds, median 1-minute load average sampled after each run)."""
    times, loads = [], []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
        loads.append(load())
    return statistics.median(times), statistics.median(loads)


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def _peak_in_child(what: str, pm_path: str, res: int, band: float, threads: int) -> None:
    """Child-process side of :func:`peak_mib`: load inputs, warm up, then print the RSS peak of one call."""
    from consistent3dgen.geometry.marching_cubes import sparse_marching_cubes
    from consistent3dgen.io.pointmap_io import load_npz

    pm = load_npz(pm_path)
    if what == "mc":
        sdf = ours(pm, res, band, threads)[0].sdf
        fns = [lambda: sparse_marching_cubes(sdf)]
    elif what == "ours":
        fns = [lambda: ours(pm, 64, band, threads), lambda: ours(pm, res, band, threads)]
    else:
        fns = [lambda: reference(pm, 64, band), lambda: reference(pm, res, band)]
    for fn in fns[:-1]:
        fn()  # small warm-up: kernel cache load, imports
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")  # reset the RSS high-water mark
    before = _status_kib("VmRSS")
    fns[-1]()
    print(f"PEAK_KIB {_status_kib('VmHWM') - before}")


def peak_mib(what: str, pm_path: str, res: int, band: float, threads: int) -> float:
    """Peak resident memory (MiB) that one call adds, measured in a fresh interpreter (a long-lived process
    reuses freed pages, hiding the peak); the resident-set high-water mark counts Warp's native buffers too."""
    import subprocess
    import sys

    cmd = [sys.executable, __file__, "--peak-child", what, pm_path, "--res", str(res), "--band", str(band),
           "--threads", str(threads)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return int(out.split("PEAK_KIB")[1].split()[0]) / 1024


def main() -> None:  # noqa: C901 - a flat script
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mesh", default="spot.obj")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--res", type=int, nargs="+", default=[512, 1024])
    ap.add_argument("--band", type=float, default=2.0)
    ap.add_argument("--threads", type=int, default=None, help="Warp threads for ours (default: usable cores)")
    ap.add_argument("--no-mc", action="store_true", help="skip sparse marching cubes")
    ap.add_argument("--peak-child", nargs=2, metavar=("WHAT", "POINTMAP"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.peak_child:
        return _peak_in_child(*args.peak_child, args.res[0], args.band, args.threads)
    mesh_path = SHARED / "data" / "meshes" / args.mesh
    if not mesh_path.is_file():
        raise SystemExit(f"mesh not found: {mesh_path} (the shared data folder sits beside the repo)")
    import tempfile

    from consistent3dgen.geometry import shell
    from consistent3dgen.geometry.marching_cubes import sparse_marching_cubes
    from consistent3dgen.geometry.warp_runtime import warp_available
    from consistent3dgen.io.pointmap_io import save_npz

    pm = render(mesh_path)
    threads = args.threads or shell.default_threads()
    tmp = tempfile.TemporaryDirectory()
    pm_path = os.path.join(tmp.name, "pointmap.npz")
    save_npz(pm, pm_path)
    print(
        f"point map {pm.shape[0]}x{pm.shape[1]}, {int(pm.mask.sum())} object pixels; warp: {warp_available('shell')}; "
        f"threads (ours): {threads}; cpus: {os.cpu_count()}; load at start: {load():.2f}"
    )
    rows, last = [], None
    for res in args.res:
        ours(pm, res, args.band, threads)  # warm-up (Warp kernel compile / cache load)
        reference(pm, res, args.band)
        r, cells, keep, mesh = ours(pm, res, args.band, threads)
        exact = shell.exact_distance(r.sdf.coords.astype(np.float64), shell.to_voxel_units(mesh.vertices, res),
                                     mesh.faces)
        err = np.abs(r.udf - exact)
        ref_sdf, _, _ = reference(pm, res, args.band)
        vox = shell.to_voxel_units(mesh.vertices, res)
        differ = np.concatenate([ref_sdf.coords[r.sdf.lookup(ref_sdf.coords) < 0],
                                 r.sdf.coords[ref_sdf.lookup(r.sdf.coords) < 0]])
        missing = int((r.sdf.lookup(ref_sdf.coords) < 0).sum())
        extra = len(differ) - missing
        # voxels that differ from the reference should all sit on the band's edge (float32 rounding)
        edge = float(np.abs(shell.exact_distance(differ.astype(np.float64), vox, mesh.faces) - args.band).max()
                     ) if len(differ) else 0.0
        t_ours, l_ours = timed(lambda res=res: ours(pm, res, args.band, threads), args.runs)
        t_ref, l_ref = timed(lambda res=res: reference(pm, res, args.band), args.runs)
        m_ours = peak_mib("ours", pm_path, res, args.band, threads)
        m_ref = peak_mib("reference", pm_path, res, args.band, threads)
        rows.append((res, len(r.sdf), len(ref_sdf), missing, extra, edge, r.n_evaluations, len(cells), int(keep.sum()),
                     t_ours, l_ours, t_ref, l_ref, m_ours, m_ref, float(err.max()), float((err > 1e-3).mean())))
        last = r
    print(
        "\n| res | voxels ours | voxels ref | missing / extra vs ref (max abs(d - band)) "
        "| distance evals | cells | front cells "
        "| ours s (median) | load | ref s (median) | load | ref/ours | peak MiB ours | peak MiB ref "
        "| max err (vox) | frac err>1e-3 |"
    )
    print("|" + "---|" * 16)
    for res, n, nref, miss, extra, edge, nev, ncell, nkeep, to, lo, tr, lr, mo, mr, emax, efrac in rows:
        print(
            f"| {res} | {n} | {nref} | {miss} / {extra} ({edge:.0e}) | {nev} | {ncell} | {nkeep} | {to:.2f} | {lo:.1f} "
            f"| {tr:.2f} | {lr:.1f} | {tr / to:.1f} | {mo:.0f} | {mr:.0f} | {emax:.1e} | {efrac:.4f} |"
        )
    if not args.no_mc and last is not None:
        res = args.res[-1]
        try:  # another module's code: report its failure instead of losing the figures above
            v, f = sparse_marching_cubes(last.sdf)  # warm-up
            t_mc, l_mc = timed(lambda: sparse_marching_cubes(last.sdf), args.runs)
            m_mc = peak_mib("mc", pm_path, res, args.band, threads)
        except Exception as e:  # noqa: BLE001
            detail = e.stderr.strip().splitlines()[-1] if getattr(e, "stderr", None) else repr(e)
            print(f"\nsparse marching cubes of the {res}^3 band failed: {detail}")
            return
        print(
            f"\nsparse marching cubes of the {res}^3 band ({len(last.sdf)} voxels → {len(v)} vertices, "
            f"{len(f)} faces): median {t_mc:.2f} s (load {l_mc:.1f}), peak {m_mc:.0f} MiB"
        )

if __name__ == "__main__":
    main()
