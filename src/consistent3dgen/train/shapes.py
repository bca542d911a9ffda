"""Procedural shape families as signed distance functions (numpy, vectorised, seeded).

Every shape lives in the canonical frame (see :mod:`consistent3dgen.geometry.frames`): y up, the camera on
the +z side looking towards -z, so the **front** of each shape faces +z. Each family is built so that its
front and back differ (a glyph embossed on the face of a coin, a handle behind a vase, a backrest behind a
chair seat, a nose in front of a figure and a backpack behind it, an animal's head in front and its tail
behind, a mug's spout in front of its handle, a relief over a flat back, a sign's post behind it, ...): a
prior trained on them learns that the unseen back is not a mirror of the seen front.

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


def ellipse_slab(center, half_axes, half_thickness: float) -> SDF:
    """A slab of constant thickness ``2 * half_thickness`` (along z) with an elliptical outline in the xy plane.

    Exact: the 2-D distance to the ellipse (:func:`_ellipse_distance`) extruded along z, so the slab is equally
    thick up to its rim (a thin ellipsoid would taper to nothing there).
    """
    c = np.asarray(center, np.float64)
    a, b = (float(v) for v in half_axes)

    def f(p):
        q = p - c
        return _extrude(_ellipse_distance(q[:, 0], q[:, 1], a, b), np.abs(q[:, 2]) - half_thickness)

    return f


def _ellipse_distance(x: np.ndarray, y: np.ndarray, a: float, b: float, iterations: int = 5) -> np.ndarray:
    """Signed distance of 2-D points to the ellipse ``(x/a)² + (y/b)² = 1`` (negative inside).

    The closest point ``(a cos t, b sin t)`` by a few curvature-centre steps on ``t`` in the first quadrant
    (the iteration of https://github.com/0xfaded/ellipse_demo), converged to ~1e-7 of the size in 4-5 steps.
    """
    px, py = np.abs(x), np.abs(y)
    t = np.full(len(px), np.pi / 4)
    for _ in range(iterations):
        ct, st = np.cos(t), np.sin(t)
        ex, ey = (a * a - b * b) * ct**3 / a, (b * b - a * a) * st**3 / b  # centre of curvature
        rx, ry = a * ct - ex, b * st - ey
        qx, qy = px - ex, py - ey
        r, q = np.hypot(rx, ry), np.maximum(np.hypot(qx, qy), 1e-12)
        dc = r * np.arcsin(np.clip((rx * qy - ry * qx) / (r * q), -1.0, 1.0))
        dt = dc / np.sqrt(np.maximum(a * a + b * b - (a * ct) ** 2 - (b * st) ** 2, 1e-12))
        t = np.clip(t + dt, 0.0, np.pi / 2)
    d = np.hypot(px - a * np.cos(t), py - b * np.sin(t))
    return np.where((px / a) ** 2 + (py / b) ** 2 < 1.0, -d, d)


def revolved_shell(radii, heights, half_thickness: float, center=(0.0, 0.0, 0.0)) -> SDF:
    """A thin shell of revolution about y: the open profile polyline (r_i, y_i) thickened by ``half_thickness``.

    Exact: the 2-D distance to the polyline in the (radius, y) half-plane minus the half thickness, so the wall is
    equally thick everywhere (rounded at the rim). Start the profile at r = 0 for a closed bottom.
    """
    pts = np.stack([np.asarray(radii, np.float64), np.asarray(heights, np.float64)], -1)
    c = np.asarray(center, np.float64)

    def f(p):
        q = p - c
        pt = np.stack([np.hypot(q[:, 0], q[:, 2]), q[:, 1]], -1)
        d2 = np.full(len(pt), np.inf)
        for a, b in zip(pts[:-1], pts[1:], strict=True):
            e, w = b - a, pt - a
            t = np.clip(w @ e / max(float(e @ e), 1e-12), 0.0, 1.0)
            d2 = np.minimum(d2, np.sum((w - t[:, None] * e) ** 2, axis=-1))
        return np.sqrt(d2) - half_thickness

    return f


def _extrude(d2: np.ndarray, dz: np.ndarray) -> np.ndarray:
    """Exact extrusion of a 2-D distance ``d2`` by a 1-D one ``dz`` (both negative inside)."""
    return np.minimum(np.maximum(d2, dz), 0.0) + np.hypot(np.maximum(d2, 0.0), np.maximum(dz, 0.0))


def half_space(normal, offset: float = 0.0) -> SDF:
    """``{p : n · p < offset}`` for a unit normal ``n`` (exact)."""
    n = np.asarray(normal, np.float64)
    n = n / np.linalg.norm(n)
    return lambda p: p @ n - offset


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


def rotation_matrix(axis, angle: float) -> np.ndarray:
    """Right-handed rotation by ``angle`` radians about ``axis`` (0/1/2 for x/y/z, or a 3-vector)."""
    k = np.eye(3)[axis] if isinstance(axis, int | np.integer) else np.asarray(axis, np.float64)
    k = k / np.linalg.norm(k)
    kx = np.array([[0.0, -k[2], k[1]], [k[2], 0.0, -k[0]], [-k[1], k[0], 0.0]])
    return np.eye(3) + np.sin(angle) * kx + (1.0 - np.cos(angle)) * kx @ kx


def rotate(f: SDF, axis, angle: float) -> SDF:
    """The shape turned by ``angle`` about ``axis`` through the origin (``rotate(f, 1, a)`` is ``rotate_y(f, a)``;
    about x, +angle turns +y towards +z; about z, +x towards +y)."""
    r = rotation_matrix(axis, angle)
    return lambda p: f(p @ r)  # p_shape = R^T p_world, row-wise p @ R


def _turned(f: SDF, r: np.ndarray) -> SDF:
    """The shape turned by the rotation matrix ``r`` about the origin."""
    return lambda p: f(p @ r)


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


# The families below are built in a raw frame, then normalised so that ``max(height, xz-diagonal)`` of an
# analytic bounding box is 2: whatever turn ``make_shape`` adds, its fit then scales the shape by at least
# 1.9 / (2 + 3/63) ≈ 0.928 (the 0.95 margin; its 64³ grid box over [-1.5, 1.5]³ overstates the extent by at most
# one cell). Sizes that must stay resolved (legs, walls, plates) are drawn in fitted units and divided by
# ``s * _MIN_FIT`` once the normalising scale ``s`` is known, so the fitted cube has them at least that size.
_MIN_FIT = 0.92


class _Parts:
    """SDF parts with a conservative axis-aligned bounding box each."""

    def __init__(self) -> None:
        self.sdfs: list[SDF] = []
        self.lo: list[np.ndarray] = []
        self.hi: list[np.ndarray] = []

    def add(self, f: SDF | None, lo, hi) -> None:
        """A part and its bounds, or (``f=None``) only the bounds of a part whose size comes later."""
        self.lo.append(np.asarray(lo, np.float64))
        self.hi.append(np.asarray(hi, np.float64))
        if f is not None:
            self.sdfs.append(f)

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        return np.min(self.lo, axis=0), np.max(self.hi, axis=0)


def _normaliser(lo: np.ndarray, hi: np.ndarray) -> tuple[float, np.ndarray]:
    """Scale ``s`` and centre of the box ``[lo, hi]``: ``s * (p - centre)`` has height and xz-diagonal ≤ 2."""
    ext = hi - lo
    return 2.0 / float(max(ext[1], np.hypot(ext[0], ext[2]))), (lo + hi) / 2.0


def _rotated_box(lo, hi, r: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Axis-aligned bounds of the box ``[lo, hi]`` rotated by the matrix ``r`` about the origin."""
    corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
    rc = corners @ r.T
    return rc.min(axis=0), rc.max(axis=0)


def _unit(v) -> np.ndarray:
    v = np.asarray(v, np.float64)
    return v / np.linalg.norm(v)


def animal(rng: np.random.Generator) -> tuple[SDF, dict]:
    """A quadruped from capsules and blobs: head and neck in front, a tail behind, four thin legs.

    Kinds: a long-bodied ``dog`` (sometimes horned: a goat), a ``giraffe`` (long legs, tall neck, ossicones), a
    short fat ``pig`` (superquadric body, snout) and a sprawled ``lizard`` (long tail). Facing the camera (body
    along z, head at +z) or side-on (body along x) with the head turned towards the camera. The shin radius is
    drawn in fitted units, at least 0.028 (≥ 1.8 voxels at 128³): ``params["leg_radius"]`` (normalised units)
    and ``params["legs"]`` (shin axes, normalised frame).
    """
    kind = ["dog", "giraffe", "pig", "lizard"][int(rng.integers(0, 4))]
    pre = {  # hl, rb, width, leg, neck, elevation°, head, snout/head, tail, tail elevation°, leg radius (fitted)
        "dog": ((0.4, 0.6), (0.13, 0.19), (0.8, 1.1), (0.35, 0.55), (0.12, 0.3), (30, 55), (0.11, 0.16),
                (0.8, 1.4), (0.25, 0.45), (10, 60), (0.028, 0.045)),
        "giraffe": ((0.3, 0.42), (0.14, 0.19), (0.9, 1.1), (0.6, 0.85), (0.55, 0.85), (55, 75), (0.07, 0.1),
                    (1.0, 1.5), (0.25, 0.4), (-70, -40), (0.028, 0.036)),
        "pig": ((0.3, 0.45), (0.24, 0.32), (0.9, 1.2), (0.1, 0.2), (0.04, 0.1), (0, 20), (0.17, 0.22),
                (0.4, 0.6), (0.1, 0.18), (20, 50), (0.035, 0.055)),
        "lizard": ((0.35, 0.5), (0.08, 0.12), (1.2, 1.6), (0.2, 0.3), (0.04, 0.12), (0, 15), (0.08, 0.12),
                   (1.2, 1.8), (0.6, 0.9), (-10, 10), (0.028, 0.04)),
    }[kind]
    hl, rb, width, leg_len, neck_len = (_u(rng, *r) for r in pre[:5])
    elev = np.deg2rad(_u(rng, *pre[5]))
    head_r, snout_f, tail_len = (_u(rng, *r) for r in pre[6:9])
    tail_elev = np.deg2rad(_u(rng, *pre[9]))
    leg_fit = _u(rng, *pre[10])
    side = rng.random() < 0.35
    side_sign = 1.0 if rng.random() < 0.5 else -1.0
    # head yaw towards -x (local) by psi; side-on bodies turn the head towards the camera
    psi = side_sign * np.deg2rad(_u(rng, 45, 90)) if side else np.deg2rad(_u(rng, -25, 25))
    pad = 0.15  # bound on any radius drawn after normalisation (legs, tail, ears, horns)

    parts = _Parts()
    bw = rb * width
    body_kind = "superquadric" if kind == "pig" else ["capsule", "rounded_box"][int(rng.random() < 0.4)]
    if body_kind == "superquadric":  # a first-order distance: kept to fat bodies, where it is accurate
        parts.add(superquadric((0, 0, 0), (bw, rb, hl + rb), _u(rng, 0.5, 1.0), _u(rng, 0.6, 1.0)),
                  (-bw, -rb, -hl - rb), (bw, rb, hl + rb))
    elif body_kind == "rounded_box":  # boxy (or, for a lizard, flat) trunk; exact
        half = np.array([bw, rb, hl + rb])
        parts.add(box((0, 0, 0), half, rounding=_u(rng, 0.6, 0.9) * min(bw, rb)), -half, half)
    else:
        parts.add(capsule((0, 0, -hl), (0, 0, hl), rb), (-rb, -rb, -hl - rb), (rb, rb, hl + rb))

    # centre lines of the thin parts first (their radii come after normalisation)
    hip_y, hip_x, hip_z = -0.4 * rb, 0.6 * bw, 0.75 * hl
    legs = []
    for sx in (-1.0, 1.0):
        for sz in (-1.0, 1.0):
            hip = np.array([sx * hip_x, hip_y, sz * hip_z])
            stride = _u(rng, -0.15, 0.15) * leg_len
            if kind == "lizard":
                knee = hip + [sx * 0.6 * leg_len, 0.05 * leg_len, 0.3 * stride]
                foot = knee + [sx * 0.15 * leg_len, -0.75 * leg_len, stride]
            else:
                splay = _u(rng, 0.0, 0.06)
                knee = hip + [sx * splay / 2, -0.5 * leg_len, _u(rng, -0.08, 0.08) * leg_len]
                foot = hip + [sx * splay, -leg_len, stride]
            legs.append((hip, knee, foot))
            parts.add(None, np.minimum.reduce([hip, knee, foot]) - pad, np.maximum.reduce([hip, knee, foot]) + pad)
    neck_base = np.array([0.0, 0.3 * rb, 0.85 * hl])
    ndir = np.array([-np.sin(psi) * np.cos(elev), np.sin(elev), np.cos(psi) * np.cos(elev)])
    head_c = neck_base + (neck_len + 0.5 * rb) * ndir
    droop = np.deg2rad(_u(rng, -10, 30 if kind == "giraffe" else 15))
    hdir = np.array([-np.sin(psi) * np.cos(droop), -np.sin(droop), np.cos(psi) * np.cos(droop)])
    hside = _unit(np.cross([0.0, 1.0, 0.0], hdir))
    snout_tip = head_c + snout_f * head_r * hdir
    tail_base = np.array([0.0, 0.3 * rb, -0.95 * hl - 0.5 * rb])
    tail_tip = tail_base + tail_len * np.array([_u(rng, -0.1, 0.1), np.sin(tail_elev), -np.cos(tail_elev)])
    horns = kind == "giraffe" or (kind == "dog" and rng.random() < 0.3)
    ears = kind != "lizard"
    tips = []
    up = np.array([0.0, 1.0, 0.0])
    for lr in (-1.0, 1.0):
        root = head_c + 0.75 * head_r * up + lr * 0.45 * head_r * hside
        if ears:
            tips.append(("ear", root, root + head_r * (0.7 * up + lr * 0.45 * hside - 0.3 * hdir)))
        if horns:
            tips.append(("horn", root - 0.1 * head_r * hdir,
                         root + head_r * _u(rng, 1.0, 2.0) * _unit(up + lr * 0.3 * hside - 0.4 * hdir)))
    neck_r = {"giraffe": 0.4, "pig": 0.8, "lizard": 0.7}.get(kind, 0.55) * rb
    big = max(pad, head_r, neck_r)
    for a, b in [(neck_base, head_c), (head_c, snout_tip), (tail_base, tail_tip)] + [(a, b) for _, a, b in tips]:
        parts.add(None, np.minimum(a, b) - big, np.maximum(a, b) + big)

    s, centre = _normaliser(*parts.bounds())
    r_leg = leg_fit / (s * _MIN_FIT)  # raw shin radius: ≥ leg_fit after make_shape's fit
    for hip, knee, foot in legs:
        parts.sdfs.append(capsule(hip, knee, min(r_leg * _u(rng, 1.2, 1.9), pad, 0.7 * rb)))
        parts.sdfs.append(capsule(knee, foot, r_leg))
    parts.sdfs.append(capsule(neck_base, head_c, max(neck_r, r_leg)))
    parts.sdfs.append(sphere(head_c, head_r))
    parts.sdfs.append(capsule(head_c, snout_tip, (0.45 if kind == "pig" else _u(rng, 0.5, 0.7)) * head_r))
    parts.sdfs.append(capsule(tail_base, tail_tip, min(r_leg * _u(rng, 1.0, 1.4), pad)))
    for what, a, b in tips:
        parts.sdfs.append(capsule(a, b, max(r_leg, (0.25 if what == "ear" else 0.15) * head_r)))
    k = _u(rng, 0.03, 0.06)
    raw = smooth_union(k, *parts.sdfs)
    turn = (np.pi / 2) * side_sign if side else 0.0  # side-on: the head end to +x (sign +1) or -x
    sdf = rotate_y(similarity(raw, s, -s * centre), turn)
    rot = rotation_matrix(1, turn)
    shins = [[(rot @ (s * (q - centre))).tolist() for q in (knee, foot)] for _, knee, foot in legs]
    params = {"kind": kind, "body": body_kind, "facing": "side" if side else "front", "leg_radius": float(s * r_leg),
              "legs": shins, "horns": horns, "ears": ears}
    return sdf, params


def _offset_profile(radii: np.ndarray, heights: np.ndarray, wall: float) -> np.ndarray:
    """The profile polyline (r_i, y_i) moved inwards (towards the axis) by ``wall`` with mitred joints."""
    pts = np.stack([radii, heights], -1)
    tang = np.diff(pts, axis=0)
    tang /= np.linalg.norm(tang, axis=-1, keepdims=True)
    nrm = np.stack([tang[:, 1], -tang[:, 0]], -1)  # outward normals of the segments
    vn = np.concatenate([nrm[:1], nrm[:-1] + nrm[1:], nrm[-1:]])
    n_seg = np.concatenate([nrm[:1], nrm[1:], nrm[-1:]])
    vn /= np.sum(vn * n_seg, axis=-1, keepdims=True)  # mitre: distance `wall` from each adjacent segment
    return pts - wall * vn


def mug(rng: np.random.Generator) -> tuple[SDF, dict]:
    """A cup, jug or kettle of revolution, hollow with a rim at the top, and a handle making a through-hole.

    The handle (a torus ring on straight cups, or a D of bent capsules) sits on the back (-z) or, for some cups,
    on a side (15-45° towards the back); a jug has a pouring spout and a kettle a long hollow spout on the front
    (+z), a side-handled cup a raised medallion there. Wall and handle radius are drawn in fitted units (wall ≥
    0.05, so the band sees both sides of it at 128³).
    """
    kind = ["cup", "jug", "kettle"][int(rng.integers(0, 3))]
    if kind == "cup":
        h = _u(rng, 0.8, 1.3)
        r0 = _u(rng, 0.3, 0.45)
        radii = np.array([r0 * 0.9, r0, r0 * _u(rng, 1.0, 1.25)])
        heights = np.array([-h / 2, -h / 2 + 0.04, h / 2])
    elif kind == "jug":
        h = _u(rng, 1.0, 1.4)
        rmax = _u(rng, 0.35, 0.5)
        radii = np.array([rmax * _u(rng, 0.7, 0.9), rmax, rmax * _u(rng, 0.6, 0.8), rmax * _u(rng, 0.75, 0.95)])
        heights = -h / 2 + h * np.array([0.0, _u(rng, 0.3, 0.45), _u(rng, 0.75, 0.85), 1.0])
    else:
        h = _u(rng, 0.6, 0.9)
        rmax = _u(rng, 0.45, 0.6)
        radii = np.array([rmax * _u(rng, 0.75, 0.9), rmax, rmax * _u(rng, 0.75, 0.9), _u(rng, 0.16, 0.24)])
        heights = -h / 2 + h * np.array([0.0, _u(rng, 0.3, 0.5), _u(rng, 0.75, 0.85), 1.0])
    y0, y1 = float(heights[0]), float(heights[-1])
    rmax = float(radii.max())
    handle_side = kind == "cup" and rng.random() < 0.3
    # the handle's direction from the axis: straight back, or to one side and somewhat back
    azimuth = np.pi / 2 if not handle_side else np.deg2rad(_u(rng, 15, 45))
    if handle_side and rng.random() < 0.5:
        azimuth = np.pi - azimuth
    u = np.array([np.cos(azimuth), 0.0, -np.sin(azimuth)])  # = R_y(azimuth) (1, 0, 0)
    front = np.array([0.0, 0.0, 1.0])
    pad = 0.15
    parts = _Parts()
    parts.add(None, (-rmax, y0, -rmax), (rmax, y1, rmax))

    y_top = y0 + h * _u(rng, 0.68, 0.85)
    y_bot = y0 + h * _u(rng, 0.15, 0.35)
    r_at = lambda y: float(np.interp(y, heights, radii))  # noqa: E731
    reach = _u(rng, 0.22, 0.36)
    ring = kind == "cup" and rng.random() < 0.6
    if ring:
        big = (y_top - y_bot) / 2
        centre_r = r_at((y_top + y_bot) / 2) + big * _u(rng, 0.35, 0.55)
        ring_c = u * centre_r + [0.0, (y_top + y_bot) / 2, 0.0]
        parts.add(None, ring_c - big - pad, ring_c + big + pad)
        ring_x = np.array([centre_r, ring_c[1], 0.0])  # the ring's centre before turning +x to u
    else:
        r_out = max(r_at(y_top), r_at(y_bot), r_at((y_top + y_bot) / 2)) + reach
        handle_pts = [u * r_at(y_top) * 0.9 + [0, y_top, 0], u * r_out + [0, y_top + _u(rng, 0.0, 0.08), 0],
                      u * (r_out + _u(rng, -0.05, 0.05)) + [0, y_bot, 0], u * r_at(y_bot) * 0.9 + [0, y_bot, 0]]
        for a, b in zip(handle_pts[:-1], handle_pts[1:], strict=True):
            parts.add(None, np.minimum(a, b) - pad, np.maximum(a, b) + pad)
    spout = None
    if kind == "kettle":
        yb = y0 + h * _u(rng, 0.25, 0.45)
        ang = np.deg2rad(_u(rng, 35, 60))
        length = _u(rng, 0.35, 0.55)
        base = front * r_at(yb) * 0.6 + [0, yb, 0]
        tip = front * (r_at(yb) + length * np.cos(ang)) + [0, yb + length * np.sin(ang), 0]
        spout = (base, tip)
    elif kind == "jug":
        r_top = float(radii[-1])
        spout = (front * r_top * 0.6 + [0, y1 - 0.12, 0], front * (r_top + _u(rng, 0.1, 0.16)) + [0, y1 + 0.04, 0])
    if spout is not None:
        parts.add(None, np.minimum(*spout) - pad, np.maximum(*spout) + pad)

    s, centre = _normaliser(*parts.bounds())
    fit = s * _MIN_FIT
    wall = _u(rng, 0.05, 0.08) / fit
    handle_r = _u(rng, 0.035, 0.055) / fit
    if radii[-1] != radii[-2]:  # a vertical collar at the top keeps the rim `wall` thick on sloping profiles
        collar = min(max(0.05, 1.5 * wall), 0.5 * (y1 - float(heights[-2])))
        radii = np.insert(radii, -1, radii[-1])
        heights = np.insert(heights, -1, y1 - collar)
    outer = revolution(radii, heights)
    inner_pts = _offset_profile(radii, heights, wall)
    y_base = y0 + wall * _u(rng, 1.0, 1.6)
    keep = inner_pts[:, 1] > y_base
    inner_r = np.concatenate([[np.interp(y_base, inner_pts[:, 1], inner_pts[:, 0])], inner_pts[keep, 0]])
    inner_y = np.concatenate([[y_base], inner_pts[keep, 1]])
    inner_r, inner_y = np.append(inner_r, inner_r[-1]), np.append(inner_y, y1 + 0.3)  # open at the top
    cavity = revolution(inner_r, inner_y)
    solids = [outer]
    cutters = [cavity]
    if ring:
        solids.append(rotate_y(torus(ring_x, big, handle_r, axis=2), azimuth))
    else:
        solids += [capsule(a, b, handle_r) for a, b in zip(handle_pts[:-1], handle_pts[1:], strict=True)]
    if spout is not None:
        bore = _u(rng, 0.03, 0.05) / fit
        base, tip = spout
        solids.append(capsule(base, tip, bore + wall))
        cutters.append(capsule(base, tip + _unit(tip - base) * 2 * (bore + wall), bore))
    elif handle_side:
        ym = (y_top + y_bot) / 2
        solids.append(cylinder(front * r_at(ym) + [0, ym, 0], _u(rng, 0.12, 0.2), _u(rng, 0.03, 0.05), axis=2))
    sdf = similarity(subtract(union(*solids), *cutters), s, -s * centre)
    params = {"kind": kind, "handle": "side" if handle_side else "back", "handle_style": "ring" if ring else "bent",
              "handle_azimuth_deg": float(np.rad2deg(azimuth)), "wall": float(s * wall),
              "handle_radius": float(s * handle_r), "spout": spout is not None}
    return sdf, params


def relief(rng: np.random.Generator) -> tuple[SDF, dict]:
    """A tablet, tile or arched stele (thickness 0.1-0.25 of its width) with relief on its front (+z), flat back.

    Patterns: ``bumps`` (domes on a jittered grid), ``ridges`` (parallel rods), ``face`` (eyes, nose, a smiling
    mouth arc, sometimes brows), ``rings`` (concentric tori around a boss); raised, or engraved into the face.
    """
    outline = ["rect", "round", "arch"][int(rng.integers(0, 3))]
    if outline == "round":
        hx = hy = _u(rng, 0.65, 0.9)
    elif outline == "arch":
        hx, hy = _u(rng, 0.45, 0.7), _u(rng, 0.75, 0.95)
    else:
        hx, hy = _u(rng, 0.55, 0.9), _u(rng, 0.6, 0.9)
    hz = max(hx, hy) * _u(rng, 0.1, 0.25)  # thickness 2 * hz: 0.1-0.25 of the width 2 * max(hx, hy)

    def prism(inset: float, half_z: float, z: float = 0.0) -> SDF:
        if outline == "round":
            return cylinder((0, 0, z), hx - inset, half_z, axis=2)
        if outline == "rect":
            return box((0, 0, z), (hx - inset, hy - inset, half_z), rounding=min(0.03, 0.5 * half_z))
        # arch: a rectangle whose top is a half disc
        return union(box((0, -hx / 2, z), (hx - inset, hy - hx / 2 - inset, half_z)),
                     cylinder((0, hy - hx, z), hx - inset, half_z, axis=2))

    slab = prism(0.0, hz)
    engraved = rng.random() < 0.35
    depth = min(_u(rng, 0.05, 0.12), 0.7 * hz)
    ext = 0.75 * min(hx, hy)
    pattern = ["bumps", "ridges", "face", "rings"][int(rng.integers(0, 4))]

    def rod(a, b, r):  # a capsule on the face: raised by `depth`, or a groove `depth` deep
        z = hz + (r - depth if engraved else depth - r)
        return capsule((a[0], a[1], z), (b[0], b[1], z), r)

    def dome(x, y, rr):  # a spherical cap of footprint radius rr: raised by `depth`, or a dimple `depth` deep
        big = (rr * rr + depth * depth) / (2 * depth)
        if engraved:
            return sphere((x, y, hz - depth + big), big)
        return intersection(sphere((x, y, hz + depth - big), big), half_space((0, 0, -1), -0.5 * hz))

    els: list[SDF] = []
    if pattern == "bumps":
        n = int(rng.integers(2, 5))
        step = 2 * ext / n
        for i in range(n):
            for j in range(n):
                if rng.random() < 0.8:
                    x, y = -ext + (i + 0.5) * step, -ext + (j + 0.5) * step
                    jit = rng.uniform(-0.15, 0.15, 2) * step
                    rr = step * _u(rng, 0.25, 0.42)
                    els.append(dome(x + jit[0], y + jit[1], rr))
        if not els:
            els.append(dome(0.0, 0.0, 0.3 * ext))
    elif pattern == "ridges":
        n = int(rng.integers(2, 7))
        ang = rng.choice([0.0, np.pi / 2, np.pi / 4, -np.pi / 4]) + _u(rng, -0.1, 0.1)
        d, o = np.array([np.cos(ang), np.sin(ang)]), np.array([-np.sin(ang), np.cos(ang)])
        r = max(depth, _u(rng, 0.03, 0.06))
        for i in range(n):
            off = (-1 + 2 * (i + 0.5) / n) * ext
            els.append(rod(off * o - ext * d, off * o + ext * d, r))
    elif pattern == "face":
        ex, ey, er = ext * _u(rng, 0.35, 0.5), ext * _u(rng, 0.2, 0.4), ext * _u(rng, 0.15, 0.25)
        els += [dome(-ex, ey, er), dome(ex, ey, er)]
        r = max(depth, 0.04)
        els.append(rod((0, ey - 0.3 * er), (0, ey - ext * _u(rng, 0.4, 0.55)), r * _u(rng, 1.0, 1.5)))  # nose
        mouth_r, my = ext * _u(rng, 0.4, 0.6), ey - ext * _u(rng, 0.45, 0.65)
        zm = hz + (r - depth if engraved else depth - r)
        arc = intersection(torus((0, my + 0.5 * mouth_r, zm), mouth_r, r, axis=2), half_space((0, 1, 0), my))
        els.append(arc)
        if rng.random() < 0.5:
            by = ey + er + 0.08
            els += [rod((-ex - er, by), (-ex + er, by + 0.05), r), rod((ex + er, by), (ex - er, by + 0.05), r)]
    else:
        n = int(rng.integers(2, 5))
        cx, cy = rng.uniform(-0.2, 0.2, 2) * ext
        r = max(depth, _u(rng, 0.03, 0.05))
        for i in range(n):
            rad = (ext - 0.2 * ext) * (i + 1) / n
            els.append(torus((cx, cy, hz + (r - depth if engraved else depth - r)), rad, r, axis=2))
        els.append(dome(cx, cy, 0.5 * ext / n))
    clip = prism(0.1 * min(hx, hy), 2 * hz + 1.0)
    art = intersection(union(*els), clip)
    if engraved:
        sdf = subtract(slab, art)
    elif rng.random() < 0.5:
        sdf = smooth_union(_u(rng, 0.01, 0.025), slab, art)
    else:
        sdf = union(slab, art)
    params = {"outline": outline, "pattern": pattern, "engraved": bool(engraved), "thickness": float(2 * hz),
              "depth": float(depth), "elements": len(els)}
    return sdf, params


def plate(rng: np.random.Generator) -> tuple[SDF, dict]:
    """Thin plates: a ``sign`` on a post (post behind), a ``dish`` of revolution (thin wall, concave side to the
    camera, foot ring behind), a ``leaf`` (pointed or oval slab, raised midrib and veins in front, stem) or a
    ``propeller`` (pitched blades around a hub, spinner in front, shaft behind).

    The plate thickness is drawn in fitted units, at least 0.056 (≥ 3.5 voxels at 128³, so the narrow band sees
    both sides): ``params["thickness"]`` in normalised units.
    """
    kind = ["sign", "dish", "leaf", "propeller"][int(rng.integers(0, 4))]
    pad = 0.1
    parts = _Parts()
    t_fit = _u(rng, 0.056, 0.1)
    if kind == "sign":
        shape = ["rect", "disc", "diamond"][int(rng.integers(0, 3))]
        hx, hy = _u(rng, 0.5, 0.9), _u(rng, 0.3, 0.6)
        if shape != "rect":
            hx = hy = _u(rng, 0.45, 0.7)
        yb = _u(rng, 0.1, 0.4)
        n_posts = 2 if shape == "rect" and hx > 0.7 and rng.random() < 0.6 else 1
        post_r = _u(rng, 0.04, 0.07)
        extent = hx * (np.sqrt(2) if shape == "diamond" else 1.0)
        parts.add(None, (-extent, yb - extent if shape == "diamond" else yb - hy, -pad),
                  (extent, yb + (extent if shape == "diamond" else hy), pad))
        parts.add(None, (-hx, -1.0, -pad - 2 * post_r), (hx, yb, 0.0))
        s, centre = _normaliser(*parts.bounds())
        th = t_fit / (s * _MIN_FIT) / 2
        if shape == "rect":
            board = box((0, yb, 0), (hx, hy, th), rounding=0.9 * th)
        elif shape == "disc":
            board = cylinder((0, yb, 0), hx, th, axis=2)
        else:
            board = similarity(rotate(box((0, 0, 0), (hx, hx, th)), 2, np.pi / 4), 1.0, (0, yb, 0))
        solids = [board]
        xs = [-0.6 * hx, 0.6 * hx] if n_posts == 2 else [0.0]
        for x in xs:
            solids.append(cylinder((x, (yb - 1.0) / 2, -th - 0.7 * post_r), post_r, (yb + 1.0) / 2, axis=1))
        if rng.random() < 0.6:  # a raised frame or inner ring on the front
            fw, fh = _u(rng, 0.04, 0.07), _u(rng, 0.02, 0.04)
            if shape == "disc":
                solids.append(torus((0, yb, th), hx * _u(rng, 0.7, 0.85), fw / 2, axis=2))
            elif shape == "rect":
                outer = box((0, yb, th), (hx - 0.05, hy - 0.05, fh))
                solids.append(subtract(outer, box((0, yb, th), (hx - 0.05 - fw, hy - 0.05 - fw, 2 * fh))))
            else:
                solids.append(similarity(rotate(box((0, 0, th), (0.5 * hx, 0.5 * hx, fh)), 2, np.pi / 4), 1.0,
                                         (0, yb, 0)))
        raw = union(*solids)
        extra = {"shape": shape, "posts": n_posts}
    elif kind == "dish":
        big_r = _u(rng, 0.6, 0.95)
        depth = big_r * _u(rng, 0.08, 0.35)
        flat = big_r * _u(rng, 0.2, 0.5)
        radii = [0.0, flat, flat + 0.6 * (big_r - flat), big_r]
        heights = [0.0, 0.0, depth * _u(rng, 0.3, 0.6), depth]
        if rng.random() < 0.5:  # a flat flange
            radii.append(big_r + _u(rng, 0.05, 0.15))
            heights.append(depth + _u(rng, 0.0, 0.03))
        r_all = max(radii)
        foot_r = _u(rng, 0.3, 0.6) * big_r
        tilt = np.deg2rad(_u(rng, 55, 90))
        mid = np.array([0.0, depth / 2, 0.0])
        rot = rotation_matrix(0, tilt)
        parts.add(None, *_rotated_box(np.array([-r_all, -pad - 0.1, -r_all]) - mid,
                                      np.array([r_all, depth + pad, r_all]) - mid, rot))
        s, centre = _normaliser(*parts.bounds())
        th = t_fit / (s * _MIN_FIT) / 2
        foot_w = max(th, 0.035 / (s * _MIN_FIT))
        dish = union(revolved_shell(radii, heights, th), torus((0, -th, 0), foot_r, foot_w, axis=1))
        raw = rotate(similarity(dish, 1.0, -mid), 0, tilt)
        extra = {"flange": len(radii) > 4, "tilt_deg": float(np.rad2deg(tilt))}
    elif kind == "leaf":
        a = _u(rng, 0.75, 0.95)
        b = a * _u(rng, 0.25, 0.5)
        stem = _u(rng, 0.1, 0.25)
        spin, tilt = _u(rng, -0.6, 0.6), _u(rng, -0.35, 0.35)
        rot = rotation_matrix(0, tilt) @ rotation_matrix(2, spin)
        parts.add(None, *_rotated_box(np.array([-b, -a - stem, -pad]), np.array([b, a, pad]), rot))
        s, centre = _normaliser(*parts.bounds())
        th = t_fit / (s * _MIN_FIT) / 2
        pointed = rng.random() < 0.6
        if pointed:  # vesica: the lens between two discs
            big = (a * a + b * b) / (2 * b)

            def lens(half_z: float) -> SDF:
                return intersection(cylinder((big - b, 0, 0), big, half_z, axis=2),
                                    cylinder((b - big, 0, 0), big, half_z, axis=2))

            blade, tall = lens(th), lens(1.0)
        else:
            blade = ellipse_slab((0, 0, 0), (b, a), th)
            tall = ellipse_slab((0, 0, 0), (b, a), 1.0)
        rib_r = max(0.04 / (s * _MIN_FIT), 0.8 * th)
        rib = [capsule((0, -0.9 * a, th), (0, 0.85 * a, th), 0.7 * rib_r)]
        for i in range(int(rng.integers(2, 5))):
            y = -0.6 * a + 1.1 * a * (i + 0.5) / 4
            for sx in (-1, 1):
                rib.append(capsule((0, y, th), (sx * b, y + 0.5 * b + 0.2 * a / 4, th), 0.5 * rib_r))
        veins = intersection(union(*rib), tall)
        stalk = capsule((0, -0.8 * a, 0), (_u(rng, -0.05, 0.05), -a - stem, _u(rng, -0.05, 0.05)), rib_r)
        raw = _turned(union(blade, veins, stalk), rot)
        extra = {"pointed": pointed}
    else:
        n_blades = int(rng.integers(2, 6))
        hub_r, hub_h = _u(rng, 0.08, 0.14), _u(rng, 0.06, 0.12)
        blade_len, blade_w = _u(rng, 0.55, 0.8), _u(rng, 0.1, 0.22)
        nose, shaft = hub_r * _u(rng, 1.0, 2.0), _u(rng, 0.2, 0.5)
        reach = hub_r + 2 * blade_len
        parts.add(None, (-reach, -reach, -hub_h - shaft), (reach, reach, hub_h + nose))
        s, centre = _normaliser(*parts.bounds())
        th = t_fit / (s * _MIN_FIT) / 2
        pitch = np.deg2rad(_u(rng, 15, 40))
        phase = _u(rng, 0.0, 2 * np.pi)
        spinner = capsule((0, 0, hub_h), (0, 0, hub_h + nose - hub_r), hub_r)
        solids = [cylinder((0, 0, 0), hub_r, hub_h, axis=2), spinner,
                  cylinder((0, 0, -hub_h - shaft / 2), max(0.4 * hub_r, 0.035 / (s * _MIN_FIT)), shaft / 2, axis=2)]
        one = rotate_y(ellipse_slab((0, hub_r * 0.5 + blade_len, 0), (blade_w, blade_len), th), pitch)
        for i in range(n_blades):
            solids.append(rotate(one, 2, phase + 2 * np.pi * i / n_blades))
        raw = union(*solids)
        extra = {"blades": n_blades, "pitch_deg": float(np.rad2deg(pitch))}
    sdf = similarity(raw, s, -s * centre)
    return sdf, {"kind": kind, "thickness": float(2 * s * th), **extra}


FAMILIES: dict[str, Callable[[np.random.Generator], tuple[SDF, dict]]] = {
    "coin": coin,
    "vase": vase,
    "furniture": furniture,
    "figure": figure,
    "blob": blob,
    "csg": csg,
    # added after prior v1; new families go at the end so that `_family_index` (and so every earlier
    # family's shapes for a given seed) stays what it was
    "animal": animal,
    "mug": mug,
    "relief": relief,
    "plate": plate,
}

# The families prior v1 was trained on (for the record; pass them as ``families`` to reproduce its data).
V1_FAMILIES = ("coin", "vase", "furniture", "figure", "blob", "csg")


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
    params = {**params, "turn_deg": float(np.rad2deg(turn)), "seed": int(seed), "fit_scale": scale,
              "fit_offset": offset.tolist()}
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
