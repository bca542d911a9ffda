"""Write random weights in a model's official folder layout, to try the pipeline offline (no model hub).

    python scripts/random_weights.py direct3d-s2 OUT [--size tiny|full] [--version v1.0|v1.1] [--seed N]
    python scripts/random_weights.py vggt OUT [--size tiny|full] [--seed N]

direct3d-s2: ``OUT/config.yaml`` + the six ``.ckpt`` files of the official ``from_pretrained`` and a DINOv2 folder
``OUT/dinov2`` (transformers layout), see ``consistent3dgen.generators.direct3d_s2.random_weights``.
vggt: ``OUT/model.safetensors`` + ``OUT/config.json``. The last line printed is the ``generate`` flags that use
them, e.g. ``consistent3dgen generate pm.npz --out x.glb $(python scripts/random_weights.py direct3d-s2 w | tail -1)``.
``--size tiny`` runs in seconds on a CPU; ``full`` is the real architecture (several GB; slow to write).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

MODELS = ("direct3d-s2", "vggt")
# a small VGGT with the official key names (patch 14 at 518 pixels like VGGT-1B)
TINY_VGGT = {"embed_dim": 32, "depth": 2, "num_heads": 2, "dino_depth": 1, "dino_heads": 2, "head_features": 16,
             "head_out_channels": [8, 16, 32, 32], "intermediate_layer_idx": [0, 1, 0, 1], "camera_trunk_depth": 1,
             "camera_num_heads": 2, "track_features": 16, "track_hidden": 32}


def write_vggt(out: Path, size: str, seed: int) -> Path:
    """A random VGGT (track head included, as the release) as ``model.safetensors`` + ``config.json``."""
    from safetensors.torch import save_file

    from consistent3dgen.reconstruct.vggt import VGGTConfig
    from consistent3dgen.reconstruct.vggt.pretrained import random_vggt

    config = VGGTConfig.from_dict(TINY_VGGT) if size == "tiny" else VGGTConfig()
    model = random_vggt(config, seed=seed, enable_track=True)
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out / "model.safetensors"))
    (out / "config.json").write_text(json.dumps(config.to_dict(), indent=1))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", choices=MODELS)
    ap.add_argument("out", type=Path, help="output folder")
    ap.add_argument("--size", choices=("tiny", "full"), default="tiny")
    ap.add_argument("--version", choices=("v1.0", "v1.1"), default="v1.1", help="Direct3D-S2 release")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.model == "vggt":
        out = write_vggt(args.out, args.size, args.seed)
        print(f"wrote a random {args.size} VGGT to {out}")
        print(f"--vggt-weights {out}")
        return 0
    from transformers.utils import logging as tlog

    from consistent3dgen.generators.direct3d_s2.random_weights import DINO_FOLDER, write_direct3d_s2

    tlog.disable_progress_bar()
    out = write_direct3d_s2(args.out, args.size, args.version, seed=args.seed)
    print(f"wrote a random {args.size} Direct3D-S2 {args.version} to {out} (DINOv2 in {out / DINO_FOLDER})")
    print(f"--generator {out} --dinov2-weights {out / DINO_FOLDER}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
