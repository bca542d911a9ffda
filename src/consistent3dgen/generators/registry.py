"""Name → generator: the bundled mini prior, a mini-prior folder, or Direct3D-S2 (folder or hub id).

``load_generator("mini")`` needs no download: the weights ship inside the package (``generators/mini/``).
Direct3D-S2 is ``load_generator("direct3d-s2")`` (hub id ``wushuang98/Direct3D-S2``, v1.1), or a local folder
holding its ``config.yaml`` and ``.ckpt`` files. To add a generator: write a loader returning a
:class:`~consistent3dgen.generators.base.Generator` and add its names here.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from .base import Generator

D3D_SUBFOLDERS = {"direct3d-s2": "direct3d-s2-v-1-1", "direct3d-s2-v1.1": "direct3d-s2-v-1-1",
                  "direct3d-s2-v1.0": "direct3d-s2-v-1-0"}


def load_generator(name: str | os.PathLike = "mini", device: str | torch.device = "cpu",
                   dtype: str | torch.dtype | None = None, **kwargs: Any) -> Generator:
    """``mini`` (bundled), a mini-prior folder (``pipeline.json`` + components), ``direct3d-s2[-v1.0|-v1.1]``,
    the hub id ``wushuang98/Direct3D-S2``, or a local Direct3D-S2 folder (config.yaml + *.ckpt).

    ``device``: ``auto`` (CUDA, else MPS, else CPU), ``cpu``, ``cuda[:N]``, ``mps``
    (:func:`consistent3dgen.devices.resolve_device`). ``dtype`` (fp32/fp16/bf16, None = the checkpoint's layout)
    is the Direct3D-S2 weights' layout; the mini prior keeps float32 weights (the pipeline autocasts it instead).
    """
    from ..devices import resolve_device
    from .mini import BUNDLED_DIR, load_mini_prior

    device = resolve_device(device)
    key = str(name)
    if key == "mini":
        return load_mini_prior(BUNDLED_DIR, device=device)
    path = Path(key).expanduser()
    if path.is_dir() and ((path / "pipeline.json").is_file() or (path / "config.json").is_file()):
        return load_mini_prior(path, device=device)  # (a v1 folder with config.json gets a re-export hint)
    from .direct3d_s2.adapters import load_direct3d_s2

    if key.lower() in D3D_SUBFOLDERS:
        return load_direct3d_s2(None, subfolder=D3D_SUBFOLDERS[key.lower()], dtype=dtype, device=device, **kwargs)
    return load_direct3d_s2(key, dtype=dtype, device=device, **kwargs)
