import json

import numpy as np
import pytest

from consistent3dgen.cli import main


@pytest.fixture(scope="module")
def spot_npz(tmp_path_factory, meshes_dir):
    import trimesh

    from consistent3dgen.geometry.render import intrinsics_from_fov, look_at, render_pointmap
    from consistent3dgen.io.pointmap_io import save_npz

    m = trimesh.load(meshes_dir / "spot.obj", force="mesh")
    v = m.vertices - m.bounds.mean(0)
    v /= np.abs(v).max()
    pm = render_pointmap(v, m.faces, intrinsics_from_fov(40, 128, 128), 128, 128,
                         cam_from_world=look_at(np.array([0.3, 0.4, 2.8]), np.zeros(3)))
    path = tmp_path_factory.mktemp("in") / "spot.npz"
    save_npz(pm, path)
    return path


def test_foreground_command_writes_and_checks_the_shell(spot_npz, tmp_path, capsys):
    out = tmp_path / "fg"
    assert main(["foreground", str(spot_npz), "--resolution", "256", "--out", str(out)]) == 0
    report = json.loads((out / "foreground.json").read_text())
    # the extracted shell lies one voxel (the shell offset) from the seen surface, and wraps all of it
    assert 0.8 < report["offset_mean"] < 1.1
    assert report["offset_max"] < 1.8
    assert report["coverage_max"] < 1.8
    assert 0 < report["front_cells"] <= report["latent_cells"]
    for name in ("seen_surface.ply", "thin_shell_256.npz", "thin_shell_256.ply"):
        assert (out / name).stat().st_size > 0
    with np.load(out / "thin_shell_256.npz") as z:
        assert int(z["resolution"]) == 256 and z["feats"].min() >= -1 and z["feats"].max() <= 1
    assert "offset mean" in capsys.readouterr().out


def test_foreground_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "fg"
    bad = tmp_path / "broken.npz"
    bad.write_bytes(b"not a zip file")
    assert main(["foreground", str(bad), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err
    assert not out.exists() or not any(out.iterdir())
    assert main(["foreground", str(tmp_path / "missing.npz"), "--out", str(out)]) == 2


@pytest.mark.parametrize("argv", [["--shell", "0"], ["--drop-percent", "100"], ["--band", "1", "--shell", "2"]])
def test_foreground_bad_numbers_are_one_line_before_reading(tmp_path, capsys, argv):
    out = tmp_path / "fg"
    assert main(["foreground", str(tmp_path / "never_read.npz"), "--out", str(out), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: option") and "\n" not in err and not out.exists()
