"""Colour for the output mesh from the input image: what the input camera sees takes its pixels, the rest is filled.

All geometry is in the ``camera`` frame (OpenCV, the camera at the origin), where the input image and its
intrinsics ``K`` apply directly; with several views, each view's test runs in its own camera (the mesh moved there
by its pose) and a point seen by several takes the nearest camera's colour. A surface point is *seen* when the ray
from the camera towards it hits nothing closer (ray casting, :mod:`~consistent3dgen.geometry.render`'s caster),
it projects inside the image, and the pixels around it belong to the object (the point map's mask). Seen points
take the image's colour (bilinear, over mask pixels only); unseen vertices take the colour of the nearest seen
vertex *along the mesh* (multi-source Dijkstra over the edge graph), so an occluded back layer is filled from its
own visible rim, not from the surface in front of it. ``bake_texture`` adds a UV atlas (xatlas) whose texels are
coloured the same way at the image's resolution.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import InputError
from .pointmap import PointMap

COLOUR_MODES = ("none", "vertex", "texture")
GREY = np.array([180, 180, 180], np.uint8)  # a component with no seen vertex at all


@dataclass
class TextureMap:
    """A UV-mapped copy of a mesh: ``vertices`` (V', 3) / ``faces`` follow xatlas's seams, ``uv`` (V', 2) in
    [0, 1] (OpenGL: v up), ``image`` (S, S, 3) uint8, ``source`` (V',) the original vertex of each new one."""

    vertices: np.ndarray
    faces: np.ndarray
    uv: np.ndarray
    image: np.ndarray
    source: np.ndarray


def check_colour_mode(mode: str, path: str | os.PathLike, what: str = "colour") -> None:
    """``mode`` is known and the format of ``path`` holds it (an ``InputError`` naming ``what`` otherwise): a
    texture goes into a .glb only, STL holds no colours. Cheap, so callers check it before any work."""
    if mode not in COLOUR_MODES:
        raise InputError(f"unknown colour mode {mode!r}; use {', '.join(COLOUR_MODES)}")
    ext = Path(path).suffix.lower()
    if mode == "texture" and ext != ".glb":
        raise InputError(f"{what} texture: the texture is written into a .glb, not {ext or 'no extension'}")
    if mode == "vertex" and ext == ".stl":
        raise InputError(f"{what} vertex: STL holds no colours; use .glb .obj .ply")


def can_colour(pointmap: PointMap) -> bool:
    """The point map carries what colouring needs: an image and the intrinsics to project into it."""
    return pointmap.image is not None and pointmap.intrinsics is not None


def can_colour_views(views: PointMap | list[PointMap]) -> bool:
    """At least one view can colour (:func:`can_colour`)."""
    return any(can_colour(v) for v in _as_views(views))


def _as_views(views: PointMap | list[PointMap]) -> list[PointMap]:
    return [views] if isinstance(views, PointMap) else list(views)


def seen_colours(points: np.ndarray, vertices: np.ndarray, faces: np.ndarray, views: PointMap | list[PointMap]
                 ) -> tuple[np.ndarray, np.ndarray]:
    """``(colours (N, 3) float 0..255, seen (N,) bool)`` of points on the mesh (all in the first view's camera
    frame): each point seen by some view (:func:`sample_image` inside its mask, :func:`visible_points` from its
    camera) takes the colour of the nearest such view's camera (the most detailed look at it)."""
    p = np.asarray(points, np.float64)
    colours = np.zeros((len(p), 3))
    best = np.full(len(p), np.inf)
    for view in _as_views(views):
        if not can_colour(view):
            continue
        local = view.from_shared(p) if view.cam_to_world is not None else p
        mesh = view.from_shared(vertices) if view.cam_to_world is not None else vertices
        sampled, inside = sample_image(local, view)
        seen = inside & visible_points(local, mesh, faces)
        dist = np.linalg.norm(local, axis=1)  # from this view's camera centre
        take = seen & (dist < best)
        colours[take], best[take] = sampled[take], dist[take]
    return colours, np.isfinite(best)


def visible_points(points: np.ndarray, vertices: np.ndarray, faces: np.ndarray, tol: float | None = None
                   ) -> np.ndarray:
    """(N,) bool: the ray from the camera (origin) towards each point hits nothing more than ``tol`` before it.

    ``tol`` defaults to 1e-3 of the mesh's bounding-box diagonal (a point on the surface is hit at its own
    distance, up to float32 rounding of the caster).
    """
    from .geometry.render import _cast_numpy
    from .geometry.warp_runtime import warp_available, warp_kernels

    p = np.asarray(points, np.float64)
    v = np.asarray(vertices, np.float64)
    f = np.asarray(faces, np.int64)
    dist = np.linalg.norm(p, axis=1)
    ok = dist > 1e-12
    if tol is None:
        tol = 1e-3 * float(np.linalg.norm(v.max(0) - v.min(0)))
    dirs = np.where(ok[:, None], p / np.where(ok, dist, 1.0)[:, None], np.array([0.0, 0.0, 1.0]))
    if warp_available("render"):
        hit_t, face = warp_kernels("render").cast_rays(v, f, dirs)
    else:
        hit_t, face = _cast_numpy(v, f, dirs)
    clear = (face < 0) | (hit_t >= dist - tol)
    return ok & clear


def sample_image(points: np.ndarray, pointmap: PointMap) -> tuple[np.ndarray, np.ndarray]:
    """Project camera-frame ``points`` with K and sample the image bilinearly over mask pixels only.

    Returns ``(colours (N, 3) float in 0..255, inside (N,) bool)``; ``inside``: in front of the camera and at
    least one of the four neighbouring pixels is in the object mask.
    """
    img = np.asarray(pointmap.image)[..., :3].astype(np.float64)
    mask = np.asarray(pointmap.mask, bool)
    h, w = mask.shape
    k = np.asarray(pointmap.intrinsics, np.float64)
    p = np.asarray(points, np.float64)
    z = p[:, 2]
    front = z > 1e-9
    zs = np.where(front, z, 1.0)
    u = (k[0, 0] * p[:, 0] + k[0, 1] * p[:, 1]) / zs + k[0, 2]  # pixel centres at integer coordinates
    v = (k[1, 1] * p[:, 1]) / zs + k[1, 2]
    front &= (u > -1) & (u < w) & (v > -1) & (v < h)
    u0, v0 = np.floor(np.where(front, u, 0)).astype(np.int64), np.floor(np.where(front, v, 0)).astype(np.int64)
    fu, fv = np.where(front, u, 0) - u0, np.where(front, v, 0) - v0
    acc = np.zeros((len(p), 3))
    wsum = np.zeros(len(p))
    for du, dv, wt in ((0, 0, (1 - fu) * (1 - fv)), (1, 0, fu * (1 - fv)), (0, 1, (1 - fu) * fv), (1, 1, fu * fv)):
        uu, vv = u0 + du, v0 + dv
        ok = front & (uu >= 0) & (uu < w) & (vv >= 0) & (vv < h)
        uc, vc = np.clip(uu, 0, w - 1), np.clip(vv, 0, h - 1)
        wt = np.where(ok & mask[vc, uc], wt, 0.0)
        acc += wt[:, None] * img[vc, uc]
        wsum += wt
    inside = wsum > 1e-6
    colours = np.where(inside[:, None], acc / np.where(inside, wsum, 1.0)[:, None], 0.0)
    return colours, inside


def fill_along_mesh(colours: np.ndarray, known: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Each unknown vertex takes the colour of the nearest known vertex along the mesh's edges (geodesic
    Voronoi by multi-source Dijkstra); vertices of a piece with no known vertex become grey."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import dijkstra

    out = np.array(colours, np.float64, copy=True)
    n = len(out)
    if known.all():
        return out
    if not known.any():
        out[:] = GREY
        return out
    f = np.asarray(faces, np.int64)
    edges = np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]])
    edges = np.unique(np.sort(edges, axis=1), axis=0)
    # unit edge weights: hops, enough to find the nearest seen region along the surface (and scale-free)
    graph = coo_matrix((np.ones(len(edges)), (edges[:, 0], edges[:, 1])), shape=(n, n)).tocsr()
    sources = np.flatnonzero(known)
    dist, _, nearest = dijkstra(graph, directed=False, indices=sources, min_only=True, return_predecessors=True)
    reach = np.isfinite(dist) & (nearest >= 0)
    fill = ~known & reach
    out[fill] = out[nearest[fill]]
    out[~known & ~reach] = GREY
    return out


