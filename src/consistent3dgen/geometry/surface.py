"""Point map → single-layer mesh of the seen surface (paper Alg. 1), vectorised.

Validity of a pixel = finite point ∧ object mask ∧ ``conf > conf_threshold`` ∧ ``conf >= `` the
``drop_percent`` percentile of the masked confidences (VGGT's demo drops the lowest x %; ``>=`` keeps ties,
so a constant confidence drops nothing) ∧ not on the far side of a depth discontinuity.

Depth discontinuity, the criterion: an edge between 4-neighbour pixels p, q is *broken* when its 3D length,
divided by the length a camera-facing surface would have there (``min(z_p, z_q) * pixel_angle``, with
``pixel_angle = 1 / f`` from the intrinsics, or the median of ``|p - q| / z`` over valid edges when there are
none), exceeds ``max_stretch``. For a smooth surface that ratio is ``1 / cos(theta)`` with theta the angle
between the surface normal and the ray, so ``max_stretch = 8`` breaks edges steeper than ~83°. A pixel with a
broken edge to a *nearer* neighbour is dropped (the background rim and the "flying" pixels between a
foreground and its background); the occluding (near) side is kept. Triangles are only made from 2×2 blocks
whose four pixels are valid and whose five used edges (four sides and the diagonal) are unbroken.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from ..errors import InputError
from ..pointmap import MAX_ABS_COORD, PointMap, transform
from .frames import CanonicalFrame, camera_to_canonical, fit_canonical_frame


@dataclass
class SeenMesh:
    """Single-layer mesh of the seen surface. Unpacks as ``vertices, faces``.

    vertices: (V, 3) float32; faces: (F, 3) int32, normals facing the camera;
    pixels: (V, 2) int32 (row, col) of each vertex in the point map; shape: the point map's (H, W).
    Several views merged (:func:`merge_views`): ``view`` (V,) int32, the view of each vertex (``pixels`` index that
    view's map; ``shape`` is the first view's), and ``facing`` (F, 3): per face, the direction towards its camera.
    """

    vertices: np.ndarray
    faces: np.ndarray
    pixels: np.ndarray
    shape: tuple[int, int]
    view: np.ndarray | None = None
    facing: np.ndarray | None = None

    @property
    def on_one_grid(self) -> bool:
        """All vertices lie on one view's pixel grid (what the grid-based size bound needs)."""
        return self.view is None

    def __iter__(self) -> Iterator[np.ndarray]:
        return iter((self.vertices, self.faces))

    @property
    def pixel_index(self) -> np.ndarray:
        """(V,) flat pixel index ``row * W + col``."""
        return self.pixels[:, 0].astype(np.int64) * self.shape[1] + self.pixels[:, 1]


def _pixel_angle(pm: PointMap, valid: np.ndarray) -> float:
    """Angle subtended by one pixel (radians): 1/f from K, else the median relative edge length."""
    if pm.intrinsics is not None:
        focal = float(pm.intrinsics[0, 0] + pm.intrinsics[1, 1]) / 2.0
        if np.isfinite(focal) and focal > 1e-12:  # else (a K without focal lengths): measured from the points
            return 1.0 / focal
    p, z = pm.points, np.abs(pm.points[..., 2])
    ratios = []
    for sl_a, sl_b in (
        ((slice(None), slice(None, -1)), (slice(None), slice(1, None))),
        ((slice(None, -1),), (slice(1, None),)),
    ):
        m = valid[sl_a] & valid[sl_b]
        with np.errstate(over="ignore", invalid="ignore"):  # overflowing points are reported below
            length = np.linalg.norm(p[sl_a][m] - p[sl_b][m], axis=-1)
            ratios.append(length / np.maximum(np.minimum(z[sl_a][m], z[sl_b][m]), 1e-12))
    r = np.concatenate(ratios)
    ok = r[np.isfinite(r) & (r > 0)]
    if len(ok) == 0:
        if len(r) and not np.isfinite(r).all():
            raise InputError(f"{pm.describe()}: distances between neighbouring points overflow: the points are "
                             f"non-finite or out of range (|coordinate| up to {_max_abs(pm, valid):.3g})")
        raise InputError(f"{pm.describe()} has no two valid neighbouring pixels at distinct points: "
                         "cannot build a surface")
    return float(np.median(ok))


def _max_abs(pm: PointMap, pixels: np.ndarray) -> float:
    p = np.abs(pm.points[pixels])
    p = p[~np.isnan(p)]
    return float(p.max()) if p.size else float("nan")


