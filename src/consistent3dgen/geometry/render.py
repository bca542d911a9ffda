"""Depth, normals, silhouettes and point maps of a triangle mesh by ray casting.

Camera convention (OpenCV, the project's ``camera`` frame): x right, y down, z forward. ``K`` is a 3x3 pinhole
matrix in pixels; pixel ``(u, v)`` (column, row) has its centre at the integer coordinates ``(u, v)``, so its
ray is ``K^-1 [u, v, 1]``, the same convention as unprojecting a depth map with ``np.arange``. ``cam_from_world``
(4x4) maps mesh coordinates into the camera frame; the camera sits at the camera-frame origin.

The fast path casts rays with NVIDIA Warp's BVH (``wp.Mesh`` + ``mesh_query_ray``, on the CPU; see
:mod:`~consistent3dgen.geometry.warp_render`); without Warp a pure NumPy path through trimesh's triangle
intersector is used (correct but slow: small meshes only).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..pointmap import PointMap
from .warp_runtime import warp_available, warp_kernels

# Largest |coordinate| rendered: products of two stay inside float32 (the Warp ray caster's arithmetic); point
# maps are refused beyond 1e15 (``pointmap.MAX_ABS_COORD``), so meshes made from them are far inside.
MAX_RENDER_COORD = 1e18


@dataclass
class RayCast:
    """Per-pixel first hits of a mesh seen from a camera (all arrays (H, W, ...), camera frame).

    mask:    bool, the ray hit the mesh (the silhouette).
    depth:   z of the hit (not the ray length); NaN on misses.
    points:  hit points; NaN on misses.
    normals: unit face normals of the hit triangles, flipped to face the camera; NaN on misses.
    face:    index of the hit triangle; -1 on misses.
    """

    mask: np.ndarray
    depth: np.ndarray
    points: np.ndarray
    normals: np.ndarray
    face: np.ndarray


def intrinsics_from_fov(fov_deg: float, width: int, height: int) -> np.ndarray:
    """Pinhole K with a horizontal field of view ``fov_deg``, square pixels and the optical axis at the centre.

    The principal point is ``((W - 1) / 2, (H - 1) / 2)`` because pixel centres sit on integer coordinates.
    """
    if not 0.0 < float(fov_deg) < 180.0:
        raise ValueError(f"field of view must be in (0, 180) degrees, got {fov_deg}")
    width, height = _check_size(width, height)
    f = 0.5 * width / np.tan(np.radians(float(fov_deg)) / 2.0)
    return np.array([[f, 0.0, (width - 1) / 2.0], [0.0, f, (height - 1) / 2.0], [0.0, 0.0, 1.0]])


def look_at(eye: np.ndarray, target: np.ndarray, up: np.ndarray = (0.0, 1.0, 0.0)) -> np.ndarray:
    """4x4 ``cam_from_world`` of an OpenCV camera at ``eye`` looking at ``target``; ``up`` maps to image up (-y)."""
    eye = np.asarray(eye, np.float64)
    forward = np.asarray(target, np.float64) - eye
    if np.linalg.norm(forward) < 1e-12:
        raise ValueError("look_at: eye and target coincide")
    z = forward / np.linalg.norm(forward)
    x = np.cross(z, np.asarray(up, np.float64))
    if np.linalg.norm(x) < 1e-9:
        raise ValueError("look_at: the up vector is parallel to the viewing direction")
    x /= np.linalg.norm(x)
    y = np.cross(z, x)  # points down in the image, completing a right-handed frame
    out = np.eye(4)
    out[:3, :3] = np.stack([x, y, z])
    out[:3, 3] = -out[:3, :3] @ eye
    return out


def pixel_rays(K: np.ndarray, width: int, height: int) -> np.ndarray:  # noqa: N803 - K is the usual name
    """(H, W, 3) camera-frame ray directions ``K^-1 [u, v, 1]`` (z = 1, so ``depth * ray`` is the 3D point)."""
    k = _check_k(K)
    width, height = _check_size(width, height)
    u, v = np.meshgrid(np.arange(width, dtype=np.float64), np.arange(height, dtype=np.float64))
    pix = np.stack([u, v, np.ones_like(u)], axis=-1)
    # einsum, not @: BLAS on (N, 3) x (3, 3) only spawns threads that fight over a busy CPU.
    rays = np.einsum("hwj,ij->hwi", pix, np.linalg.inv(k))
    return rays / rays[..., 2:3]


def raycast(
    vertices: np.ndarray,
    faces: np.ndarray,
    K: np.ndarray,  # noqa: N803
    width: int,
    height: int,
    cam_from_world: np.ndarray | None = None,
    backend: str = "auto",
) -> RayCast:
    """Cast one ray per pixel centre and return the first hits (see :class:`RayCast`).

    backend: "auto" (Warp if its kernel compiles here, else NumPy), "warp" or "numpy".
    """
    verts_cam = _to_camera(vertices, cam_from_world)
    tris = _check_faces(faces, len(verts_cam))
    rays = pixel_rays(K, width, height)
    dirs = rays / np.linalg.norm(rays, axis=-1, keepdims=True)
    flat_dirs = dirs.reshape(-1, 3)
    if backend not in ("auto", "warp", "numpy"):
        raise ValueError(f"unknown ray-cast backend {backend!r}; use auto, warp or numpy")
    use_warp = backend == "warp" or (backend == "auto" and warp_available("render"))
    if use_warp:
        dist, face = warp_kernels("render").cast_rays(verts_cam, tris, flat_dirs)
    else:
        dist, face = _cast_numpy(verts_cam, tris, flat_dirs)
    h, w = int(height), int(width)
    hit = face >= 0
    points = np.full((h * w, 3), np.nan, np.float64)
    points[hit] = flat_dirs[hit] * dist[hit, None]
    normals = np.full((h * w, 3), np.nan, np.float64)
    if hit.any():
        n = _face_normals(verts_cam, tris[face[hit]])
        # Face the camera: the normal must point against the viewing ray.
        flip = np.einsum("ij,ij->i", n, flat_dirs[hit]) > 0
        n[flip] *= -1.0
        normals[hit] = n
    depth = points[:, 2].copy()
    return RayCast(
        mask=hit.reshape(h, w),
        depth=depth.reshape(h, w).astype(np.float32),
        points=points.reshape(h, w, 3).astype(np.float32),
        normals=normals.reshape(h, w, 3).astype(np.float32),
        face=face.reshape(h, w).astype(np.int64),
    )


def render_depth(vertices, faces, K, width, height, cam_from_world=None) -> np.ndarray:  # noqa: N803, ANN001
    """(H, W) float32 z-depth in the camera frame, NaN where no triangle is hit."""
    return raycast(vertices, faces, K, width, height, cam_from_world).depth


def render_normals(vertices, faces, K, width, height, cam_from_world=None) -> np.ndarray:  # noqa: N803, ANN001
    """(H, W, 3) float32 camera-frame unit normals facing the camera, NaN where no triangle is hit."""
    return raycast(vertices, faces, K, width, height, cam_from_world).normals


def render_silhouette(vertices, faces, K, width, height, cam_from_world=None) -> np.ndarray:  # noqa: N803, ANN001
    """(H, W) bool: the pixel's ray hits the mesh."""
    return raycast(vertices, faces, K, width, height, cam_from_world).mask


