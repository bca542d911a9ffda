"""A 360° turntable of the output: the mesh turned about its vertical axis (the camera's image-up, -y), shaded or
in its colours, written atomically as a GIF (PIL) or an MP4 (imageio + imageio-ffmpeg when installed)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .geometry.render import intrinsics_from_fov, look_at, raycast

TURNTABLE_FORMATS = (".gif", ".mp4")
BASE_COLOUR = np.array([158.0, 173.0, 199.0])  # the preview's blue-grey, for meshes without colour


def mp4_available() -> bool:
    try:
        import imageio  # noqa: F401
        import imageio_ffmpeg  # noqa: F401
    except ImportError:
        return False
    return True


def check_turntable_path(path: str | os.PathLike, what: str = "--turntable") -> Path:
    """A turntable output: .gif, or .mp4 when imageio-ffmpeg is installed; checked before any work."""
    from .errors import InputError
    from .io.atomic import check_output_file

    target = check_output_file(path, TURNTABLE_FORMATS, what)
    if target.suffix.lower() == ".mp4" and not mp4_available():
        raise InputError(f"{what}: .mp4 needs imageio-ffmpeg (pip install 'consistent3dgen[mp4]'); or use .gif")
    return target


def render_coloured(vertices: np.ndarray, faces: np.ndarray, k: np.ndarray, width: int, height: int,
                    cam_from_world: np.ndarray | None = None, colours: np.ndarray | None = None,
                    uv: np.ndarray | None = None, texture: np.ndarray | None = None, shaded: bool = True,
                    background: int = 255) -> np.ndarray:
    """(H, W, 3) uint8 render: per-pixel colour from the vertex ``colours`` (barycentric), or from ``texture``
    at the interpolated ``uv`` (nearest texel), or a base grey; ``shaded``: times a Lambert term (light near
    the camera), else flat colour (what the input image would show)."""
    v = np.asarray(vertices, np.float64)
    f = np.asarray(faces, np.int64)
    hit = raycast(v, f, k, width, height, cam_from_world=cam_from_world)
    out = np.full((int(height), int(width), 3), float(background))
    m = hit.mask
    if not m.any():
        return out.astype(np.uint8)
    vc = v if cam_from_world is None else v @ np.asarray(cam_from_world)[:3, :3].T + np.asarray(cam_from_world)[:3, 3]
    tri = f[hit.face[m]]
    p = hit.points[m].astype(np.float64)
    bary = _barycentric(p, vc[tri[:, 0]], vc[tri[:, 1]], vc[tri[:, 2]])
    if texture is not None and uv is not None:
        t = np.einsum("nk,nkc->nc", bary, np.asarray(uv, np.float64)[tri])
        th, tw = texture.shape[:2]
        col = np.clip(np.rint(t[:, 0] * tw - 0.5), 0, tw - 1).astype(np.int64)
        row = np.clip(np.rint((1.0 - t[:, 1]) * th - 0.5), 0, th - 1).astype(np.int64)
        c = np.asarray(texture)[row, col, :3].astype(np.float64)
    elif colours is not None:
        c = np.einsum("nk,nkc->nc", bary, np.asarray(colours, np.float64)[:, :3][tri])
    else:
        c = np.tile(BASE_COLOUR, (len(p), 1))
    if shaded:
        light = np.array([-0.3, -0.5, -1.0])
        light /= np.linalg.norm(light)
        lam = np.clip(hit.normals[m].astype(np.float64) @ light, 0.0, 1.0)
        c = c * (0.35 + 0.65 * lam)[:, None]
    out[m] = c
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def turntable_poses(vertices_cam: np.ndarray, n_frames: int = 36, fov_deg: float = 40.0) -> list[np.ndarray]:
    """cam_from_world poses on a circle about the vertical axis (camera -y) through the mesh's centre, starting
    at the input camera's side; far enough that the bounding sphere fits the field of view."""
    v = np.asarray(vertices_cam, np.float64)
    centre = (v.min(0) + v.max(0)) / 2
    radius = max(float(np.linalg.norm(v - centre, axis=1).max()), 1e-9)
    dist = radius / np.sin(np.radians(fov_deg) / 2) * 1.05
    rel = -centre.copy()
    rel[1] = 0.0  # on the horizontal circle at the object's height
    rel = rel / np.linalg.norm(rel) if np.linalg.norm(rel) > 1e-9 else np.array([0.0, 0.0, -1.0])
    poses = []
    for a in np.linspace(0.0, 2 * np.pi, int(n_frames), endpoint=False):
        rot = np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])
        poses.append(look_at(centre + rot @ rel * dist, centre, up=(0.0, -1.0, 0.0)))
    return poses


def turntable_frames(vertices_cam: np.ndarray, faces: np.ndarray, colours: np.ndarray | None = None,
                     n_frames: int = 36, size: int = 256, uv: np.ndarray | None = None,
                     texture: np.ndarray | None = None) -> list[np.ndarray]:
    """``n_frames`` (size, size, 3) uint8 shaded renders of one full turn (coloured when colours/texture given)."""
    k = intrinsics_from_fov(40.0, size, size)
    return [render_coloured(vertices_cam, faces, k, size, size, pose, colours=colours, uv=uv, texture=texture)
            for pose in turntable_poses(vertices_cam, n_frames)]


def write_turntable(frames: list[np.ndarray], path: str | os.PathLike, fps: float = 12.0) -> Path:
    """Write frames atomically as .gif (looping) or .mp4 (imageio-ffmpeg); inside an output set, with it."""
    from .io.atomic import atomic_path

    target = check_turntable_path(path)
    if not frames:
        raise ValueError("a turntable needs at least one frame")
    with atomic_path(target) as tmp:
        if target.suffix.lower() == ".gif":
            from PIL import Image

            images = [Image.fromarray(np.asarray(fr, np.uint8)) for fr in frames]
            images[0].save(tmp, format="GIF", save_all=True, append_images=images[1:],
                           duration=int(round(1000 / fps)), loop=0)
        else:
            import imageio.v2 as imageio

            with imageio.get_writer(tmp, format="FFMPEG", fps=fps, codec="libx264", pixelformat="yuv420p",
                                    macro_block_size=16) as w:
                for fr in frames:
                    w.append_data(np.asarray(fr, np.uint8))
    return target


def _barycentric(p: np.ndarray, a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """(N, 3) barycentric coordinates of points ``p`` in triangles (a, b, c), clamped to the triangle."""
    v0, v1, v2 = b - a, c - a, p - a
    d00 = np.einsum("ij,ij->i", v0, v0)
    d01 = np.einsum("ij,ij->i", v0, v1)
    d11 = np.einsum("ij,ij->i", v1, v1)
    d20 = np.einsum("ij,ij->i", v2, v0)
    d21 = np.einsum("ij,ij->i", v2, v1)
    den = d00 * d11 - d01 * d01
    den = np.where(np.abs(den) > 1e-30, den, 1e-30)
    l1 = (d11 * d20 - d01 * d21) / den
    l2 = (d00 * d21 - d01 * d20) / den
    bary = np.clip(np.stack([1 - l1 - l2, l1, l2], axis=1), 0.0, None)
    return bary / np.maximum(bary.sum(1, keepdims=True), 1e-12)
