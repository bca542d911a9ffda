"""Depth map + intrinsics (RGB-D cameras, phone depth) as a reconstructor, wrapping ``io.pointmap_io``."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import InputError
from ..limits import DEFAULT_MAX_INPUT_PIXELS, DEFAULT_MAX_PIXELS
from ..pointmap import PointMap
from .base import Reconstructor


class DepthReconstructor(Reconstructor):
    """Depth maps (PNG mm / ``.npy`` m / ``.exr`` m, or (H, W) arrays in metres) → one PointMap each.

    ``intrinsics`` (3x3, ``(fx, fy, cx, cy)`` or a file) or ``fov_deg`` is required: one for every view, or a list
    with one per view; ``image`` (RGB(A), alpha is the object mask) and ``mask`` are optional, one per view (a
    list) or, for a single view, one value. Several depth maps need a camera pose each: ``cam_to_world``, a list
    with one 4x4 (or a pose file) per view (:func:`~consistent3dgen.io.pointmap_io.read_pose`). Files above
    ``max_input_pixels`` are refused unread; maps above ``max_pixels`` are downscaled (:mod:`consistent3dgen.limits`).
    """

    name = "depth"

    def __init__(self, intrinsics: Any = None, fov_deg: float | None = None, image: Any = None,
                 mask: Any = None, cam_to_world: Sequence[Any] | None = None,
                 max_pixels: int | None = DEFAULT_MAX_PIXELS,
                 max_input_pixels: int = DEFAULT_MAX_INPUT_PIXELS) -> None:
        self.intrinsics = intrinsics
        self.fov_deg = fov_deg
        self.image = image
        self.mask = mask
        self.cam_to_world = cam_to_world
        self.max_pixels = max_pixels
        self.max_input_pixels = max_input_pixels

    def reconstruct(self, inputs: Sequence[Any]) -> list[PointMap]:
        from ..io.pointmap_io import depth_to_pointmap, load_depth, read_pose

        n = len(inputs)
        images = per_view(self.image, n, "image")
        masks = per_view(self.mask, n, "mask")
        intrinsics = per_view(self.intrinsics, n, "intrinsics", shared=True)
        poses = per_view(self.cam_to_world, n, "cam_to_world", required=n > 1)
        out = []
        for i, src in enumerate(inputs):
            if isinstance(src, (str, os.PathLike)):
                pm = load_depth(src, intrinsics=intrinsics[i], fov_deg=self.fov_deg, image=images[i],
                                mask=masks[i], cam_to_world=poses[i], max_pixels=self.max_pixels,
                                max_input_pixels=self.max_input_pixels)
            else:
                intr = intrinsics[i]
                if isinstance(intr, (str, os.PathLike)):
                    raise InputError("pass intrinsics as numbers when the depth is an array")
                pm = depth_to_pointmap(np.asarray(src, np.float64), intr, self.fov_deg, image=images[i],
                                       mask=masks[i], max_pixels=self.max_pixels)
                pm.cam_to_world = None if poses[i] is None else read_pose(poses[i])
            pm.meta.setdefault("source", "depth")
            pm.meta["view"] = i
            out.append(pm)
        return out


def per_view(value: Any, n: int, what: str, shared: bool = False, required: bool = False) -> list[Any]:
    """One value per view: a list/tuple of ``n`` (one each), or, for one view (or when ``shared``), a single value
    for all. ``required``: every view must have one (several depth maps need their poses)."""
    is_list = isinstance(value, (list, tuple))
    if is_list and what == "intrinsics":  # one K as numbers ((fx, fy, cx, cy) or 3x3 rows) is not a list of K
        is_list = not all(isinstance(v, (int, float, np.number)) for v in value) and not _is_matrix(value)
    if is_list:
        if len(value) != n:
            raise InputError(f"{len(value)} {what} values for {n} views: give one per view")
        values = list(value)
    elif value is not None and n > 1 and not shared:
        raise InputError(f"one {what} for {n} views: give one per view")
    else:
        values = [value] * n
    if required and any(v is None for v in values):
        raise InputError(f"{n} depth maps need a camera pose each (cam_to_world, --cam-to-world FILE per view): "
                         "without poses the views cannot be placed together")
    return values


def _is_matrix(value: Any) -> bool:
    """A 3x3 matrix given as nested numbers (not a list of per-view values)."""
    try:
        return np.asarray(value, dtype=np.float64).shape == (3, 3)
    except (TypeError, ValueError):
        return False
