"""Input-view consistency and Chamfer / F-score: perfect on self, degrading with a shift, conventions checked."""

from __future__ import annotations

import numpy as np
import pytest
import trimesh

from consistent3dgen.geometry.render import intrinsics_from_fov, render_pointmap
from consistent3dgen.metrics import (
    hidden_from_camera,
    input_view_consistency,
    mesh_distance,
    mesh_structure,
    point_cloud_distance,
    pointmap_normals,
    sample_surface,
    unseen_side_distance,
)
from consistent3dgen.pointmap import PointMap


@pytest.fixture(scope="module")
def scene() -> tuple[trimesh.Trimesh, PointMap]:
    mesh = trimesh.creation.icosphere(subdivisions=5, radius=0.5)
    mesh.apply_translation([0.05, -0.03, 2.0])
    k = intrinsics_from_fov(40.0, 64, 56)
    return mesh, render_pointmap(mesh.vertices, mesh.faces, k, 64, 56)


def test_self_consistency_is_perfect(scene) -> None:  # noqa: ANN001
    mesh, pm = scene
    c = input_view_consistency(mesh.vertices, mesh.faces, pm)
    assert c.silhouette_iou == 1.0
    assert c.depth_error_mean < 1e-6 and c.depth_error_p90 < 1e-6
    assert c.normal_error_deg_mean < 2.0  # finite differences vs faceted normals, only across facet edges
    assert c.overlap_pixels == int(pm.mask.sum())
    assert c.object_size == pytest.approx(np.linalg.norm(np.ptp(pm.valid_points(), axis=0)), rel=1e-6)
    d = c.to_dict()
    assert set(d) >= {"depth_error_mean", "depth_error_p90", "normal_error_deg_mean", "silhouette_iou"}
    assert all(isinstance(v, (int, float)) for v in d.values())


def test_consistency_degrades_with_shift(scene) -> None:  # noqa: ANN001
    mesh, pm = scene
    base = input_view_consistency(mesh.vertices, mesh.faces, pm)
    along_z = input_view_consistency(mesh.vertices + [0, 0, 0.05], mesh.faces, pm)
    # A pure push along z keeps most of the silhouette; depth error is about 0.05 / size on the overlap.
    assert along_z.depth_error_mean == pytest.approx(0.05 / base.object_size, rel=0.25)
    sideways = input_view_consistency(mesh.vertices + [0.15, 0, 0], mesh.faces, pm)
    assert sideways.silhouette_iou < 0.8
    assert sideways.normal_error_deg_mean > 5.0
    assert sideways.depth_error_mean > 10 * base.depth_error_mean + 1e-3
    away = input_view_consistency(mesh.vertices + [5.0, 0, 0], mesh.faces, pm)
    assert away.silhouette_iou == 0.0 and away.overlap_pixels == 0 and np.isnan(away.depth_error_mean)


def test_pointmap_normals_of_a_tilted_plane() -> None:
    # Plane z = 2 + 0.5 x seen head-on: normal ∝ (0.5, 0, -1) facing the camera (negative z).
    k = intrinsics_from_fov(50.0, 20, 16)
    u, v = np.meshgrid(np.arange(20.0), np.arange(16.0))
    rays = np.stack([(u - k[0, 2]) / k[0, 0], (v - k[1, 2]) / k[1, 1], np.ones_like(u)], -1)
    z = 2.0 / (1.0 - 0.5 * rays[..., 0])
    pts = rays * z[..., None]
    mask = np.ones((16, 20), bool)
    mask[5, 5] = False
    pts[5, 5] = np.nan
    n, ok = pointmap_normals(PointMap(pts, mask=mask, intrinsics=k))
    expected = np.array([0.5, 0.0, -1.0]) / np.linalg.norm([0.5, 0.0, -1.0])
    assert ok.sum() == mask.sum() and not ok[5, 5]
    np.testing.assert_allclose(n[ok], np.tile(expected, (ok.sum(), 1)), atol=1e-5)


def test_consistency_needs_intrinsics(scene) -> None:  # noqa: ANN001
    mesh, pm = scene
    no_k = PointMap(pm.points, mask=pm.mask)
    with pytest.raises(ValueError, match="intrinsics"):
        input_view_consistency(mesh.vertices, mesh.faces, no_k)


def test_chamfer_self_is_zero_and_shift_is_measured() -> None:
    box = trimesh.creation.box(extents=(1.0, 1.0, 1.0))
    same = mesh_distance(box.vertices, box.faces, box.vertices, box.faces, n_points=20_000, tau=0.03)
    diag = np.sqrt(3.0)
    assert same.scale == pytest.approx(diag)
    # Two independent sample sets of one surface: only the sampling gap (~0.01 of the diagonal here) remains.
    assert same.chamfer_l1 < 0.006 and same.fscore > 0.99
    shift = 0.1
    moved = mesh_distance(box.vertices + [shift, 0, 0], box.faces, box.vertices, box.faces, n_points=20_000, tau=0.03)
    # Shifting a unit cube by s along x: the ±x faces sit s away, the rest overlaps except a strip of width s;
    # mean distance in each direction ≈ (2/6) * s for the x faces plus a small strip term.
    assert shift / diag / 3 * 0.9 < moved.chamfer_l1 < shift / diag
    assert moved.fscore < 0.8
    assert moved.chamfer_l2 > same.chamfer_l2
    assert moved.to_dict()["tau"] == 0.03


