"""A stored point map (``.npz`` with ``points`` in the camera frame) as a reconstructor."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from ..errors import InputError
from ..pointmap import PointMap
from .base import Reconstructor


class PointMapFileReconstructor(Reconstructor):
    """One ``.npz`` point map (or a ready :class:`PointMap`) → itself, validated."""

    name = "pointmap"

    def reconstruct(self, inputs: Sequence[Any]) -> list[PointMap]:
        from ..io.pointmap_io import load_npz

        if len(inputs) != 1:
            raise InputError(f"the pointmap reconstructor takes one .npz file, got {len(inputs)}")
        src = inputs[0]
        if isinstance(src, PointMap):
            pm = src
        elif isinstance(src, (str, os.PathLike)):
            pm = load_npz(src)
        else:
            raise InputError(f"expected a .npz path or a PointMap, got {type(src).__name__}")
        pm.meta.setdefault("source", "pointmap")
        pm.meta["view"] = 0
        return [pm]
