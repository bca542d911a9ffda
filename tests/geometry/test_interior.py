"""The inside of a sparse signed field (geometry.interior): absent cells deep inside a body are voted inside, so
marching cubes closes only the outer surface; air pockets and unsigned fields stay as they are."""

import numpy as np
import pytest

from consistent3dgen.geometry.interior import enclosed_cells, fill_enclosed_interior
from consistent3dgen.geometry.marching_cubes import sparse_marching_cubes
from consistent3dgen.geometry.mesh_ops import mesh_pieces
from consistent3dgen.geometry.voxels import SparseVoxels, all_voxels

RES, FACTOR, BAND = 128, 8, 3.0


def band_cells_field(distance, values_of) -> SparseVoxels:
    """Every voxel of the latent cells holding a band voxel (|d| < BAND voxels), as the mini prior's data."""
    coords = all_voxels(RES)
    centres = -1.0 + (2.0 * coords + 1.0) / RES
    d_vox = distance(centres) * RES / 2.0
    cells = np.unique(coords[np.abs(d_vox) < BAND] // FACTOR, axis=0)
    cell_keys = set(map(tuple, cells))
    keep = np.array([tuple(c) in cell_keys for c in coords // FACTOR])
    return SparseVoxels(coords[keep], RES, values_of(d_vox[keep])[:, None].astype(np.float32))


def signed(d_vox):
    return np.clip(d_vox / BAND, -1.0, 1.0)


def ball(p):
    return np.linalg.norm(p, axis=1) - 0.7


def hollow_ball(p):  # solid between radii 0.35 and 0.8: a closed air pocket in the middle
    r = np.linalg.norm(p, axis=1)
    return np.maximum(r - 0.8, 0.35 - r)


@pytest.fixture(scope="module")
def ball_field():
    return band_cells_field(ball, signed)


def test_a_solid_ball_gets_one_surface_not_an_inner_shell(ball_field):
    v0, f0 = sparse_marching_cubes(ball_field)
    assert mesh_pieces(v0, f0)["pieces"] == 2  # the band's inner side closed against the absent cells
    filled = fill_enclosed_interior(ball_field, FACTOR)
    inside = enclosed_cells(ball_field, FACTOR)
    centres = -1.0 + (2.0 * inside + 1.0) / (RES // FACTOR)
    assert len(inside) and (np.linalg.norm(centres, axis=1) < 0.7).all()  # the cells added are inside
    v, f = sparse_marching_cubes(filled)
    pieces = mesh_pieces(v, f)
    assert pieces["pieces"] == 1 and pieces["watertight"]
    # one sphere: every vertex within a voxel of radius 0.7 (linear interpolation of an exact distance)
    assert np.abs(np.linalg.norm(v, axis=1) - 0.7).max() < 2.0 / RES


def test_an_air_pocket_stays_open_and_the_solid_around_it_is_filled():
    field = band_cells_field(hollow_ball, signed)
    v0, f0 = sparse_marching_cubes(field)
    assert mesh_pieces(v0, f0)["pieces"] == 4  # outer, cavity, and an inner shell on each band
    v, f = sparse_marching_cubes(fill_enclosed_interior(field, FACTOR))
    assert mesh_pieces(v, f)["pieces"] == 2
    r = np.linalg.norm(v, axis=1)
    outer, cavity = r > 0.575, r <= 0.575
    assert np.abs(r[outer] - 0.8).max() < 2.0 / RES and np.abs(r[cavity] - 0.35).max() < 2.0 / RES
    assert cavity.sum() > 100  # the pocket's surface is kept


def test_an_unsigned_field_is_left_as_it_is(ball_field):
    # the thin-shell convention: positive inside and outside away from the surface
    shell = band_cells_field(ball, lambda d: np.clip((np.abs(d) - 1.0) / (BAND - 1.0), -1.0, 1.0))
    assert len(enclosed_cells(shell, FACTOR)) == 0
    assert fill_enclosed_interior(shell, FACTOR) is shell
    with pytest.raises(ValueError, match="inside value"):
        fill_enclosed_interior(ball_field, FACTOR, inside=0.5)
