"""Synthetic RGB-D views of meshes: the bundled examples and the evaluation inputs are made with this.

A mesh is normalised (bounding box centred, longest side 1 unit = 1 metre), then seen by an OpenCV camera on
a sphere around it. The colour image is simple Lambertian shading of a base colour (so silhouettes and shading
are realistic enough for a human to read the previews), alpha = silhouette; depth is metric z.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import InputError, one_line
from .geometry.render import intrinsics_from_fov, look_at, raycast
from .pointmap import PointMap


def load_normalized_mesh(path: str | os.PathLike, size: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Read a mesh file and scale it so its bounding box is centred at 0 with longest side ``size``."""
    import trimesh

    p = Path(path)
    if not p.is_file():
        raise InputError(f"mesh file not found: {p}")
    try:
        mesh = trimesh.load(p, force="mesh", process=False)
    except Exception as e:  # trimesh raises many types for broken files
        raise InputError(f"cannot read mesh {p}: {one_line(e)}") from None
    if len(mesh.faces) == 0:
        raise InputError(f"mesh {p} has no faces")
    v = np.asarray(mesh.vertices, np.float64)
    if not np.isfinite(v).all():
        raise InputError(f"mesh {p} has non-finite (NaN/inf) vertex coordinates")
    lo, hi = v.min(0), v.max(0)
    extent = float((hi - lo).max())
    if not 0.0 < extent < np.inf:
        raise InputError(f"mesh {p} has zero or overflowing extent ({extent:g}): cannot normalise it")
    v = (v - (lo + hi) / 2) * (size / extent)
    return v, np.asarray(mesh.faces, np.int64)


def orbit_camera(azimuth_deg: float, elevation_deg: float, distance: float) -> np.ndarray:
    """4x4 cam_from_world of a camera on a sphere around the origin (y up; azimuth 0 = on +z), looking at 0."""
    az, el = np.radians(azimuth_deg), np.radians(elevation_deg)
    eye = distance * np.array([np.cos(el) * np.sin(az), np.sin(el), np.cos(el) * np.cos(az)])
    return look_at(eye, np.zeros(3))


@dataclass
class RGBDView:
    """One rendered view: RGBA image (alpha = silhouette), metric z-depth (0 = background), K, pose."""

    rgba: np.ndarray
    depth: np.ndarray
    intrinsics: np.ndarray
    cam_from_world: np.ndarray

    def to_pointmap(self) -> PointMap:
        from .io.pointmap_io import depth_to_pointmap

        return depth_to_pointmap(self.depth, self.intrinsics, image=self.rgba)

    def save(self, folder: str | os.PathLike, name: str) -> dict[str, Path]:
        """``name_rgba.png``, ``name_depth.png`` (16-bit millimetres) and ``name_intrinsics.txt``, atomically."""
        from PIL import Image

        from .io.atomic import atomic_path

        folder = Path(folder)
        paths = {
            "image": folder / f"{name}_rgba.png",
            "depth": folder / f"{name}_depth.png",
            "intrinsics": folder / f"{name}_intrinsics.txt",
        }
        mm = np.clip(np.rint(self.depth * 1000.0), 0, 65535).astype(np.uint16)
        with atomic_path(paths["image"]) as tmp:
            Image.fromarray(self.rgba, "RGBA").save(tmp, format="PNG")
        with atomic_path(paths["depth"]) as tmp:
            Image.fromarray(mm).save(tmp, format="PNG")
        with atomic_path(paths["intrinsics"]) as tmp:
            np.savetxt(tmp, self.intrinsics, fmt="%.6f")
        return paths


def render_rgbd(
    vertices: np.ndarray,
    faces: np.ndarray,
    cam_from_world: np.ndarray,
    size: int = 256,
    fov_deg: float = 40.0,
    color: tuple[float, float, float] = (0.75, 0.6, 0.45),
) -> RGBDView:
    """Ray-cast an RGB-D view; shading = ambient + Lambert from a light near the camera."""
    k = intrinsics_from_fov(fov_deg, size, size)
    hit = raycast(vertices, faces, k, size, size, cam_from_world=cam_from_world)
    light = np.array([-0.3, -0.5, -1.0])
    light /= np.linalg.norm(light)
    lambert = np.clip(np.nan_to_num(hit.normals) @ light, 0.0, 1.0)
    shade = (0.35 + 0.65 * lambert)[..., None] * np.asarray(color)[None, None]
    rgb = np.where(hit.mask[..., None], np.clip(shade * 255.0, 0, 255), 255.0).astype(np.uint8)
    alpha = np.where(hit.mask, 255, 0).astype(np.uint8)
    depth = np.where(hit.mask, hit.depth, 0.0).astype(np.float32)
    return RGBDView(np.dstack([rgb, alpha]), depth, k, np.asarray(cam_from_world, np.float64))


def orbit_views_rgbd(
    vertices: np.ndarray,
    faces: np.ndarray,
    n: int,
    size: int = 256,
    azimuth_deg: float = 30.0,
    elevation_deg: float = 20.0,
    distance: float = 2.5,
    fov_deg: float = 40.0,
) -> list[RGBDView]:
    """``n`` RGB-D views around the mesh: azimuths evenly spaced over 360° from ``azimuth_deg`` (so view 0 is the
    single-view evaluation's camera), all at ``elevation_deg`` and ``distance``, looking at the origin."""
    if n < 1:
        raise ValueError(f"number of views must be at least 1, got {n}")
    return [render_rgbd(vertices, faces, orbit_camera(azimuth_deg + 360.0 * i / n, elevation_deg, distance),
                        size=size, fov_deg=fov_deg) for i in range(n)]


def views_to_pointmaps(views: list[RGBDView]) -> list[PointMap]:
    """Each view's point map (points in its own camera frame) with ``cam_to_world`` = the inverse of its
    ``cam_from_world``: the shared frame is the mesh's, and :func:`~consistent3dgen.pointmap.relative_to_first`
    re-expresses the poses relative to view 0 as the pipeline does."""
    from dataclasses import replace

    from .pointmap import rigid_inverse

    # replace() re-runs PointMap's checks, so the pose is validated (rigid) like any given pose
    return [replace(v.to_pointmap(), cam_to_world=rigid_inverse(v.cam_from_world)) for v in views]
