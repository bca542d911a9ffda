"""The two frames of the project and the one pair of functions that converts between them.

* ``camera``: OpenCV camera frame of the input (x right, y down, z forward), in the input's units.
* ``canonical``: the generator's cube [-1, 1]^3, y up, the input camera on the +z side looking towards -z
  (so the seen side of the object faces +z, the glTF "front" convention).

``canonical = scale * R @ (p_camera - center)`` with ``R = diag(1, -1, -1)`` (a proper rotation: flips y to
up and z to face the camera). Every conversion in the package goes through :func:`camera_to_canonical` and
:func:`canonical_to_camera`. Between sparse stages the canonical cube is re-normalised to the previous stage's
mesh by a :class:`Similarity`; :func:`compose_frame` folds it into the camera → canonical frame.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

CAMERA_TO_CANONICAL_AXES = np.diag([1.0, -1.0, -1.0])


@dataclass(frozen=True)
class CanonicalFrame:
    """Similarity transform camera → canonical: ``scale * R @ (p - center)``."""

    center: tuple[float, float, float]
    scale: float
    rotation: tuple[tuple[float, ...], ...] = tuple(map(tuple, CAMERA_TO_CANONICAL_AXES))

    @property
    def R(self) -> np.ndarray:  # noqa: N802 - matrix name
        return np.asarray(self.rotation, np.float64)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> CanonicalFrame:
        return cls(
            center=tuple(float(v) for v in d["center"]),
            scale=float(d["scale"]),
            rotation=tuple(tuple(float(v) for v in row) for row in d["rotation"]),
        )


def camera_to_canonical(points: np.ndarray, frame: CanonicalFrame) -> np.ndarray:
    """Map (..., 3) camera-frame points into the canonical cube (float64 math, input dtype kept)."""
    p = np.asarray(points, np.float64)
    out = frame.scale * (p - np.asarray(frame.center)) @ frame.R.T
    return out.astype(points.dtype if np.issubdtype(np.asarray(points).dtype, np.floating) else np.float64)


def canonical_to_camera(points: np.ndarray, frame: CanonicalFrame) -> np.ndarray:
    """Exact inverse of :func:`camera_to_canonical`."""
    p = np.asarray(points, np.float64)
    out = (p @ frame.R) / frame.scale + np.asarray(frame.center)
    return out.astype(points.dtype if np.issubdtype(np.asarray(points).dtype, np.floating) else np.float64)


def fit_canonical_frame(points: np.ndarray, margin: float = 0.05, depth_ratio: float = 1.0) -> CanonicalFrame:
    """Place the seen points in the canonical cube, leaving room for the unseen back.

    x and y are centred on the seen bounding box. Along the view axis only the front is seen, so the object is
    assumed ``depth_ratio * max(width, height)`` deep (at least the seen depth) and its centre is put that far
    behind the nearest seen point, halved. The largest extent then fills ``[-(1 - margin), 1 - margin]``.
    """
    p = np.asarray(points, np.float64).reshape(-1, 3)
    p = p[np.isfinite(p).all(axis=1)]
    if len(p) == 0:
        raise ValueError("cannot place an empty point set in the canonical cube")
    q = p @ CAMERA_TO_CANONICAL_AXES.T
    lo, hi = q.min(axis=0), q.max(axis=0)
    ext = hi - lo
    depth = max(ext[2], depth_ratio * max(ext[0], ext[1]))
    extent = max(ext[0], ext[1], depth)
    if not np.isfinite(extent) or extent <= 0:
        raise ValueError("seen points have zero extent: cannot normalise them")
    center_q = np.array([(lo[0] + hi[0]) / 2, (lo[1] + hi[1]) / 2, hi[2] - depth / 2])
    center_cam = CAMERA_TO_CANONICAL_AXES.T @ center_q
    scale = 2.0 * (1.0 - margin) / extent
    return CanonicalFrame(center=tuple(float(v) for v in center_cam), scale=float(scale))


@dataclass(frozen=True)
class Similarity:
    """``p' = scale · p + offset``: a change of canonical frame between sparse stages (re-normalisation)."""

    scale: float = 1.0
    offset: tuple[float, float, float] = (0.0, 0.0, 0.0)

    def apply(self, points: np.ndarray) -> np.ndarray:
        return (self.scale * np.asarray(points, np.float64) + np.asarray(self.offset)).astype(np.float32)

    def inverse(self) -> Similarity:
        return Similarity(1.0 / self.scale, tuple(-np.asarray(self.offset) / self.scale))

    def then(self, other: Similarity) -> Similarity:
        """First ``self``, then ``other``."""
        return Similarity(self.scale * other.scale, tuple(other.scale * np.asarray(self.offset) + other.offset))


def normalize_to_cube(vertices: np.ndarray, extent: float = 0.95) -> Similarity:
    """Bounding-box centre to the origin, largest side to ``2·extent`` (Direct3D-S2's ``normalize_mesh``)."""
    v = np.asarray(vertices, np.float64)
    lo, hi = v.min(axis=0), v.max(axis=0)
    scale = 2.0 * extent / float(max(hi - lo))
    return Similarity(scale, tuple(-scale * (lo + hi) / 2))


def compose_frame(frame: CanonicalFrame, sim: Similarity) -> CanonicalFrame:
    """The camera → canonical frame followed by a between-stage similarity ``p' = s·p + o``."""
    scale = frame.scale * sim.scale
    center = np.asarray(frame.center) - frame.R.T @ np.asarray(sim.offset) / scale
    return CanonicalFrame(center=tuple(float(c) for c in center), scale=float(scale), rotation=frame.rotation)


def view_frame(frame: CanonicalFrame, cam_to_world: np.ndarray | None) -> CanonicalFrame:
    """The camera → canonical frame of another view: its camera frame → the shared (first camera's) frame by
    ``cam_to_world``, then ``frame``. ``scale·R·(T·p − c) = scale·(R·R_k)·(p − R_kᵀ(c − t_k))``."""
    if cam_to_world is None:
        return frame
    rot, t = np.asarray(cam_to_world, np.float64)[:3, :3], np.asarray(cam_to_world, np.float64)[:3, 3]
    center = rot.T @ (np.asarray(frame.center) - t)
    r = frame.R @ rot
    return CanonicalFrame(center=tuple(float(c) for c in center), scale=frame.scale,
                          rotation=tuple(tuple(float(v) for v in row) for row in r))