def _why_too_few(pm: PointMap, candidates: np.ndarray, in_range: np.ndarray, in_front: np.ndarray, n_valid: int,
                 conf_threshold: float, drop_percent: float, use_mask: bool) -> str:
    """One line on why fewer than 3 pixels are valid, naming the test that removed the most."""
    n = int(candidates.sum())
    which = "masked " if use_mask else ""
    left = f"leaving {n_valid} of {n} {which}pixels (fewer than 3 valid pixels): no surface to build"
    bad = int(np.sum(candidates & ~in_range))
    behind = int(np.sum(candidates & in_range & ~in_front))
    low = int(np.sum(candidates & in_front)) - n_valid
    if behind and behind >= max(bad, low):
        every = f"all {n}" if behind == n else f"{behind} of {n}"
        return (f"{pm.describe()}: {every} {which}points lie behind the camera (z <= 0), {left}; points must be "
                "in the camera frame (OpenCV: x right, y down, z forward, away from the camera)")
    if bad and bad >= low:
        return (f"{pm.describe()}: {bad} of {n} {which}points are non-finite or out of range (|coordinate| above "
                f"{MAX_ABS_COORD:.0e}), {left}")
    return (f"{pm.describe()}: {low} of {n} {which}pixels fail the confidence tests (conf_threshold "
            f"{conf_threshold:g}, drop_percent {drop_percent:g}), {left}")


def _edge_stretch(pm: PointMap, valid: np.ndarray, pixel_angle: float) -> tuple[np.ndarray, ...]:
    """Stretch of right (H, W-1), down (H-1, W) and anti-diagonal (H-1, W-1) edges; inf where invalid."""
    p = np.where(valid[..., None], pm.points, 0.0)
    z = np.abs(p[..., 2])

    def stretch(a, b, za, zb, m):  # noqa: ANN001, ANN202 - local helper
        length = np.linalg.norm(a - b, axis=-1)
        s = length / (np.maximum(np.minimum(za, zb), 1e-12) * pixel_angle)
        return np.where(m, s, np.inf)

    right = stretch(p[:, :-1], p[:, 1:], z[:, :-1], z[:, 1:], valid[:, :-1] & valid[:, 1:])
    down = stretch(p[:-1], p[1:], z[:-1], z[1:], valid[:-1] & valid[1:])
    # the diagonal used by the triangulation joins (r, c+1) and (r+1, c); it is sqrt(2) pixels long
    diag = stretch(p[:-1, 1:], p[1:, :-1], z[:-1, 1:], z[1:, :-1], valid[:-1, 1:] & valid[1:, :-1]) / np.sqrt(2.0)
    return right, down, diag


def validity_mask(
    pm: PointMap,
    conf_threshold: float = 0.0,
    drop_percent: float = 0.0,
    max_stretch: float = 8.0,
    use_mask: bool = True,
) -> np.ndarray:
    """(H, W) bool: pixels kept for the seen surface (see the module docstring for the criteria)."""
    if not 0.0 <= drop_percent < 100.0:
        raise ValueError(f"drop_percent must be in [0, 100), got {drop_percent}")
    if not max_stretch > 1.0:
        raise ValueError(f"max_stretch must be > 1, got {max_stretch}")
    pts = pm.points
    finite = np.isfinite(pts).all(axis=-1)
    in_range = finite & (np.abs(np.where(finite[..., None], pts, 0.0)).max(axis=-1) <= MAX_ABS_COORD)
    in_front = in_range & (pts[..., 2] > 0)
    candidates = pm.mask if use_mask else np.ones(pm.shape, bool)
    valid = in_front & candidates
    valid &= pm.conf > conf_threshold
    if drop_percent > 0 and valid.any():
        conf = pm.conf[valid]
        # the lower of the two neighbouring values where interpolating would take inf - inf
        method = "linear" if np.isfinite(conf).all() else "lower"
        valid &= pm.conf >= np.percentile(conf, drop_percent, method=method)
    if valid.sum() < 3:
        raise InputError(_why_too_few(pm, candidates, in_range, in_front, int(valid.sum()), conf_threshold,
                                      drop_percent, use_mask))
    right, down, _ = _edge_stretch(pm, valid, _pixel_angle(pm, valid))
    z = np.where(valid, pm.points[..., 2], np.inf)
    far = np.zeros_like(valid)
    # a broken edge drops its farther end (the background rim / flying pixel), never the occluding side
    broken_r = np.isfinite(right) & (right > max_stretch)
    far[:, 1:] |= broken_r & (z[:, 1:] > z[:, :-1])
    far[:, :-1] |= broken_r & (z[:, :-1] >= z[:, 1:])
    broken_d = np.isfinite(down) & (down > max_stretch)
    far[1:] |= broken_d & (z[1:] > z[:-1])
    far[:-1] |= broken_d & (z[:-1] >= z[1:])
    return valid & ~far


