"""``consistent3dgen info``: versions, device, and where each model's weights are, from the hub cache and local
folders only (the network is never asked: the probe and the download functions fail the test if called)."""

from __future__ import annotations

import json

import pytest

from consistent3dgen.cli import main


@pytest.fixture
def no_network(tmp_path, monkeypatch, offline_hub):
    """An empty hub cache; any probe or download fails the test."""
    import huggingface_hub
    from huggingface_hub import constants

    from consistent3dgen.io import weights

    def forbidden(*a, **k):
        raise AssertionError("info reached for the network")

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(weights, "_answers", forbidden)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", forbidden)
    monkeypatch.setenv("U2NET_HOME", str(tmp_path / "no_u2net"))
    return tmp_path / "hub"


def _info(capsys, *argv: str) -> dict:
    assert main(["info", "--json", *argv]) == 0
    return json.loads(capsys.readouterr().out)


def _models(report: dict) -> dict:
    return {m["name"]: m for m in report["models"]}


BIREFNET_CONFIG = json.dumps({"auto_map": {"AutoConfig": "BiRefNet_config.BiRefNetConfig",
                                           "AutoModelForImageSegmentation": "birefnet.BiRefNet"}}).encode()


def test_nothing_found_and_the_versions(capsys, no_network):
    import torch

    report = _info(capsys)
    assert torch.__version__.startswith(report["packages"]["torch"].split("+")[0])
    assert report["python"] and report["consistent3dgen"]
    assert set(report["packages"]) >= {"torch", "transformers", "warp-lang", "gradio"}
    assert report["device"]["kind"] == "cuda" if torch.cuda.is_available() else report["device"]["kind"] in ("mps",
                                                                                                             "cpu")
    models = _models(report)
    assert set(models) == {"VGGT", "Direct3D-S2 v1.1", "Direct3D-S2 v1.0", "DINOv2 (Direct3D-S2 condition)",
                           "BiRefNet (background removal)", "mini prior (bundled)"}
    assert models["mini prior (bundled)"]["found"]
    assert not any(m["found"] for name, m in models.items() if name != "mini prior (bundled)")
    assert models["VGGT"]["missing"] == ["model.safetensors or model.pt"]
    assert models["Direct3D-S2 v1.1"]["missing"] == ["config.yaml", "model_dense.ckpt", "model_sparse_1024.ckpt",
                                                    "model_sparse_512.ckpt"]
    assert report["hub"]["offline"] and report["hub"]["cache"] == str(no_network)
    assert report["rembg"]["usable"] is False
    # the text form: one line per model, the option that takes a folder named where something is missing
    assert main(["info"]) == 0
    text = capsys.readouterr().out
    assert "device:" in text and "hub cache:" in text
    assert "VGGT" in text and "--vggt-weights DIR" in text and "--birefnet-weights DIR" in text


def test_found_in_the_hub_cache(capsys, no_network, hub_cache):
    from consistent3dgen.generators.direct3d_s2 import checkpoints

    hub_cache(no_network, "facebook/VGGT-1B", {"model.safetensors": b"x", "config.json": b"{}"})
    d3d = {n: b"x" for n in ("config.yaml", "model_dense.ckpt", "model_sparse_512.ckpt", "model_sparse_1024.ckpt")}
    hub_cache(no_network, checkpoints.HUB_ID, d3d, subfolder=checkpoints.SUBFOLDERS["v1.0"])
    hub_cache(no_network, "facebook/dinov2-with-registers-large", {"config.json": b"{}",
                                                                            "model.safetensors": b"x"})
    hub_cache(no_network, "ZhengPeng7/BiRefNet", {"config.json": BIREFNET_CONFIG, "birefnet.py": b""})
    models = _models(_info(capsys))
    vggt = models["VGGT"]
    assert vggt["found"] and vggt["where"].startswith(str(no_network)) and "snapshots" in vggt["where"]
    assert set(vggt["files"]) == {"model.safetensors or model.pt", "config.json"}
    assert models["Direct3D-S2 v1.0"]["found"] and models["Direct3D-S2 v1.0"]["where"].endswith("direct3d-s2-v-1-0")
    assert not models["Direct3D-S2 v1.0"]["missing"]  # the refiners are optional
    assert not models["Direct3D-S2 v1.1"]["found"]
    assert models["DINOv2 (Direct3D-S2 condition)"]["found"]
    birefnet = models["BiRefNet (background removal)"]  # config and model code, no config module, no weights
    assert not birefnet["found"]
    assert birefnet["missing"] == ["BiRefNet_config.py", "model.safetensors or pytorch_model.bin"]


def test_local_folders(tmp_path, capsys, no_network):
    vggt = tmp_path / "vggt"
    vggt.mkdir()
    (vggt / "model.pt").write_bytes(b"x")
    d3d = tmp_path / "d3d"
    (d3d / "dinov2-with-registers-large").mkdir(parents=True)
    for n in ("config.yaml", "model_dense.ckpt", "model_sparse_512.ckpt"):
        (d3d / n).write_bytes(b"x")
    for n in ("config.json", "model.safetensors"):
        (d3d / "dinov2-with-registers-large" / n).write_bytes(b"x")
    bir = tmp_path / "bir"
    bir.mkdir()
    (bir / "config.json").write_bytes(BIREFNET_CONFIG)
    for n in ("birefnet.py", "BiRefNet_config.py", "model.safetensors"):
        (bir / n).write_bytes(b"")
    models = _models(_info(capsys, "--vggt-weights", str(vggt), "--generator", str(d3d), "--birefnet-weights",
                           str(bir)))
    assert models["VGGT"]["found"] and models["VGGT"]["where"] == str(vggt)
    assert models["Direct3D-S2"]["missing"] == ["model_sparse_1024.ckpt"]
    dino = models["DINOv2 (Direct3D-S2 condition)"]
    assert dino["found"] and dino["where"] == str(d3d / "dinov2-with-registers-large")  # beside the generator
    assert models["BiRefNet (background removal)"]["found"]
    other = tmp_path / "dino_elsewhere"
    other.mkdir()
    dino = _models(_info(capsys, "--generator", str(d3d), "--dinov2-weights", str(other)))[
        "DINOv2 (Direct3D-S2 condition)"]
    assert not dino["found"] and dino["source"] == str(other)
    named = _models(_info(capsys, "--generator", "direct3d-s2-v1.0"))["Direct3D-S2 (direct3d-s2-v1.0)"]
    assert named["source"] == "wushuang98/Direct3D-S2" and named["subfolder"] == "direct3d-s2-v-1-0"
    assert "Direct3D-S2 v1.1" not in _models(_info(capsys, "--generator", "mini"))
    gone = _models(_info(capsys, "--vggt-weights", str(tmp_path / "nowhere")))["VGGT"]
    assert not gone["found"] and "nowhere" in gone["error"]
