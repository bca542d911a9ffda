"""Mesh export: every format round-trips, the format follows the extension, and no partial file is left."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import trimesh

from consistent3dgen.errors import InputError
from consistent3dgen.io import meshes
from consistent3dgen.io.meshes import EXPORT_FORMATS, export_mesh


@pytest.mark.parametrize("ext", [".glb", ".obj", ".ply", ".stl"])
def test_export_round_trips(tmp_path: Path, ext: str) -> None:
    box = trimesh.creation.box(extents=(1.0, 2.0, 0.5))
    colors = np.tile(np.array([[200, 30, 40, 255]], np.uint8), (len(box.vertices), 1))
    out = export_mesh(box.vertices, box.faces, tmp_path / f"sub/box{ext}", vertex_colors=colors)
    assert out.exists()
    loaded = trimesh.load(out, force="mesh", process=True)
    assert len(loaded.faces) == len(box.faces)
    assert loaded.volume == pytest.approx(1.0, rel=1e-5)
    np.testing.assert_allclose(loaded.bounds, box.bounds, atol=1e-6)
    if ext in (".ply", ".glb"):
        np.testing.assert_array_equal(
            loaded.visual.vertex_colors[:, :3], np.tile([200, 30, 40], (len(loaded.vertices), 1))
        )
    assert [p.name for p in out.parent.iterdir()] == [out.name]  # no temporary file left beside it


@pytest.mark.parametrize("ext", EXPORT_FORMATS)
def test_export_writes_what_trimesh_writes(tmp_path: Path, ext: str) -> None:
    box = trimesh.creation.box(extents=(1.0, 2.0, 0.5))
    colors = np.linspace(0.0, 1.0, 3 * len(box.vertices)).reshape(-1, 3)  # floats in [0, 1] → uint8
    out = export_mesh(box.vertices, box.faces, tmp_path / f"Box{ext.upper()}", vertex_colors=colors)
    c8 = np.clip(np.rint(colors * 255.0), 0, 255).astype(np.uint8)
    expected = trimesh.Trimesh(box.vertices, box.faces, vertex_colors=c8, process=False).export(file_type=ext[1:])
    assert out.read_bytes() == (expected.encode("utf-8") if isinstance(expected, str) else expected)


def test_failed_export_leaves_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    box = trimesh.creation.box()
    with pytest.raises(InputError, match="unknown mesh format"):
        export_mesh(box.vertices, box.faces, tmp_path / "box.fbx")
    with pytest.raises(ValueError):
        export_mesh(box.vertices, box.faces + 100, tmp_path / "box.obj")
    with pytest.raises(ValueError, match="vertex colours"):
        export_mesh(box.vertices, box.faces, tmp_path / "box.ply", vertex_colors=np.zeros((3, 3)))

    class BrokenFile:  # writes half, then fails
        def __init__(self, path: str, mode: str) -> None:
            self.fh = open(path, mode)  # noqa: SIM115

        def __enter__(self):  # noqa: ANN204
            return self

        def __exit__(self, *exc) -> None:  # noqa: ANN002
            self.fh.close()

        def write(self, data: bytes) -> None:
            self.fh.write(data[: len(data) // 2])
            raise OSError("disk full")

    monkeypatch.setattr("consistent3dgen.io.atomic.open", BrokenFile, raising=False)
    with pytest.raises(OSError, match="disk full"):
        export_mesh(box.vertices, box.faces, tmp_path / "box.ply")
    assert os.listdir(tmp_path) == []
    assert meshes.EXPORT_FORMATS == (".glb", ".obj", ".ply", ".stl")
