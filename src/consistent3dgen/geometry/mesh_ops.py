"""Triangle-mesh clean-up and statistics: connected pieces, small-piece removal, simplification to a face budget."""

from __future__ import annotations

import numpy as np


def _face_components(n_vertices: int, faces: np.ndarray) -> np.ndarray:
    """(F,) label of each face's connected piece (faces sharing a vertex are connected)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    a, b = faces[:, [0, 1, 2]].ravel(), faces[:, [1, 2, 0]].ravel()
    graph = coo_matrix((np.ones(len(a), np.int8), (a, b)), shape=(n_vertices, n_vertices))
    _, label = connected_components(graph, directed=False)
    return label[faces[:, 0]]


def remove_small_components(verts: np.ndarray, faces: np.ndarray, min_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """Drop connected pieces (sharing vertices) with fewer faces than ``min_fraction`` × the largest piece's;
    unused vertices are dropped too. ``min_fraction`` 0 keeps everything."""
    faces = np.asarray(faces, np.int64)
    if min_fraction <= 0 or len(faces) == 0:
        return verts, faces
    n = len(verts)
    face_label = _face_components(n, faces)
    counts = np.bincount(face_label)
    keep_faces = counts[face_label] >= min_fraction * counts.max()
    faces = faces[keep_faces]
    used = np.zeros(n, bool)
    used[faces.ravel()] = True
    remap = np.cumsum(used) - 1
    return verts[used], remap[faces]


LARGE_PIECE_SHARE = 0.005  # a piece holding more than this share of the area counts as a "large" piece


def mesh_pieces(vertices: np.ndarray, faces: np.ndarray) -> dict:
    """``{"pieces", "large_pieces", "largest_area_fraction", "watertight"}`` of a mesh, as it is (no merging).

    pieces: connected pieces (faces sharing a vertex), isolated vertices not counted; large_pieces: those with more
    than :data:`LARGE_PIECE_SHARE` (0.5 %) of the area (specks aside, how many bodies the mesh is);
    largest_area_fraction: the surface area of the largest piece (by area) over the total, 0.0 for no faces or zero
    total area; watertight:
    every edge is shared by exactly two faces (trimesh's ``is_watertight``).
    """
    import trimesh

    v = np.asarray(vertices, np.float64)
    f = np.asarray(faces)
    if v.ndim != 2 or v.shape[1] != 3:
        raise ValueError(f"vertices must have shape (N, 3), got {v.shape}")
    if f.ndim != 2 or f.shape[1] != 3 or (len(f) and (f.min() < 0 or f.max() >= len(v))):
        raise ValueError("faces must have shape (M, 3) with indices into the vertices")
    if len(f) == 0:
        return {"pieces": 0, "large_pieces": 0, "largest_area_fraction": 0.0, "watertight": False}
    f = f.astype(np.int64)
    label = _face_components(len(v), f)
    _, piece = np.unique(label, return_inverse=True)
    tri = v[f]
    area = 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)
    piece_area = np.bincount(piece.reshape(-1), weights=area)
    total = float(piece_area.sum())
    return {
        "pieces": int(len(piece_area)),
        "large_pieces": int((piece_area > LARGE_PIECE_SHARE * total).sum()) if total > 0 else 0,
        "largest_area_fraction": float(piece_area.max() / total) if total > 0 else 0.0,
        "watertight": bool(trimesh.Trimesh(v, f, process=False).is_watertight),
    }


def simplify_mesh(
    vertices: np.ndarray, faces: np.ndarray, max_faces: int, preserve_border: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Quadric decimation (fast-simplification) down to about ``max_faces`` faces; open rims are kept.

    Returns the input unchanged when it already fits the budget.
    """
    v = np.asarray(vertices, np.float64)
    f = np.asarray(faces, np.int64)
    if max_faces < 4:
        raise ValueError(f"face budget must be at least 4, got {max_faces}")
    if len(f) <= max_faces:
        return v.astype(np.float32), f
    import fast_simplification

    out_v, out_f = fast_simplification.simplify(
        v, f.astype(np.int32), target_count=int(max_faces), preserve_border=preserve_border
    )
    return np.asarray(out_v, np.float32), np.asarray(out_f, np.int64)
