"""Find and load VGGT weights: a local file or folder, or a Hugging Face hub id (default ``facebook/VGGT-1B``).

The model is built on the ``meta`` device and every parameter is taken straight from the checkpoint: safetensors
through a private memory map (zero-copy when the dtype already matches), ``model.pt`` through
``torch.load(mmap=True, weights_only=True)``. Conversions to another dtype/device happen one tensor at a time, so
the weights are never held twice in memory.
"""

from __future__ import annotations

import json
import math
import mmap
import os
import struct
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from ...errors import InputError, WeightsNotFoundError
from .model import VGGT, VGGTConfig

DEFAULT_HUB_ID = "facebook/VGGT-1B"
# Preferred first: safetensors (no pickle), then the official torch checkpoint.
WEIGHT_FILES = ("model.safetensors", "model.pt")
DTYPES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
          "fp16": torch.float16, "float16": torch.float16}


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise InputError(f"unknown dtype {dtype!r}; use one of {sorted(DTYPES)}")
    return DTYPES[dtype]


def resolve_weights(source: str | os.PathLike | None = None) -> tuple[Path, dict]:
    """Local file / local folder / hub id → (weights file, config dict from a ``config.json`` beside it or {})."""
    source = DEFAULT_HUB_ID if source is None else source
    path = Path(source).expanduser()
    if path.is_file():
        return path, _read_config(path.parent / "config.json")
    if path.is_dir():
        for name in WEIGHT_FILES:
            if (path / name).is_file():
                return path / name, _read_config(path / "config.json")
        raise WeightsNotFoundError(f"no VGGT weights ({' or '.join(WEIGHT_FILES)}) in folder {path}")
    text = os.fspath(source)
    if text.count("/") != 1 or text.startswith((".", "/", "~")) or os.sep in text.replace("/", ""):
        raise WeightsNotFoundError(f"VGGT weights not found: {text} is neither a file, a folder nor a hub id")
    # "owner/name" that is not a local path: a hub id (the error below names both readings).
    return _from_hub(text)


def _read_config(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise InputError(f"cannot read model config {path}: {e}") from None


def _from_hub(repo_id: str) -> tuple[Path, dict]:
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:  # pragma: no cover - a declared dependency
        raise WeightsNotFoundError(f"huggingface_hub is not installed; cannot fetch {repo_id}") from None
    errors = []
    for name in WEIGHT_FILES:
        try:
            weights = Path(hf_hub_download(repo_id, name))
        except Exception as e:  # offline, missing file, gated repo, no network: try the next name
            errors.append(f"{name}: {type(e).__name__}")
            continue
        config: dict = {}
        try:
            config = _read_config(Path(hf_hub_download(repo_id, "config.json")))
        except Exception:  # config.json is optional; the default architecture is VGGT-1B
            pass
        return weights, config
    raise WeightsNotFoundError(
        f"VGGT weights not found: {repo_id} is no local path and the hub id could not be fetched "
        f"(tried {', '.join(errors)}); download them or pass a local folder with {' or '.join(WEIGHT_FILES)}")


SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
                      "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
                      "BOOL": torch.bool}


