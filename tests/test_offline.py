"""Offline: missing hub weights are one ``error:`` line and exit 2, through the CLI in a fresh process.

Each run is ``python -m consistent3dgen generate ...`` with an empty ``HF_HOME``. "No network" is simulated
three ways, so the tests mean the same on a machine with network (and never download anything there): the hub
endpoint on a local port that refuses connections, one that accepts them but never answers (a dropped
connection: the probe's timeout), and ``HF_HUB_OFFLINE=1``. The real endpoint is tried too where this machine
cannot reach it (the situation of issue 13).

How long that takes is measured by ``benchmarks/bench_offline.py`` (against the CLI's own start-up, in the same
process), not asserted here; that the hub is probed once and never retried is tested in ``tests/io/test_weights.py``.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from consistent3dgen.io import weights as W

EXAMPLES = Path(__file__).resolve().parents[1] / "src" / "consistent3dgen" / "examples"


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("offline_inputs")
    rgba = EXAMPLES / "spot_rgba.png"
    rgb = d / "spot_rgb.png"
    Image.open(rgba).convert("RGB").save(rgb)
    yy, xx = np.mgrid[0:32, 0:32]
    z = np.full((32, 32), 2.0)
    points = np.stack([(xx - 16) / 30 * z, (yy - 16) / 30 * z, z], -1)
    np.savez(d / "pm.npz", points=points, mask=(xx - 16) ** 2 + (yy - 16) ** 2 < 100)
    return {"rgba": rgba, "rgb": rgb, "npz": d / "pm.npz"}


@pytest.fixture(scope="module")
def refusing_endpoint():
    """http://127.0.0.1:<port> where nothing listens (connection refused at once)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def silent_endpoint():
    """http://127.0.0.1:<port> that accepts connections and never answers (packets dropped upstream)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(64)
    yield f"http://127.0.0.1:{s.getsockname()[1]}"
    s.close()


def run_cli(args: list, tmp_path: Path, endpoint: str | None = None, offline: bool = False
            ) -> subprocess.CompletedProcess:
    drop = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_CACHE", "HF_ENDPOINT", "HUGGINGFACE_HUB_CACHE")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env["HF_HOME"] = str(tmp_path / "hf_home")  # an empty cache
    if endpoint is not None:
        env["HF_ENDPOINT"] = endpoint
    if offline:
        env["HF_HUB_OFFLINE"] = "1"
    return subprocess.run([sys.executable, "-m", "consistent3dgen", *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=tmp_path, timeout=120)


def _the_one_line(out: subprocess.CompletedProcess) -> str:
    lines = out.stderr.splitlines()
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith("error: ")
    return lines[0]


NETWORKS = ["refused", "silent", "HF_HUB_OFFLINE=1"]


def _network(request, name: str) -> dict:
    if name == "refused":
        return {"endpoint": request.getfixturevalue("refusing_endpoint")}
    if name == "silent":
        return {"endpoint": request.getfixturevalue("silent_endpoint")}
    return {"offline": True}


@pytest.mark.parametrize("network", NETWORKS)
@pytest.mark.parametrize("image", ["rgba", "rgb"])
def test_photo_without_vggt_weights_fails_fast_in_one_line(tmp_path, inputs, request, network, image):
    out = run_cli(["generate", inputs[image], "--out", "x.glb"], tmp_path, **_network(request, network))
    line = _the_one_line(out)
    assert out.returncode == 2
    assert "VGGT weights not found: facebook/VGGT-1B/model.safetensors or model.pt" in line
    assert f"not in the local hub cache {tmp_path / 'hf_home' / 'hub'}" in line
    assert "--vggt-weights DIR" in line and "download facebook/VGGT-1B" in line
    assert ("HF_HUB_OFFLINE is set" if network.startswith("HF_") else "is not reachable (offline)") in line
    assert not (tmp_path / "x.glb").exists()


@pytest.mark.parametrize("network", NETWORKS)
def test_direct3d_s2_without_weights_fails_fast_in_one_line(tmp_path, inputs, request, network):
    out = run_cli(["generate", inputs["npz"], "--generator", "direct3d-s2", "--out", "x.glb"], tmp_path,
                        **_network(request, network))
    line = _the_one_line(out)
    assert out.returncode == 2
    assert ("Direct3D-S2 weights not found: wushuang98/Direct3D-S2/direct3d-s2-v-1-1/config.yaml, model_dense.ckpt, "
            "model_sparse_1024.ckpt, model_sparse_512.ckpt are not in the local hub cache") in line
    assert "--generator DIR" in line and "download wushuang98/Direct3D-S2 --include 'direct3d-s2-v-1-1/*'" in line


def test_direct3d_s2_without_dino_weights_fails_fast_in_one_line(tmp_path, inputs, refusing_endpoint):
    """The Direct3D-S2 files are there (empty: every file is found before any is read), DINOv2 is not."""
    folder = tmp_path / "d3d"
    folder.mkdir()
    for name in ("config.yaml", "model_dense.ckpt", "model_sparse_512.ckpt", "model_sparse_1024.ckpt"):
        (folder / name).write_bytes(b"")
    out = run_cli(["generate", inputs["npz"], "--generator", folder, "--out", "x.glb"], tmp_path,
                        endpoint=refusing_endpoint)
    line = _the_one_line(out)
    assert out.returncode == 2, out.stderr
    assert "DINOv2 (ViT-L/14 with registers) weights not found: facebook/dinov2-with-registers-large/config.json" \
        in line
    assert "DIR/dinov2-with-registers-large beside the Direct3D-S2 files with --generator DIR" in line
    # the folder named there is where it is looked for
    (folder / "dinov2-with-registers-large").mkdir()
    out = run_cli(["generate", inputs["npz"], "--generator", folder, "--out", "x.glb"], tmp_path,
                     endpoint=refusing_endpoint)
    assert "weights not found in folder" in _the_one_line(out) and "dinov2-with-registers-large" in out.stderr


def test_real_endpoint_when_this_machine_is_offline(tmp_path, inputs):
    """HF_HUB_OFFLINE unset, the default endpoint: issue 13's own case (only meaningful without network)."""
    if W._answers(W._hub_endpoint() + "/", W.HUB_PROBE_TIMEOUT):
        pytest.skip("the hub is reachable from here: this is the offline case")
    out = run_cli(["generate", inputs["rgb"], "--out", "x.glb"], tmp_path)
    line = _the_one_line(out)
    assert out.returncode == 2, out.stderr
    assert "facebook/VGGT-1B" in line and "--vggt-weights DIR" in line


