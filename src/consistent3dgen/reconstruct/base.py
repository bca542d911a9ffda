"""The ``Reconstructor`` interface (inputs → pixel-aligned point maps) and the ``--reconstructor`` selection.

A reconstructor turns one or several inputs of the same object into one :class:`PointMap` per view, all in
the **first view's camera frame** (OpenCV), so later stages can use more than one seen side.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..pointmap import PointMap

RECONSTRUCTORS = ("vggt", "depth", "pointmap")
POINTMAP_SUFFIXES = (".npz",)
DEPTH_ONLY_SUFFIXES = (".npy", ".exr")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")


class Reconstructor(ABC):
    """Inputs of one object → one PointMap per view, in the first view's camera frame."""

    name: str = ""

    @abstractmethod
    def reconstruct(self, inputs: Sequence[Any]) -> list[PointMap]:
        """Reconstruct the seen surface of each input view."""

    def __call__(self, inputs: Sequence[Any] | Any) -> list[PointMap]:
        if isinstance(inputs, (str, os.PathLike)) or not isinstance(inputs, Sequence):
            inputs = [inputs]
        if len(inputs) == 0:
            raise InputError("no input given to reconstruct")
        return self.reconstruct(list(inputs))


def infer_reconstructor(inputs: Sequence[Any] | Any) -> str:
    """Pick ``pointmap`` for ``.npz``, ``depth`` for ``.npy``/``.exr``/16-bit PNG, otherwise ``vggt`` (images)."""
    from ..io.images import SIXTEEN_BIT_MODES, image_mode

    if isinstance(inputs, (str, os.PathLike)) or not isinstance(inputs, Sequence):
        inputs = [inputs]
    kinds = set()
    for item in inputs:
        if isinstance(item, PointMap):
            kinds.add("pointmap")
            continue
        if not isinstance(item, (str, os.PathLike)):
            _check_in_memory_image(item)
            kinds.add("vggt")  # in-memory images (PIL / uint8 arrays)
            continue
        p = Path(item)
        suffix = p.suffix.lower()
        if suffix in POINTMAP_SUFFIXES:
            kinds.add("pointmap")
        elif suffix in DEPTH_ONLY_SUFFIXES or (suffix == ".png" and image_mode(p) in SIXTEEN_BIT_MODES):
            kinds.add("depth")
        elif suffix in IMAGE_SUFFIXES:
            kinds.add("vggt")
        else:
            raise InputError(f"cannot tell what {p} is from its extension {suffix!r}; pass --reconstructor "
                             f"{'|'.join(RECONSTRUCTORS)}")
    if not kinds:
        raise InputError("no input given: pass an image, a depth map, a point map .npz or a PointMap")
    if len(kinds) != 1:
        raise InputError(f"inputs mix kinds ({', '.join(sorted(kinds))}); give one kind or pass --reconstructor")
    return kinds.pop()


def _check_in_memory_image(item: Any) -> None:
    """An input that is not a path must be an image: a PIL image or a uint8 (H, W[, 1|3|4]) array."""
    import numpy as np
    from PIL import Image

    if isinstance(item, Image.Image):
        return
    if isinstance(item, np.ndarray):
        if item.dtype == np.uint8 and (item.ndim == 2 or (item.ndim == 3 and item.shape[2] in (1, 3, 4))):
            return
        if item.ndim == 3 and item.shape[2] == 3 and np.issubdtype(item.dtype, np.floating):
            raise InputError(f"a {item.dtype} (H, W, 3) array is not an image (images are uint8); for 3D points "
                             "pass PointMap(points=..., mask=..., intrinsics=...)")
        raise InputError(f"an input array must be a uint8 image (H, W), (H, W, 3) or (H, W, 4), got "
                         f"{item.dtype} {item.shape}")
    raise InputError(f"cannot read an input of type {type(item).__name__}: give a PointMap, an image / depth map / "
                     ".npz path, a PIL image or a uint8 array, or a list of those")


def get_reconstructor(name: str | None = None, inputs: Sequence[Any] | Any = None, **options: Any) -> Reconstructor:
    """``name`` in ``vggt|depth|pointmap`` (or None/``auto``: inferred from ``inputs``) → a configured reconstructor.

    ``options`` go to the reconstructor's constructor (e.g. ``weights``, ``device``, ``dtype`` for VGGT;
    ``intrinsics``, ``fov_deg``, ``image``, ``mask`` for depth maps).
    """
    if name in (None, "", "auto"):
        if inputs is None:
            raise InputError("cannot infer the reconstructor without inputs; pass --reconstructor")
        name = infer_reconstructor(inputs)
    if name == "vggt":
        from .vggt.reconstructor import VGGTReconstructor

        return VGGTReconstructor(**options)
    if name == "depth":
        from .depth import DepthReconstructor

        return DepthReconstructor(**options)
    if name == "pointmap":
        from .pointmap_file import PointMapFileReconstructor

        return PointMapFileReconstructor(**options)
    raise InputError(f"unknown reconstructor {name!r}; choose one of {', '.join(RECONSTRUCTORS)}")
