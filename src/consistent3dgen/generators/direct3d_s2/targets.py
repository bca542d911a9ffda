"""Official config ``target`` strings → our model classes, and building a model from a config entry.

The official configs (``config.yaml`` beside the checkpoints) name classes by import path, e.g.
``direct3d_s2.models.transformers.dense_dit.DenseDiT``. Each entry here maps such a target to
``"<module under consistent3dgen.generators.direct3d_s2>:<ClassName>"``, imported lazily so that a part whose
module is not written yet simply resolves to ``None`` (callers skip it or raise a clear error).
Our classes take the official ``params`` as keyword arguments and, like the official ones, convert their
linear/conv parameters to float16 in ``__init__`` when ``use_fp16`` is true.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from ...errors import InputError

_PACKAGE = "consistent3dgen.generators.direct3d_s2"

# Official target → "module:Class" (module relative to this package). Other modules may add entries with
# ``register_target``; the ComfyUI fork's ``*_legacy`` names point to the same classes.
TARGETS: dict[str, str] = {
    "direct3d_s2.models.autoencoders.dense_vae.DenseShapeVAE": "dense_vae:DenseShapeVAE",
    "direct3d_s2.models.transformers.dense_dit.DenseDiT": "dense_dit:DenseDiT",
    "direct3d_s2.models.autoencoders.ss_vae.SparseSDFVAE": "sparse_vae:SparseSDFVAE",
    "direct3d_s2.models.autoencoders.ss_vae_legacy.SparseSDFVAE": "sparse_vae:SparseSDFVAE",
    "direct3d_s2.models.transformers.sparse_dit.SparseDiT": "sparse_dit:SparseDiT",
    "direct3d_s2.models.refiner.unet_refiner.Voxel_RefinerXL": "refiner:Voxel_RefinerXL",
    "direct3d_s2.models.refiner.unet_refiner.Voxel_RefinerXL_sign": "refiner:Voxel_RefinerXL_sign",
    "direct3d_s2.models.refiner.unet_refiner_legacy.Voxel_RefinerXL": "refiner:Voxel_RefinerXL",
    "direct3d_s2.models.refiner.unet_refiner_legacy.Voxel_RefinerXL_sign": "refiner:Voxel_RefinerXL_sign",
    "direct3d_s2.models.conditioner.DinoEncoder": "conditioner:DinoConditioner",
}

# Config keys of the model parts, the checkpoint file holding each and the dict key inside that file.
PARTS: dict[str, tuple[str, str]] = {
    "dense_vae": ("model_dense.ckpt", "vae"),
    "dense_dit": ("model_dense.ckpt", "dit"),
    "sparse_vae_512": ("model_sparse_512.ckpt", "vae"),
    "sparse_dit_512": ("model_sparse_512.ckpt", "dit"),
    "sparse_vae_1024": ("model_sparse_1024.ckpt", "vae"),
    "sparse_dit_1024": ("model_sparse_1024.ckpt", "dit"),
    "refiner": ("model_refiner.ckpt", "refiner"),
    "refiner_1024": ("model_refiner_1024.ckpt", "refiner"),
}


def register_target(target: str, spec: str) -> None:
    """Map an official ``target`` to ``"module:Class"`` (module relative to the direct3d_s2 package)."""
    if ":" not in spec:
        raise ValueError(f"spec must look like 'module:Class', got {spec!r}")
    TARGETS[target] = spec


def resolve(target: str) -> type[nn.Module] | None:
    """Our class for an official target, or None when its module/class does not exist (yet)."""
    spec = TARGETS.get(target)
    if spec is None:
        return None
    module_name, class_name = spec.split(":")
    try:
        module = importlib.import_module(f"{_PACKAGE}.{module_name}")
    except ModuleNotFoundError as e:
        # only a missing *module of ours* means "not written yet"; a missing dependency is a real error
        if e.name != f"{_PACKAGE}.{module_name}":
            raise
        return None
    return getattr(module, class_name, None)


def load_config(path: str | Path) -> dict[str, Any]:
    """Read an official ``config.yaml`` into plain dicts."""
    try:
        import yaml
    except ImportError as e:  # pragma: no cover - PyYAML comes with huggingface_hub
        raise ImportError("reading Direct3D-S2 configs needs PyYAML (pip install pyyaml)") from e
    p = Path(path)
    if not p.is_file():
        raise InputError(f"Direct3D-S2 config not found: {p}")
    with open(p, encoding="utf-8") as f:
        cfg = yaml.safe_load(f)
    if not isinstance(cfg, dict):
        raise InputError(f"Direct3D-S2 config {p} is not a mapping")
    return cfg


def build(entry: Mapping[str, Any], device: torch.device | str | None = None, **overrides: Any) -> nn.Module:
    """Instantiate ``entry = {'target': ..., 'params': {...}}`` with our class (e.g. on the meta device)."""
    target = entry.get("target")
    if not isinstance(target, str):
        raise InputError(f"config entry has no target: {dict(entry)}")
    cls = resolve(target.strip())
    if cls is None:
        raise InputError(f"config target {target!r}: no implementation registered (known: "
                         f"{', '.join(sorted(t for t in TARGETS if resolve(t) is not None))})")
    params = dict(entry.get("params") or {})
    params.update(overrides)
    try:  # a config file is user input: parameters the class does not take are named, not a traceback
        inspect.signature(cls).bind(**params)
    except TypeError as e:
        raise InputError(f"config target {target!r}: {e}") from None
    try:
        with torch.device(device) if device is not None else contextlib.nullcontext():
            return cls(**params)
    except NotImplementedError as e:  # a mode the class does not implement (e.g. an attention variant)
        raise InputError(f"config target {target!r}: {e}") from None
