"""Scores: how well a mesh matches its input view (depth, normals, silhouette), and Chamfer / F-score between
two surfaces.

Conventions, stated once:

* Input-view consistency renders the mesh from the point map's own camera (its intrinsics, mesh given in the
  camera frame) and compares pixel by pixel. Depth errors are absolute z differences over pixels valid in both,
  divided by the object's size = the bounding-box diagonal of the point map's valid points. Point-map normals
  come from finite differences of neighbouring points (central where both neighbours are valid, else
  one-sided), oriented towards the camera like the rendered normals.
* Chamfer / F-score sample both surfaces uniformly by area (seeded), divide all distances by the reference's
  bounding-box diagonal, and use Euclidean nearest-neighbour distances (scipy cKDTree).
  ``chamfer_l1`` = (mean d(a→ref) + mean d(ref→a)) / 2; ``chamfer_l2`` = the same with squared distances.
  F-score@τ is the harmonic mean of precision (share of the mesh's samples within τ of the reference) and recall
  (share of the reference's samples within τ of the mesh), τ relative to the same diagonal.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from .geometry.render import raycast
from .pointmap import PointMap, transform


@dataclass
class ViewConsistency:
    """Agreement of a mesh with the input view. Depth errors are fractions of ``object_size``.

    NaN where no pixel is valid in both (then ``overlap_pixels`` is 0).
    """

    depth_error_mean: float
    depth_error_p90: float
    normal_error_deg_mean: float
    silhouette_iou: float
    object_size: float
    overlap_pixels: int

    def to_dict(self) -> dict:
        return {k: (float(v) if isinstance(v, float) else v) for k, v in asdict(self).items()}


@dataclass
class SurfaceDistance:
    """Chamfer distances and F-score between a mesh and a reference (see the module docstring)."""

    chamfer_l1: float
    chamfer_l2: float
    fscore: float
    precision: float
    recall: float
    tau: float
    scale: float
    n_points: int

    def to_dict(self) -> dict:
        return asdict(self)


def pointmap_normals(pointmap: PointMap) -> tuple[np.ndarray, np.ndarray]:
    """(H, W, 3) unit normals of the point map facing the camera, and the (H, W) bool mask where they exist.

    Finite differences along image columns and rows: central where both neighbours are valid, one-sided where
    only one is; a pixel needs a difference in both directions.
    """
    m = pointmap.mask
    # points outside the mask may be anything (NaN, inf): they never enter a difference, so blank them first
    p = np.where(m[..., None], pointmap.points.astype(np.float64), np.nan)
    du, ok_u = _difference(p, m, axis=1)
    dv, ok_v = _difference(p, m, axis=0)
    n = np.cross(du, dv)
    length = np.linalg.norm(n, axis=-1)
    ok = m & ok_u & ok_v & (length > 0)
    n = np.where(ok[..., None], n / np.where(length > 0, length, 1.0)[..., None], np.nan)
    # Face the camera (at the origin): the normal points against the viewing ray p.
    flip = np.sum(n * p, axis=-1) > 0
    n[flip] *= -1.0
    return n.astype(np.float32), ok


def _difference(p: np.ndarray, m: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """Derivative of the points along one image axis and where it is defined."""

    def shift(a: np.ndarray, k: int, fill) -> np.ndarray:  # noqa: ANN001 - a[i + k] along axis, fill outside
        out = np.full_like(a, fill)
        src = [slice(None)] * a.ndim
        dst = [slice(None)] * a.ndim
        if k > 0:
            src[axis], dst[axis] = slice(k, None), slice(None, -k)
        else:
            src[axis], dst[axis] = slice(None, k), slice(-k, None)
        out[tuple(dst)] = a[tuple(src)]
        return out

    nxt, prv = shift(p, 1, np.nan), shift(p, -1, np.nan)
    ok_next, ok_prev = shift(m, 1, False) & m, shift(m, -1, False) & m
    central = (nxt - prv) / 2.0
    forward = nxt - p
    backward = p - prv
    d = np.where((ok_next & ok_prev)[..., None], central, np.where(ok_next[..., None], forward, backward))
    return d, ok_next | ok_prev


def input_view_consistency(vertices: np.ndarray, faces: np.ndarray, pointmap: PointMap) -> ViewConsistency:
    """Score a mesh (in the point map's camera frame) against the point map: depth, normals, silhouette."""
    if pointmap.intrinsics is None:
        raise ValueError("input-view consistency needs the point map's intrinsics (K) to render the mesh")
    h, w = pointmap.shape
    hits = raycast(vertices, faces, pointmap.intrinsics, w, h)
    valid_points = pointmap.valid_points().astype(np.float64)
    size = float(np.linalg.norm(valid_points.max(axis=0) - valid_points.min(axis=0)))
    if not size > 0:
        raise ValueError("the point map's valid points have zero extent: cannot normalise depth errors")
    inter = int(np.sum(hits.mask & pointmap.mask))
    union = int(np.sum(hits.mask | pointmap.mask))
    iou = inter / union if union else float("nan")
    both = hits.mask & pointmap.mask
    if not both.any():
        return ViewConsistency(float("nan"), float("nan"), float("nan"), iou, size, 0)
    err = np.abs(hits.depth[both].astype(np.float64) - pointmap.points[both, 2].astype(np.float64)) / size
    pm_normals, pm_ok = pointmap_normals(pointmap)
    nb = both & pm_ok
    if nb.any():
        cos = np.sum(hits.normals[nb].astype(np.float64) * pm_normals[nb], axis=1)
        normal_err = float(np.degrees(np.arccos(np.clip(cos, -1.0, 1.0))).mean())
    else:
        normal_err = float("nan")
    return ViewConsistency(
        depth_error_mean=float(err.mean()),
        depth_error_p90=float(np.percentile(err, 90)),
        normal_error_deg_mean=normal_err,
        silhouette_iou=float(iou),
        object_size=size,
        overlap_pixels=int(both.sum()),
    )


def sample_surface(vertices: np.ndarray, faces: np.ndarray, n_points: int, seed: int = 0) -> np.ndarray:
    """(n_points, 3) points uniform by area on a triangle mesh, reproducible for a given seed."""
    v = np.asarray(vertices, np.float64)
    f = np.asarray(faces, np.int64)
    if v.ndim != 2 or v.shape[1] != 3 or f.ndim != 2 or f.shape[1] != 3 or len(f) == 0:
        raise ValueError(f"need a triangle mesh (V, 3) + (F, 3), got {v.shape} and {f.shape}")
    if f.min() < 0 or f.max() >= len(v):
        raise ValueError("face indices outside the vertex array")
    if n_points < 1:
        raise ValueError(f"number of samples must be positive, got {n_points}")
    tri = v[f]
    area = 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)
    total = area.sum()
    if not np.isfinite(total) or total <= 0:
        raise ValueError("mesh has zero surface area: cannot sample it")
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(f), size=n_points, p=area / total)
    r1, r2 = rng.random(n_points), rng.random(n_points)
    # Fold the unit square onto the triangle so the barycentric samples stay uniform.
    fold = r1 + r2 > 1.0
    r1[fold], r2[fold] = 1.0 - r1[fold], 1.0 - r2[fold]
    t = tri[pick]
    return t[:, 0] + r1[:, None] * (t[:, 1] - t[:, 0]) + r2[:, None] * (t[:, 2] - t[:, 0])


