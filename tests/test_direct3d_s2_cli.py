"""Direct3D-S2 end to end through the command line, offline, on tiny random weights written by
``scripts/random_weights.py``: a point map → dense → 512 stage → interior refiner → 1024 stage → sign refiner →
mesh, for both releases (v1.0 with its sparse conditions). The tiny weights decode 32³ / 64³ grids, so a run is
seconds of CPU; the meshes are random shapes (random weights), what is checked is the chain and its report."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "src" / "consistent3dgen" / "examples"


def _script():
    spec = importlib.util.spec_from_file_location("random_weights_script", REPO / "scripts" / "random_weights.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def pointmap(tmp_path_factory) -> Path:
    """The bundled spot RGB-D example as a point-map .npz (points, mask, image, intrinsics)."""
    from consistent3dgen.io.pointmap_io import load_depth, save_npz

    pm = load_depth(EXAMPLES / "spot_depth.png", intrinsics=EXAMPLES / "spot_intrinsics.txt",
                    image=EXAMPLES / "spot_rgba.png")
    path = tmp_path_factory.mktemp("d3d_cli") / "pm.npz"
    save_npz(pm, path)
    return path


def _weights(folder: Path, version: str) -> list[str]:
    """Run the script (in this process) and take the flags from its last line."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert _script().main(["direct3d-s2", str(folder), "--size", "tiny", "--version", version]) == 0
    last = out.getvalue().strip().splitlines()[-1]
    assert last == f"--generator {folder} --dinov2-weights {folder / 'dinov2'}"
    return last.split()


@pytest.mark.parametrize("version", ["v1.1", "v1.0"])
def test_generate_runs_both_stages_and_both_refiners(tmp_path, pointmap, version):
    flags = _weights(tmp_path / "weights", version)
    env = {k: v for k, v in os.environ.items() if k not in ("HF_ENDPOINT",)}
    env.update(HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")  # offline; one thread on a shared machine (any count works)
    out = subprocess.run([sys.executable, "-m", "consistent3dgen", "generate", str(pointmap), *flags,
                          "--out", "x.glb", "--report", "r.json", "--quiet", "--device", "cpu"],
                         capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "x.glb").stat().st_size > 1000
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["generator"] == f"direct3d-s2 {version}"
    stages = {s["stage"]: s for s in report["stages"]}
    assert list(stages) == ["condition", "dense", "sparse32", "sparse64"]  # the tiny grids of "512" and "1024"
    assert 0 < stages["dense"]["tokens"] == stages["sparse32"]["tokens"]
    assert stages["sparse64"]["tokens"] > 0
    # the refiners ran, at the official levels: 2 × 0.2 after the 512 stage, 0.2 after the 1024 stage
    assert (stages["sparse32"]["refiner"], stages["sparse32"]["mc_level"]) == ("Voxel_RefinerXL", 0.4)
    assert (stages["sparse64"]["refiner"], stages["sparse64"]["mc_level"]) == ("Voxel_RefinerXL_sign", 0.2)
    assert stages["sparse32"]["faces"] > 0 and stages["sparse64"]["faces"] > 0
    assert 0 < report["faces"] <= stages["sparse64"]["faces"]  # the output is the refined 1024 mesh
    opts = report["options"]
    assert opts["refine"] is True
    assert (opts["cfg_scale"], opts["occupancy_threshold"], opts["mc_level"]) == (7.0, 0.1, 0.2)
    assert (opts["dense_steps"], opts["sparse_steps"]) == (50, [30, 15])


def test_refine_flags_reach_the_options():
    from consistent3dgen.cli import build_parser, generation_overrides

    parser = build_parser()
    for flag, want in (("--refine", True), ("--no-refine", False)):
        args = parser.parse_args(["generate", "pm.npz", "--out", "x.glb", flag])
        assert generation_overrides(args)["refine"] is want
    assert "refine" not in generation_overrides(parser.parse_args(["generate", "pm.npz", "--out", "x.glb"]))


def test_random_vggt_weights_load(tmp_path):
    from consistent3dgen.reconstruct.vggt.pretrained import load_vggt

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert _script().main(["vggt", str(tmp_path / "vggt"), "--size", "tiny"]) == 0
    assert out.getvalue().strip().splitlines()[-1] == f"--vggt-weights {tmp_path / 'vggt'}"
    model = load_vggt(tmp_path / "vggt")  # strict: every key of the checkpoint, the track head skipped
    assert model.config.embed_dim == 32
