"""Sparse marching cubes: watertight, accurate, brick-independent; the NumPy, Warp and skimage paths agree."""

from __future__ import annotations

import numpy as np
import pytest
import trimesh
from skimage.measure import marching_cubes

from consistent3dgen.errors import InputError, NoSurfaceError
from consistent3dgen.geometry import marching_cubes as mc
from consistent3dgen.geometry import warp_runtime
from consistent3dgen.geometry.marching_cubes import marching_cubes_tables, sparse_marching_cubes
from consistent3dgen.geometry.mesh_ops import simplify_mesh
from consistent3dgen.geometry.voxels import SparseVoxels, voxel_centers

WARP = pytest.param(
    "warp",
    marks=pytest.mark.skipif(
        not warp_runtime.warp_available("marching_cubes"), reason="warp-lang not importable or not compiling"
    ),
)
METHODS = ["numpy", WARP, "skimage"]


def _band_sdf(resolution: int, distance, lo: np.ndarray, hi: np.ndarray, band: float, solid: bool) -> SparseVoxels:
    """Voxels in the box [lo, hi] (canonical) within ``band`` voxels of the surface (or everything inside if solid);
    values are the distance in band units, clipped to [-1, 1]."""
    h = 2.0 / resolution
    a = np.clip(np.floor((lo + 1) / h).astype(int), 0, resolution - 1)
    b = np.clip(np.ceil((hi + 1) / h).astype(int), 1, resolution)
    grid = np.stack(np.meshgrid(*[np.arange(x, y) for x, y in zip(a, b, strict=True)], indexing="ij"), -1)
    grid = grid.reshape(-1, 3)
    d = distance(voxel_centers(grid, resolution).astype(np.float64))
    keep = d < band * h if solid else np.abs(d) < band * h
    return SparseVoxels(grid[keep], resolution, np.clip(d[keep] / (band * h), -1, 1).astype(np.float32)[:, None])


def _sphere(center=(0.03, -0.02, 0.01), radius=0.6):
    c = np.asarray(center)
    return lambda p: np.linalg.norm(p - c, axis=1) - radius


def _torus(major=0.55, minor=0.2):
    return lambda p: np.hypot(np.hypot(p[:, 0], p[:, 2]) - major, p[:, 1]) - minor


@pytest.mark.parametrize("method", METHODS)
def test_sphere_is_watertight_outward_and_within_a_voxel(method: str) -> None:
    r = 64
    sdf = _band_sdf(r, _sphere(), np.full(3, -0.7), np.full(3, 0.7), band=3, solid=True)
    v, f = sparse_marching_cubes(sdf, brick=16, method=method)
    mesh = trimesh.Trimesh(v, f, process=False)
    assert mesh.is_watertight and mesh.is_winding_consistent
    assert mesh.volume > 0  # normals point outwards (towards positive values)
    dist = np.linalg.norm(v - np.array([0.03, -0.02, 0.01]), axis=1) - 0.6
    assert np.abs(dist).max() < 2.0 / r  # within one voxel
    assert mesh.volume == pytest.approx(4 / 3 * np.pi * 0.6**3, rel=0.02)


@pytest.mark.parametrize("method", METHODS)
def test_thin_shell_torus_band_is_watertight(method: str) -> None:
    r = 96
    # A thin shell (|d| - 1.5 voxels): two closed layers, no interior voxels, like the project's shell SDF.
    shell = _torus()
    sdf = _band_sdf(r, lambda p: np.abs(shell(p)) - 1.5 * 2 / r, np.full(3, -0.85), np.full(3, 0.85), 3, False)
    v, f = sparse_marching_cubes(sdf, brick=16, method=method)
    mesh = trimesh.Trimesh(v, f, process=False)
    assert mesh.is_watertight
    assert mesh.body_count == 2  # outer and inner layer of the shell
    assert np.abs(np.abs(shell(v.astype(np.float64))) - 3.0 / r).max() < 2.0 / r


def _face_set(v: np.ndarray, f: np.ndarray) -> np.ndarray:
    """Faces as rows of rounded corner positions, each rotated to start at its smallest corner (winding kept)
    and sorted: equal for two meshes with the same triangles whatever their vertex/face order."""
    tri = np.round(v[f].astype(np.float64), 5)
    keys = tri.reshape(len(f), 3, 3) @ np.array([1e6, 1e3, 1.0])
    start = np.argmin(keys, axis=1)
    rot = (start[:, None] + np.arange(3)) % 3
    tri = tri[np.arange(len(f))[:, None], rot].reshape(len(f), 9)
    return tri[np.lexsort(tri.T[::-1])]