def point_cloud_distance(points: np.ndarray, reference: np.ndarray, tau: float = 0.01) -> SurfaceDistance:
    """Chamfer and F-score@τ between two point sets, normalised by the reference's bounding-box diagonal."""
    from scipy.spatial import cKDTree

    a = np.asarray(points, np.float64)
    b = np.asarray(reference, np.float64)
    for name, x in (("points", a), ("reference", b)):
        if x.ndim != 2 or x.shape[1] != 3 or len(x) == 0 or not np.isfinite(x).all():
            raise ValueError(f"{name} must be a non-empty finite (N, 3) array, got shape {x.shape}")
    if not tau > 0:
        raise ValueError(f"F-score threshold must be positive, got {tau}")
    scale = float(np.linalg.norm(b.max(axis=0) - b.min(axis=0)))
    if not scale > 0:
        raise ValueError("reference has zero extent: cannot normalise distances")
    d_ab = cKDTree(b).query(a, workers=-1)[0] / scale
    d_ba = cKDTree(a).query(b, workers=-1)[0] / scale
    precision = float(np.mean(d_ab < tau))
    recall = float(np.mean(d_ba < tau))
    fscore = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return SurfaceDistance(
        chamfer_l1=float((d_ab.mean() + d_ba.mean()) / 2),
        chamfer_l2=float((np.mean(d_ab**2) + np.mean(d_ba**2)) / 2),
        fscore=float(fscore),
        precision=precision,
        recall=recall,
        tau=float(tau),
        scale=scale,
        n_points=int(min(len(a), len(b))),
    )


