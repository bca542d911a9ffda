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
    """One depth map (PNG mm / ``.npy`` m / ``.exr`` m, or an (H, W) array in metres) → its PointMap.

    ``intrinsics`` (3x3, ``(fx, fy, cx, cy)`` or a file) or ``fov_deg`` is required; ``image`` (RGB(A), alpha is
    the object mask) and ``mask`` are optional. Depth maps carry no relative pose, so only one view is taken.
    Files above ``max_input_pixels`` are refused unread; maps above ``max_pixels`` are downscaled
    (:mod:`consistent3dgen.limits`).
    """

    name = "depth"

    def __init__(self, intrinsics: Any = None, fov_deg: float | None = None, image: Any = None,
                 mask: Any = None, max_pixels: int | None = DEFAULT_MAX_PIXELS,
                 max_input_pixels: int = DEFAULT_MAX_INPUT_PIXELS) -> None:
        self.intrinsics = intrinsics
        self.fov_deg = fov_deg
        self.image = image
        self.mask = mask
        self.max_pixels = max_pixels
        self.max_input_pixels = max_input_pixels

    def reconstruct(self, inputs: Sequence[Any]) -> list[PointMap]:
        from ..io.pointmap_io import depth_to_pointmap, load_depth

        if len(inputs) != 1:
            raise InputError(f"the depth reconstructor takes one depth map (no relative poses), got {len(inputs)}")
        src = inputs[0]
        if isinstance(src, (str, os.PathLike)):
            pm = load_depth(src, intrinsics=self.intrinsics, fov_deg=self.fov_deg, image=self.image, mask=self.mask,
                            max_pixels=self.max_pixels, max_input_pixels=self.max_input_pixels)
        else:
            intr = self.intrinsics
            if isinstance(intr, (str, os.PathLike)):
                raise InputError("pass intrinsics as numbers when the depth is an array")
            pm = depth_to_pointmap(np.asarray(src, np.float64), intr, self.fov_deg, image=self.image, mask=self.mask,
                                   max_pixels=self.max_pixels)
        pm.meta.setdefault("source", "depth")
        pm.meta["view"] = 0
        return [pm]