@pytest.mark.parametrize("method", METHODS)
def test_brick_borders_weld_to_the_single_brick_result(method: str) -> None:
    r = 48
    sdf = _band_sdf(r, _torus(), np.full(3, -0.85), np.full(3, 0.85), band=2, solid=True)
    v_one, f_one = sparse_marching_cubes(sdf, brick=64, method=method)  # one brick covers the padded grid
    for brick in (5, 3):
        v_many, f_many = sparse_marching_cubes(sdf, brick=brick, method=method)
        assert len(v_many) == len(v_one) and len(f_many) == len(f_one)
        np.testing.assert_allclose(np.unique(np.round(v_many, 5), axis=0), np.unique(np.round(v_one, 5), axis=0))
        assert trimesh.Trimesh(v_many, f_many, process=False).is_watertight
        if method != "skimage":  # same triangles too, not just the same vertices
            np.testing.assert_array_equal(_face_set(v_many, f_many), _face_set(v_one, f_one))


def _noise_sdf(r: int, seed: int, density: float = 0.6) -> SparseVoxels:
    """Random values on a random subset of the grid: every marching-cubes case and many ambiguous faces occur."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.arange(r)] * 3, indexing="ij"), -1).reshape(-1, 3)
    keep = rng.random(len(grid)) < density
    return SparseVoxels(grid[keep], r, rng.uniform(-1.0, 1.0, (int(keep.sum()), 1)).astype(np.float32))


@pytest.mark.parametrize("method", METHODS)
def test_random_fields_are_watertight_and_consistently_wound(method: str) -> None:
    for seed in range(3):
        sdf = _noise_sdf(14, seed)
        v, f = sparse_marching_cubes(sdf, method=method, brick=4 if method != "skimage" else 6)
        mesh = trimesh.Trimesh(v, f, process=False)
        assert mesh.is_watertight and mesh.is_winding_consistent
        assert mesh.volume > 0  # normals towards increasing values: the enclosed (inside) region counts positive


def test_table_covers_every_case_and_ambiguous_faces_both_ways() -> None:
    ambiguous, triangles, counts, centre_edges = marching_cubes_tables()
    assert counts[0] == counts[255 * 64] == 0
    single = [1 << c for c in range(8)]
    assert all(counts[c * 64] == 1 for c in single) and all(counts[(255 - c) * 64] == 1 for c in single)
    assert ambiguous[0b01101001] == 0b111111  # two opposite tetrahedra of corners: every face is ambiguous
    assert 0 < np.count_nonzero(centre_edges) < 50  # a few long loops need a centre vertex
    # Each crossing edge of a case is used, each non-crossing edge never (any face resolution); a centre vertex
    # only in rows that declare its loop.
    for case in range(256):
        corners = [mc._edge_corners(e) for e in range(12)]
        crossing = {e for e, (lo, hi) in enumerate(corners) if ((case >> lo) & 1) != ((case >> hi) & 1)}
        for connected in (0, int(ambiguous[case])):
            row = case * 64 + connected
            used = set(triangles[row, : counts[row]].ravel().tolist())
            assert used - {mc.CENTRE} == crossing, (case, connected)
            assert (mc.CENTRE in used) == (centre_edges[row] != 0)


@pytest.mark.parametrize("method", ["numpy", WARP])
def test_other_level_gives_the_skimage_vertices(method: str) -> None:
    sdf = _band_sdf(40, _torus(), np.full(3, -0.85), np.full(3, 0.85), band=3, solid=True)
    v_ref, _ = sparse_marching_cubes(sdf, level=0.3, method="skimage")
    v, f = sparse_marching_cubes(sdf, level=0.3, method=method)
    assert len(v) == len(v_ref)
    np.testing.assert_allclose(np.unique(np.round(v, 5), axis=0), np.unique(np.round(v_ref, 5), axis=0), atol=2e-5)
    mesh = trimesh.Trimesh(v, f, process=False)
    assert mesh.is_watertight and mesh.volume > 0


def test_numpy_and_warp_paths_agree() -> None:
    if not warp_runtime.warp_available("marching_cubes"):
        pytest.skip("warp-lang not importable or not compiling")
    sdf = _noise_sdf(20, seed=7)
    v_np, f_np = sparse_marching_cubes(sdf, method="numpy")
    v_wp, f_wp = sparse_marching_cubes(sdf, method="warp")
    assert len(v_np) == len(v_wp) and len(f_np) == len(f_wp)
    np.testing.assert_array_equal(_face_set(v_np, f_np), _face_set(v_wp, f_wp))


def test_auto_falls_back_to_numpy_when_warp_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    sdf = _band_sdf(24, _sphere(), np.full(3, -0.7), np.full(3, 0.7), band=2, solid=True)
    v_ref, f_ref = sparse_marching_cubes(sdf, method="numpy")

    def broken(*args, **kw):  # noqa: ANN002, ANN003, ANN202
        raise RuntimeError("no compiler")

    monkeypatch.setattr(mc, "warp_available", lambda kernels=None: True)
    monkeypatch.setattr(mc, "_marching_cubes_warp", broken)
    monkeypatch.setattr(warp_runtime, "_FAILED", {})
    v, f = sparse_marching_cubes(sdf, method="auto")
    np.testing.assert_array_equal(_face_set(v, f), _face_set(v_ref, f_ref))
    # remembered: later calls go straight to NumPy
    assert isinstance(warp_runtime.warp_error("marching_cubes"), RuntimeError)
    assert not warp_runtime.warp_available("marching_cubes")
    with pytest.raises(RuntimeError, match="Warp marching-cubes path failed"):
        sparse_marching_cubes(sdf, method="warp")


@pytest.mark.parametrize("method", METHODS)
def test_matches_dense_skimage(method: str) -> None:
    r = 40
    sdf = _band_sdf(r, _sphere(radius=0.5), np.full(3, -1.0), np.full(3, 1.0), band=2, solid=True)
    dense = sdf.to_dense(fill=1.0)[0]
    dv, _, _, _ = marching_cubes(np.pad(dense, 1, constant_values=1.0), level=0.0)
    dv = -1.0 + (2.0 * (dv - 1.0) + 1.0) / r
    v, _ = sparse_marching_cubes(sdf, brick=8, method=method)
    assert len(v) == len(dv)
    tree_d = trimesh.Trimesh(v, np.zeros((0, 3), int), process=False).kdtree
    dist, _ = tree_d.query(dv)
    assert dist.max() < 1e-3 * 2 / r  # same vertices up to the level nudge


@pytest.mark.parametrize("method", METHODS)
def test_surface_touching_the_grid_border_is_closed(method: str) -> None:
    r = 32
    # A sphere larger than the cube: the surface is cut by the grid border and closed there by the padding.
    sdf = _band_sdf(r, _sphere(center=(0.0, 0.0, 0.0), radius=1.2), np.full(3, -1.0), np.full(3, 1.0), 2, True)
    v, f = sparse_marching_cubes(sdf, brick=8, method=method)
    mesh = trimesh.Trimesh(v, f, process=False)
    assert mesh.is_watertight and mesh.volume > 0
    assert v.min() >= -1.0 and v.max() <= 1.0


@pytest.mark.parametrize("method", METHODS)
def test_values_exactly_at_the_level_still_weld(method: str) -> None:
    r = 32
    # Quantised values put many samples exactly on the level; the nudge keeps the weld by grid edge valid.
    sdf = _band_sdf(r, _sphere(radius=0.5), np.full(3, -0.7), np.full(3, 0.7), band=2, solid=True)
    sdf.feats = np.round(sdf.feats * 2) / 2
    assert np.sum(sdf.feats == 0) > 100
    v, f = sparse_marching_cubes(sdf, brick=4, method=method)
    assert trimesh.Trimesh(v, f, process=False).is_watertight


def test_bad_sdf_raises_value_error() -> None:
    coords = np.array([[1, 2, 3], [4, 5, 6]])
    with pytest.raises(ValueError, match="one SDF value"):
        sparse_marching_cubes(SparseVoxels(coords, 16))
    with pytest.raises(NoSurfaceError, match="no surface"):  # a failed run, not bad input: eval counts these
        sparse_marching_cubes(SparseVoxels(coords, 16, np.array([0.5, 0.2], np.float32)))
    with pytest.raises(ValueError, match="NaN") as e:
        sparse_marching_cubes(SparseVoxels(coords, 16, np.array([np.nan, -0.2], np.float32)))
    assert not isinstance(e.value, (InputError, NoSurfaceError))  # a bad SDF is our bug: not bad input, no failed run
    with pytest.raises(ValueError, match="unknown marching-cubes method"):
        sparse_marching_cubes(SparseVoxels(coords, 16, np.array([-0.5, 0.2], np.float32)), method="dense")


def test_marching_cubes_then_simplify_to_a_budget() -> None:
    sdf = _band_sdf(48, _sphere(), np.full(3, -0.7), np.full(3, 0.7), band=2, solid=True)
    v_full, f_full = sparse_marching_cubes(sdf, brick=32)
    v, f = simplify_mesh(v_full, f_full, max_faces=2000)
    assert len(f_full) > 2000 >= len(f) > 1500
    mesh = trimesh.Trimesh(v, f)
    assert mesh.is_watertight
    assert np.abs(np.linalg.norm(v - [0.03, -0.02, 0.01], axis=1) - 0.6).max() < 0.02
