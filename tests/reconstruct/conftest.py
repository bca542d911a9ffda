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


# ----------------------------------------------------------------------------------------------- fakes


@pytest.fixture
def no_models_around(tmp_path, monkeypatch) -> None:
    """No model can be found: an empty, offline hub cache and an empty rembg home (whatever this machine has)."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty_hub_cache"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("U2NET_HOME", str(tmp_path / "empty_u2net"))


# BiRefNet's hub layout with tiny stand-in code: config.json names the code through auto_map (as the real
# ZhengPeng7/BiRefNet), the model module imports its config module relatively, and the model refuses to build
# with bb_pretrained on (the real one would then look for backbone weights).
BIREFNET_CONFIG = {
    "architectures": ["BiRefNet"],
    "auto_map": {"AutoConfig": "BiRefNet_config.BiRefNetConfig", "AutoModelForImageSegmentation": "birefnet.BiRefNet"},
    "bb_pretrained": True,
}
BIREFNET_CONFIG_PY = '''
class BiRefNetConfig:
    def __init__(self, bb_pretrained=True, **kwargs):
        self.bb_pretrained = bb_pretrained
        for key, value in kwargs.items():
            setattr(self, key, value)
'''
BIREFNET_PY = '''
import torch
from torch import nn

from .BiRefNet_config import BiRefNetConfig


class BiRefNet(nn.Module):
    def __init__(self, bb_pretrained=True, config=BiRefNetConfig()):
        super().__init__()
        if bb_pretrained or config.bb_pretrained:
            raise RuntimeError("would load backbone weights")
        self.conv = nn.Conv2d(3, 1, 3, padding=1)
        self.register_buffer("scale", torch.ones(1))

    def forward(self, x):
        return [torch.zeros_like(x[:, :1]), self.conv(x) * self.scale]
'''


def birefnet_files(seed: int = 0) -> dict[str, bytes]:
    """{file name: bytes} of a tiny BiRefNet in the hub layout (random weights, ``scale`` 3)."""
    from safetensors.torch import save

    g = torch.Generator().manual_seed(seed)
    tensors = {"conv.weight": torch.randn(1, 3, 3, 3, generator=g), "conv.bias": torch.randn(1, generator=g),
               "scale": torch.full((1,), 3.0)}
    return {"config.json": json.dumps(BIREFNET_CONFIG).encode(), "BiRefNet_config.py": BIREFNET_CONFIG_PY.encode(),
            "birefnet.py": BIREFNET_PY.encode(), "model.safetensors": save(tensors)}


@pytest.fixture
def birefnet_dir(tmp_path):
    """A local BiRefNet folder (the hub layout, tiny stand-in code and random weights)."""
    folder = tmp_path / "birefnet_local"
    folder.mkdir()
    for name, data in birefnet_files().items():
        (folder / name).write_bytes(data)
    return folder