def render_pointmap(
    vertices: np.ndarray,
    faces: np.ndarray,
    K: np.ndarray,  # noqa: N803
    width: int,
    height: int,
    cam_from_world: np.ndarray | None = None,
) -> PointMap:
    """The mesh's visible surface as a :class:`PointMap` (camera frame, mask = hits, NaN points on misses)."""
    hits = raycast(vertices, faces, K, width, height, cam_from_world)
    if not hits.mask.any():
        raise ValueError("the mesh is not visible from this camera: no pixel hits it")
    return PointMap(points=hits.points, mask=hits.mask, intrinsics=np.asarray(K, np.float64))


# ---------------------------------------------------------------------------------------------------------------
# input checks and helpers


def _check_size(width: int, height: int) -> tuple[int, int]:
    if int(width) != width or int(height) != height or width < 1 or height < 1:
        raise ValueError(f"image size must be positive integers, got {width}x{height}")
    return int(width), int(height)


def _check_k(K: np.ndarray) -> np.ndarray:  # noqa: N803
    k = np.asarray(K, np.float64)
    if k.shape != (3, 3) or not np.isfinite(k).all():
        raise ValueError(f"intrinsics must be a finite 3x3 matrix, got shape {k.shape}")
    if abs(np.linalg.det(k)) < 1e-12:
        raise ValueError("intrinsics matrix is singular")
    return k


