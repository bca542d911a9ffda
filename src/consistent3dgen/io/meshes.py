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
) -> Path:
    """Write a mesh; the format follows the extension (.glb .obj .ply .stl). Atomic: no partial file on failure.

    vertex_colors: optional (V, 3|4) uint8 or float in [0, 1] (STL stores no colours and ignores them).
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
    mesh = trimesh.Trimesh(v, f.astype(np.int64), vertex_colors=colors, process=False)
    module, name = _EXPORTERS[ext]
    data = getattr(importlib.import_module(f"trimesh.exchange.{module}"), name)(mesh)
    atomic_write_bytes(target, data.encode("utf-8") if isinstance(data, str) else data)
    return target
