"""Reading and writing a mini prior folder (TRELLIS-style: a config JSON + a safetensors file per component).

Layout::

    pipeline.json            name, stages (which components, default sampler), generation-option defaults
    <component>.json         {"target": official class path, "params": {...}[, "encoder_norm_groups": n]}
    <component>.safetensors  that component's weights
    MODEL_CARD.md            how it was trained and measured (training.json: the training config that made it)

Components are built by the Direct3D-S2 target registry (``direct3d_s2/targets.py``), so inference needs nothing
from the training package. ``consistent3dgen train --export DIR`` writes this layout through
:func:`save_mini_prior`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ...errors import InputError, WeightsNotFoundError, one_line
from ..base import Generator, SamplerSettings

BUNDLED_DIR = Path(__file__).resolve().parent
FORMAT = "consistent3dgen-mini-prior"
VERSION = 2
PIPELINE_FILE = "pipeline.json"


def build_component(entry: Mapping[str, Any], device: str | torch.device | None = None) -> nn.Module:
    """A model from ``{"target", "params"[, "encoder_norm_groups"]}`` via the Direct3D-S2 target registry.

    ``encoder_norm_groups`` (sparse VAE only, kept beside ``params`` so ``params`` stays the official set): the
    official encoder's GroupNorm(32, model_channels // 16) needs model_channels ≥ 512; the mini prior's narrow
    encoder uses fewer groups.
    """
    from ..direct3d_s2.targets import build

    groups = entry.get("encoder_norm_groups")
    extra = {} if groups is None else {"encoder_norm_groups": int(groups)}
    return build(entry, device=device, **extra)


def load_mini_prior(folder: str | os.PathLike = BUNDLED_DIR, device: str | torch.device = "cpu") -> Generator:
    """The prior in ``folder`` (default: the bundled one) as a :class:`Generator`, models in eval mode."""
    from ...io.weights import load_into
    from ..direct3d_s2.adapters import Direct3DS2DenseStage, Direct3DS2SparseStage

    folder = Path(folder)
    spec = read_pipeline_spec(folder)
    models: dict[str, nn.Module] = {}
    entries: dict[str, dict[str, Any]] = {}
    for name in _component_names(spec):
        config, weights = folder / f"{name}.json", folder / f"{name}.safetensors"
        if not weights.is_file():
            raise WeightsNotFoundError(f"mini prior component weights not found: {weights}")
        entries[name] = _read_json(config)
        model = build_component(entries[name], device="meta")  # no random init: every tensor comes from the file
        models[name] = load_into(model, weights, device=device, name=f"mini prior {weights}")
    dense_spec = spec["stages"]["dense"]
    dense = Direct3DS2DenseStage(models[dense_spec["vae"]], models[dense_spec["dit"]])
    sparse = [Direct3DS2SparseStage(models[s["vae"]], models[s["dit"]]) for s in spec["stages"]["sparse"]]
    cond_channels = int(entries[dense_spec["dit"]]["params"]["cond_channels"])
    null = torch.zeros(1, int(spec["null_condition_tokens"]), cond_channels, device=device)
    return Generator(
        dense=dense, sparse=sparse, dense_sampler=SamplerSettings(**dense_spec["sampler"]),
        sparse_samplers=[SamplerSettings(**s["sampler"]) for s in spec["stages"]["sparse"]],
        defaults=dict(spec["defaults"]), name=f"{spec['name']} ({folder.name})", null_condition=null)


def save_mini_prior(folder: str | os.PathLike, components: Mapping[str, tuple[Mapping[str, Any], nn.Module]],
                    spec: Mapping[str, Any]) -> list[Path]:
    """Write ``components`` (name → (config entry, model)) and ``spec`` (pipeline.json without format/version)."""
    from safetensors.torch import save_file

    from ...io.atomic import atomic_path, atomic_write_text

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    full = {"format": FORMAT, "version": VERSION, **spec}
    missing = sorted(set(_component_names(full)) - set(components))
    if missing:
        raise ValueError(f"pipeline spec names components that were not given: {missing}")
    written = []
    for name, (entry, model) in components.items():
        tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}  # from any device
        with atomic_path(folder / f"{name}.safetensors") as tmp:
            save_file(tensors, tmp, metadata={"format": FORMAT, "component": name})
        atomic_write_text(folder / f"{name}.json", json.dumps(dict(entry), indent=1))
        written += [folder / f"{name}.safetensors", folder / f"{name}.json"]
    atomic_write_text(folder / PIPELINE_FILE, json.dumps(full, indent=1))
    return [*written, folder / PIPELINE_FILE]


def read_pipeline_spec(folder: Path) -> dict[str, Any]:
    path = folder / PIPELINE_FILE
    if not path.is_file():
        hint = " (a v1 folder with config.json: re-export it with `consistent3dgen train --out RUN --export DIR`)" \
            if (folder / "config.json").is_file() else ""
        raise WeightsNotFoundError(f"mini prior not found: no {path}{hint}")
    spec = _read_json(path)
    if spec.get("format") != FORMAT or spec.get("version") != VERSION:
        raise InputError(f"{path} is not a {FORMAT} version {VERSION} file")
    for key in ("name", "stages", "defaults", "null_condition_tokens"):
        if key not in spec:
            raise InputError(f"{path} has no {key!r} entry")
    return spec


def _component_names(spec: Mapping[str, Any]) -> list[str]:
    stages = spec["stages"]
    return [stages["dense"]["vae"], stages["dense"]["dit"]] + [s[k] for s in stages["sparse"] for k in ("vae", "dit")]


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise WeightsNotFoundError(f"mini prior file not found: {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f"cannot read {path}: {one_line(e)}") from None
    if not isinstance(data, dict):
        raise InputError(f"{path} does not hold a JSON object")
    return data
