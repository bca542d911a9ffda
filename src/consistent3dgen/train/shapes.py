"""Procedural shape families as signed distance functions (numpy, vectorised, seeded).

Every shape lives in the canonical frame (see :mod:`consistent3dgen.geometry.frames`): y up, the camera on
the +z side looking towards -z, so the **front** of each shape faces +z. Each family is built so that its
front and back differ (a glyph embossed on the face of a coin, a handle behind a vase, a backrest behind a
chair seat, a nose in front of a figure and a backpack behind it, ...): a prior trained on them learns that
the unseen back is not a mirror of the seen front.

An SDF here is a function ``(N, 3) float array → (N,) float64`` (negative inside). Primitives are exact
distances; CSG (min/max) keeps |∇d| = 1 away from medial points; smooth unions and superquadrics are
first-order distances (``f / |∇f|``), which are accurate near the surface, the only place the narrow-band
data uses their values.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

SDF = Callable[[np.ndarray], np.ndarray]


# ----------------------------------------------------------------------------------------------- primitives


def sphere(center, radius: float) -> SDF:
    c = np.asarray(center, np.float64)
    return lambda p: np.linalg.norm(p - c, axis=-1) - radius


def box(center, half_extents, rounding: float = 0.0) -> SDF:
    """Axis-aligned box (optionally with rounded edges of radius ``rounding``, inside the given extents)."""
    c = np.asarray(center, np.float64)
    h = np.asarray(half_extents, np.float64) - rounding

    def f(p):
        q = np.abs(p - c) - h
        outside = np.linalg.norm(np.maximum(q, 0.0), axis=-1)
        inside = np.minimum(q.max(axis=-1), 0.0)
        return outside + inside - rounding

    return f


def capsule(a, b, radius: float) -> SDF:
    a = np.asarray(a, np.float64)
    ab = np.asarray(b, np.float64) - a
    denom = max(float(ab @ ab), 1e-12)

    def f(p):
        ap = p - a
        t = np.clip(ap @ ab / denom, 0.0, 1.0)
        return np.linalg.norm(ap - t[:, None] * ab, axis=-1) - radius

    return f


def cylinder(center, radius: float, half_height: float, axis: int = 1) -> SDF:
    """Capped cylinder along a coordinate axis (0 = x, 1 = y, 2 = z)."""
    c = np.asarray(center, np.float64)
    others = [i for i in range(3) if i != axis]

    def f(p):
        q = p - c
        d = np.stack([np.linalg.norm(q[:, others], axis=-1) - radius, np.abs(q[:, axis]) - half_height], -1)
        return np.minimum(d.max(axis=-1), 0.0) + np.linalg.norm(np.maximum(d, 0.0), axis=-1)

    return f


def torus(center, major: float, minor: float, axis: int = 1) -> SDF:
    """Torus whose ring lies in the plane orthogonal to ``axis``."""
    c = np.asarray(center, np.float64)
    others = [i for i in range(3) if i != axis]

    def f(p):
        q = p - c
        ring = np.linalg.norm(q[:, others], axis=-1) - major
        return np.sqrt(ring**2 + q[:, axis] ** 2) - minor

    return f


def revolution(radii, heights, center=(0.0, 0.0, 0.0)) -> SDF:
    """Solid of revolution about the y axis: the closed polygon (0, y0), (r0, y0), ..., (r_n, y_n), (0, y_n).

    Exact: the 2-D signed distance to the profile polygon in the (radius, y) half-plane.
    """
    r = np.asarray(radii, np.float64)
    y = np.asarray(heights, np.float64)
    poly = np.concatenate([[[0.0, y[0]]], np.stack([r, y], -1), [[0.0, y[-1]]]])
    c = np.asarray(center, np.float64)

    def f(p):
        q = p - c
        pt = np.stack([np.hypot(q[:, 0], q[:, 2]), q[:, 1]], -1)
        return _polygon_sdf(pt, poly, skip_distance_edge=len(poly) - 1)

    return f


def _polygon_sdf(points: np.ndarray, poly: np.ndarray, skip_distance_edge: int | None = None) -> np.ndarray:
    """Signed distance of 2-D points to a closed simple polygon (negative inside; even-odd rule).

    ``skip_distance_edge``: an edge that bounds the polygon for the inside test but is not a surface (the
    axis of a solid of revolution).
    """
    d2 = np.full(len(points), np.inf)
    inside = np.zeros(len(points), bool)
    n = len(poly)
    for i in range(n):
        a, b = poly[i], poly[(i + 1) % n]
        e = b - a
        w = points - a
        if i != skip_distance_edge:
            t = np.clip(w @ e / max(float(e @ e), 1e-12), 0.0, 1.0)
            d2 = np.minimum(d2, np.sum((w - t[:, None] * e) ** 2, axis=-1))
        # crossing test of a horizontal ray towards +x
        cond = (a[1] <= points[:, 1]) != (b[1] <= points[:, 1])
        x_cross = a[0] + (points[:, 1] - a[1]) * e[0] / np.where(e[1] == 0, 1e-12, e[1])
        inside ^= cond & (points[:, 0] < x_cross)
    return np.where(inside, -1.0, 1.0) * np.sqrt(d2)


def superquadric(center, radii, e1: float, e2: float) -> SDF:
    """Superquadric ``((|x/a|^(2/e2) + |z/c|^(2/e2))^(e2/e1) + |y/b|^(2/e1))^(e1/2) = 1`` (y = polar axis).

    First-order distance ``g / |∇g|`` of the degree-1 homogeneous ``g`` (numerical gradient).
    """
    c = np.asarray(center, np.float64)
    a, b, cc = (float(v) for v in radii)

    def g(p):
        q = np.abs(p - c) + 1e-12
        xz = (q[:, 0] / a) ** (2.0 / e2) + (q[:, 2] / cc) ** (2.0 / e2)
        return (xz ** (e2 / e1) + (q[:, 1] / b) ** (2.0 / e1)) ** (e1 / 2.0) - 1.0

    return first_order_distance(g)


def first_order_distance(g: Callable[[np.ndarray], np.ndarray], h: float = 1e-4) -> SDF:
    """``g / |∇g|`` with a central-difference gradient: a distance estimate exact to first order at g = 0."""

    def f(p):
        p = np.asarray(p, np.float64)
        val = g(p)
        grad = np.empty((len(p), 3))
        for k in range(3):
            dp = np.zeros(3)
            dp[k] = h
            grad[:, k] = (g(p + dp) - g(p - dp)) / (2 * h)
        return val / np.maximum(np.linalg.norm(grad, axis=-1), 1e-6)

    return f


# ------------------------------------------------------------------------------------------------ operators


def union(*fs: SDF) -> SDF:
    return lambda p: np.min(np.stack([f(p) for f in fs]), axis=0)


def intersection(*fs: SDF) -> SDF:
    return lambda p: np.max(np.stack([f(p) for f in fs]), axis=0)


def subtract(base: SDF, *cutters: SDF) -> SDF:
    """``base`` minus the cutters."""
    return lambda p: np.max(np.stack([base(p)] + [-c(p) for c in cutters]), axis=0)


def smooth_union(k: float, *fs: SDF) -> SDF:
    """Polynomial smooth minimum with blend radius ``k`` (a lower bound of the true distance near the blend)."""

    def f(p):
        d = fs[0](p)
        for g in fs[1:]:
            e = g(p)
            hh = np.clip(0.5 + 0.5 * (e - d) / k, 0.0, 1.0)
            d = e * (1 - hh) + d * hh - k * hh * (1 - hh)
        return d

    return f


def rotate_y(f: SDF, angle: float) -> SDF:
    """The shape turned by ``angle`` radians about the y axis (+angle turns +z towards +x)."""
    ca, sa = np.cos(angle), np.sin(angle)
    # p_shape = R^T p_world, R = [[c, 0, s], [0, 1, 0], [-s, 0, c]]
    rt = np.array([[ca, 0.0, -sa], [0.0, 1.0, 0.0], [sa, 0.0, ca]])
    return lambda p: f(p @ rt.T)


def similarity(f: SDF, scale: float, offset) -> SDF:
    """``x ↦ scale * x + offset`` applied to the shape (distances scale with it)."""
    o = np.asarray(offset, np.float64)
    return lambda p: scale * f((np.asarray(p, np.float64) - o) / scale)


# ------------------------------------------------------------------------------------------------- families


@dataclass
class Shape:
    """One procedural shape: its SDF in the canonical cube, the family name and the drawn parameters."""

    family: str
    sdf: SDF
    params: dict = field(default_factory=dict)

    def __call__(self, points: np.ndarray) -> np.ndarray:
        return self.sdf(np.asarray(points, np.float64).reshape(-1, 3))


def _u(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(rng.uniform(lo, hi))


def coin(rng: np.random.Generator) -> tuple[SDF, dict]:
    """A coin or plaque facing +z; glyph strokes embossed on the front, a flat back with an engraved ring."""
    round_coin = rng.random() < 0.5
    thick = _u(rng, 0.08, 0.16)
    if round_coin:
        radius = _u(rng, 0.6, 0.9)
        body = cylinder((0, 0, 0), radius, thick, axis=2)
        extent = radius
    else:
        hx, hy = _u(rng, 0.5, 0.9), _u(rng, 0.4, 0.9)
        body = box((0, 0, 0), (hx, hy, thick), rounding=0.03)
        extent = min(hx, hy)
    n_strokes = int(rng.integers(2, 5))
    relief = _u(rng, 0.04, 0.08)
    stroke_r = _u(rng, 0.035, 0.06)
    strokes = []
    for _ in range(n_strokes):
        a = rng.uniform(-0.6, 0.6, 2) * extent
        b = rng.uniform(-0.6, 0.6, 2) * extent
        strokes.append(capsule((a[0], a[1], thick), (b[0], b[1], thick), stroke_r + relief / 2))
    glyph = intersection(union(*strokes), box((0, 0, thick), (2.0, 2.0, relief)))
    ring_r = 0.7 * extent
    groove = torus((0, 0, -thick), ring_r, _u(rng, 0.02, 0.04), axis=2)
    sdf = subtract(union(body, glyph), groove)
    return sdf, {"round": round_coin, "thickness": thick, "strokes": n_strokes, "relief": relief}


def vase(rng: np.random.Generator) -> tuple[SDF, dict]:
    """A vase of revolution with a handle on its back (-z) and a spout lip or boss on its front."""
    n = int(rng.integers(4, 7))
    heights = np.sort(rng.uniform(-0.9, 0.9, n))
    heights[0], heights[-1] = -0.9, 0.9
    radii = rng.uniform(0.15, 0.5, n)
    radii[0] = _u(rng, 0.2, 0.4)
    body = revolution(radii, heights)
    max_r = float(radii.max())
    hy = _u(rng, -0.2, 0.3)
    handle_r = _u(rng, 0.2, 0.3)
    handle = torus((0, hy, -max_r * 0.85 - handle_r * 0.5), handle_r, _u(rng, 0.04, 0.07), axis=0)
    parts = [body, handle]
    if rng.random() < 0.5:
        y_top = 0.9
        r_top = float(radii[-1])
        parts.append(capsule((0, y_top - 0.08, r_top * 0.5), (0, y_top + 0.02, r_top + 0.15), 0.06))
        front = "spout"
    else:
        parts.append(sphere((0, hy, float(np.interp(hy, heights, radii))), _u(rng, 0.08, 0.14)))
        front = "boss"
    return union(*parts), {"profile_points": n, "front": front}


def furniture(rng: np.random.Generator) -> tuple[SDF, dict]:
    """Furniture from boxes: a chair (backrest behind), a cabinet (handles in front) or a bench (backrest)."""
    kind = ["chair", "cabinet", "bench"][int(rng.integers(0, 3))]
    if kind == "cabinet":
        hx, hy, hz = _u(rng, 0.4, 0.8), _u(rng, 0.5, 0.9), _u(rng, 0.25, 0.45)
        parts = [box((0, 0, 0), (hx, hy, hz), rounding=0.02)]
        n_drawers = int(rng.integers(1, 4))
        for i in range(n_drawers):
            y = -hy + (2 * i + 1) * hy / n_drawers
            parts.append(box((0, y, hz + 0.03), (0.25 * hx, 0.04, 0.03)))
        parts.append(box((0, -hy - 0.04, -hz + 0.05), (hx * 0.9, 0.04, 0.05)))  # back skirting board
        return union(*parts), {"kind": kind, "drawers": n_drawers}
    sx, sz = _u(rng, 0.4, 0.8), _u(rng, 0.3, 0.5)
    seat_y, seat_t = _u(rng, -0.25, 0.0), _u(rng, 0.04, 0.08)
    leg = _u(rng, 0.04, 0.07)
    if kind == "bench":
        sx = _u(rng, 0.7, 0.9)
    parts = [box((0, seat_y, 0), (sx, seat_t, sz))]
    for lx in (-1, 1):
        for lz in (-1, 1):
            parts.append(box((lx * (sx - leg), (seat_y - 0.9) / 2, lz * (sz - leg)), (leg, (seat_y + 0.9) / 2, leg)))
    back_top = _u(rng, 0.5, 0.9)
    parts.append(box((0, (seat_y + back_top) / 2, -sz + 0.03), (sx, (back_top - seat_y) / 2, 0.03)))
    return union(*parts), {"kind": kind}


def figure(rng: np.random.Generator) -> tuple[SDF, dict]:
    """A figure from capsules: a nose in front, a backpack (or tail) behind."""
    torso_w = _u(rng, 0.16, 0.26)
    torso = capsule((0, -0.2, 0), (0, 0.3, 0), torso_w)
    head_r = _u(rng, 0.14, 0.22)
    head_y = 0.3 + torso_w + head_r * 0.9
    head = sphere((0, head_y, 0), head_r)
    arm_y = _u(rng, 0.15, 0.3)
    arm_dx, arm_dy = _u(rng, 0.35, 0.6), _u(rng, -0.4, 0.2)
    limbs = [
        capsule((-torso_w, arm_y, 0), (-torso_w - arm_dx, arm_y + arm_dy, _u(rng, -0.1, 0.2)), 0.06),
        capsule((torso_w, arm_y, 0), (torso_w + arm_dx, arm_y + arm_dy, _u(rng, -0.1, 0.2)), 0.06),
        capsule((-0.1, -0.25, 0), (-_u(rng, 0.1, 0.3), -0.85, _u(rng, -0.1, 0.1)), 0.07),
        capsule((0.1, -0.25, 0), (_u(rng, 0.1, 0.3), -0.85, _u(rng, -0.1, 0.1)), 0.07),
    ]
    nose = capsule((0, head_y, head_r * 0.7), (0, head_y - 0.02, head_r + _u(rng, 0.05, 0.12)), 0.035)
    if rng.random() < 0.6:
        back = box((0, 0.1, -torso_w - 0.08), (torso_w * 0.9, 0.22, 0.1), rounding=0.04)
        back_kind = "backpack"
    else:
        back = capsule((0, -0.3, -torso_w * 0.6), (0, -0.15, -torso_w - 0.4), 0.05)
        back_kind = "tail"
    return smooth_union(0.05, torso, head, *limbs, nose, back), {"back": back_kind}


def blob(rng: np.random.Generator) -> tuple[SDF, dict]:
    """A superquadric blob with bumps on its front half and a flattened back."""
    radii = rng.uniform(0.45, 0.8, 3)
    e1, e2 = _u(rng, 0.4, 1.4), _u(rng, 0.4, 1.4)
    body = superquadric((0, 0, 0), radii, e1, e2)
    bumps = []
    for _ in range(int(rng.integers(1, 4))):
        d = rng.normal(size=3)
        d[2] = abs(d[2]) + 0.6  # front hemisphere
        d /= np.linalg.norm(d)
        bumps.append(sphere(d * radii * 0.9, _u(rng, 0.12, 0.22)))
    cut = -radii[2] * _u(rng, 0.4, 0.7)
    flat_back = lambda p: cut - p[:, 2]  # noqa: E731  (half-space z > cut)
    return intersection(smooth_union(0.08, body, *bumps), flat_back), {"e1": e1, "e2": e2, "bumps": len(bumps)}


def csg(rng: np.random.Generator) -> tuple[SDF, dict]:
    """CSG of primitives: blind holes drilled into the front, knobs or a fin on the back."""
    kind = ["box", "cylinder", "sphere"][int(rng.integers(0, 3))]
    if kind == "box":
        h = rng.uniform(0.4, 0.75, 3)
        base = box((0, 0, 0), h, rounding=0.03)
        front_z = h[2]
    elif kind == "cylinder":
        r, hh = _u(rng, 0.4, 0.7), _u(rng, 0.4, 0.8)
        base = cylinder((0, 0, 0), r, hh, axis=1)
        front_z = r
    else:
        front_z = _u(rng, 0.55, 0.8)
        base = sphere((0, 0, 0), front_z)
    holes = []
    for _ in range(int(rng.integers(1, 4))):
        x, y = rng.uniform(-0.3, 0.3, 2)
        depth = _u(rng, 0.15, 0.35)
        holes.append(cylinder((x, y, front_z), _u(rng, 0.07, 0.15), depth, axis=2))
    knobs = []
    for _ in range(int(rng.integers(1, 3))):
        x, y = rng.uniform(-0.3, 0.3, 2)
        knobs.append(box((x, y, -front_z - 0.05), (_u(rng, 0.05, 0.15), _u(rng, 0.05, 0.2), 0.12), rounding=0.02))
    return subtract(union(base, *knobs), *holes), {"base": kind, "holes": len(holes), "knobs": len(knobs)}


FAMILIES: dict[str, Callable[[np.random.Generator], tuple[SDF, dict]]] = {
    "coin": coin,
    "vase": vase,
    "furniture": furniture,
    "figure": figure,
    "blob": blob,
    "csg": csg,
}


def make_shape(family: str, seed: int, margin: float = 0.05, max_turn_deg: float = 20.0) -> Shape:
    """Draw a shape of ``family`` from ``seed``: a small turn about y, then fit into ``[-(1-margin), 1-margin]³``.

    The turn is at most ``max_turn_deg`` so the front stays on the camera side.
    """
    if family not in FAMILIES:
        raise ValueError(f"unknown shape family {family!r}; known: {', '.join(FAMILIES)}")
    rng = np.random.default_rng([seed, _family_index(family)])
    raw, params = FAMILIES[family](rng)
    turn = np.deg2rad(_u(rng, -max_turn_deg, max_turn_deg))
    turned = rotate_y(raw, turn)
    lo, hi = bounding_box(turned)
    scale = 2.0 * (1.0 - margin) / float((hi - lo).max())
    offset = -scale * (lo + hi) / 2.0
    params = {**params, "turn_deg": float(np.rad2deg(turn)), "seed": int(seed)}
    return Shape(family, similarity(turned, scale, offset), params)


def _family_index(family: str) -> int:
    return list(FAMILIES).index(family)


def bounding_box(f: SDF, resolution: int = 64, extent: float = 1.5) -> tuple[np.ndarray, np.ndarray]:
    """Bounding box of ``{f < 0}`` from a grid over ``[-extent, extent]³``, refined by half a cell."""
    ax = np.linspace(-extent, extent, resolution)
    grid = np.stack(np.meshgrid(ax, ax, ax, indexing="ij"), -1).reshape(-1, 3)
    inside = grid[f(grid) < 0]
    if len(inside) == 0:
        raise ValueError("shape is empty on the sampling grid")
    step = ax[1] - ax[0]
    return inside.min(axis=0) - step / 2, inside.max(axis=0) + step / 2


def sample_shapes(count: int, seed: int = 0, families: list[str] | None = None) -> list[tuple[str, int]]:
    """A balanced, seeded list of ``(family, shape_seed)`` pairs."""
    fams = list(families or FAMILIES)
    unknown = [f for f in fams if f not in FAMILIES]
    if unknown:
        raise ValueError(f"unknown shape families: {unknown}")
    return [(fams[i % len(fams)], seed * 1_000_003 + i) for i in range(count)]


def height_maps(f: SDF, resolution: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Front and back height maps over the (x, y) image grid: the first inside z seen from +z and from -z.

    Returned as ``front[i, j] = max z``, ``back[i, j] = -min z`` (NaN where the ray misses), both measured
    outwards, so a shape whose back mirrors its front has ``front == back``.
    """
    ax = -1.0 + (2.0 * np.arange(resolution) + 1.0) / resolution
    grid = np.stack(np.meshgrid(ax, ax, ax, indexing="ij"), -1).reshape(-1, 3)
    inside = (f(grid) < 0).reshape(resolution, resolution, resolution)
    hit = inside.any(axis=2)
    first_front = resolution - 1 - np.argmax(inside[:, :, ::-1], axis=2)
    first_back = np.argmax(inside, axis=2)
    front = np.where(hit, ax[first_front], np.nan)
    back = np.where(hit, -ax[first_back], np.nan)
    return front, back
