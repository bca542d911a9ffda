"""Triangle-mesh export: the format follows the file extension; every write is atomic (no partial file)."""

from __future__ import annotations

import importlib
import os
from pathlib import Path

import numpy as np

from ..errors import InputError
from .atomic import atomic_write_bytes

# extension -> (trimesh.exchange module, exporter returning the file's bytes or text), as trimesh.exchange
# dispatches ``Trimesh.export``; trimesh is imported only when a mesh is written
_EXPORTERS = {
    ".glb": ("gltf", "export_glb"),
    ".obj": ("obj", "export_obj"),
    ".ply": ("ply", "export_ply"),
    ".stl": ("stl", "export_stl"),
}
EXPORT_FORMATS = tuple(_EXPORTERS)


def export_mesh(
    vertices: np.ndarray,
    faces: np.ndarray,
    path: str | os.PathLike,
    vertex_colors: np.ndarray | None = None,
    uv: np.ndarray | None = None,
    texture: np.ndarray | None = None,
) -> Path:
    """Write a mesh; the format follows the extension (.glb .obj .ply .stl). Atomic: no partial file on failure.

    vertex_colors: optional (V, 3|4) uint8 or float in [0, 1] (STL stores no colours and ignores them).
    uv + texture: optional (V, 2) texture coordinates in [0, 1] (v up) and an (H, W, 3|4) uint8 image, embedded
    in a .glb (the only format here that holds a texture in one file); instead of vertex colours.
    """
    import trimesh

    target = Path(path)
    ext = target.suffix.lower()
    if ext not in _EXPORTERS:
        raise InputError(f"unknown mesh format {target.suffix!r} for {target}; use one of {', '.join(EXPORT_FORMATS)}")
    v = np.asarray(vertices, np.float64)
    f = np.asarray(faces)
    if v.ndim != 2 or v.shape[1] != 3 or not np.isfinite(v).all():
        raise ValueError(f"vertices must be finite with shape (N, 3), got {v.shape}")
    if f.ndim != 2 or f.shape[1] != 3 or (len(f) and (f.min() < 0 or f.max() >= len(v))):
        raise ValueError("faces must have shape (M, 3) with indices into the vertices")
    colors = None
    if vertex_colors is not None:
        c = np.asarray(vertex_colors)
        if c.shape[0] != len(v) or c.ndim != 2 or c.shape[1] not in (3, 4):
            raise ValueError(f"vertex colours must have shape ({len(v)}, 3|4), got {c.shape}")
        if np.issubdtype(c.dtype, np.floating):
            c = np.clip(np.rint(c * 255.0), 0, 255)
        colors = c.astype(np.uint8)
    if (uv is None) != (texture is None):
        raise ValueError("a texture needs both uv and texture")
    if uv is not None:
        if ext != ".glb":
            raise InputError(f"a texture map is written into .glb only, not {target.suffix}")
        if colors is not None:
            raise ValueError("give vertex colours or a texture, not both")
        mesh = _textured(v, f, np.asarray(uv, np.float64), np.asarray(texture))
    else:
        mesh = trimesh.Trimesh(v, f.astype(np.int64), vertex_colors=colors, process=False)
    module, name = _EXPORTERS[ext]
    data = getattr(importlib.import_module(f"trimesh.exchange.{module}"), name)(mesh)
    atomic_write_bytes(target, data.encode("utf-8") if isinstance(data, str) else data)
    return target


def _textured(v: np.ndarray, f: np.ndarray, uv: np.ndarray, image: np.ndarray):  # noqa: ANN202 - a trimesh.Trimesh
    """A trimesh with TextureVisuals (a PIL image as the base colour texture)."""
    import trimesh
    from PIL import Image

    if uv.shape != (len(v), 2) or not np.isfinite(uv).all():
        raise ValueError(f"uv must be finite with shape ({len(v)}, 2), got {uv.shape}")
    if image.ndim != 3 or image.shape[2] not in (3, 4) or image.dtype != np.uint8:
        raise ValueError(f"texture must be an (H, W, 3|4) uint8 image, got {image.shape} {image.dtype}")
    visual = trimesh.visual.TextureVisuals(uv=uv, image=Image.fromarray(image))
    return trimesh.Trimesh(v, f.astype(np.int64), visual=visual, process=False)
