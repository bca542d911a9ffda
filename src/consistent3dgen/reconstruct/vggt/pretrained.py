"""VGGT weights: a local file or folder, or a Hugging Face hub id (default ``facebook/VGGT-1B``).

Only what is VGGT's lives here (the hub id, the file names, ``config.json``, which parts are in which dtype);
finding, reading and assigning the weights is :mod:`consistent3dgen.io.weights`. The model is built on the
``meta`` device and every parameter is taken straight from the checkpoint (``model.safetensors`` zero-copy from
a memory map when the dtype already matches, ``model.pt`` memory-mapped through ``torch.load`` with
``weights_only=True``); a dtype/device change is made one tensor at a time, so the weights are never held twice.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from ...errors import InputError
from ...io.weights import load_into, parse_dtype, read_state_dict, resolve_source
from .model import VGGT, VGGTConfig

DEFAULT_HUB_ID = "facebook/VGGT-1B"
# Preferred first: safetensors (no pickle), then the official torch checkpoint.
WEIGHT_FILES = ("model.safetensors", "model.pt")
CONFIG_FILE = "config.json"
WHAT = "VGGT weights"
# How to give a local copy instead of the hub id (the CLI option, and the Python call).
HINT = "--vggt-weights DIR or FILE; in Python load_vggt(DIR)"


def resolve_weights(source: str | os.PathLike | None = None) -> tuple[Path, dict]:
    """Local file / local folder / hub id → (weights file, config dict from a ``config.json`` beside it or {})."""
    files = resolve_source(DEFAULT_HUB_ID if source is None else source, [WEIGHT_FILES], optional=[CONFIG_FILE],
                           what=WHAT, hint=HINT)
    return files[WEIGHT_FILES], _read_config(files.get(CONFIG_FILE))


def _read_config(path: Path | None) -> dict:
    """``config.json`` is optional: without one the architecture is VGGT-1B's."""
    if path is None:
        return {}
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise InputError(f"cannot read model config {path}: {e}") from None


def load_vggt(source: str | os.PathLike | None = None, device: str | torch.device = "cpu",
              dtype: str | torch.dtype = "fp32", enable_track: bool = False) -> VGGT:
    """Build VGGT and fill it from ``source`` (file, folder or hub id). Returns the model in eval mode.

    With ``dtype`` bf16/fp16 only the aggregator (95 % of the compute and memory) is stored in that dtype; the
    heads stay float32, as the official inference runs them. Track-head weights in the checkpoint are skipped
    unless ``enable_track``.
    """
    path, config = resolve_weights(source)
    target = parse_dtype(dtype) or torch.float32
    with torch.device("meta"):
        model = VGGT(VGGTConfig.from_dict(config), enable_track=enable_track)
    model.aggregator.to(target)  # declared dtypes: load_into casts each tensor to them
    checkpoint: dict | Path = path
    if path.suffix.lower() != ".safetensors":
        sd = read_state_dict(path)
        # training checkpoints wrap the weights: {"model": state_dict, ...}
        checkpoint = sd["model"] if isinstance(sd.get("model"), dict) else sd
    load_into(model, checkpoint, device=device, ignore=() if enable_track else ("track_head.",),
              name=f"VGGT checkpoint {path}")
    return model.requires_grad_(False).eval()


def random_vggt(config: VGGTConfig | None = None, seed: int = 0, enable_track: bool = True) -> VGGT:
    """A VGGT with random (PyTorch default-initialised) weights, for tests and benchmarks."""
    torch.manual_seed(seed)
    return VGGT(config, enable_track=enable_track).eval()
