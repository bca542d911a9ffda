"""Where the unseen side is lost: unseen F@0.02 of a prior's first sparse stage with more and more of it replaced by
the truth, on the evaluation meshes (one RGB-D view each, as ``consistent3dgen eval --size 128`` renders them).

Rungs, each scored as ``eval`` scores a run (``evaluate.score_runs``), in the input camera's frame:

1. ``reference band``: the reference's own signed band at the stage's resolution, as the prior's training data
   stores it (``train.data.build_sample``), marched as stored (absent cells read as outside);
2. ``+ inside filled``: the same with ``geometry.interior.fill_enclosed_interior`` (what the cascade now does);
3. ``VAE round trip``: 2 through the stage's sparse VAE (encode the band, decode, fill);
4. ``guided, true tokens``: the pipeline (defaults, guidance) with the reference's latent cells ∪ the seen cells as
   the first sparse stage's tokens instead of the dense stage's, no growth: a perfect dense stage;
5. ``guided, dense-VAE tokens``: 4 with those cells passed through the dense VAE first (encode, decode, threshold)
   and the pipeline's token step (free cells), no growth: a perfect dense DiT;
6. ``..., grown``: 5 with the generator's token growth (``token_dilation``), which its own dense stage may need;
7. ``guided``: the pipeline as it is.

The gaps between rungs say which part costs the most. Needs a signed or thin-shell mini prior directory (or
``mini``) and ``../shared/data/meshes``.

    python scripts/unseen_ladder.py --generator DIR [--meshes spot teapot] [--seed 0] [--threads 2]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from consistent3dgen.cascade import occupancy_to_cells
from consistent3dgen.evaluate import make_case, score_runs
from consistent3dgen.geometry.frames import camera_to_canonical, canonical_to_camera
from consistent3dgen.geometry.interior import fill_enclosed_interior
from consistent3dgen.geometry.marching_cubes import sparse_marching_cubes
from consistent3dgen.geometry.voxels import SparseVoxels
from consistent3dgen.pipeline import Pipeline
from consistent3dgen.train.config import DataConfig
from consistent3dgen.train.data import build_sample
from consistent3dgen.train.training_meshes import mesh_sdf

MESHES = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "meshes"
RUNGS = ("reference band", "+ inside filled", "VAE round trip", "guided, true tokens", "guided, dense-VAE tokens",
         "guided, dense-VAE tokens, grown", "guided")


def ladder(pipe: Pipeline, mesh: Path, size: int, seed: int) -> dict[str, float]:
    case = make_case(mesh, size=size)
    opts = pipe.resolve_options(progress=False, seed=seed)
    stage = pipe.generator.sparse[0]
    seen = pipe.build_seen_side(pipe.prepare_views(case.inputs), opts)
    convention = "signed" if opts.seen_field == "signed" else "thin_shell"
    data = DataConfig(sparse_resolution=stage.resolution, latent_factor=stage.latent_factor, band_voxels=opts.band,
                      convention=convention, shell_voxels=opts.shell)
    sample = build_sample(mesh_sdf(camera_to_canonical(case.ref_vertices.astype(np.float64), seen.frame),
                                   case.ref_faces), data, mesh.stem)

    def score(vertices: np.ndarray, faces: np.ndarray, frame) -> float:  # noqa: ANN001
        camera = canonical_to_camera(vertices.astype(np.float64), frame).astype(np.float32)
        return score_runs(case, [(camera, faces)])["unseen_fscore"]

    def marched(sdf: SparseVoxels) -> float:
        return score(*sparse_marching_cubes(sdf, level=opts.mc_level), seen.frame)

    row = {RUNGS[0]: marched(sample.all_voxels()),
           RUNGS[1]: marched(fill_enclosed_interior(sample.all_voxels(), stage.latent_factor, opts.mc_level))}
    with torch.no_grad():
        trip = stage.decode_sdf(stage.encode_sdf(sample.band()))
    row[RUNGS[2]] = marched(fill_enclosed_interior(trip, stage.latent_factor, opts.mc_level))

    cells = SparseVoxels(sample.cells, sample.cell_resolution)
    own_tokens = pipe.first_tokens

    def true_tokens(dense, seen_side, o):  # noqa: ANN001, ANN202
        return cells.union(SparseVoxels(seen_side.seen_cells().coords, cells.resolution)).sorted()

    def dense_vae_tokens(dense, seen_side, o, grow: bool = False):  # noqa: ANN001, ANN202
        d = pipe.generator.dense
        occ = torch.as_tensor(sample.occupancy())[None, None]
        with torch.no_grad():
            prob = torch.sigmoid(d.decode_occupancy(d.encode_occupancy(occ.to(dtype=torch.float32))).float())[0, 0]
        return occupancy_to_cells(prob, o.occupancy_threshold, cells.resolution, seen_side.seen_cells(),
                                  seen_side.free_cells(), dilation=o.token_dilation if grow else 0)

    def grown_dense_vae_tokens(dense, seen_side, o):  # noqa: ANN001, ANN202
        return dense_vae_tokens(dense, seen_side, o, grow=True)

    for rung, tokens in zip(RUNGS[3:], (true_tokens, dense_vae_tokens, grown_dense_vae_tokens, own_tokens),
                            strict=True):
        pipe.first_tokens = tokens
        try:
            res = pipe(case.inputs, seed=seed, progress=False)
        finally:
            pipe.first_tokens = own_tokens
        row[rung] = score_runs(case, [res.arrays("camera")])["unseen_fscore"]
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--generator", default="mini")
    ap.add_argument("--meshes", nargs="+", default=["spot", "stanford-bunny", "teapot", "suzanne"])
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    pipe = Pipeline.from_pretrained(args.generator)
    rows = {name: ladder(pipe, MESHES / f"{name}.obj", args.size, args.seed) for name in args.meshes}
    print(f"unseen F@0.02, generator {args.generator}, seed {args.seed}, {args.size}² views\n")
    print("| rung | " + " | ".join(rows) + " | mean |")
    print("|---|" + "---|" * (len(rows) + 1))
    for rung in RUNGS:
        values = [rows[name][rung] for name in rows]
        print(f"| {rung} | " + " | ".join(f"{v:.3f}" for v in values) + f" | {np.mean(values):.3f} |")


if __name__ == "__main__":
    main()
