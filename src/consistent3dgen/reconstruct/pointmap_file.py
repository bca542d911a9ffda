"""A stored point map (``.npz`` with ``points`` in the camera frame) as a reconstructor."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from ..errors import InputError
from ..limits import DEFAULT_MAX_INPUT_PIXELS, DEFAULT_MAX_PIXELS
from ..pointmap import PointMap
from .base import Reconstructor


class PointMapFileReconstructor(Reconstructor):
    """One ``.npz`` point map (or a ready :class:`PointMap`) → itself, validated; above ``max_pixels`` downscaled
    (a file above ``max_input_pixels`` is refused unread; :mod:`consistent3dgen.limits`)."""

    name = "pointmap"

    def __init__(self, max_pixels: int | None = DEFAULT_MAX_PIXELS,
                 max_input_pixels: int = DEFAULT_MAX_INPUT_PIXELS) -> None:
        self.max_pixels = max_pixels
        self.max_input_pixels = max_input_pixels

    def reconstruct(self, inputs: Sequence[Any]) -> list[PointMap]:
        from ..io.pointmap_io import load_npz
        from ..pointmap import limit_pixels

        if len(inputs) != 1:
            raise InputError(f"the pointmap reconstructor takes one .npz file, got {len(inputs)}")
        src = inputs[0]
        if isinstance(src, PointMap):
            pm = limit_pixels(src, self.max_pixels)
        elif isinstance(src, (str, os.PathLike)):
            pm = load_npz(src, max_pixels=self.max_pixels, max_input_pixels=self.max_input_pixels)
        else:
            raise InputError(f"expected a .npz path or a PointMap, got {type(src).__name__}")
        pm.meta.setdefault("source", "pointmap")
        pm.meta["view"] = 0
        return [pm]
