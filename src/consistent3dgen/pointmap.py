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
    cam_to_world: optional (4, 4) rigid transform from this view's camera frame (where ``points`` are) to a frame
                shared by several views of one object; None = the identity (a single view). Several views given
                to the pipeline are first re-expressed relative to the first one (:func:`relative_to_first`),
                so the output comes back in the first view's camera frame.
    """

    points: np.ndarray
    conf: np.ndarray | None = None
    mask: np.ndarray | None = None
    image: np.ndarray | None = None
    intrinsics: np.ndarray | None = None
    meta: dict = field(default_factory=dict)
    cam_to_world: np.ndarray | None = None

    def __post_init__(self) -> None:
        pts = np.asarray(self.points)
        if pts.ndim != 3 or pts.shape[2] != 3:
            raise InputError(f"{self.describe()} must have shape (H, W, 3), got {tuple(pts.shape)}")
        h, w = pts.shape[:2]
        if h < 2 or w < 2:
            raise InputError(f"{self.describe()} is too small ({h}x{w}); need at least 2x2 pixels")
        if not np.issubdtype(pts.dtype, np.number) or np.iscomplexobj(pts):
            raise InputError(f"{self.describe()}: points must be real numbers, got dtype {pts.dtype}")
        # range test before the float32 cast, so that 1e39 reads as "out of range" rather than "inf"
        raw = pts if pts.dtype in (np.float32, np.float64) else pts.astype(np.float64)
        finite = np.isfinite(raw).all(axis=2)
        too_big = finite & (np.abs(raw).max(axis=2) > MAX_ABS_COORD)
        with np.errstate(over="ignore"):  # beyond float32 only where too_big: refused below unless masked out
            self.points = pts.astype(np.float32, copy=False)
        if self.conf is None:
            self.conf = np.ones((h, w), np.float32)
        conf = np.asarray(self.conf)
        if not np.issubdtype(conf.dtype, np.number) or np.iscomplexobj(conf):
            raise InputError(f"{self.describe()}: confidence must be real numbers, got dtype {conf.dtype}")
        self.conf = conf.astype(np.float32)
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
            from .io.pointmap_io import intrinsics_matrix  # the one check of a pinhole K

            k = np.asarray(self.intrinsics)
            if k.shape != (3, 3):
                raise InputError(f"{self.describe()}: intrinsics must be a 3x3 matrix, got {k.shape}")
            self.intrinsics = intrinsics_matrix(k, w, h)
        if self.cam_to_world is not None:
            self.cam_to_world = check_pose(self.cam_to_world, f"{self.describe()}: cam_to_world")

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

    @property
    def pose(self) -> np.ndarray:
        """The (4, 4) ``cam_to_world`` (the identity when there is none)."""
        return np.eye(4) if self.cam_to_world is None else self.cam_to_world

    def to_shared(self, points: np.ndarray) -> np.ndarray:
        """(..., 3) points of this view's camera frame → the shared frame (float64)."""
        return transform(points, self.pose)

    def from_shared(self, points: np.ndarray) -> np.ndarray:
        """(..., 3) points of the shared frame → this view's camera frame (float64)."""
        return transform(points, rigid_inverse(self.pose))


# --------------------------------------------------------------------------- poses of several views

POSE_TOLERANCE = 1e-4  # |RᵀR − I| and |det R − 1| allowed: a pose written with a few decimals is still rigid


def check_pose(pose: np.ndarray, what: str = "cam_to_world") -> np.ndarray:
    """A (4, 4) rigid transform (rotation + translation, last row 0 0 0 1), float64; an ``InputError`` otherwise.

    The rotation is re-orthonormalised (nearest rotation, SVD) so poses written with a few decimals compose
    without drift; a scale, shear or reflection is refused, since the views would not be of one rigid object.
    """
    m = np.asarray(pose)
    if m.shape == (3, 4):
        m = np.vstack([m, [0.0, 0.0, 0.0, 1.0]])
    if m.shape != (4, 4):
        raise InputError(f"{what} must be a 4x4 (or 3x4) matrix, got shape {m.shape}")
    if not np.issubdtype(m.dtype, np.number) or np.iscomplexobj(m) or not np.isfinite(m).all():
        raise InputError(f"{what} must hold finite real numbers")
    m = m.astype(np.float64)
    if np.abs(m[3] - [0.0, 0.0, 0.0, 1.0]).max() > POSE_TOLERANCE:
        raise InputError(f"{what}: the last row must be 0 0 0 1, got {' '.join(f'{v:g}' for v in m[3])}")
    r = m[:3, :3]
    if np.abs(r.T @ r - np.eye(3)).max() > POSE_TOLERANCE or abs(np.linalg.det(r) - 1.0) > POSE_TOLERANCE:
        raise InputError(f"{what} is not rigid: its 3x3 part must be a rotation (orthonormal, det +1; "
                         f"det = {np.linalg.det(r):.4g})")
    u, _, vt = np.linalg.svd(r)
    out = np.eye(4)
    out[:3, :3] = u @ vt
    out[:3, 3] = m[:3, 3]
    return out


def rigid_inverse(pose: np.ndarray) -> np.ndarray:
    """Inverse of a (4, 4) rigid transform (exact: Rᵀ, −Rᵀt)."""
    out = np.eye(4)
    out[:3, :3] = pose[:3, :3].T
    out[:3, 3] = -pose[:3, :3].T @ pose[:3, 3]
    return out


def transform(points: np.ndarray, pose: np.ndarray) -> np.ndarray:
    """Apply a (4, 4) transform to (..., 3) points (float64)."""
    p = np.asarray(points, np.float64)
    return p @ pose[:3, :3].T + pose[:3, 3]


