"""Mesh files read for synthetic views: every problem with the file is one InputError line naming it."""

from __future__ import annotations

import pytest

from consistent3dgen.errors import InputError
from consistent3dgen.views import load_normalized_mesh


def test_bad_mesh_files_are_named(tmp_path):
    with pytest.raises(InputError, match="mesh file not found"):
        load_normalized_mesh(tmp_path / "none.obj")
    nan = tmp_path / "nan.obj"
    nan.write_text("v 0 0 0\nv 1 0 0\nv nan 1 0\nf 1 2 3\n")
    with pytest.raises(InputError, match=r"nan\.obj has non-finite"):
        load_normalized_mesh(nan)
    flat = tmp_path / "point.obj"
    flat.write_text("v 1 1 1\nv 1 1 1\nv 1 1 1\nf 1 2 3\n")
    with pytest.raises(InputError, match=r"point\.obj has zero or overflowing extent"):
        load_normalized_mesh(flat)
    ok = tmp_path / "tri.obj"
    ok.write_text("v 0 0 0\nv 2 0 0\nv 0 1 0\nf 1 2 3\n")
    v, f = load_normalized_mesh(ok)
    assert v.max(0).tolist() == [0.5, 0.25, 0.0] and f.tolist() == [[0, 1, 2]]
