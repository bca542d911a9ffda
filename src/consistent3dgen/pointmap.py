"""`PointMap`: the visible surface as one 3D point per pixel, in the camera frame.

Camera frame = OpenCV: x right, y down, z forward (away from the camera), in the input's units.
Readers and writers for `.npz` point maps, depth maps with intrinsics, and coloured `.ply` point clouds
live in :mod:`consistent3dgen.io.pointmap_io` (filled in by the foundation issue).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .errors import InputError

MAX_ABS_COORD = 1e15
"""Largest |coordinate| a point map may hold. Far beyond any real object in any unit: coordinates past it are a
wrong unit or a corrupt file, and their squared distances would overflow float32 (near 1.8e19)."""


@dataclass
class PointMap:
    """Pixel-aligned points of the seen side.

    points:     (H, W, 3) float32, camera frame (OpenCV), NaN/inf allowed only where ``mask`` is False.
    conf:       (H, W) float32 confidence (higher = surer); all ones when the source has none.
    mask:       (H, W) bool object/validity mask (e.g. RGBA alpha > 0, depth > 0).
    image:      optional (H, W, 3) uint8 colours.
    intrinsics: optional (3, 3) float pinhole matrix K (pixels), so points can be projected back.
    """

    points: np.ndarray
    conf: np.ndarray | None = None
    mask: np.ndarray | None = None
    image: np.ndarray | None = None
    intrinsics: np.ndarray | None = None
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        pts = np.asarray(self.points)
        if pts.ndim != 3 or pts.shape[2] != 3:
            raise InputError(f"{self.describe()} must have shape (H, W, 3), got {tuple(pts.shape)}")
        h, w = pts.shape[:2]
        if h < 2 or w < 2:
            raise InputError(f"{self.describe()} is too small ({h}x{w}); need at least 2x2 pixels")
        if not np.issubdtype(pts.dtype, np.number):
            raise InputError(f"{self.describe()}: points must be numbers, got dtype {pts.dtype}")
        # range test before the float32 cast, so that 1e39 reads as "out of range" rather than "inf"
        raw = pts if pts.dtype in (np.float32, np.float64) else pts.astype(np.float64)
        finite = np.isfinite(raw).all(axis=2)
        too_big = finite & (np.abs(raw).max(axis=2) > MAX_ABS_COORD)
        with np.errstate(over="ignore"):  # beyond float32 only where too_big: refused below unless masked out
            self.points = pts.astype(np.float32, copy=False)
        if self.conf is None:
            self.conf = np.ones((h, w), np.float32)
        self.conf = np.asarray(self.conf, np.float32)
        if self.conf.shape != (h, w):
            raise InputError(f"confidence must have shape {(h, w)}, got {self.conf.shape}")
        if self.mask is None:
            self.mask = finite.copy()
        self.mask = np.asarray(self.mask).astype(bool)
        if self.mask.shape != (h, w):
            raise InputError(f"mask must have shape {(h, w)}, got {self.mask.shape}")
        if np.any(self.mask & too_big):
            n = int(np.sum(self.mask & too_big))
            big = float(np.abs(raw[self.mask & too_big]).max())
            raise InputError(f"{self.describe()}: {n} points inside the mask are out of range (|coordinate| up to "
                             f"{big:.3g}, above {MAX_ABS_COORD:.0e}): check the units, or mask them out")
        if np.any(self.mask & ~finite):
            n = int(np.sum(self.mask & ~finite))
            raise InputError(f"{self.describe()} has {n} non-finite (NaN/inf) points inside the mask")
        if not self.mask.any():
            raise InputError(f"mask is empty: no valid pixel in the {self.describe()}")
        if self.image is not None:
            img = np.asarray(self.image)
            if img.shape[:2] != (h, w) or img.ndim != 3 or img.shape[2] < 3:
                raise InputError(f"image must have shape {(h, w, 3)}, got {img.shape}")
            if img.dtype != np.uint8:
                img = np.clip(img * (255.0 if img.max() <= 1.0 else 1.0), 0, 255).astype(np.uint8)
            self.image = img[..., :3]
        if self.intrinsics is not None:
            k = np.asarray(self.intrinsics, np.float64)
            if k.shape != (3, 3):
                raise InputError(f"intrinsics must be a 3x3 matrix, got {k.shape}")
            self.intrinsics = k

    def describe(self) -> str:
        """``point map <path>`` when the map was read from a file (``meta["path"]``), else ``point map``."""
        path = self.meta.get("path") if isinstance(self.meta, dict) else None
        return f"point map {path}" if path else "point map"

    @property
    def shape(self) -> tuple[int, int]:
        return self.points.shape[0], self.points.shape[1]

    def valid_points(self) -> np.ndarray:
        """(N, 3) points inside the mask."""
        return self.points[self.mask]
