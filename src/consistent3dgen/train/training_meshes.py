"""Shared training meshes → watertight SDFs in the canonical cube.

Only ``cow``, ``fandisk`` and ``beetle`` may be used for training; ``spot``, ``stanford-bunny``, ``teapot`` and
``suzanne`` are held out for evaluation and refused here. The meshes are taken as y-up (true for these
files), normalised so their bounding box is centred and its largest side spans ``2 (1 - margin)``, and turned
about y by a seeded yaw (each yaw is a different view, so a different front).

The sign comes from fast generalised winding numbers (point-cloud-utils), which is robust to the holes and
self-intersections of non-watertight meshes such as ``beetle``: the zero level set of the result is a
watertight surface.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import InputError
from .shapes import Shape, rotate_y

TRAINING_MESHES = ("cow", "fandisk", "beetle")
# where each comes from, for the model card (../shared/data/meshes/README.md: the common-3d-test-models
# collection's copies; that README states no licence, so none is claimed here)
TRAINING_MESH_SOURCES = {
    "cow": "Cow, Viewpoint Animation Engineering",
    "fandisk": "Fandisk (CAD part), Hughes Hoppe",
    "beetle": "Beetle, Ivan Sutherland",
}
EVALUATION_MESHES = ("spot", "stanford-bunny", "teapot", "suzanne")


def default_meshes_dir() -> Path:
    """``../shared/data/meshes`` beside the repository root (where the project keeps its shared data)."""
    return Path(__file__).resolve().parents[3] / ".." / "shared" / "data" / "meshes"


def load_training_mesh(name: str, meshes_dir: str | Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Vertices (V, 3) float64 and faces (F, 3) int64 of a training mesh, normalised (see module doc)."""
    if name in EVALUATION_MESHES:
        raise InputError(f"mesh {name!r} is held out for evaluation and must not be used for training")
    if name not in TRAINING_MESHES:
        raise InputError(f"unknown training mesh {name!r}; allowed: {', '.join(TRAINING_MESHES)}")
    folder = Path(meshes_dir) if meshes_dir is not None else default_meshes_dir()
    path = folder / f"{name}.obj"
    if not path.is_file():
        raise InputError(f"training mesh not found: {path}")
    import trimesh

    mesh = trimesh.load(path, force="mesh", process=False)
    vertices = np.asarray(mesh.vertices, np.float64)
    faces = np.asarray(mesh.faces, np.int64)
    if len(vertices) == 0 or len(faces) == 0:
        raise InputError(f"mesh {path} has no triangles")
    return normalise_vertices(vertices), faces


def normalise_vertices(vertices: np.ndarray, margin: float = 0.05) -> np.ndarray:
    """Centre the bounding box at the origin and scale its largest side to ``2 (1 - margin)``."""
    lo, hi = vertices.min(axis=0), vertices.max(axis=0)
    extent = float((hi - lo).max())
    if not np.isfinite(extent) or extent <= 0:
        raise InputError("mesh has zero extent")
    return (vertices - (lo + hi) / 2.0) * (2.0 * (1.0 - margin) / extent)


def mesh_sdf(vertices: np.ndarray, faces: np.ndarray):
    """Signed distance function of a mesh (negative inside by winding number), ``(N, 3) → (N,)`` float64."""
    import point_cloud_utils as pcu

    v = np.ascontiguousarray(vertices, np.float64)
    f = np.ascontiguousarray(faces, np.int64)

    def sdf(p: np.ndarray) -> np.ndarray:
        p = np.ascontiguousarray(np.asarray(p, np.float64).reshape(-1, 3))
        if len(p) == 0:
            return np.zeros(0)
        d, _, _ = pcu.signed_distance_to_mesh(p, v, f)
        return np.asarray(d, np.float64)

    return sdf


def mesh_shape(name: str, yaw_deg: float, meshes_dir: str | Path | None = None, margin: float = 0.05) -> Shape:
    """A training mesh turned by ``yaw_deg`` about y and re-fitted into the cube, as a :class:`Shape`."""
    vertices, faces = load_training_mesh(name, meshes_dir)
    yaw = np.deg2rad(yaw_deg)
    c, s = np.cos(yaw), np.sin(yaw)
    rot = np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])
    turned = normalise_vertices(vertices @ rot.T, margin)
    return Shape(f"mesh:{name}", mesh_sdf(turned, faces), {"mesh": name, "yaw_deg": float(yaw_deg)})


__all__ = [
    "EVALUATION_MESHES",
    "TRAINING_MESHES",
    "default_meshes_dir",
    "load_training_mesh",
    "mesh_sdf",
    "mesh_shape",
    "normalise_vertices",
    "rotate_y",
]
