"""Name → generator: the bundled mini prior, a trained mini-prior folder, or Direct3D-S2 (folder or hub id).

``load_generator("mini")`` needs no download: the weights ship inside the package (``generators/mini/``).
Direct3D-S2 is ``load_generator("direct3d-s2")`` (hub id ``wushuang98/Direct3D-S2``, v1.1), or a local folder
holding its ``config.yaml`` and ``.ckpt`` files.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from ..errors import WeightsNotFoundError
from .base import Generator

MINI_DIR = Path(__file__).resolve().parent / "mini"
D3D_NAMES = {"direct3d-s2": "direct3d-s2-v-1-1", "direct3d-s2-v1.1": "direct3d-s2-v-1-1",
             "direct3d-s2-v1.0": "direct3d-s2-v-1-0"}
MINI_FORMAT = "consistent3dgen-mini-prior"


def load_generator(name: str | os.PathLike = "mini", device: str | torch.device = "cpu",
                   dtype: str | torch.dtype | None = None, **kwargs: Any) -> Generator:
    """``mini`` (bundled), a mini-prior folder (config.json + weights.safetensors), ``direct3d-s2[-v1.0|-v1.1]``,
    the hub id ``wushuang98/Direct3D-S2``, or a local Direct3D-S2 folder (config.yaml + *.ckpt)."""
    key = str(name)
    if key == "mini":
        return load_mini_prior(MINI_DIR, device=device)
    path = Path(key).expanduser()
    if path.is_dir() and (path / "config.json").is_file():
        return load_mini_prior(path, device=device)
    from .direct3d_s2.adapters import load_direct3d_s2 as load_d3d

    if key.lower() in D3D_NAMES:
        return load_d3d(None, subfolder=D3D_NAMES[key.lower()], dtype=dtype, device=device, **kwargs)
    return load_d3d(key, dtype=dtype, device=device, **kwargs)


def load_mini_prior(folder: str | os.PathLike, device: str | torch.device = "cpu") -> Generator:
    """A mini prior written by ``consistent3dgen train``: same classes as Direct3D-S2 at a tiny config."""
    from ..train.main import load_mini_models
    from .direct3d_s2.adapters import Direct3DS2DenseStage, Direct3DS2SparseStage

    folder = Path(folder)
    if not (folder / "weights.safetensors").is_file() and folder == MINI_DIR:
        raise WeightsNotFoundError(f"bundled mini prior weights not found: {folder / 'weights.safetensors'} "
                                   "(run `consistent3dgen train --out DIR --export DIR` to make them)")
    cfg, models = load_mini_models(folder)
    models = {k: m.to(device) for k, m in models.items()}
    dense = Direct3DS2DenseStage(models["dense_vae"], models["dense_dit"])
    sparse = Direct3DS2SparseStage(models["sparse_vae"], models["sparse_dit"])
    cond_channels = int(cfg.dense_dit["params"]["cond_channels"])
    null = torch.zeros(1, int(cfg.null_cond_tokens), cond_channels, device=device)
    return Generator(dense=dense, sparse=[sparse], conditioner=None, name=f"mini prior ({folder.name})",
                     null_condition=null,
                     sampler_defaults={"dense": dict(cfg.dense_sampler), "sparse": [dict(cfg.sparse_sampler)]},
                     field_convention=cfg.field_convention())
