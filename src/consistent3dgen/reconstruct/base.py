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

RECONSTRUCTORS = ("vggt", "depth", "pointmap")  # (+ "mixed": depth and point maps together, inferred)
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
    if kinds == {"depth", "pointmap"}:
        return "mixed"  # depth maps and point maps with poses: each read by its own reconstructor
    if len(kinds) != 1:
        raise InputError(f"inputs mix kinds ({', '.join(sorted(kinds))}): images (VGGT: its own poses and "
                         "scale) cannot be mixed with depth or point maps; give one kind, or depth and point maps")
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
    if name == "mixed":
        return MixedReconstructor(**options)
    raise InputError(f"unknown reconstructor {name!r}; choose one of {', '.join(RECONSTRUCTORS)}")


class MixedReconstructor(Reconstructor):
    """Depth maps and ``.npz`` point maps of one object together, each with its pose: every input is read by its
    own kind's reconstructor (``cam_to_world``: one per input, in input order; the other options, such as
    ``intrinsics``, ``image`` and ``mask``, apply to the depth maps, one per depth map)."""

    name = "mixed"

    def __init__(self, cam_to_world: Sequence[Any] | None = None, max_pixels: int | None = None,
                 max_input_pixels: int | None = None, **depth_options: Any) -> None:
        self.cam_to_world = cam_to_world
        self.limits = {k: v for k, v in (("max_pixels", max_pixels), ("max_input_pixels", max_input_pixels))
                       if v is not None}
        self.depth_options = depth_options

    def reconstruct(self, inputs: Sequence[Any]) -> list[PointMap]:
        from .depth import DepthReconstructor, per_view
        from .pointmap_file import PointMapFileReconstructor

        poses = per_view(self.cam_to_world, len(inputs), "cam_to_world")
        kinds = [infer_reconstructor([item]) for item in inputs]
        out: list[PointMap | None] = [None] * len(inputs)
        for kind, make in (("depth", lambda p: DepthReconstructor(cam_to_world=p, **self.depth_options,
                                                                   **self.limits)),
                           ("pointmap", lambda p: PointMapFileReconstructor(cam_to_world=p, **self.limits))):
            idx = [i for i, k in enumerate(kinds) if k == kind]
            if not idx:
                continue
            views = make([poses[i] for i in idx])([inputs[i] for i in idx])
            for i, pm in zip(idx, views, strict=True):
                if pm.cam_to_world is None and i > 0:
                    raise InputError(f"input {i} ({pm.describe()}) has no camera pose: give --cam-to-world per "
                                     "input, or a 'cam_to_world' in the .npz")
                pm.meta["view"] = i
                out[i] = pm
        return [pm for pm in out if pm is not None]