def test_point_cloud_distance_exact_values() -> None:
    ref = np.array([[0.0, 0, 0], [3.0, 4.0, 0]])  # diagonal = 5
    pts = np.array([[0.5, 0, 0], [3.0, 4.0, 0]])
    d = point_cloud_distance(pts, ref, tau=0.05)
    assert d.scale == pytest.approx(5.0)
    # a→ref: (0.5, 0)/5 ; ref→a: (0.5, 0)/5 → L1 = 0.05, L2 = 0.005
    assert d.chamfer_l1 == pytest.approx(0.05) and d.chamfer_l2 == pytest.approx(0.005)
    assert d.precision == 0.5 and d.recall == 0.5 and d.fscore == pytest.approx(0.5)


def test_sampling_is_seeded_uniform_and_on_surface() -> None:
    box = trimesh.creation.box(extents=(2.0, 1.0, 1.0))
    a = sample_surface(box.vertices, box.faces, 40_000, seed=3)
    b = sample_surface(box.vertices, box.faces, 40_000, seed=3)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, sample_surface(box.vertices, box.faces, 40_000, seed=4))
    on_face = np.isclose(np.abs(a), [1.0, 0.5, 0.5]).any(axis=1)
    assert on_face.all()
    # Area share of the two ±x faces: 2 * 1 / (2*1 + 4*2) = 0.2
    assert np.mean(np.isclose(np.abs(a[:, 0]), 1.0)) == pytest.approx(0.2, abs=0.01)
    with pytest.raises(ValueError):
        sample_surface(np.zeros((3, 3)), np.array([[0, 1, 2]]), 10)


# ------------------------------------------------------------------------------------------- unseen side

UNSEEN_K = intrinsics_from_fov(40.0, 96, 96)


def _sphere(radius: float = 0.5, z: float = 2.5) -> trimesh.Trimesh:
    mesh = trimesh.creation.icosphere(subdivisions=4, radius=radius)
    mesh.apply_translation([0.0, 0.0, z])
    return mesh


def test_hidden_share_of_a_sphere_is_its_far_cap() -> None:
    # from the origin, a sphere of radius r at distance d shows the cap with cos(angle to the camera) > r/d:
    # (1 - r/d) / 2 of its area; the rest is hidden
    sphere = _sphere()
    pts = sample_surface(sphere.vertices, sphere.faces, 20_000, seed=3)
    hidden = hidden_from_camera(pts, sphere.vertices, sphere.faces, UNSEEN_K, 96, 96, tol=0.01)
    expected = 1.0 - (1.0 - 0.5 / 2.5) / 2.0
    assert abs(hidden.mean() - expected) < 0.03
    assert not hidden[pts[:, 2] < 2.2].any() and hidden[pts[:, 2] > 2.6].all()  # near side seen, far side not


def test_a_sphere_against_itself_is_complete_on_the_unseen_side() -> None:
    sphere = _sphere()
    d = unseen_side_distance(sphere.vertices, sphere.faces, sphere.vertices, sphere.faces, UNSEEN_K, 96, 96)
    assert d.fscore == pytest.approx(1.0, abs=1e-3) and d.completeness < 0.01 and d.accuracy < 0.01
    assert d.ref_hidden > 0.5 * 20_000 and d.out_hidden > 0.5 * 20_000


def test_a_front_hemisphere_is_incomplete_on_the_unseen_side() -> None:
    sphere = _sphere()
    front = sphere.triangles_center[:, 2] < 2.5  # the half facing the camera
    v, f = sphere.vertices, sphere.faces[front]
    whole = mesh_distance(v, f, sphere.vertices, sphere.faces, n_points=20_000, tau=0.02)
    d = unseen_side_distance(v, f, sphere.vertices, sphere.faces, UNSEEN_K, 96, 96)
    # the back cap is missing: far from the output, and most reference samples there are not recalled
    assert d.completeness > 0.1 and d.recall < 0.4 and d.fscore < 0.5
    assert d.fscore < whole.fscore  # the unseen side is where it fails, worse than on the whole surface
    # what little of the hemisphere is hidden (its rim, behind the silhouette) lies on the reference
    assert d.accuracy < 0.01


def test_a_back_in_the_wrong_place_is_inaccurate() -> None:
    sphere = _sphere()
    moved = sphere.copy()
    back = moved.vertices[:, 2] > 2.5
    moved.vertices[back, 2] += 0.3  # the far half stretched away from the camera
    d = unseen_side_distance(moved.vertices, moved.faces, sphere.vertices, sphere.faces, UNSEEN_K, 96, 96)
    assert d.accuracy > 0.05 and d.completeness > 0.02 and d.fscore < 0.6


def test_structure_of_two_disjoint_boxes() -> None:
    a = trimesh.creation.box(extents=(1.0, 1.0, 1.0))
    b = trimesh.creation.box(extents=(2.0, 1.0, 1.0))
    b.apply_translation([3.0, 0.0, 0.0])
    both = trimesh.util.concatenate([a, b])
    s = mesh_structure(both.vertices, both.faces)
    assert s["pieces"] == 2 and s["watertight"]
    assert s["largest_area_fraction"] == pytest.approx(10.0 / 16.0)  # areas 6 and 10
    assert s["large_pieces"] == 2
    opened = mesh_structure(both.vertices, both.faces[1:])  # one triangle removed: a hole
    assert opened["pieces"] == 2 and not opened["watertight"]
