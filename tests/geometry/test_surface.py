"""Seen-surface mesh (Alg. 1): validity mask, triangulation, winding, pixel index, canonical frame."""

from __future__ import annotations

import numpy as np
import pytest

from consistent3dgen.errors import InputError
from consistent3dgen.geometry import surface
from consistent3dgen.geometry.frames import canonical_to_camera
from consistent3dgen.io.pointmap_io import depth_to_pointmap
from consistent3dgen.pointmap import PointMap

H, W = 40, 48
K = np.array([[60.0, 0, W / 2], [0, 60.0, H / 2], [0, 0, 1]])


def _sphere_pointmap(radius=0.5, dist=2.0):
    """Analytic depth of a sphere centred on the optical axis."""
    v, u = np.mgrid[0:H, 0:W].astype(np.float64)
    rays = np.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], np.ones_like(u)], -1)
    rays /= np.linalg.norm(rays, axis=-1, keepdims=True)
    c = np.array([0, 0, dist])
    b = rays @ c
    disc = b**2 - (dist**2 - radius**2)
    t = b - np.sqrt(np.maximum(disc, 0))
    depth = np.where(disc > 0, t * rays[..., 2], 0.0)
    return depth_to_pointmap(depth, K), c, radius


def _face_normals(v, f):
    n = np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]])
    return n / np.linalg.norm(n, axis=1, keepdims=True)


def test_plane_gives_two_triangles_per_block_facing_camera():
    pm = depth_to_pointmap(np.full((H, W), 3.0), K)
    mesh = surface.pointmap_to_mesh(pm)
    v, f = mesh  # unpacks as (vertices, faces)
    assert f.shape == (2 * (H - 1) * (W - 1), 3) and v.shape == (H * W, 3)
    n = _face_normals(v, f)
    np.testing.assert_allclose(n, np.tile([0, 0, -1.0], (len(f), 1)), atol=1e-6)
    # the pixel index points back at the vertex
    np.testing.assert_array_equal(pm.points[mesh.pixels[:, 0], mesh.pixels[:, 1]], v)
    np.testing.assert_array_equal(mesh.pixel_index, mesh.pixels[:, 0] * W + mesh.pixels[:, 1])


def test_sphere_vertices_on_sphere_and_normals_towards_camera():
    pm, c, r = _sphere_pointmap()
    mesh = surface.pointmap_to_mesh(pm)
    v, f = mesh.vertices, mesh.faces
    np.testing.assert_allclose(np.linalg.norm(v - c, axis=1), r, atol=1e-5)
    n = _face_normals(v.astype(np.float64), f)
    centroids = v[f].mean(axis=1)
    assert (np.einsum("ij,ij->i", n, -centroids) > 0).all()  # every face looks at the camera at the origin
    assert len(np.unique(f)) == len(v)  # no unused vertex
    # the silhouette rim is grazing: its steepest edges are broken, so fewer pixels than the mask survive
    assert mesh.pixels.shape[0] <= pm.mask.sum()


