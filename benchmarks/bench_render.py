"""Ray-cast rendering speed: the Warp BVH path at 518×518 on a ≥500k-face mesh, and Warp vs the pure NumPy
(trimesh) fallback on a smaller case both can run, in the same process.

    python benchmarks/bench_render.py --faces 500000 --size 518
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import trimesh

from consistent3dgen.geometry.render import intrinsics_from_fov, look_at, raycast

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared"


def test_mesh(min_faces: int) -> trimesh.Trimesh:
    """The Stanford bunny (icosphere if ../shared is absent), normalised, subdivided up to ``min_faces``."""
    path = SHARED / "data" / "meshes" / "stanford-bunny.obj"
    mesh = trimesh.load(path, force="mesh") if path.is_file() else trimesh.creation.icosphere(subdivisions=4)
    lo, hi = mesh.bounds
    mesh.apply_translation(-(lo + hi) / 2)
    mesh.apply_scale(1.9 / float(np.max(hi - lo)))
    while len(mesh.faces) < min_faces:
        mesh = mesh.subdivide()
    return mesh


def median_time(fn, repeats: int) -> tuple[float, list[float]]:  # noqa: ANN001
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--faces", type=int, default=500_000)
    ap.add_argument("--size", type=int, default=518)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--small-faces", type=int, default=20_000)
    ap.add_argument("--small-size", type=int, default=96)
    args = ap.parse_args()

    cam = look_at([0.4, 0.5, 2.6], [0.0, 0.0, 0.0])
    mesh = test_mesh(args.faces)
    k = intrinsics_from_fov(45.0, args.size, args.size)
    raycast(mesh.vertices, mesh.faces, k, args.size, args.size, cam, backend="warp")  # compile / load the kernel
    med, runs = median_time(
        lambda: raycast(mesh.vertices, mesh.faces, k, args.size, args.size, cam, backend="warp"), args.repeats
    )
    hits = raycast(mesh.vertices, mesh.faces, k, args.size, args.size, cam, backend="warp").mask.sum()
    print(
        json.dumps(
            {
                "case": "warp_large",
                "faces": len(mesh.faces),
                "size": args.size,
                "hit_pixels": int(hits),
                "median_s": round(med, 3),
                "runs_s": [round(t, 3) for t in runs],
            }
        )
    )

    small = test_mesh(0)
    if len(small.faces) > args.small_faces:
        small = small.simplify_quadric_decimation(face_count=args.small_faces)
    ks = intrinsics_from_fov(45.0, args.small_size, args.small_size)
    n = args.small_size
    warp_med, _ = median_time(lambda: raycast(small.vertices, small.faces, ks, n, n, cam, backend="warp"), args.repeats)
    numpy_med, _ = median_time(lambda: raycast(small.vertices, small.faces, ks, n, n, cam, backend="numpy"), 1)
    print(
        json.dumps(
            {
                "case": "warp_vs_numpy_small",
                "faces": len(small.faces),
                "size": n,
                "warp_median_s": round(warp_med, 4),
                "numpy_s": round(numpy_med, 3),
                "numpy_over_warp": round(numpy_med / warp_med, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
