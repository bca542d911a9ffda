"""Fixtures of the reconstruction tests: the tiny VGGT configuration and the recorded official VGGT fixtures."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
import torch

from consistent3dgen.reconstruct.vggt import VGGTConfig


@pytest.fixture(scope="session")
def tiny_config() -> VGGTConfig:
    """Small dims, official key names; 2 aggregator blocks so the DPT layer indices are (0, 1, 0, 1)."""
    return VGGTConfig(embed_dim=32, depth=2, num_heads=2, dino_depth=1, dino_heads=2, head_features=16,
                      head_out_channels=(8, 16, 32, 32), intermediate_layer_idx=(0, 1, 0, 1), camera_trunk_depth=1,
                      camera_num_heads=2, track_features=16, track_hidden=32)


@pytest.fixture(scope="session")
def vggt_fixture(fixture_file) -> Callable[[str], tuple[dict[str, torch.Tensor], dict]]:
    """``vggt_fixture("rope2d")`` → (tensors, metadata) of ``../shared/fixtures/vggt/rope2d.{safetensors,json}``,
    recorded from the official VGGT code (or a skip naming the missing file)."""
    from safetensors.torch import load_file

    def load(name: str) -> tuple[dict[str, torch.Tensor], dict]:
        tensors = load_file(str(fixture_file("vggt", f"{name}.safetensors")))
        return tensors, json.loads(fixture_file("vggt", f"{name}.json").read_text())

    return load
