"""Loading the official Direct3D-S2 checkpoints: local folder or hub id, strict, fp32 / fp16 / bf16.

File layout (local folder or hub ``wushuang98/Direct3D-S2`` subfolder ``direct3d-s2-v-1-1`` / ``-1-0``):
``config.yaml`` plus ``model_dense.ckpt`` {vae, dit}, ``model_sparse_512.ckpt`` / ``model_sparse_1024.ckpt``
{vae, dit}, ``model_refiner.ckpt`` / ``model_refiner_1024.ckpt`` {refiner}; each read with
``torch.load(weights_only=True)``.

Models are built on the meta device (no random init of ~750 M parameters), then the checkpoint tensors, cast
to the dtypes the model declares (as the official ``load_state_dict`` does, copying into the converted
tensors), are assigned with ``strict=True``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from ...errors import InputError, WeightsNotFoundError
from . import targets
from .attention import convert_module_dtype

HUB_ID = "wushuang98/Direct3D-S2"
SUBFOLDERS = {"v1.1": "direct3d-s2-v-1-1", "v1.0": "direct3d-s2-v-1-0"}
DEFAULT_SUBFOLDER = SUBFOLDERS["v1.1"]
CONFIG_FILE = "config.yaml"

_DTYPES = {
    "fp32": torch.float32,
    "float32": torch.float32,
    "fp16": torch.float16,
    "float16": torch.float16,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
}


def parse_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    """'fp32' / 'fp16' / 'bf16' (or a torch dtype, or None = as the config says) → torch dtype."""
    if dtype is None or isinstance(dtype, torch.dtype):
        if dtype not in (None, torch.float32, torch.float16, torch.bfloat16):
            raise InputError(f"unsupported dtype {dtype}; use fp32, fp16 or bf16")
        return dtype
    try:
        return _DTYPES[str(dtype).lower()]
    except KeyError:
        raise InputError(f"unsupported dtype {dtype!r}; use fp32, fp16 or bf16") from None


def resolve_files(
    source: str | os.PathLike,
    filenames: Iterable[str],
    subfolder: str = DEFAULT_SUBFOLDER,
    cache_dir: str | os.PathLike | None = None,
    revision: str | None = None,
    local_files_only: bool = False,
) -> dict[str, Path]:
    """Local paths of ``filenames`` from a local folder or a hub repo id (downloaded/cached by huggingface_hub).

    A local folder is used as is (the files directly inside it, or inside ``<folder>/<subfolder>``).
    """
    names = list(filenames)
    path = Path(source)
    if path.is_dir():
        base = path / subfolder if subfolder and (path / subfolder).is_dir() else path
        out = {n: base / n for n in names}
        missing = [str(p) for p in out.values() if not p.is_file()]
        if missing:
            raise WeightsNotFoundError(f"Direct3D-S2 weights not found: {', '.join(missing)}")
        return out
    source = str(source)
    # anything that is not "owner/name" is meant as a local folder
    if source.startswith((".", "/", "~")) or source.count("/") != 1 or path.exists():
        raise WeightsNotFoundError(f"Direct3D-S2 weights folder not found: {source}")
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError, HFValidationError, LocalEntryNotFoundError

    out = {}
    for name in names:
        try:
            out[name] = Path(
                hf_hub_download(
                    repo_id=source,
                    filename=name,
                    subfolder=subfolder or None,
                    repo_type="model",
                    revision=revision,
                    cache_dir=cache_dir,
                    local_files_only=local_files_only,
                )
            )
        except (LocalEntryNotFoundError, HfHubHTTPError, HFValidationError, OSError) as e:
            where = f"{source}/{subfolder}/{name}" if subfolder else f"{source}/{name}"
            raise WeightsNotFoundError(
                f"Direct3D-S2 weights not found on the hub or in the cache: {where} ({type(e).__name__})"
            ) from e
    return out


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """``torch.load(weights_only=True)`` on CPU, memory-mapped when the file format allows it."""
    p = Path(path)
    if not p.is_file():
        raise WeightsNotFoundError(f"checkpoint not found: {p}")
    try:
        try:
            obj = torch.load(p, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:
            # legacy (non-zip) files cannot be memory-mapped; read them whole
            if "mmap" not in str(e):
                raise
            obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:
        raise InputError(f"cannot read checkpoint {p}: {type(e).__name__}: {str(e).splitlines()[0][:200]}") from e
    if not isinstance(obj, dict):
        raise InputError(f"checkpoint {p} is not a dict of state dicts")
    return obj


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


def load_state_strict(model: nn.Module, state: Mapping[str, torch.Tensor], name: str = "model") -> nn.Module:
    """Assign ``state`` into ``model`` (possibly on meta) with strict key/shape checks; dtypes follow the model."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        raise InputError(
            f"{name}: checkpoint does not match the model: {len(missing)} missing keys {missing[:3]}, "
            f"{len(unexpected)} unexpected keys {unexpected[:3]}"
        )
    cast = {}
    for k, ref in expected.items():
        t = state[k]
        if not isinstance(t, torch.Tensor):
            raise InputError(f"{name}: checkpoint entry {k} is not a tensor")
        if t.shape != ref.shape:
            raise InputError(
                f"{name}: {k} has shape {tuple(t.shape)} in the checkpoint, model expects {tuple(ref.shape)}"
            )
        cast[k] = t.to(ref.dtype)
    model.load_state_dict(cast, strict=True, assign=True)
    leftover = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if leftover:
        raise RuntimeError(f"{name}: tensors not covered by the checkpoint stayed on meta: {leftover[:5]}")
    return model.eval()


def load_parts(
    source: str | os.PathLike = HUB_ID,
    parts: Iterable[str] = ("dense_vae", "dense_dit"),
    subfolder: str = DEFAULT_SUBFOLDER,
    dtype: str | torch.dtype | None = None,
    device: str | torch.device = "cpu",
    cache_dir: str | os.PathLike | None = None,
    local_files_only: bool = False,
    config: Mapping[str, Any] | None = None,
) -> dict[str, nn.Module]:
    """Load model parts (config keys, e.g. ``dense_vae``, ``sparse_dit_512``) from a folder or hub id."""
    parts = list(parts)
    unknown = [p for p in parts if p not in targets.PARTS]
    if unknown:
        raise InputError(f"unknown Direct3D-S2 parts {unknown}; known: {sorted(targets.PARTS)}")
    torch_dtype = parse_dtype(dtype)
    ckpt_names = sorted({targets.PARTS[p][0] for p in parts})
    files = resolve_files(
        source,
        ([] if config is not None else [CONFIG_FILE]) + ckpt_names,
        subfolder=subfolder,
        cache_dir=cache_dir,
        local_files_only=local_files_only,
    )
    cfg = dict(config) if config is not None else targets.load_config(files[CONFIG_FILE])
    out: dict[str, nn.Module] = {}
    for ckpt_name in ckpt_names:
        ckpt = load_checkpoint(files[ckpt_name])
        for part in parts:
            file_name, key = targets.PARTS[part]
            if file_name != ckpt_name:
                continue
            if part not in cfg:
                raise InputError(f"config has no entry {part!r}")
            if key not in ckpt:
                raise InputError(f"{files[ckpt_name]} has no {key!r} state dict (has {sorted(ckpt)})")
            model = build_part(cfg[part], torch_dtype)
            load_state_strict(model, ckpt[key], name=f"{part} ({ckpt_name})")
            out[part] = model.to(device)
        del ckpt
    return out
