"""Training meshes: held-out meshes refused, normalisation, watertight sign from winding numbers."""

from __future__ import annotations

import numpy as np
import pytest

from consistent3dgen.errors import InputError
from consistent3dgen.train.training_meshes import (
    EVALUATION_MESHES,
    load_training_mesh,
    mesh_sdf,
    mesh_shape,
    normalise_vertices,
)


@pytest.mark.parametrize("name", EVALUATION_MESHES)
def test_evaluation_meshes_are_refused(name, tmp_path):
    with pytest.raises(InputError, match="held out"):
        load_training_mesh(name, tmp_path)


def test_unknown_and_missing_meshes(tmp_path):
    with pytest.raises(InputError, match="unknown"):
        load_training_mesh("dragon", tmp_path)
    with pytest.raises(InputError, match="not found"):
        load_training_mesh("cow", tmp_path)


def test_normalise_vertices_fills_the_cube():
    v = np.random.default_rng(0).normal(size=(100, 3)) * [3, 1, 2] + 10
    n = normalise_vertices(v, margin=0.1)
    lo, hi = n.min(0), n.max(0)
    assert np.isclose((hi - lo).max(), 1.8)
    assert np.allclose((lo + hi) / 2, 0)


def test_mesh_sdf_of_a_closed_box_is_exact():
    import trimesh

    m = trimesh.creation.box(extents=(1.0, 1.0, 1.0))
    f = mesh_sdf(m.vertices, m.faces)
    p = np.array([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.25, 0.0]])
    assert np.allclose(f(p), [-0.5, 0.5, -0.25], atol=1e-3)


@pytest.mark.parametrize("name", ["cow", "beetle"])
def test_training_mesh_shape_is_signed_inside(name, meshes_dir):
    s = mesh_shape(name, 45.0, meshes_dir)
    v, faces = load_training_mesh(name, meshes_dir)
    grid = np.random.default_rng(0).uniform(-1, 1, (4000, 3))
    d = s(grid)
    assert 0.005 < np.mean(d < 0) < 0.6  # a solid with an inside (beetle is not watertight: winding numbers)
    corners = np.array([[0.99, 0.99, 0.99], [-0.99, -0.99, 0.99]])
    assert np.all(s(corners) > 0)
