"""Free space seen by the input view: where the object is certainly *not*.

A point is free when it projects inside the image but outside the (dilated) object mask, or when it lies
between the camera and the seen surface by more than ``margin``. Points behind the seen surface, or projecting
outside the image, are unknown (not free). All conversions go through :mod:`.frames`.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import binary_dilation, distance_transform_edt

from ..pointmap import PointMap
from .frames import CanonicalFrame, canonical_to_camera


def _project(points_canonical: np.ndarray, pointmap: PointMap, frame: CanonicalFrame):  # noqa: ANN202
    if pointmap.intrinsics is None:
        raise ValueError("free space needs the camera intrinsics of the point map")
    p = canonical_to_camera(np.asarray(points_canonical, np.float64).reshape(-1, 3), frame)
    h, w = pointmap.shape
    z = p[:, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        uvw = p @ pointmap.intrinsics.T
        u, v = uvw[:, 0] / uvw[:, 2], uvw[:, 1] / uvw[:, 2]
    # pixel centres at integer (u, v), as the point maps are unprojected (``np.arange``): pixel i covers
    # [i - 0.5, i + 0.5), so the nearest integer is the pixel (truncating read half a pixel up and to the left)
    in_image = (z > 0) & (u >= -0.5) & (u < w - 0.5) & (v >= -0.5) & (v < h - 0.5)
    col = np.clip(np.rint(np.nan_to_num(u, nan=0.0)), 0, w - 1).astype(np.int64)
    row = np.clip(np.rint(np.nan_to_num(v, nan=0.0)), 0, h - 1).astype(np.int64)
    return in_image, row, col, z


def view_depth_gap(
    points_canonical: np.ndarray, pointmap: PointMap, frame: CanonicalFrame
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Project canonical points into the view.

    Returns ``in_image`` (N,) bool, ``in_mask`` (N,) bool (pixel inside the object mask) and ``gap`` (N,)
    float: seen depth minus the point's depth, in canonical units (> 0: the point is in front of the seen
    surface; NaN where the pixel has no seen point).
    """
    in_image, row, col, z = _project(points_canonical, pointmap, frame)
    in_mask = in_image & pointmap.mask[row, col]
    seen_z = np.where(in_mask, pointmap.points[row, col, 2], np.nan)
    return in_image, in_mask, (seen_z - z) * frame.scale


def free_space_mask(
    points_canonical: np.ndarray,
    pointmap: PointMap,
    frame: CanonicalFrame,
    margin: float,
    mask_dilation_px: int,
    silhouette_margin: bool = False,
) -> np.ndarray:
    """(N,) bool: points the view shows to be empty (see module docstring); ``margin`` in canonical units.

    ``silhouette_margin``: the margin holds for the silhouette too (the point's pixel distance to the mask, at its
    depth, above ``margin``), for whole cells: a cell whose centre projects just outside the mask may still hold
    the surface that makes the silhouette. Off, a point is free as soon as it projects outside the mask (voxels:
    nothing may bulge past the silhouette)."""
    in_image, in_mask, gap = view_depth_gap(points_canonical, pointmap, frame)
    silhouette = pointmap.mask
    if mask_dilation_px > 0:  # a few pixels of slack for mask and projection error
        silhouette = binary_dilation(silhouette, iterations=int(mask_dilation_px))
    _, row, col, z = _project(points_canonical, pointmap, frame)
    if silhouette_margin and silhouette.any():
        outside_px = distance_transform_edt(~silhouette)[row, col]
        focal = float(min(pointmap.intrinsics[0, 0], pointmap.intrinsics[1, 1]))
        with np.errstate(divide="ignore", invalid="ignore"):
            outside_silhouette = in_image & (outside_px > margin / frame.scale * focal / z)
    else:
        outside_silhouette = in_image & ~silhouette[row, col]
    in_front = np.nan_to_num(gap, nan=-np.inf) > margin
    return outside_silhouette | in_front