# --------------------------------------------------------------------------- pickled VGGT checkpoints


@pytest.fixture(scope="module")
def pickled_vggt(tmp_path_factory) -> dict[str, Path]:
    import torch

    from consistent3dgen.reconstruct.vggt import VGGTConfig
    from consistent3dgen.reconstruct.vggt.pretrained import random_vggt

    config = VGGTConfig(embed_dim=32, depth=2, num_heads=2, dino_depth=1, dino_heads=2, head_features=16,
                        head_out_channels=(8, 16, 32, 32), intermediate_layer_idx=(0, 1, 0, 1),
                        camera_trunk_depth=1, camera_num_heads=2, track_features=16, track_hidden=32)
    model = random_vggt(config, enable_track=False)
    d = tmp_path_factory.mktemp("pickled_vggt")
    out = {}
    for name, zipped in (("zip", True), ("legacy", False)):
        (d / name).mkdir()
        path = d / name / "model.pt"
        torch.save(model, path, _use_new_zipfile_serialization=zipped)  # a pickled module, not a state dict
        out[name] = path
    return out


@pytest.mark.parametrize("fmt", ["zip", "legacy"])
@pytest.mark.parametrize("as_folder", [False, True])
def test_pickled_vggt_model_pt_is_one_line(tmp_path, inputs, pickled_vggt, fmt, as_folder, refusing_endpoint):
    weights = pickled_vggt[fmt].parent if as_folder else pickled_vggt[fmt]
    out = run_cli(["generate", inputs["rgb"], "--vggt-weights", weights, "--out", "x.glb"], tmp_path,
                     endpoint=refusing_endpoint)
    line = _the_one_line(out)
    assert out.returncode == 2
    assert f"checkpoint {pickled_vggt[fmt]} holds a Python object (consistent3dgen.reconstruct.vggt.model.VGGT)" in line
    assert "state_dict()" in line and "weights_only" not in line
