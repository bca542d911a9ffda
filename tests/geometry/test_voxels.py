import numpy as np
import pytest

from consistent3dgen.geometry.voxels import SparseVoxels, cells_to_occupancy, points_to_voxels, voxel_centers


def test_centres_and_point_lookup_agree():
    rng = np.random.default_rng(0)
    c = rng.integers(0, 64, size=(200, 3))
    assert np.array_equal(points_to_voxels(voxel_centers(c, 64), 64), c)


def test_downsample_union_lookup():
    rng = np.random.default_rng(1)
    c = np.unique(rng.integers(0, 32, size=(500, 3)), axis=0)
    v = SparseVoxels(c, 32, rng.standard_normal((len(c), 2)).astype(np.float32))
    cells = v.downsample(8)
    assert cells.resolution == 4
    assert set(map(tuple, cells.coords)) == set(map(tuple, c // 8))
    # averaged features: check one cell by hand
    k = 0
    members = np.all(c // 8 == cells.coords[k], axis=1)
    np.testing.assert_allclose(cells.feats[k], v.feats[members].mean(0), rtol=1e-5)
    # union with itself is itself (sorted); lookup joins by coordinate
    u = v.union(v)
    assert len(u) == len(v)
    idx = u.lookup(v.coords)
    np.testing.assert_array_equal(u.coords[idx], v.coords)
    np.testing.assert_array_equal(u.feats[idx], v.feats)
    assert (v.lookup(np.array([[31, 31, 31]])) == -1).all() or (v.coords == 31).all(1).any()


def test_union_prefers_self_and_fills_zero():
    a = SparseVoxels(np.array([[0, 0, 0], [1, 1, 1]]), 4, np.array([[1.0], [2.0]], np.float32))
    b = SparseVoxels(np.array([[1, 1, 1], [2, 2, 2]]), 4)
    u = a.union(b)
    assert len(u) == 3
    np.testing.assert_array_equal(u.feats[u.lookup(np.array([[1, 1, 1], [2, 2, 2]]))][:, 0], [2.0, 0.0])


def test_dense_round_trip_and_refusal(tmp_path):
    g = np.zeros((8, 8, 8), np.float32)
    g[1, 2, 3] = g[4, 5, 6] = 1
    v = SparseVoxels.from_dense(g)
    assert len(v) == 2
    np.testing.assert_array_equal(v.to_dense()[0], g)
    up = v.upsample_cells(2)
    assert len(up) == 16 and up.resolution == 16
    np.testing.assert_array_equal(up.downsample(2).coords, v.sorted().coords)
    with pytest.raises(ValueError):
        SparseVoxels(np.array([[0, 0, 600]]), 512).upsample_cells(2).to_dense()
    with pytest.raises(ValueError):
        SparseVoxels(np.array([[0, 0, 8]]), 8)
    p = tmp_path / "v.npz"
    v.save_npz(str(p))
    w = SparseVoxels.load_npz(str(p))
    np.testing.assert_array_equal(w.coords, v.coords)


def test_cells_to_occupancy():
    cells = SparseVoxels(np.array([[0, 1, 2], [127, 127, 127], [10, 20, 30]]), 128)
    occ = cells_to_occupancy(cells, np.array([True, True, False]), 64)
    assert occ.shape == (64, 64, 64) and occ.sum() == 2 and occ[0, 0, 1] and occ[63, 63, 63]
    same = cells_to_occupancy(SparseVoxels(np.array([[5, 6, 7]]), 64), None, 64)
    assert same.sum() == 1 and same[5, 6, 7]
    up = cells_to_occupancy(SparseVoxels(np.array([[1, 1, 1]]), 32), None, 64)
    assert up.sum() == 8 and up[2:4, 2:4, 2:4].all()