def relative_to_first(views: list[PointMap]) -> list[PointMap]:
    """The views with ``cam_to_world`` re-expressed so the shared frame is the first view's camera frame.

    One view: returned as it is when it has no pose, else with the identity (its pose says nothing about the
    object; left in, free space and colour would place the view by it in its own frame). Several: each must carry
    a ``cam_to_world`` (the first may omit it only when all do, which is refused: without poses the views cannot
    be placed); the first's becomes the identity.
    """
    views = list(views)
    if not views or (len(views) == 1 and views[0].cam_to_world is None):
        return views
    missing = [i for i, v in enumerate(views) if v.cam_to_world is None]
    if missing and not (missing == [0]):
        names = ", ".join(f"{i} ({views[i].describe()})" for i in missing if i)
        raise InputError(f"{len(views)} views need a camera pose each (cam_to_world); view {names} has none: "
                         "give each .npz a 'cam_to_world' 4x4, or --cam-to-world per input")
    first_inv = rigid_inverse(views[0].pose)
    out = []
    for v in views:
        rel = first_inv @ v.pose
        out.append(PointMap(v.points, conf=v.conf, mask=v.mask, image=v.image, intrinsics=v.intrinsics,
                            meta=dict(v.meta), cam_to_world=rel))
    return out


# --------------------------------------------------------------------------- downscaling


def stride_offset(stride: int) -> int:
    """The kept pixel of each ``stride``×``stride`` block: the one nearest its centre (top-left of the middle)."""
    return (int(stride) - 1) // 2


def downscaled_size(height: int, width: int, stride: int) -> tuple[int, int]:
    """(H', W') after keeping pixels ``offset + stride·i`` (see :func:`stride_offset`)."""
    o = stride_offset(stride)
    return len(range(o, int(height), int(stride))), len(range(o, int(width), int(stride)))


def pixel_stride(height: int, width: int, max_pixels: int) -> int:
    """The smallest integer stride that brings an ``height``×``width`` map to at most ``max_pixels`` pixels."""
    if height * width <= max_pixels:
        return 1
    stride = max(2, int(np.floor(np.sqrt(height * width / max_pixels))))
    while np.prod(downscaled_size(height, width, stride)) > max_pixels:
        stride += 1
    h, w = downscaled_size(height, width, stride)
    if h < 2 or w < 2:
        raise InputError(f"a {width}x{height} point map cannot be downscaled to at most {max_pixels:,} pixels and "
                         f"keep 2x2 pixels; raise --max-pixels (max_pixels)")
    return stride


def downscale_intrinsics(k: np.ndarray, stride: int) -> np.ndarray:
    """K of the downscaled map: pixel ``(u, v)`` of the original is ``((u − o) / s, (v − o) / s)`` of the new one.

    Pixel centres sit on integer coordinates (the package's convention, ``geometry/render.py``), and new pixel
    ``i`` is old pixel ``o + s·i``: so ``K' = S·K`` with ``S = [[1/s, 0, −o/s], [0, 1/s, −o/s], [0, 0, 1]]``, i.e.
    ``fx/s, fy/s`` (and the skew /s), ``(cx − o)/s, (cy − o)/s``. Exact: K' projects every kept point onto its new
    pixel centre. For an odd stride this is the usual ``(c + ½)/s − ½``.
    """
    s, o = float(stride), float(stride_offset(stride))
    scale = np.array([[1.0 / s, 0.0, -o / s], [0.0, 1.0 / s, -o / s], [0.0, 0.0, 1.0]])
    return scale @ np.asarray(k, np.float64)


def stride_pixels(array: np.ndarray | None, stride: int) -> np.ndarray | None:
    """The kept pixels (rows and columns ``offset + stride·i``) of an (H, W, ...) array, as a compact copy."""
    if array is None or stride == 1:
        return array
    o = stride_offset(stride)
    return np.ascontiguousarray(np.asarray(array)[o::stride, o::stride])


def downscale_record(height: int, width: int, stride: int, previous: dict | None = None) -> dict:
    """What ``meta["downscale"]`` records: stride and offset from the original pixels, original and new (H, W)."""
    new = list(downscaled_size(height, width, stride))
    if previous:  # downscaled twice: one stride and offset from the original pixels
        s0, o0 = int(previous["stride"]), int(previous["offset"])
        return {"stride": s0 * int(stride), "offset": o0 + s0 * stride_offset(stride),
                "from": list(previous["from"]), "to": new}
    return {"stride": int(stride), "offset": stride_offset(stride), "from": [int(height), int(width)], "to": new}


def downscale_pointmap(pm: PointMap, stride: int) -> PointMap:
    """``pm`` at every ``stride``-th pixel (nearest pixel: points, confidence, mask and colours of the kept pixels,
    unchanged; intrinsics by :func:`downscale_intrinsics`), recorded in ``meta["downscale"]``."""
    if stride == 1:
        return pm
    meta = dict(pm.meta)
    meta["downscale"] = downscale_record(*pm.shape, stride, meta.get("downscale"))
    k = None if pm.intrinsics is None else downscale_intrinsics(pm.intrinsics, stride)
    return PointMap(stride_pixels(pm.points, stride), conf=stride_pixels(pm.conf, stride),
                    mask=stride_pixels(pm.mask, stride), image=stride_pixels(pm.image, stride), intrinsics=k,
                    meta=meta, cam_to_world=pm.cam_to_world)


def limit_pixels(pm: PointMap, max_pixels: int | None) -> PointMap:
    """``pm`` itself when it has at most ``max_pixels`` pixels (None: no limit), else downscaled to fit."""
    if max_pixels is None:
        return pm
    return downscale_pointmap(pm, pixel_stride(*pm.shape, int(max_pixels)))