def mesh_distance(
    vertices: np.ndarray,
    faces: np.ndarray,
    ref_vertices: np.ndarray,
    ref_faces: np.ndarray,
    n_points: int = 100_000,
    tau: float = 0.01,
    seed: int = 0,
) -> SurfaceDistance:
    """Chamfer / F-score@τ between a mesh and a reference mesh from ``n_points`` area-uniform samples each."""
    a = sample_surface(vertices, faces, n_points, seed=seed)
    b = sample_surface(ref_vertices, ref_faces, n_points, seed=seed + 1)
    return point_cloud_distance(a, b, tau=tau)


# --------------------------------------------------------------------------------------------- unseen side


def hidden_from_camera(points: np.ndarray, vertices: np.ndarray, faces: np.ndarray, K: np.ndarray,  # noqa: N803
                       width: int, height: int, tol: float) -> np.ndarray:
    """(N,) bool: the camera-frame ``points`` (on the mesh) are NOT visible from the camera ``K`` (W × H).

    Depth test against the mesh's own rendering from that camera: a point is visible when it projects into the
    image and its z is at most ``tol`` behind the nearest rendered depth among the 3×3 pixels around its
    projection (the neighbourhood absorbs pixel quantisation at silhouettes and grazing angles). Points behind
    the camera, outside the image, or where no neighbouring pixel hits the mesh (sub-pixel slivers) are hidden.
    """
    p = np.asarray(points, np.float64)
    depth = raycast(vertices, faces, K, width, height).depth.astype(np.float64)
    # 3x3 maximum of the rendered depth (NaN = miss, ignored): the deepest visible surface near each pixel
    pad = np.pad(depth, 1, constant_values=np.nan)
    stack = np.stack([pad[dy : dy + height, dx : dx + width] for dy in range(3) for dx in range(3)])
    finite = np.isfinite(stack)
    near_max = np.where(finite.any(0), np.where(finite, stack, -np.inf).max(0), np.nan)
    z = p[:, 2]
    front = z > 1e-9
    uvw = np.einsum("ij,nj->ni", np.asarray(K, np.float64), p)
    with np.errstate(divide="ignore", invalid="ignore"):
        u = np.rint(uvw[:, 0] / np.where(front, z, 1.0)).astype(np.int64)
        v = np.rint(uvw[:, 1] / np.where(front, z, 1.0)).astype(np.int64)
    inside = front & (u >= 0) & (u < width) & (v >= 0) & (v < height)
    visible = np.zeros(len(p), bool)
    d = near_max[v[inside], u[inside]]
    visible[inside] = np.isfinite(d) & (z[inside] <= d + tol)
    return ~visible


def hidden_from_cameras(points: np.ndarray, vertices: np.ndarray, faces: np.ndarray,
                        cameras: Sequence[tuple[np.ndarray, int, int, np.ndarray | None]], tol: float) -> np.ndarray:
    """(N,) bool: the ``points`` (on the mesh, both in one frame) are hidden from EVERY camera.

    ``cameras``: ``(K, width, height, cam_from_frame)`` each, ``cam_from_frame`` a (4, 4) rigid transform from
    the points' frame to that camera's (None = the identity: the points are in that camera's frame). A point is
    seen when :func:`hidden_from_camera` finds it visible from at least one camera (same depth test, same ``tol``).
    With one camera and no transform, this is :func:`hidden_from_camera` itself.
    """
    p = np.asarray(points, np.float64)
    hidden = np.ones(len(p), bool)
    for k, width, height, pose in cameras:
        if pose is None:  # no transform: exactly the single-camera test (same arithmetic, same numbers)
            pts, verts = p, vertices
        else:
            pts, verts = transform(p, np.asarray(pose, np.float64)), transform(vertices, np.asarray(pose, np.float64))
        hidden &= hidden_from_camera(pts, verts, faces, k, width, height, tol)
    return hidden


