"""Seen-side accuracy of the two fusion modes (``fusion_at`` shell | surface) on the bundled examples.

    python scripts/measure_fusion_at.py [--seed 0]

Prints, per example and mode, the input-view depth error (mean / p90, fraction of the object's size and, for the
mean, in voxels of the last sparse stage) and the silhouette IoU, with the bundled mini prior (README, *The seen
side exact*).
"""

from __future__ import annotations

import argparse

from consistent3dgen.demo import list_examples, load_example
from consistent3dgen.pipeline import Pipeline


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--generator", default="mini")
    args = ap.parse_args()
    pipe = Pipeline.from_pretrained(args.generator)
    for name in list_examples():
        pm = load_example(name)
        for mode in ("shell", "surface"):
            res = pipe(pm, progress=False, seed=args.seed, fusion_at=mode)
            m = res.metrics()
            voxel = 2.0 / pipe.generator.sparse[-1].resolution / res.frame.scale  # camera units
            print(f"{name:16s} {mode:8s} depth error mean {100 * m['depth_error_mean']:.2f} % "
                  f"({m['depth_error_mean'] * m['object_size'] / voxel:.2f} voxels) p90 "
                  f"{100 * m['depth_error_p90']:.2f} %  silhouette IoU {m['silhouette_iou']:.3f}", flush=True)


if __name__ == "__main__":
    main()
