"""Sparse SDF → triangle mesh (marching cubes by bricks), simplification to a face budget, and export.

The SDF lives on voxel centres of a :class:`~consistent3dgen.geometry.voxels.SparseVoxels` grid (negative
inside, positive outside; voxels that are absent are outside, value ``fill``). Marching cubes runs brick by
brick on small dense blocks, never on the full 512³/1024³ grid: the cubes (cells between 8 voxel centres) are
partitioned among bricks of ``brick`` cubes per axis, each brick's block carries one extra layer of samples so
the cubes on its upper faces are complete, and the vertices on brick faces are then welded by the grid edge
they lie on. skimage's Lewiner marching cubes decides ambiguous faces from the four face values only, so
neighbouring bricks agree on every shared face and the welded mesh is watertight wherever the SDF is closed.
The grid is padded by one outside sample on every side, so a surface touching the grid border is closed too.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..io.atomic import atomic_path
from .voxels import SparseVoxels

EXPORT_FORMATS = (".glb", ".obj", ".ply", ".stl")

# |value - level| below this fraction of the value range is moved just outside the level, so that no vertex
# lands exactly on a grid sample (it would be shared by several edges and could not be welded by edge).
_LEVEL_NUDGE = 1e-4


def sparse_marching_cubes(
    sdf: SparseVoxels,
    level: float = 0.0,
    fill: float = 1.0,
    brick: int = 32,
) -> tuple[np.ndarray, np.ndarray]:
    """Iso-surface of a sparse SDF as ``(vertices (V, 3) float32 canonical, faces (F, 3) int64)``.

    Vertices are in the canonical frame (voxel centre ``i`` ↦ ``-1 + (2i + 1)/R``); faces are wound so that
    their normals point towards increasing values (outwards for an SDF negative inside). Memory stays
    proportional to the number of voxels plus one ``(brick + 1)³`` block. Raises InputError when the SDF has no
    feature channel or no sample on both sides of ``level``.
    """
    from skimage.measure import marching_cubes

    if sdf.feats is None or sdf.feats.ndim != 2 or sdf.feats.shape[1] != 1:
        raise InputError("sparse marching cubes needs one SDF value per voxel (feats of shape (N, 1))")
    if brick < 2:
        raise InputError(f"brick size must be at least 2, got {brick}")
    values = np.asarray(sdf.feats[:, 0], np.float32)
    if not np.isfinite(values).all():
        raise InputError("SDF values contain NaN or inf")
    if not (fill > level):
        raise InputError(f"fill value {fill} for absent voxels must be above the level {level} (outside)")
    if len(values) == 0 or not np.any(values < level):
        raise InputError(f"the SDF has no voxel below the level {level}: nothing to extract")

    span = max(float(np.max(np.abs(values - level))), abs(fill - level))
    nudge = np.float32(_LEVEL_NUDGE * span)
    values = np.where(np.abs(values - level) < nudge, np.float32(level) + nudge, values).astype(np.float32)

    # Padded sample coordinates: voxel i sits at sample i + 1; samples 0 and R + 1 are outside padding.
    samples = sdf.coords.astype(np.int64) + 1
    n_samples = sdf.resolution + 2
    n_bricks_axis = -(-(n_samples - 1) // brick)  # cubes per axis = n_samples - 1

    # Every sample belongs to the brick holding it as a lower corner, and also (at local index ``brick``) to the
    # bricks below it along each axis where it lies on the brick boundary.
    entry_brick, entry_local, entry_value = [], [], []
    base_brick = samples // brick
    base_local = samples - base_brick * brick
    for dx in (0, 1):
        for dy in (0, 1):
            for dz in (0, 1):
                d = np.array([dx, dy, dz])
                ok = np.all((d == 0) | (base_local == 0), axis=1) & np.all(base_brick - d >= 0, axis=1)
                if not ok.any():
                    continue
                entry_brick.append(base_brick[ok] - d)
                entry_local.append(base_local[ok] + d * brick)
                entry_value.append(values[ok])
    bricks = np.concatenate(entry_brick)
    local = np.concatenate(entry_local).astype(np.intp)
    vals = np.concatenate(entry_value)
    bkey = (bricks[:, 0] * n_bricks_axis + bricks[:, 1]) * n_bricks_axis + bricks[:, 2]
    order = np.argsort(bkey, kind="stable")
    bkey, local, vals = bkey[order], local[order], vals[order]
    starts = np.flatnonzero(np.r_[True, bkey[1:] != bkey[:-1]])
    ends = np.r_[starts[1:], len(bkey)]

    block = np.empty((brick + 1,) * 3, np.float32)
    all_verts: list[np.ndarray] = []
    all_faces: list[np.ndarray] = []
    n_verts = 0
    for s, e in zip(starts, ends, strict=True):
        v = vals[s:e]
        if not np.any(v < level):
            continue  # absent samples are outside, so a brick with no inside sample has no surface
        key = int(bkey[s])
        origin = np.array(np.unravel_index(key, (n_bricks_axis,) * 3)) * brick
        block.fill(fill)
        li = local[s:e]
        block[li[:, 0], li[:, 1], li[:, 2]] = v
        if not block.max() > level:
            continue  # a brick entirely inside (every sample present and negative) has no surface either
        # Cubes beyond the padded grid (last brick) see only fill values: no surface there.
        verts, faces, _, _ = marching_cubes(block, level=level, gradient_direction="descent", allow_degenerate=True)
        if len(faces) == 0:
            continue
        all_verts.append(verts.astype(np.float64) + origin)
        all_faces.append(faces.astype(np.int64) + n_verts)
        n_verts += len(verts)
    if not all_faces:
        raise InputError(f"the SDF does not cross the level {level}: nothing to extract")
    verts = np.concatenate(all_verts)
    faces = np.concatenate(all_faces)
    verts, faces = _weld_brick_borders(verts, faces, brick)
    canonical = -1.0 + (2.0 * (verts - 1.0) + 1.0) / sdf.resolution
    return canonical.astype(np.float32), faces


def _weld_brick_borders(verts: np.ndarray, faces: np.ndarray, brick: int) -> tuple[np.ndarray, np.ndarray]:
    """Merge vertices computed twice on shared brick faces, identified by the grid edge they lie on."""
    rounded = np.rint(verts)
    off_grid = np.abs(verts - rounded)
    on_border = np.any((off_grid < 1e-3) & (np.mod(rounded, brick) == 0), axis=1)
    idx = np.flatnonzero(on_border)
    if len(idx) == 0:
        return verts, faces
    p = verts[idx]
    # Every MC vertex lies on a grid edge: the axis farthest from an integer is the edge direction (the nudge
    # keeps it at least ~1e-4 away), the other two coordinates are integers.
    axis = np.argmax(np.abs(p - np.rint(p)), axis=1)
    edge = np.rint(p).astype(np.int64)
    edge[np.arange(len(p)), axis] = np.floor(p[np.arange(len(p)), axis]).astype(np.int64)
    n = int(edge.max()) + 2
    keys = ((edge[:, 0] * n + edge[:, 1]) * n + edge[:, 2]) * 3 + axis
    _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    remap = np.arange(len(verts))
    remap[idx] = idx[first[inverse.reshape(-1)]]
    keep = np.ones(len(verts), bool)
    keep[idx] = False
    keep[idx[first]] = True
    new_index = np.cumsum(keep) - 1
    return verts[keep], new_index[remap[faces]]


def simplify_mesh(
    vertices: np.ndarray, faces: np.ndarray, max_faces: int, preserve_border: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Quadric decimation (fast-simplification) down to about ``max_faces`` faces; open rims are kept.

    Returns the input unchanged when it already fits the budget.
    """
    v = np.asarray(vertices, np.float64)
    f = np.asarray(faces, np.int64)
    if max_faces < 4:
        raise InputError(f"face budget must be at least 4, got {max_faces}")
    if len(f) <= max_faces:
        return v.astype(np.float32), f
    import fast_simplification

    out_v, out_f = fast_simplification.simplify(
        v, f.astype(np.int32), target_count=int(max_faces), preserve_border=preserve_border
    )
    return np.asarray(out_v, np.float32), np.asarray(out_f, np.int64)


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
    if ext not in EXPORT_FORMATS:
        raise InputError(f"unknown mesh format {target.suffix!r} for {target}; use one of {', '.join(EXPORT_FORMATS)}")
    v = np.asarray(vertices, np.float64)
    f = np.asarray(faces)
    if v.ndim != 2 or v.shape[1] != 3 or not np.isfinite(v).all():
        raise InputError(f"vertices must be finite with shape (N, 3), got {v.shape}")
    if f.ndim != 2 or f.shape[1] != 3 or (len(f) and (f.min() < 0 or f.max() >= len(v))):
        raise InputError("faces must have shape (M, 3) with indices into the vertices")
    colors = None
    if vertex_colors is not None:
        c = np.asarray(vertex_colors)
        if c.shape[0] != len(v) or c.ndim != 2 or c.shape[1] not in (3, 4):
            raise InputError(f"vertex colours must have shape ({len(v)}, 3|4), got {c.shape}")
        if np.issubdtype(c.dtype, np.floating):
            c = np.clip(np.rint(c * 255.0), 0, 255)
        colors = c.astype(np.uint8)
    mesh = trimesh.Trimesh(v, f.astype(np.int64), vertex_colors=colors, process=False)
    with atomic_path(target) as tmp:
        mesh.export(tmp, file_type=ext[1:])
    return target