def vertex_colours(vertices: np.ndarray, faces: np.ndarray, views: PointMap | list[PointMap]
                   ) -> tuple[np.ndarray, np.ndarray]:
    """``(colours (V, 3) uint8, seen (V,) bool)`` for a mesh in the (first) view's camera frame from the views'
    images (:func:`seen_colours`), the unseen vertices filled along the mesh."""
    if not can_colour_views(views):
        raise ValueError("colouring needs a point map with an image and intrinsics")
    v = np.asarray(vertices, np.float64)
    sampled, seen = seen_colours(v, v, faces, views)
    filled = fill_along_mesh(sampled, seen, faces)
    return np.clip(np.rint(filled), 0, 255).astype(np.uint8), seen


def texture_size(n_faces: int) -> int:
    """Texture side for a mesh: about 16 texels a face (so each triangle gets a few texels), 256..2048."""
    side = int(2 ** np.ceil(np.log2(max(np.sqrt(16 * max(n_faces, 1)), 1.0))))
    return int(np.clip(side, 256, 2048))


def bake_texture(vertices: np.ndarray, faces: np.ndarray, colours: np.ndarray,
                 views: PointMap | list[PointMap] | None = None, size: int | None = None) -> TextureMap:
    """A UV atlas (xatlas) and its texture: texels take the vertex colours interpolated over their triangle, and,
    where ``views`` are given, texels a view sees take its image itself (at its resolution; :func:`seen_colours`)."""
    try:
        import xatlas
    except ImportError as e:  # an optional extra
        from .errors import InputError

        raise InputError("texture colour needs xatlas: pip install 'consistent3dgen[texture]'") from e
    from PIL import Image, ImageDraw
    from scipy.ndimage import distance_transform_edt

    v = np.asarray(vertices, np.float32)
    f = np.asarray(faces, np.uint32)
    size = int(size or texture_size(len(f)))
    atlas = xatlas.Atlas()
    atlas.add_mesh(v, f)
    charts = xatlas.ChartOptions()
    charts.max_iterations = 0  # one pass of chart growing: several times faster, charts good enough for colour
    pack = xatlas.PackOptions()
    pack.resolution, pack.padding = size, 2
    atlas.generate(charts, pack)
    source, new_faces, uv = atlas[0]
    new_faces = new_faces.astype(np.int64)
    # rasterise triangle ids in texel space (PIL polygons; id + 1 encoded in RGB, 0 = empty)
    ids = Image.new("RGB", (size, size), (0, 0, 0))
    draw = ImageDraw.Draw(ids)
    px = uv * size - 0.5  # texel centres at integer coordinates; row 0 = v 0 here, flipped when stored
    for i, tri in enumerate(new_faces):
        code = i + 1
        draw.polygon([tuple(px[j]) for j in tri], fill=(code & 255, (code >> 8) & 255, (code >> 16) & 255))
    raw = np.asarray(ids, np.int64)
    face_id = raw[..., 0] + (raw[..., 1] << 8) + (raw[..., 2] << 16) - 1
    ty, tx = np.nonzero(face_id >= 0)
    fid = face_id[ty, tx]
    # barycentric coordinates of each texel centre in its triangle (clamped: PIL's edge pixels may lie just out)
    a, b, c = (px[new_faces[fid, j]] for j in range(3))
    q = np.stack([tx, ty], axis=1).astype(np.float64)
    v0, v1, v2 = b - a, c - a, q - a
    den = v0[:, 0] * v1[:, 1] - v1[:, 0] * v0[:, 1]
    den = np.where(np.abs(den) > 1e-12, den, 1e-12)
    l1 = (v2[:, 0] * v1[:, 1] - v1[:, 0] * v2[:, 1]) / den
    l2 = (v0[:, 0] * v2[:, 1] - v2[:, 0] * v0[:, 1]) / den
    bary = np.clip(np.stack([1 - l1 - l2, l1, l2], axis=1), 0.0, None)
    bary /= np.maximum(bary.sum(1, keepdims=True), 1e-12)
    corners = source[new_faces[fid]]  # original vertex ids (T, 3)
    cols = np.einsum("tk,tkc->tc", bary, np.asarray(colours, np.float64)[corners])
    if views is not None and can_colour_views(views):
        pos = np.einsum("tk,tkc->tc", bary, np.asarray(vertices, np.float64)[corners])
        sampled, seen = seen_colours(pos, vertices, faces, views)
        cols[seen] = sampled[seen]
    tex = np.zeros((size, size, 3), np.float64)
    tex[ty, tx] = cols
    # gutter: empty texels take the nearest filled texel (no dark seams under bilinear filtering / mip-maps)
    if len(ty):
        empty = face_id < 0
        _, (iy, ix) = distance_transform_edt(empty, return_indices=True)
        tex = tex[iy, ix]
    image = np.clip(np.rint(tex), 0, 255).astype(np.uint8)[::-1]  # row 0 = top = v 1 (glTF's flip by trimesh)
    return TextureMap(np.asarray(vertices, np.float64)[source], new_faces, uv.astype(np.float64), image,
                      source.astype(np.int64))