def pointmap_to_mesh(
    pm: PointMap,
    valid: np.ndarray | None = None,
    conf_threshold: float = 0.0,
    drop_percent: float = 0.0,
    max_stretch: float = 8.0,
) -> SeenMesh:
    """Two triangles per fully valid 2×2 block (camera frame), facing the camera; unused vertices dropped."""
    if valid is None:
        valid = validity_mask(pm, conf_threshold, drop_percent, max_stretch)
    valid = np.asarray(valid, bool)
    h, w = pm.shape
    if valid.shape != (h, w):
        raise ValueError(f"validity mask must have shape {(h, w)}, got {valid.shape}")
    right, down, diag = _edge_stretch(pm, valid, _pixel_angle(pm, valid))
    ok_r, ok_d, ok_g = right <= max_stretch, down <= max_stretch, diag <= max_stretch
    block = ok_r[:-1] & ok_r[1:] & ok_d[:, :-1] & ok_d[:, 1:] & ok_g  # (H-1, W-1), all four pixels valid
    rows, cols = np.nonzero(block)
    if len(rows) == 0:
        raise InputError(f"{pm.describe()} has no 2x2 block of valid, continuous pixels: the seen surface is empty")
    a = rows * w + cols  # top-left; b = a + 1 (right), c = a + w (below), d = a + w + 1
    b, c, d = a + 1, a + w, a + w + 1
    # image y points down, so (a, c, b) turns clockwise on screen: its normal points back at the camera
    faces_px = np.concatenate([np.stack([a, c, b], 1), np.stack([b, c, d], 1)])
    used = np.zeros(h * w, bool)
    used[faces_px.ravel()] = True
    remap = np.full(h * w, -1, np.int64)
    pix = np.flatnonzero(used)
    remap[pix] = np.arange(len(pix))
    # interleave the two triangles of a block so the faces of one block stay adjacent
    faces = remap[faces_px].reshape(2, -1, 3).transpose(1, 0, 2).reshape(-1, 3).astype(np.int32)
    vertices = pm.points.reshape(-1, 3)[pix].astype(np.float32)
    if not np.ptp(vertices, axis=0).max() > 0:
        raise InputError(f"the valid points of the {pm.describe()} all coincide (zero extent): no surface to build")
    pixels = np.stack(np.divmod(pix, w), axis=1).astype(np.int32)
    return SeenMesh(vertices, faces, pixels, (h, w))


def to_canonical(
    mesh: SeenMesh, margin: float = 0.05, depth_ratio: float = 1.0, frame: CanonicalFrame | None = None
) -> tuple[SeenMesh, CanonicalFrame]:
    """Fit the canonical frame to the mesh's vertices (unless given) and map the mesh into it."""
    if frame is None:
        frame = fit_canonical_frame(mesh.vertices, margin=margin, depth_ratio=depth_ratio)
    verts = camera_to_canonical(mesh.vertices.astype(np.float64), frame).astype(np.float32)
    facing = None if mesh.facing is None else (mesh.facing @ frame.R.T).astype(np.float32)
    return SeenMesh(verts, mesh.faces, mesh.pixels, mesh.shape, mesh.view, facing), frame


def merge_views(meshes: list[SeenMesh], cam_to_world: list[np.ndarray]) -> SeenMesh:
    """Several views' seen meshes (each in its own camera frame) → one mesh in the shared frame.

    Each face remembers the direction towards its own camera (``facing``: minus that camera's optical axis), so
    the thin shell can tell each surface's camera side; each vertex its view (``view``).
    """
    verts, faces, pixels, view, facing = [], [], [], [], []
    offset = 0
    for i, (m, pose) in enumerate(zip(meshes, cam_to_world, strict=True)):
        verts.append(transform(m.vertices, pose).astype(np.float32))
        faces.append(np.asarray(m.faces, np.int64) + offset)
        pixels.append(m.pixels)
        view.append(np.full(len(m.vertices), i, np.int32))
        facing.append(np.broadcast_to(-pose[:3, 2], (len(m.faces), 3)))
        offset += len(m.vertices)
    return SeenMesh(np.concatenate(verts), np.concatenate(faces).astype(np.int32), np.concatenate(pixels),
                    meshes[0].shape, np.concatenate(view), np.concatenate(facing).astype(np.float32))


def pointmap_to_canonical_mesh(
    pm: PointMap, margin: float = 0.05, depth_ratio: float = 1.0, **mesh_kw
) -> tuple[SeenMesh, CanonicalFrame]:
    """Seen-surface mesh in the canonical cube (camera on +z looking along -z) and the frame used."""
    return to_canonical(pointmap_to_mesh(pm, **mesh_kw), margin=margin, depth_ratio=depth_ratio)
