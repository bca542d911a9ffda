"""Loading the official Direct3D-S2 checkpoints: local folder or hub id, strict, fp32 / fp16 / bf16.

File layout (local folder or hub ``wushuang98/Direct3D-S2`` subfolder ``direct3d-s2-v-1-1`` / ``-1-0``):
``config.yaml`` plus ``model_dense.ckpt`` {vae, dit}, ``model_sparse_512.ckpt`` / ``model_sparse_1024.ckpt``
{vae, dit}, ``model_refiner.ckpt`` / ``model_refiner_1024.ckpt`` {refiner} (official ``from_pretrained``
reads all six; here the two refiner files are optional).

Only what is Direct3D-S2's lives here (hub id, subfolders, which part is in which file, building a part in the
chosen dtype layout); finding, reading (``torch.load`` with ``weights_only=True``) and the strict assignment are
:mod:`consistent3dgen.io.weights`. Models are built on the meta device (no random init of ~750 M parameters),
then the checkpoint tensors, cast to the dtypes the model declares (as the official ``load_state_dict`` does),
are assigned with strict key and shape checks.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from ...errors import InputError
from ...io.weights import load_into, parse_dtype, read_state_dict, resolve_source
from . import targets
from .attention import convert_module_dtype

HUB_ID = "wushuang98/Direct3D-S2"
SUBFOLDERS = {"v1.1": "direct3d-s2-v-1-1", "v1.0": "direct3d-s2-v-1-0"}
DEFAULT_SUBFOLDER = SUBFOLDERS["v1.1"]
CONFIG_FILE = "config.yaml"
WHAT = "Direct3D-S2 weights"
# How to give a local copy instead of the hub id (the CLI option, and the Python call).
HINT = "--generator DIR, the folder holding config.yaml and the .ckpt files; in Python load_generator(DIR)"


def build_part(entry: Mapping[str, Any], dtype: torch.dtype | None = None, device: str = "meta") -> nn.Module:
    """Build a part from its config entry; ``dtype`` overrides the config's ``use_fp16``.

    fp16 = the official mixed layout (``use_fp16: true``); fp32 = everything float32; bf16 = the official
    layout with bfloat16 in place of float16.
    """
    overrides: dict[str, Any] = {}
    if dtype is not None:
        overrides["use_fp16"] = dtype == torch.float16
    model = targets.build(entry, device=device, **overrides)
    if dtype == torch.bfloat16:
        if hasattr(model, "convert_to"):
            model.convert_to(dtype)
        else:
            convert_module_dtype(model, dtype)
            if hasattr(model, "dtype"):
                model.dtype = dtype
    return model


def _check_parts(parts: Iterable[str]) -> list[str]:
    parts = list(parts)
    unknown = [p for p in parts if p not in targets.PARTS]
    if unknown:
        raise InputError(f"unknown Direct3D-S2 parts {unknown}; known: {sorted(targets.PARTS)}")
    return parts


def resolve_files(
    source: str | os.PathLike = HUB_ID,
    parts: Iterable[str] = ("dense_vae", "dense_dit"),
    subfolder: str = DEFAULT_SUBFOLDER,
    cache_dir: str | os.PathLike | None = None,
    local_files_only: bool | None = None,
    with_config: bool = True,
    revision: str | None = None,
    optional_parts: Iterable[str] = (),
) -> dict[str, Path]:
    """Local paths of ``config.yaml`` (when ``with_config``) and the checkpoints holding ``parts``, from a folder
    or the hub (cache only when offline: one line naming what is missing, without reading anything); the files of
    ``optional_parts`` (e.g. the refiners) are in the result when they are found."""
    ckpt_names = sorted({targets.PARTS[p][0] for p in _check_parts(parts)})
    extra = sorted({targets.PARTS[p][0] for p in _check_parts(optional_parts)} - set(ckpt_names))
    return resolve_source(
        source,
        ([CONFIG_FILE] if with_config else []) + ckpt_names,
        optional=extra,
        subfolder=subfolder,
        cache_dir=cache_dir,
        revision=revision,
        local_files_only=local_files_only,
        what=WHAT,
        hint=HINT,
    )


def load_parts(
    source: str | os.PathLike = HUB_ID,
    parts: Iterable[str] = ("dense_vae", "dense_dit"),
    subfolder: str = DEFAULT_SUBFOLDER,
    dtype: str | torch.dtype | None = None,
    device: str | torch.device = "cpu",
    cache_dir: str | os.PathLike | None = None,
    local_files_only: bool | None = None,
    config: Mapping[str, Any] | None = None,
    revision: str | None = None,
    files: Mapping[str, Path] | None = None,
) -> dict[str, nn.Module]:
    """Load model parts (config keys, e.g. ``dense_vae``, ``sparse_dit_512``) from a folder or hub id.

    ``local_files_only=None``: the hub cache only when ``HF_HUB_OFFLINE`` is set or the hub is not reachable
    (see ``io.weights``). ``files``: what :func:`resolve_files` returned for these parts (then ``source``,
    ``subfolder``, ``cache_dir``, ``local_files_only`` and ``revision`` are not used).
    """
    parts = _check_parts(parts)
    torch_dtype = parse_dtype(dtype)
    ckpt_names = sorted({targets.PARTS[p][0] for p in parts})
    if files is None:
        files = resolve_files(source, parts, subfolder, cache_dir, local_files_only, config is None, revision)
    cfg = dict(config) if config is not None else targets.load_config(files[CONFIG_FILE])
    out: dict[str, nn.Module] = {}
    for ckpt_name in ckpt_names:
        ckpt = read_state_dict(files[ckpt_name])
        for part in parts:
            file_name, key = targets.PARTS[part]
            if file_name != ckpt_name:
                continue
            if part not in cfg:
                raise InputError(f"config has no entry {part!r}")
            if key not in ckpt:
                raise InputError(f"{files[ckpt_name]} has no {key!r} state dict (has {sorted(ckpt)})")
            if not isinstance(ckpt[key], Mapping):
                raise InputError(f"{files[ckpt_name]}: {key!r} is not a state dict")
            model = build_part(cfg[part], torch_dtype)
            out[part] = load_into(model, ckpt[key], device=device, name=f"{part} ({files[ckpt_name]})")
        del ckpt
    return out
