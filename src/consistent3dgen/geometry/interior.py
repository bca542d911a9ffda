"""The inside of a sparse signed field: absent latent cells that the field around them puts inside the solid.

A sparse SDF stores voxels only in the latent cells near the surface; marching cubes reads an absent voxel as
outside (``fill``). For a field that is negative inside (a signed prior's), the cells deep inside a thick body are
absent too, so marching cubes would close the band's inner side with a second, hidden surface: an inner shell
under every thick part, which a renderer does not show but which breaks the mesh into nested pieces and, in a
later stage, seeds tokens deep inside the body. Each connected region of absent cells (6-connected on the
latent grid) takes the sign that the voxels facing it vote for; the regions voted inside get all their voxels at
the inside value (a region filled only in part would meet its absent rest in another surface). For an unsigned
or thin-shell field every absent region is voted outside, so nothing changes there.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from .voxels import SparseVoxels


def enclosed_cells(sdf: SparseVoxels, factor: int, level: float = 0.0) -> np.ndarray:
    """(K, 3) int64 coords (latent grid ``resolution // factor``) of the absent cells that lie inside: those of
    the absent regions whose facing voxels are more often below ``level`` than above."""
    d = sdf.resolution // factor
    if sdf.feats is None or len(sdf) == 0:
        return np.zeros((0, 3), np.int64)
    coords = np.asarray(sdf.coords)  # int32: at 1024³ a copy in int64 would be gigabytes
    cells = coords // factor
    present = np.zeros((d, d, d), bool)
    present[tuple(cells.T)] = True
    labels, n = ndimage.label(~present)  # 6-connected absent regions; 0 = present
    if n == 0:
        return np.zeros((0, 3), np.int64)
    local = coords - cells * factor
    sign = np.sign(np.asarray(sdf.feats[:, 0], np.float32) - np.float32(level))
    votes = np.zeros(n + 1)
    for axis in range(3):
        for side, step in ((0, -1), (factor - 1, 1)):  # voxels on a cell face vote for the region beyond it
            on = local[:, axis] == side
            beyond = cells[on]
            beyond[:, axis] += step
            inside_grid = (beyond[:, axis] >= 0) & (beyond[:, axis] < d)
            np.add.at(votes, labels[tuple(beyond[inside_grid].T)], sign[on][inside_grid])
    inside = votes < 0
    inside[0] = False
    if not inside.any():
        return np.zeros((0, 3), np.int64)
    return np.argwhere(inside[labels]).astype(np.int64)


def fill_enclosed_interior(sdf: SparseVoxels, factor: int, level: float = 0.0, inside: float = -1.0
                           ) -> SparseVoxels:
    """``sdf`` plus every voxel of its :func:`enclosed_cells` at ``inside`` (the field's inside clip value), so
    that marching cubes closes only the outer surface; ``sdf`` itself when no cell is enclosed."""
    cells = enclosed_cells(sdf, factor, level)
    if len(cells) == 0:
        return sdf
    if not inside < level:
        raise ValueError(f"inside value {inside} must be below the level {level}")
    added = SparseVoxels(cells, sdf.resolution // factor).upsample_cells(factor).coords
    feats = np.concatenate([np.asarray(sdf.feats, np.float32),
                            np.full((len(added), sdf.feats.shape[1]), inside, np.float32)])
    return SparseVoxels(np.concatenate([sdf.coords, added]), sdf.resolution, feats)