def test_depth_step_is_cut_and_far_side_dropped():
    depth = np.full((H, W), 2.0)
    depth[:, W // 2 :] = 4.0
    pm = depth_to_pointmap(depth, K)
    valid = surface.validity_mask(pm)
    assert valid[:, : W // 2].all()  # the near, occluding side is kept
    assert not valid[:, W // 2].any() and valid[:, W // 2 + 1 :].all()  # far rim dropped
    v, f = surface.pointmap_to_mesh(pm)
    z = v[f][..., 2]
    assert (np.ptp(z, axis=1) < 1e-6).all()  # no triangle bridges the step


def test_tilted_plane_is_not_cut():
    v, u = np.mgrid[0:H, 0:W].astype(np.float64)
    # plane z = 2 + 1.5 x (about 56 degrees from facing): stretch ~1.8 < 8
    x_over_z = (u - K[0, 2]) / K[0, 0]
    depth = 2.0 / (1.0 - 1.5 * x_over_z)
    pm = depth_to_pointmap(depth, K)
    assert surface.validity_mask(pm).all()


def test_confidence_threshold_and_percentile():
    pts = depth_to_pointmap(np.full((H, W), 2.0), K).points
    conf = np.tile(np.linspace(1.0, 5.0, W, dtype=np.float32), (H, 1))
    pm = PointMap(pts, conf=conf, intrinsics=K)
    assert surface.validity_mask(pm, conf_threshold=3.0).sum() == (conf > 3.0).sum()
    kept = surface.validity_mask(pm, drop_percent=25.0)
    assert abs(kept.mean() - 0.75) < 0.05 and kept[:, -1].all() and not kept[:, 0].any()
    flat = PointMap(pts, conf=np.ones((H, W), np.float32), intrinsics=K)
    assert surface.validity_mask(flat, drop_percent=50.0).all()  # ties are kept


def test_pixel_angle_estimated_without_intrinsics():
    pm, _, _ = _sphere_pointmap()
    bare = PointMap(pm.points, mask=pm.mask)
    a = surface.validity_mask(pm)
    b = surface.validity_mask(bare)
    assert (a != b).mean() < 0.01


def test_canonical_mesh_round_trips_to_camera():
    pm, _, _ = _sphere_pointmap()
    cam = surface.pointmap_to_mesh(pm)
    can, frame = surface.pointmap_to_canonical_mesh(pm)
    assert np.abs(can.vertices).max() <= 1.0
    np.testing.assert_allclose(canonical_to_camera(can.vertices.astype(np.float64), frame), cam.vertices, atol=1e-5)
    n = _face_normals(can.vertices.astype(np.float64), can.faces)
    assert (n[:, 2] > 0).mean() > 0.99  # facing +z, the canonical camera side


def test_shared_mesh_render(meshes_dir):
    import trimesh

    from consistent3dgen.geometry.render import render_pointmap

    m = trimesh.load(meshes_dir / "suzanne.obj", force="mesh")
    v = (m.vertices - m.bounds.mean(0)) / np.ptp(m.bounds, axis=0).max()
    cam_from_world = np.eye(4)
    cam_from_world[:3, :3] = np.diag([1.0, -1.0, -1.0])  # look at the mesh's +z side
    cam_from_world[2, 3] = 2.5
    pm = render_pointmap(v, m.faces, K, W, H, cam_from_world=cam_from_world)
    mesh = surface.pointmap_to_mesh(pm)
    centroids = mesh.vertices[mesh.faces].mean(axis=1)
    n = _face_normals(mesh.vertices.astype(np.float64), mesh.faces)
    assert (np.einsum("ij,ij->i", n, -centroids) > 0).all()
    assert len(mesh.faces) > 0.5 * 2 * pm.mask.sum() * 0.5


@pytest.mark.parametrize(
    "kwargs, msg, user_error",
    [
        (dict(drop_percent=100.0), "drop_percent", False),  # parameters: the caller checks its options first
        (dict(max_stretch=0.5), "max_stretch", False),
        (dict(conf_threshold=9.0), "fail the confidence tests.*fewer than 3 valid pixels", True),  # the data
    ],
)
def test_bad_options(kwargs, msg, user_error):
    pm = depth_to_pointmap(np.full((H, W), 2.0), K)
    with pytest.raises(ValueError, match=msg) as e:
        surface.validity_mask(pm, **kwargs)
    assert isinstance(e.value, InputError) == user_error
    assert "\n" not in str(e.value)


def test_points_behind_the_camera_are_named_as_the_reason():
    pm = depth_to_pointmap(np.full((H, W), 2.0), K)
    behind = PointMap(pm.points * np.array([1, 1, -1], np.float32), intrinsics=K)  # mirrored: every z < 0
    with pytest.raises(InputError, match=r"all 1920 masked points lie behind the camera \(z <= 0\)") as e:
        surface.pointmap_to_mesh(behind)
    assert "fewer than 3 valid pixels" in str(e.value) and "\n" not in str(e.value)
    mostly = behind.points.copy()
    mostly[0, :2, 2] *= -1  # two pixels back in front: still too few for a surface
    with pytest.raises(InputError, match=r"1918 of 1920 masked points lie behind the camera"):
        surface.pointmap_to_mesh(PointMap(mostly, intrinsics=K))


def test_out_of_range_points_are_named_not_a_missing_neighbour():
    pm = depth_to_pointmap(np.full((H, W), 2.0), K)
    with pytest.raises(InputError, match=r"point map: .* out of range \(\|coordinate\| up to 2e\+30") as e:
        PointMap(pm.points * np.float32(1e30))  # the constructor refuses them, before any surface work
    assert "neighbouring" not in str(e.value)
    # points beyond the limit outside the mask are no reason to fail, and never enter the surface
    far = pm.points.copy()
    far[0] = 1e30
    mask = np.ones((H, W), bool)
    mask[0] = False
    mesh = surface.pointmap_to_mesh(PointMap(far, mask=mask, intrinsics=K))
    assert np.abs(mesh.vertices).max() < 10
    # a point map changed after construction (or not checked) still gets the range named, in both paths
    for k in (K, None):
        bad = PointMap(pm.points.copy(), intrinsics=k)
        bad.points[...] = pm.points * np.float32(1e30)
        with pytest.raises(InputError, match="non-finite or out of range"):
            surface.pointmap_to_mesh(bad)
    # ... and a caller's own validity mask that lets them through: the overflow is named, not a missing neighbour
    with pytest.raises(InputError, match="overflow: the points are non-finite or out of range"):
        surface.pointmap_to_mesh(bad, valid=np.ones((H, W), bool))


def test_coincident_points_give_a_clear_error():
    pm = PointMap(np.broadcast_to(np.float32([0.1, 0.2, 2.0]), (H, W, 3)).copy(), intrinsics=K)
    with pytest.raises(InputError, match="all coincide"):
        surface.pointmap_to_mesh(pm)
    with pytest.raises(InputError, match="no two valid neighbouring pixels at distinct points"):
        surface.pointmap_to_mesh(PointMap(pm.points))  # no intrinsics: the pixel angle needs distinct points


def test_no_block_gives_error():
    depth = np.zeros((H, W))
    depth[::2, ::2] = 2.0  # isolated pixels: no 2x2 block
    with pytest.raises(InputError, match="empty"):
        surface.pointmap_to_mesh(depth_to_pointmap(depth, K))
