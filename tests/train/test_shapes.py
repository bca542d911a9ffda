"""Procedural shapes: valid SDFs (|∇d| ≈ 1 near the surface, sign = inside), seeded, fronts ≠ backs."""

from __future__ import annotations

import numpy as np
import pytest

from consistent3dgen.train import shapes
from consistent3dgen.train.shapes import FAMILIES, height_maps, make_shape, sample_shapes


def _near_surface_gradients(shape, n=60000, band=0.03, seed=0):
    p = np.random.default_rng(seed).uniform(-1, 1, (n, 3))
    near = p[np.abs(shape(p)) < band][:2000]
    h = 1e-4
    grad = np.stack([(shape(near + e) - shape(near - e)) / (2 * h) for e in np.eye(3) * h], -1)
    return near, np.linalg.norm(grad, axis=-1)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_family_is_a_distance_near_its_surface(family):
    shape = make_shape(family, seed=3)
    near, gnorm = _near_surface_gradients(shape)
    assert len(near) > 200, "too few points near the surface"
    # exact primitives and CSG give 1 almost everywhere; smooth blends/superquadrics are first-order distances
    assert np.median(np.abs(gnorm - 1)) < 0.02
    assert np.mean(np.abs(gnorm - 1) < 0.2) > 0.9


@pytest.mark.parametrize("family", list(FAMILIES))
def test_family_fits_the_cube_and_front_differs_from_back(family):
    shape = make_shape(family, seed=1, margin=0.05)
    lo, hi = shapes.bounding_box(shape.sdf, resolution=48, extent=1.2)
    assert np.all(lo > -1.0) and np.all(hi < 1.0)
    assert (hi - lo).max() > 1.6  # the largest side fills the cube up to the margin (grid tolerance)
    front, back = height_maps(shape.sdf, resolution=40)
    hit = np.isfinite(front)
    assert hit.mean() > 0.05
    # a mirror-symmetric back would give 0; every family differs by several voxels on average
    assert np.mean(np.abs(front[hit] - back[hit])) > 0.05


def test_height_maps_of_a_symmetric_sphere_agree():
    ball = shapes.sphere((0, 0, 0), 0.6)
    front, back = height_maps(ball, resolution=32)
    hit = np.isfinite(front)
    assert np.allclose(front[hit], back[hit])


def test_shapes_are_seeded_and_distinct():
    p = np.random.default_rng(1).uniform(-1, 1, (2000, 3))
    a1, a2, b = make_shape("vase", 5)(p), make_shape("vase", 5)(p), make_shape("vase", 6)(p)
    assert np.array_equal(a1, a2)
    assert not np.allclose(a1, b)


def test_primitive_signs_and_values():
    p = np.array([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.5]])
    assert np.allclose(shapes.sphere((0, 0, 0), 0.5)(p), [-0.5, 0.5, 0.0])
    assert np.allclose(shapes.box((0, 0, 0), (0.5, 0.5, 0.5))(p), [-0.5, 0.5, 0.0])
    assert np.allclose(shapes.cylinder((0, 0, 0), 0.5, 0.25, axis=1)(p), [-0.25, 0.5, 0.0])
    prof = shapes.revolution([0.5, 0.5], [-0.25, 0.25])  # a cylinder of revolution
    assert np.allclose(prof(p), [-0.25, 0.5, 0.0])


def test_sample_shapes_balanced_and_rejects_unknown():
    pairs = sample_shapes(12, seed=2)
    fams = [f for f, _ in pairs]
    assert all(fams.count(f) == 2 for f in FAMILIES)
    assert len({s for _, s in pairs}) == 12
    with pytest.raises(ValueError):
        sample_shapes(3, families=["nope"])
    with pytest.raises(ValueError):
        make_shape("nope", 0)