def _safetensors_mmap(path: Path) -> tuple[list[str], Callable[[str], torch.Tensor], Callable[[str], None]]:
    """Zero-copy view of a safetensors file: tensors share a private (copy-on-write) memory map of the file,
    so a float32 checkpoint loaded as float32 occupies only page cache, never a second anonymous copy."""
    try:
        with open(path, "rb") as f:
            header_len = struct.unpack("<Q", f.read(8))[0]
            if header_len > 100_000_000:
                raise ValueError("header too large")
            header = json.loads(f.read(header_len))
            mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
    except (OSError, ValueError, struct.error) as e:
        raise InputError(f"cannot read safetensors checkpoint {path}: {e}") from None
    header.pop("__metadata__", None)
    base = 8 + header_len

    def get(key: str) -> torch.Tensor:
        info = header[key]
        dtype = SAFETENSORS_DTYPES.get(info["dtype"])
        if dtype is None:
            raise InputError(f"checkpoint {path}: {key} has unsupported dtype {info['dtype']}")
        start, end = info["data_offsets"]
        count = (end - start) // dtype.itemsize
        if count != math.prod(info["shape"]) or base + end > len(mapped):
            raise InputError(f"checkpoint {path} is corrupt: {key} does not match its byte range")
        if count == 0:
            return torch.empty(info["shape"], dtype=dtype)
        if (base + start) % dtype.itemsize:
            # Misaligned (mixed dtypes in one file): copy this tensor instead of viewing it.
            raw = bytearray(mapped[base + start:base + end])
            return torch.frombuffer(raw, dtype=dtype).view(info["shape"]).clone()
        with warnings.catch_warnings():  # the mapping is writable (copy-on-write); silence the generic warning
            warnings.simplefilter("ignore")
            flat = torch.frombuffer(mapped, dtype=dtype, count=count, offset=base + start)
        return flat.view(info["shape"])

    def release(key: str) -> None:
        """Drop the mapped pages of a tensor that was copied (dtype/device change), so converting a checkpoint does
        not keep the source pages resident next to the converted copy."""
        if not hasattr(mapped, "madvise") or not hasattr(mmap, "MADV_DONTNEED"):
            return
        start, end = header[key]["data_offsets"]
        page = mmap.PAGESIZE
        lo = -(-(base + start) // page) * page  # whole pages inside this tensor only
        hi = (base + end) // page * page
        if hi > lo:
            mapped.madvise(mmap.MADV_DONTNEED, lo, hi - lo)

    return list(header.keys()), get, release


@contextmanager
def _open_checkpoint(
    path: Path,
) -> Iterator[tuple[list[str], Callable[[str], torch.Tensor], Callable[[str], None]]]:
    """Yield (keys, get(key) -> tensor, release(key)) without reading the whole file into memory."""
    if path.suffix == ".safetensors":
        # The map stays open as long as tensors reference it (they hold the buffer), so it is not closed here.
        yield _safetensors_mmap(path)
        return
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:
        # Old (non-zip) serialisation cannot be memory-mapped.
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise InputError(f"cannot read checkpoint {path}: {e}") from None
    if isinstance(sd, dict) and "model" in sd and isinstance(sd["model"], dict):
        sd = sd["model"]
    if not isinstance(sd, dict):
        raise InputError(f"checkpoint {path} does not hold a state dict")
    yield list(sd.keys()), sd.__getitem__, lambda key: None


def _set_tensor(model: nn.Module, key: str, value: torch.Tensor) -> None:
    *parents, name = key.split(".")
    module = model
    for p in parents:
        module = getattr(module, p)
    old = module._parameters.get(name)
    if old is None:
        raise KeyError(key)
    module._parameters[name] = nn.Parameter(value, requires_grad=False)


def load_vggt(source: str | os.PathLike | None = None, device: str | torch.device = "cpu",
              dtype: str | torch.dtype = "fp32", enable_track: bool = False) -> VGGT:
    """Build VGGT and fill it from ``source`` (file, folder or hub id). Returns the model in eval mode.

    With ``dtype`` bf16/fp16 only the aggregator (95 % of the compute and memory) is stored in that dtype; the
    heads stay float32, as the official inference runs them. Track-head weights in the checkpoint are skipped
    unless ``enable_track``.
    """
    path, config = resolve_weights(source)
    target = resolve_dtype(dtype)
    device = torch.device(device)
    with torch.device("meta"):
        model = VGGT(VGGTConfig.from_dict(config), enable_track=enable_track)
    expected = set(model.state_dict().keys())
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    with _open_checkpoint(path) as (keys, get, release):
        missing = sorted(expected - set(keys))
        if missing:
            raise InputError(f"checkpoint {path} is not a VGGT checkpoint: {len(missing)} keys missing, "
                             f"e.g. {missing[0]}")
        unexpected = [k for k in keys if k not in expected and not (not enable_track and k.startswith("track_head."))]
        if unexpected:
            raise InputError(f"checkpoint {path} has {len(unexpected)} unexpected keys, e.g. {unexpected[0]}")
        for key in keys:
            if key not in expected:
                continue
            t = get(key)
            if tuple(t.shape) != tuple(shapes[key]):
                raise InputError(f"checkpoint {path}: {key} has shape {tuple(t.shape)}, expected "
                                 f"{tuple(shapes[key])}")
            want = target if key.startswith("aggregator.") else torch.float32
            converted = t.to(device=device, dtype=want)
            _set_tensor(model, key, converted)
            if converted.data_ptr() != t.data_ptr():
                del t
                release(key)
    return model.eval()


def random_vggt(config: VGGTConfig | None = None, seed: int = 0, enable_track: bool = True) -> VGGT:
    """A VGGT with random (PyTorch default-initialised) weights, for tests and benchmarks."""
    torch.manual_seed(seed)
    return VGGT(config, enable_track=enable_track).eval()
