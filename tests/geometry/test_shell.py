"""Thin-shell SDF: exact band superset, walk vs exact closest points, value convention, front half, occupancy."""

from __future__ import annotations

import numpy as np
import pytest

from consistent3dgen.errors import InputError
from consistent3dgen.geometry import shell, surface
from consistent3dgen.geometry.voxels import SparseVoxels
from consistent3dgen.io.pointmap_io import depth_to_pointmap

H, W = 48, 48
K = np.array([[70.0, 0, W / 2], [0, 70.0, H / 2], [0, 0, 1]])


def _sphere_mesh(radius=0.5, dist=2.0):
    v, u = np.mgrid[0:H, 0:W].astype(np.float64)
    rays = np.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], np.ones_like(u)], -1)
    rays /= np.linalg.norm(rays, axis=-1, keepdims=True)
    b = rays[..., 2] * dist
    disc = b**2 - (dist**2 - radius**2)
    t = b - np.sqrt(np.maximum(disc, 0))
    depth = np.where(disc > 0, t * rays[..., 2], 0.0)
    mesh, frame = surface.pointmap_to_canonical_mesh(depth_to_pointmap(depth, K))
    return mesh, frame


def _plane_mesh():
    v, u = np.mgrid[0:H, 0:W].astype(np.float64)
    x_over_z = (u - K[0, 2]) / K[0, 0]
    depth = 2.0 / (1.0 - 0.8 * x_over_z)  # tilted plane z = 2 + 0.8 x
    return surface.pointmap_to_canonical_mesh(depth_to_pointmap(depth, K))[0]


@pytest.fixture(scope="module")
def sphere():
    return _sphere_mesh()[0]


def _exact(result_or_coords, mesh, res):
    coords = result_or_coords.sdf.coords if hasattr(result_or_coords, "sdf") else result_or_coords
    return shell.exact_distance(coords.astype(np.float64), shell.to_voxel_units(mesh.vertices, res), mesh.faces)


def test_candidates_are_a_superset_of_the_band(sphere):
    res, band = 32, 2.0
    grid = np.stack(np.meshgrid(*[np.arange(res)] * 3, indexing="ij"), -1).reshape(-1, 3)  # 32^3 is small
    d = _exact(grid, sphere, res)
    inside = grid[d < band]
    cand = shell.band_candidates(shell.to_voxel_units(sphere.vertices, res)[sphere.faces].astype(np.float32), res, band)
    assert len(inside) > 100
    assert (SparseVoxels(cand.coords, res).lookup(inside) >= 0).all()


def test_plane_distances_are_exact():
    mesh = _plane_mesh()
    r = shell.thin_shell(mesh.vertices, mesh.faces, 64)
    exact = _exact(r, mesh, 64)
    assert np.abs(r.udf - exact).max() < 1e-3
    assert (r.udf < 2.0).all() and len(r.udf) > 1000


def test_sphere_walk_matches_exact_closest_points(sphere):
    res = 128
    r = shell.thin_shell(sphere.vertices, sphere.faces, res)
    exact = _exact(r, sphere, res)
    err = np.abs(r.udf - exact)
    # the walk returns a true triangle distance, so it can only over-estimate
    assert (r.udf >= exact - 1e-3).all()
    assert (err < 1e-3).mean() > 0.99, f"max error {err.max():.3f} voxels"
    ref = shell.thin_shell_sdf_reference(sphere.vertices, sphere.faces, res)
    ours = r.sdf
    assert (ref.lookup(ours.coords) >= 0).all()  # no voxel outside the true band
    assert len(ours) >= 0.99 * len(ref)


def test_backends_agree(sphere):
    if not shell._warp_available():
        pytest.skip("warp not importable: only the NumPy walk exists")
    a = shell.thin_shell(sphere.vertices, sphere.faces, 64, backend="numpy")
    b = shell.thin_shell(sphere.vertices, sphere.faces, 64, backend="warp")
    np.testing.assert_array_equal(a.sdf.coords, b.sdf.coords)
    np.testing.assert_allclose(a.udf, b.udf, atol=1e-4)


def test_value_convention_and_round_trip(sphere):
    band, sh = 3.0, 1.0
    r = shell.thin_shell(sphere.vertices, sphere.faces, 64, band=band, shell=sh)
    s = r.sdf.feats[:, 0]
    assert s.dtype == np.float32 and s.min() >= -1.0 and s.max() < 1.0
    np.testing.assert_allclose(s * (band - sh) + sh, r.udf, atol=1e-6)  # s ↔ udf is exact (no clipping here)
    np.testing.assert_array_equal(s < 0, r.udf < sh)
    d = shell.thin_shell(sphere.vertices, sphere.faces, 64)  # defaults band 2, shell 1: s = udf - 1 in [-1, 1]
    np.testing.assert_allclose(d.sdf.feats[:, 0], d.udf - 1.0, atol=1e-6)