def _to_camera(vertices: np.ndarray, cam_from_world: np.ndarray | None) -> np.ndarray:
    v = np.asarray(vertices, np.float64)
    if v.ndim != 2 or v.shape[1] != 3 or len(v) == 0:
        raise ValueError(f"vertices must have shape (N, 3) with N > 0, got {v.shape}")
    if not np.isfinite(v).all():
        raise ValueError("vertices contain NaN or inf")
    if cam_from_world is not None:
        m = np.asarray(cam_from_world, np.float64)
        if m.shape != (4, 4) or not np.isfinite(m).all():
            raise ValueError(f"cam_from_world must be a finite 4x4 matrix, got shape {m.shape}")
        with np.errstate(over="ignore", invalid="ignore"):  # an overflow is reported just below
            v = np.einsum("nj,ij->ni", v, m[:3, :3]) + m[:3, 3]
    if not np.abs(v).max() <= MAX_RENDER_COORD:  # the ray caster and its float32 arithmetic would overflow
        raise ValueError(f"vertices are out of range for rendering (|coordinate| above {MAX_RENDER_COORD:.0e})")
    return v


def _check_faces(faces: np.ndarray, n_vertices: int) -> np.ndarray:
    f = np.asarray(faces)
    if f.ndim != 2 or f.shape[1] != 3 or len(f) == 0:
        raise ValueError(f"faces must have shape (M, 3) with M > 0, got {f.shape}")
    if not np.issubdtype(f.dtype, np.integer):
        raise ValueError(f"faces must be integer indices, got dtype {f.dtype}")
    if f.min() < 0 or f.max() >= n_vertices:
        raise ValueError(f"face indices outside [0, {n_vertices})")
    return f.astype(np.int64)


def _face_normals(verts: np.ndarray, faces: np.ndarray) -> np.ndarray:
    tri = verts[faces]
    n = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    length = np.linalg.norm(n, axis=1, keepdims=True)
    return n / np.where(length > 0, length, 1.0)


def _cast_numpy(verts: np.ndarray, faces: np.ndarray, dirs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from trimesh.base import Trimesh
    from trimesh.ray.ray_triangle import RayMeshIntersector

    mesh = Trimesh(verts, faces, process=False)
    origins = np.zeros_like(dirs)
    tri_idx, ray_idx, locations = RayMeshIntersector(mesh).intersects_id(
        origins, dirs, multiple_hits=True, return_locations=True
    )
    dist = np.full(len(dirs), np.inf)
    face = np.full(len(dirs), -1, np.int64)
    if len(ray_idx):
        t = np.einsum("ij,ij->i", locations, dirs[ray_idx])
        keep = t > 0
        tri_idx, ray_idx, t = tri_idx[keep], ray_idx[keep], t[keep]
        # Nearest hit per ray: sort by (ray, t) and take the first of each ray.
        order = np.lexsort((t, ray_idx))
        ray_sorted = ray_idx[order]
        first = np.ones(len(order), bool)
        first[1:] = ray_sorted[1:] != ray_sorted[:-1]
        sel = order[first]
        dist[ray_idx[sel]] = t[sel]
        face[ray_idx[sel]] = tri_idx[sel]
    return dist, face
