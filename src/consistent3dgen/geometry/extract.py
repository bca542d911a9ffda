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
    samples = sdf.coords.astype(np.int32) + 1
    side = brick + 1  # samples per block side
    n_bricks_axis = -(-(sdf.resolution + 1) // brick)  # cubes per axis = samples per axis - 1
    brick_index = samples // brick
    local = samples - brick_index * brick
    base_key = (brick_index[:, 0].astype(np.int64) * n_bricks_axis + brick_index[:, 1]) * n_bricks_axis
    base_key += brick_index[:, 2]
    base_flat = (local[:, 0] * side + local[:, 1]) * side + local[:, 2]
    on_lower_face = (local == 0) @ np.array([1, 2, 4], np.int32)  # bit a set: local index 0 along axis a
    del brick_index, local

    # Each sample is a corner of cubes in its own brick and, where it lies on a brick's lower face, also of the
    # cubes in the neighbouring brick(s) below, where it sits at local index ``brick``. (Samples are >= 1, so a
    # brick below always exists.)
    entry_key, entry_flat, entry_value = [base_key], [base_flat], [values]
    for bits in range(1, 8):
        sel = np.flatnonzero((on_lower_face & bits) == bits)
        if len(sel) == 0:
            continue
        d = np.array([(bits >> a) & 1 for a in range(3)])
        entry_key.append(base_key[sel] - int((d[0] * n_bricks_axis + d[1]) * n_bricks_axis + d[2]))
        entry_flat.append(base_flat[sel] + int(((d[0] * side + d[1]) * side + d[2]) * brick))
        entry_value.append(values[sel])
    keys = np.concatenate(entry_key)
    flat = np.concatenate(entry_flat)
    vals = np.concatenate(entry_value)
    del entry_key, entry_flat, entry_value, base_key, base_flat
    order = np.argsort(keys, kind="stable")
    keys, flat, vals = keys[order], flat[order], vals[order]
    del order
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
    counts = np.diff(np.r_[starts, len(keys)])
    # A brick has a surface only if it holds a sample below the level and one above it (an absent sample is
    # above: it is outside).
    has_inside = np.minimum.reduceat(vals, starts) < level
    has_outside = (counts < side**3) | (np.maximum.reduceat(vals, starts) > level)
    active = np.flatnonzero(has_inside & has_outside)

    block = np.empty(side**3, np.float32)
    cube = block.reshape(side, side, side)
    all_verts: list[np.ndarray] = []
    all_faces: list[np.ndarray] = []
    border_ids: list[np.ndarray] = []
    border_keys: list[np.ndarray] = []
    n_verts = 0
    for b in active:
        s, e = starts[b], starts[b] + counts[b]
        origin = np.array(np.unravel_index(int(keys[s]), (n_bricks_axis,) * 3), np.int64) * brick
        block.fill(fill)
        block[flat[s:e]] = vals[s:e]
        verts, faces, _, _ = marching_cubes(cube, level=level, gradient_direction="descent", allow_degenerate=True)
        if len(faces) == 0:
            continue
        # Vertices on the brick's faces are also produced by the neighbouring brick: key them by grid edge.
        on_border = np.flatnonzero(np.any((verts == 0) | (verts == brick), axis=1))
        if len(on_border):
            border_ids.append(on_border + n_verts)
            border_keys.append(_edge_keys(verts[on_border], origin, n_bricks_axis * brick + 1))
        all_verts.append(verts.astype(np.float32) + origin.astype(np.float32))
        all_faces.append(faces.astype(np.int32) + np.int32(n_verts))
        n_verts += len(verts)
    del keys, flat, vals, starts, counts
    if not all_faces:
        raise InputError(f"the SDF does not cross the level {level}: nothing to extract")
    verts = np.concatenate(all_verts)
    del all_verts
    faces = np.concatenate(all_faces)
    del all_faces
    if border_ids:
        verts, faces = _weld(verts, faces, np.concatenate(border_ids), np.concatenate(border_keys))
    # Sample s sits at the centre of voxel s - 1: canonical = -1 + (2 (s - 1) + 1) / R.
    verts *= np.float32(2.0 / sdf.resolution)
    verts -= np.float32(1.0 + 1.0 / sdf.resolution)
    return verts, faces.astype(np.int64)


def _edge_keys(local_verts: np.ndarray, origin: np.ndarray, n: int) -> np.ndarray:
    """Global id of the grid edge each marching-cubes vertex lies on (local block coordinates + origin).

    Two coordinates of such a vertex are integers; the third, the edge direction, is at least ~1e-4 away from
    one thanks to the level nudge, and local coordinates are small, so float32 resolves it.
    """
    p = local_verts.astype(np.float64)
    axis = np.argmax(np.abs(p - np.rint(p)), axis=1)
    edge = np.rint(p).astype(np.int64)
    rows = np.arange(len(p))
    edge[rows, axis] = np.floor(p[rows, axis]).astype(np.int64)
    edge += origin
    return ((edge[:, 0] * n + edge[:, 1]) * n + edge[:, 2]) * 3 + axis


def _weld(verts: np.ndarray, faces: np.ndarray, ids: np.ndarray, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Merge the vertices ``ids`` that share an edge key; faces are re-indexed, vertex order kept."""
    _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    remap = np.arange(len(verts), dtype=faces.dtype)
    remap[ids] = ids[first[inverse.reshape(-1)]]
    keep = np.ones(len(verts), bool)
    keep[ids] = False
    keep[ids[first]] = True
    new_index = (np.cumsum(keep) - 1).astype(faces.dtype)
    faces = remap[faces]
    return verts[keep], new_index[faces]


def extract_mesh(
    sdf: SparseVoxels, level: float = 0.0, max_faces: int | None = None, brick: int = 32
) -> tuple[np.ndarray, np.ndarray]:
    """Sparse marching cubes, then quadric simplification to ``max_faces`` if given (canonical frame)."""
    vertices, faces = sparse_marching_cubes(sdf, level=level, brick=brick)
    if max_faces is not None:
        vertices, faces = simplify_mesh(vertices, faces, max_faces)
    return vertices, faces


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