def test_zero_set_hugs_the_surface(sphere):
    from skimage import measure

    res = 64
    r = shell.thin_shell(sphere.vertices, sphere.faces, res)
    dense = r.sdf.to_dense(fill=1.0)[0]
    verts, _, _, _ = measure.marching_cubes(dense, 0.0)
    d = shell.exact_distance(verts, shell.to_voxel_units(sphere.vertices, res), sphere.faces)
    # the shell's walls sit ~1 voxel (the shell half-thickness) from the surface; linear interpolation of the
    # kinked distance and the grazing rim give the tail
    err = np.abs(d - 1.0)
    assert np.median(err) < 0.05 and np.percentile(err, 99) < 0.25


def test_front_half_by_side_cuts_only_back_cells(sphere):
    r = shell.thin_shell(sphere.vertices, sphere.faces, 128)
    cells = r.sdf.downsample(8)
    keep = shell.front_half_mask(cells, r.sdf, r.front_side)
    assert keep.any() and keep.mean() < 1.0
    cell_of_voxel = cells.lookup(r.sdf.coords // 8)
    front_cells = np.unique(cell_of_voxel[r.front_side])
    np.testing.assert_array_equal(np.flatnonzero(keep), front_cells)
    # cut cells sit behind the kept ones in their column (the camera is at +z)
    for c in cells.coords[~keep][:50]:
        col = cells.coords[keep & (cells.coords[:, 0] == c[0]) & (cells.coords[:, 1] == c[1])]
        if len(col):
            assert col[:, 2].max() > c[2]


def test_front_half_by_column():
    coords = np.array([[0, 0, 1], [0, 0, 2], [0, 0, 3], [0, 0, 4], [1, 0, 5], [2, 2, 0], [2, 2, 2]])
    keep = shell.front_half_mask(SparseVoxels(coords, 8))
    np.testing.assert_array_equal(keep, [False, False, True, True, True, False, True])


def test_foreground_occupancy():
    cells = SparseVoxels(np.array([[0, 1, 2], [127, 127, 127], [10, 20, 30]]), 128)
    occ = shell.foreground_occupancy(cells, np.array([True, True, False]), 64)
    assert occ.shape == (64, 64, 64) and occ.sum() == 2 and occ[0, 0, 1] and occ[63, 63, 63]
    same = shell.foreground_occupancy(SparseVoxels(np.array([[5, 6, 7]]), 64), None, 64)
    assert same.sum() == 1 and same[5, 6, 7]
    up = shell.foreground_occupancy(SparseVoxels(np.array([[1, 1, 1]]), 32), None, 64)
    assert up.sum() == 8 and up[2:4, 2:4, 2:4].all()


def test_shared_mesh_shell(meshes_dir):
    import trimesh

    from consistent3dgen.geometry.render import render_pointmap

    m = trimesh.load(meshes_dir / "spot.obj", force="mesh")
    v = (m.vertices - m.bounds.mean(0)) / np.ptp(m.bounds, axis=0).max()
    cam = np.eye(4)
    cam[:3, :3] = np.diag([1.0, -1.0, -1.0])
    cam[2, 3] = 1.6
    pm = render_pointmap(v, m.faces, np.array([[90.0, 0, 48], [0, 90.0, 48], [0, 0, 1]]), 96, 96, cam_from_world=cam)
    mesh, _ = surface.pointmap_to_canonical_mesh(pm)
    r = shell.thin_shell(mesh.vertices, mesh.faces, 128)
    err = np.abs(r.udf - _exact(r, mesh, 128))
    assert (err < 1e-3).mean() > 0.97, f"max error {err.max():.3f} voxels"


@pytest.mark.parametrize(
    "args, kw, msg",
    [
        ((np.array([[0, 0, 0], [2.0, 0, 0], [0, 1, 0]]), np.array([[0, 1, 2]]), 64), {}, "canonical cube"),
        ((np.zeros((3, 3)), np.array([[0, 1, 5]]), 64), {}, "indices"),
        ((np.zeros((3, 3)), np.array([[0, 1, 2]]), 64), dict(band=1.0, shell=1.0), "shell < band"),
        ((np.zeros((3, 3)), np.array([[0, 1, 2]]), 4), {}, "resolution"),
        ((np.full((3, 3), np.nan), np.array([[0, 1, 2]]), 64), {}, "NaN"),
    ],
)
def test_bad_inputs(args, kw, msg):
    with pytest.raises(InputError, match=msg) as e:
        shell.thin_shell_sdf(*args, **kw)
    assert "\n" not in str(e.value)
