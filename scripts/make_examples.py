"""Make the bundled demo examples: RGB-D renders of evaluation meshes (never used in training).

    python scripts/make_examples.py [--meshes ../shared/data/meshes] [--size 160]

Writes ``src/consistent3dgen/examples/<name>_{rgba,depth}.png`` and ``<name>_intrinsics.txt``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from consistent3dgen.views import load_normalized_mesh, orbit_camera, render_rgbd

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = {"spot": (35.0, 20.0), "stanford-bunny": (-30.0, 15.0), "teapot": (25.0, 25.0)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--meshes", default=str(REPO.parent / "shared" / "data" / "meshes"))
    ap.add_argument("--size", type=int, default=160)
    ap.add_argument("--out", default=str(REPO / "src" / "consistent3dgen" / "examples"))
    args = ap.parse_args()
    for name, (az, el) in EXAMPLES.items():
        v, f = load_normalized_mesh(Path(args.meshes) / f"{name}.obj")
        view = render_rgbd(v, f, orbit_camera(az, el, 2.5), size=args.size)
        paths = view.save(args.out, name)
        print(name, {k: str(p) for k, p in paths.items()})


if __name__ == "__main__":
    main()