@dataclass
class UnseenSideDistance:
    """Scores on the side the input camera does not see; distances are fractions of the reference's diagonal.

    completeness: mean distance of the reference's hidden samples to the output surface (all its samples);
    accuracy: mean distance of the output's hidden samples to the reference surface (all its samples);
    recall / precision: the shares of those within ``tau``; fscore: their harmonic mean, 0.0 when the output has
    no hidden samples (nothing generated on the unseen side: accuracy and precision NaN then).
    """

    completeness: float
    accuracy: float
    fscore: float
    precision: float
    recall: float
    tau: float
    scale: float
    ref_hidden: int  # reference samples hidden from the input view
    out_hidden: int  # output samples hidden from the input view

    def to_dict(self) -> dict:
        return asdict(self)


def unseen_side_distance(vertices: np.ndarray, faces: np.ndarray, ref_vertices: np.ndarray, ref_faces: np.ndarray,
                         K: np.ndarray, width: int, height: int, n_points: int = 20_000,  # noqa: N803
                         tau: float = 0.02, visibility_tol: float = 0.01, seed: int = 0) -> UnseenSideDistance:
    """Completeness, accuracy and F-score@τ of a mesh on the reference's unseen side (both in the camera frame).

    Each surface is sampled by area (``n_points``, seeded); a sample is "unseen" when it is hidden from the input
    camera (``K``, ``width`` × ``height``) by its own surface (:func:`hidden_from_camera`, tolerance
    ``visibility_tol`` × the diagonal). Hidden reference samples are scored against the whole output, hidden
    output samples against the whole reference, so a back that exists but sits in the wrong place is penalised
    on both sides, and a missing back only in completeness / recall (and F).
    """
    return unseen_side_distance_views(vertices, faces, ref_vertices, ref_faces, [(K, width, height, None)],
                                      n_points=n_points, tau=tau, visibility_tol=visibility_tol, seed=seed)


def unseen_side_distance_views(vertices: np.ndarray, faces: np.ndarray, ref_vertices: np.ndarray,
                               ref_faces: np.ndarray, cameras: Sequence[tuple[np.ndarray, int, int, np.ndarray | None]],
                               n_points: int = 20_000, tau: float = 0.02, visibility_tol: float = 0.01,
                               seed: int = 0) -> UnseenSideDistance:
    """:func:`unseen_side_distance` for several input cameras: "unseen" = hidden from every one of them
    (:func:`hidden_from_cameras`; ``cameras`` as there, from the meshes' frame). Both meshes in one frame."""
    from scipy.spatial import cKDTree

    out_pts = sample_surface(vertices, faces, n_points, seed=seed)
    ref_pts = sample_surface(ref_vertices, ref_faces, n_points, seed=seed + 1)
    scale = float(np.linalg.norm(ref_pts.max(axis=0) - ref_pts.min(axis=0)))
    if not scale > 0:
        raise ValueError("reference has zero extent: cannot normalise distances")
    if not tau > 0:
        raise ValueError(f"F-score threshold must be positive, got {tau}")
    ref_hidden = ref_pts[hidden_from_cameras(ref_pts, ref_vertices, ref_faces, cameras, visibility_tol * scale)]
    out_hidden = out_pts[hidden_from_cameras(out_pts, vertices, faces, cameras, visibility_tol * scale)]
    nan = float("nan")
    if len(ref_hidden):
        d_ref = cKDTree(out_pts).query(ref_hidden, workers=-1)[0] / scale
        completeness, recall = float(d_ref.mean()), float(np.mean(d_ref < tau))
    else:  # the reference has no unseen side (cannot happen for a closed surface): nothing to score
        completeness = recall = nan
    if len(out_hidden):
        d_out = cKDTree(ref_pts).query(out_hidden, workers=-1)[0] / scale
        accuracy, precision = float(d_out.mean()), float(np.mean(d_out < tau))
    else:
        accuracy = precision = nan
    if np.isfinite(precision) and np.isfinite(recall):
        fscore = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    else:
        fscore = 0.0 if len(ref_hidden) else nan
    return UnseenSideDistance(completeness, accuracy, float(fscore), precision, recall, float(tau), scale,
                              int(len(ref_hidden)), int(len(out_hidden)))


def mesh_structure(vertices: np.ndarray, faces: np.ndarray) -> dict:
    """``{"pieces", "large_pieces", "largest_area_fraction", "watertight"}``: :func:`~consistent3dgen.geometry.
    mesh_ops.mesh_pieces` (connected pieces sharing a vertex, those above 0.5 % of the area, the largest piece's
    share of the area, every edge shared by two faces)."""
    from .geometry.mesh_ops import mesh_pieces

    return mesh_pieces(vertices, faces)
