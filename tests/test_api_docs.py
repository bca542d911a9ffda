"""The Python API as documented: every example of docs/api.md runs as written, and the objects it names behave."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

DOC = Path(__file__).resolve().parents[1] / "docs" / "api.md"


def _examples() -> list[str]:
    return re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)


def test_the_doc_has_the_examples():
    blocks = _examples()
    assert len(blocks) == 4  # the import line and three examples
    assert blocks[0].strip() == "from consistent3dgen import Pipeline"


@pytest.mark.parametrize("index", [1, 2, 3])
def test_doc_example_runs(index, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(_examples()[index], f"docs/api.md example {index}", "exec"), namespace)  # noqa: S102
    out = capsys.readouterr().out
    if index == 1:
        import trimesh

        assert (tmp_path / "spot.glb").is_file()
        loaded = trimesh.load(tmp_path / "spot.glb", force="mesh")
        assert len(loaded.faces) == len(namespace["result"].mesh.faces) > 100
        assert "IoU" in out
    if index == 2:
        steps = namespace["steps"]
        result = namespace["result"]
        stages = [stage for stage, _, _ in steps]
        assert stages[0] == "dense" and stages[-1].startswith("sparse")
        # one call per step actually run: the dense stage may start part-way (SDEdit), the sparse ones run all
        opts = result.options
        assert stages.count("dense") <= opts.dense_steps
        for stage, n in zip(sorted({s for s in stages if s != "dense"}, key=lambda s: int(s[6:])), opts.sparse_steps,
                            strict=True):
            assert stages.count(stage) == n
        assert all(index < total for _, index, total in steps)
        assert "total" in result.timings
    if index == 3:
        lines = [line for line in out.splitlines() if line.startswith(("guided", "unguided"))]
        assert len(lines) == 2 and "guidance 0.0" in lines[1] and "guidance 0.0" not in lines[0]


def test_result_mesh_is_a_trimesh_in_the_camera_frame(tiny_prior_dir):
    import trimesh

    from consistent3dgen import Pipeline, depth_to_pointmap

    yy, xx = np.mgrid[0:24, 0:24]
    depth = np.where((xx - 12) ** 2 + (yy - 12) ** 2 < 64, 2.0, 0.0)
    view = depth_to_pointmap(depth, fov_deg=40)
    result = Pipeline.from_pretrained(tiny_prior_dir)(view, progress=False)
    assert isinstance(result.mesh, trimesh.Trimesh)
    v_cam, f = result.arrays("camera")
    np.testing.assert_array_equal(result.mesh.vertices, v_cam)
    np.testing.assert_array_equal(result.mesh.faces, f)
    np.testing.assert_array_equal(result.to_trimesh("canonical").vertices, result.vertices)
    # camera frame: the object lies about 2 m in front of the camera, on +z
    assert 1.0 < np.median(result.mesh.vertices[:, 2]) < 3.0


def test_import_is_light_and_the_pipeline_is_loaded_on_first_use():
    code = ("import sys, consistent3dgen as c; assert 'torch' not in sys.modules; "
            "from consistent3dgen import Pipeline; from consistent3dgen.pipeline import Pipeline as P; "
            "assert Pipeline is P and 'torch' in sys.modules; "
            "assert set(c.__all__) <= set(dir(c))")
    subprocess.run([sys.executable, "-c", code], check=True)
    import consistent3dgen

    with pytest.raises(AttributeError, match="no attribute 'Pipe'"):
        consistent3dgen.Pipe  # noqa: B018
