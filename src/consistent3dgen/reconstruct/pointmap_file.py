"""A stored point map (``.npz`` with ``points`` in the camera frame) as a reconstructor."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from ..errors import InputError
from ..limits import DEFAULT_MAX_INPUT_PIXELS, DEFAULT_MAX_PIXELS
from ..pointmap import PointMap
from .base import Reconstructor


class PointMapFileReconstructor(Reconstructor):
    """``.npz`` point maps (or ready :class:`PointMap` objects) → themselves, validated; above ``max_pixels``
    downscaled (a file above ``max_input_pixels`` is refused unread; :mod:`consistent3dgen.limits`).

    Several views need a pose each: the file's ``cam_to_world`` member, or ``cam_to_world`` (one 4x4 / pose file
    per view, or None for a view whose file has its own), which takes precedence over the file's.
    """

    name = "pointmap"

    def __init__(self, cam_to_world: Sequence[Any] | None = None, max_pixels: int | None = DEFAULT_MAX_PIXELS,
                 max_input_pixels: int = DEFAULT_MAX_INPUT_PIXELS) -> None:
        self.cam_to_world = cam_to_world
        self.max_pixels = max_pixels
        self.max_input_pixels = max_input_pixels

    def reconstruct(self, inputs: Sequence[Any]) -> list[PointMap]:
        from ..io.pointmap_io import load_npz, read_pose
        from ..pointmap import limit_pixels
        from .depth import per_view

        poses = per_view(self.cam_to_world, len(inputs), "cam_to_world")
        out = []
        for i, src in enumerate(inputs):
            if isinstance(src, PointMap):  # a copy: the caller's map keeps its meta and pose
                pm = replace(limit_pixels(src, self.max_pixels), meta=dict(src.meta))
            elif isinstance(src, (str, os.PathLike)):
                pm = load_npz(src, max_pixels=self.max_pixels, max_input_pixels=self.max_input_pixels)
            else:
                raise InputError(f"expected a .npz path or a PointMap, got {type(src).__name__}")
            if poses[i] is not None:
                pm.cam_to_world = read_pose(poses[i])
            pm.meta.setdefault("source", "pointmap")
            pm.meta["view"] = i
            out.append(pm)
        return out
