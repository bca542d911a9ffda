"""VGGT model layout, loading (folder, .pt, offline hub cache, errors), bf16, and the full-size state dict."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from consistent3dgen.errors import InputError, WeightsNotFoundError
from consistent3dgen.reconstruct.vggt import VGGT, VGGTConfig
from consistent3dgen.reconstruct.vggt.pretrained import load_vggt, random_vggt, resolve_weights


def test_full_size_state_dict_matches_official_listing(fixture_file):
    official = json.loads(fixture_file("vggt", "vggt_1b_state_dict.json").read_text())
    with torch.device("meta"):  # layout only: no 5 GB allocation
        model = VGGT()
    mine = {k: [list(v.shape), str(v.dtype).removeprefix("torch.")] for k, v in model.state_dict().items()}
    assert list(mine) == list(official)  # same keys in the same order
    assert mine == official  # same shapes and dtypes
    assert sum(v.numel() for v in model.state_dict().values()) == 1_256_537_516
    assert not model.aggregator.patch_embed.mask_token.requires_grad


def _save_tiny(folder: Path, config: VGGTConfig, fmt: str = "safetensors", seed: int = 0) -> VGGT:
    model = random_vggt(config, seed=seed)
    folder.mkdir(parents=True, exist_ok=True)
    sd = {k: v.contiguous() for k, v in model.state_dict().items()}
    if fmt == "safetensors":
        save_file(sd, str(folder / "model.safetensors"))
    else:
        torch.save(sd, folder / "model.pt")
    (folder / "config.json").write_text(json.dumps(config.to_dict()))
    return model


def _images(seed: int = 1, s: int = 2) -> torch.Tensor:
    return torch.rand(1, s, 3, 28, 42, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("fmt", ["safetensors", "pt"])
def test_load_local_folder_reproduces_the_saved_model(tmp_path, fmt, tiny_config):
    ref = _save_tiny(tmp_path / "w", tiny_config, fmt)
    loaded = load_vggt(tmp_path / "w")
    assert loaded.track_head is None  # skipped by default (tracking is not implemented)
    assert all(p.device.type == "cpu" and p.dtype == torch.float32 for p in loaded.parameters())
    x = _images()
    with torch.no_grad():
        a, b = ref(x), loaded(x)
    for key in ("pose_enc", "depth", "depth_conf", "world_points", "world_points_conf"):
        torch.testing.assert_close(a[key], b[key], atol=0, rtol=0)
    assert a["depth"].shape == (1, 2, 28, 42, 1) and a["world_points"].shape == (1, 2, 28, 42, 3)
    with_track = load_vggt(tmp_path / "w", enable_track=True)
    assert set(with_track.state_dict()) == set(ref.state_dict())


def test_load_from_offline_hub_cache(tmp_path, monkeypatch, tiny_config):
    from huggingface_hub import constants

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--facebook--VGGT-1B"
    ref = _save_tiny(repo / "snapshots" / commit, tiny_config)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    path, config = resolve_weights("facebook/VGGT-1B")
    assert path.name == "model.safetensors" and config["embed_dim"] == 32
    loaded = load_vggt()  # default hub id
    x = _images(3, 1)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x)["depth"], ref(x)["depth"], atol=0, rtol=0)


def test_missing_weights_name_the_path_or_id(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty_hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(WeightsNotFoundError, match="someone/no-such-model"):
        load_vggt("someone/no-such-model")
    (tmp_path / "empty").mkdir()
    with pytest.raises(WeightsNotFoundError, match="empty"):
        load_vggt(tmp_path / "empty")
    with pytest.raises(WeightsNotFoundError, match="nowhere"):
        load_vggt(tmp_path / "a" / "b" / "nowhere")


def test_wrong_checkpoint_is_a_clear_error(tmp_path, tiny_config):
    folder = tmp_path / "w"
    _save_tiny(folder, tiny_config)
    save_file({"foo.weight": torch.zeros(2)}, str(folder / "model.safetensors"))
    with pytest.raises(InputError, match="missing keys"):
        load_vggt(folder)
    sd = {k: v.contiguous() for k, v in random_vggt(tiny_config).state_dict().items()}
    sd["aggregator.camera_token"] = torch.zeros(1, 2, 1, 31)
    save_file(sd, str(folder / "model.safetensors"))
    with pytest.raises(InputError, match="camera_token"):
        load_vggt(folder)


def test_bf16_aggregator_stays_close_to_fp32(tmp_path, tiny_config):
    ref = _save_tiny(tmp_path / "w", tiny_config)
    bf = load_vggt(tmp_path / "w", dtype="bf16")
    assert bf.aggregator.camera_token.dtype == torch.bfloat16
    assert bf.depth_head.norm.weight.dtype == torch.float32
    x = _images(5, 1)
    with torch.no_grad():
        a, b = ref(x), bf(x)
    assert b["depth"].dtype == torch.float32
    rel = (a["depth"] - b["depth"]).abs().max() / a["depth"].abs().max()
    assert rel < 0.05


def test_safetensors_with_mixed_dtypes_and_corruption(tmp_path, tiny_config):
    ref = random_vggt(tiny_config, seed=4, enable_track=False)
    sd = {k: v.contiguous() for k, v in ref.state_dict().items()}
    # An odd-sized float16 tensor first in the file shifts every later float32 tensor off 4-byte alignment.
    sd["camera_head.pose_branch.fc2.bias"] = sd["camera_head.pose_branch.fc2.bias"].half()  # 9 values, 18 bytes
    folder = tmp_path / "w"
    folder.mkdir()
    save_file(sd, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(tiny_config.to_dict()))
    loaded = load_vggt(folder)
    for k, v in sd.items():
        assert torch.equal(loaded.state_dict()[k], v.float()), k
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])  # truncated download
    with pytest.raises(InputError, match="corrupt"):
        load_vggt(folder)
