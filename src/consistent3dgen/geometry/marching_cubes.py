"""Sparse SDF → triangle mesh: sparse marching cubes, its case tables, and the NumPy and skimage backends.

The SDF lives on voxel centres of a :class:`~consistent3dgen.geometry.voxels.SparseVoxels` grid (negative
inside, positive outside; voxels that are absent are outside, value ``fill``); the grid is padded by one outside
sample on every side, so a surface touching the grid border is closed too. Marching cubes never allocates the
full 512³/1024³ grid: samples go into small dense bricks (plus one apron layer from the upper neighbours) of
the occupied region only. Three interchangeable implementations:

- ``numpy``: every active cube at once, vectorised; each crossing grid edge is numbered by the cube at its lower
  end, so vertices are shared by construction (no welding, no sort).
- ``warp``: the same algorithm as compiled NVIDIA Warp CPU kernels, one thread per brick, in
  :mod:`~consistent3dgen.geometry.warp_marching_cubes` (fast path; ``auto`` picks it when Warp imports and the
  kernels compile, see :func:`~consistent3dgen.geometry.warp_runtime.warp_available`, else ``numpy``).
- ``skimage``: the reference — skimage's Lewiner marching cubes on each dense brick, vertices on brick faces
  welded by the grid edge they lie on.

All three decide ambiguous faces from the face's four values only (asymptotic decider), so the two cubes sharing
a face agree and the mesh is watertight wherever the SDF is closed. The ``numpy``/``warp`` triangle table is built
here (see :func:`marching_cubes_tables`); it differs from skimage's only inside cubes whose interior is
ambiguous, so both give the same vertices.
"""

from __future__ import annotations

import numpy as np

from ..errors import NoSurfaceError
from .voxels import SparseVoxels
from .warp_runtime import mark_unavailable, warp_available, warp_kernels

# |value - level| below this fraction of the value range is moved just outside the level, so that no vertex
# lands exactly on a grid sample (it would coincide with the vertices of the sample's other edges: zero-area
# faces, and the skimage path could not weld it by edge).
_LEVEL_NUDGE = 1e-4


MC_METHODS = ("auto", "warp", "numpy", "skimage")


def sparse_marching_cubes(
    sdf: SparseVoxels,
    level: float = 0.0,
    fill: float = 1.0,
    brick: int | None = None,
    method: str = "auto",
) -> tuple[np.ndarray, np.ndarray]:
    """Iso-surface of a sparse SDF as ``(vertices (V, 3) float32 canonical, faces (F, 3) int64)``.

    Vertices are in the canonical frame (voxel centre ``i`` ↦ ``-1 + (2i + 1)/R``), one per grid edge that crosses
    the level (linear interpolation, as skimage); faces are wound so that their normals point towards increasing
    values (outwards for an SDF negative inside). The mesh is closed wherever the SDF is: absent voxels and a
    one-sample padding around the grid count as ``fill`` (outside).

    method: ``"auto"`` (Warp kernels if Warp works here, else NumPy), ``"warp"``, ``"numpy"`` — vectorised marching
    cubes with bricks of ``brick`` (default 8) cubes per axis as the sparse storage layout — or ``"skimage"``, the
    reference: Lewiner marching cubes per dense block of ``brick`` (default 32) cubes per axis, welded by grid
    edge. ``warp`` and ``numpy`` give identical meshes up to vertex/face order; ``skimage`` the same edge
    vertices, with different triangles (and interior vertices) only in cubes whose interior is ambiguous. The
    result does not depend on ``brick`` (up to order). Memory stays proportional to the number of occupied
    bricks. Raises ValueError on a bad SDF (a bug upstream), NoSurfaceError when nothing crosses ``level``.
    """
    if method not in MC_METHODS:
        raise ValueError(f"unknown marching-cubes method {method!r}; use one of {', '.join(MC_METHODS)}")
    if sdf.feats is None or sdf.feats.ndim != 2 or sdf.feats.shape[1] != 1:
        raise ValueError("sparse marching cubes needs one SDF value per voxel (feats of shape (N, 1))")
    if brick is None:
        brick = 32 if method == "skimage" else 8
    if brick < 2:
        raise ValueError(f"brick size must be at least 2, got {brick}")
    values = np.asarray(sdf.feats[:, 0], np.float32)
    if not np.isfinite(values).all():
        raise ValueError("SDF values contain NaN or inf")
    if not (fill > level):
        raise ValueError(f"fill value {fill} for absent voxels must be above the level {level} (outside)")
    if len(values) == 0 or not np.any(values < level):
        raise NoSurfaceError(f"the SDF has no voxel below the level {level}: no surface to extract")

    span = max(float(np.max(np.abs(values - level))), abs(fill - level))
    nudge = np.float32(_LEVEL_NUDGE * span)
    values = np.where(np.abs(values - level) < nudge, np.float32(level) + nudge, values).astype(np.float32)
    args = (sdf.coords, values, sdf.resolution, np.float32(level), fill, brick)
    if method == "skimage":
        verts, faces = _marching_cubes_skimage(*args)
    elif method == "numpy" or (method == "auto" and not warp_available("marching_cubes")):
        verts, faces = _marching_cubes_numpy(*args)
    else:
        try:
            verts, faces = _marching_cubes_warp(*args)
        except NoSurfaceError:
            raise
        except Exception as e:  # noqa: BLE001 - a Warp compile/launch failure or 32-bit limit: NumPy instead
            if method == "warp":
                raise RuntimeError(f"the Warp marching-cubes path failed: {e}") from e
            if not isinstance(e, _TooLargeForWarp):
                mark_unavailable("marching_cubes", e)  # remembered: later calls go straight to NumPy
            verts, faces = _marching_cubes_numpy(*args)
    # Sample s sits at the centre of voxel s - 1: canonical = -1 + (2 (s - 1) + 1) / R.
    verts *= np.float32(2.0 / sdf.resolution)
    verts -= np.float32(1.0 + 1.0 / sdf.resolution)
    return verts, faces.astype(np.int64)


# --------------------------------------------------------------------------- vectorised marching cubes tables
#
# Corner c of a cube sits at offset (c & 1, (c >> 1) & 1, (c >> 2) & 1) along (x, y, z); bit c of a cube's case
# is set when corner c is inside (below the level). Edge e = 4 a + j runs along axis a from the corner whose
# bits on the two other axes (u < v) are (j & 1, j >> 1). Face f = 2 a + s is the face at offset s along a.
# The table is built here rather than copied: for a case and a choice of how each ambiguous face is resolved,
# the contour segments on the six faces are chained into loops, each loop oriented by the face rule below and
# triangulated (see _triangulate_loop). Face segments depend only on the face's own corners and resolution, and the
# resolution is decided from the face's four values alone, so the two cubes sharing a face always produce the
# same segments there: the mesh is watertight by construction.

_OTHER_AXES = ((1, 2), (0, 2), (0, 1))
CENTRE = 12  # pseudo edge id in the table: a vertex inside the cube, the mean of its loop's edge vertices


def _corner_offset(c: int) -> np.ndarray:
    return np.array([c & 1, (c >> 1) & 1, (c >> 2) & 1], np.float64)


def _edge_corners(e: int) -> tuple[int, int]:
    a, j = divmod(e, 4)
    u, v = _OTHER_AXES[a]
    lo = ((j & 1) << u) | ((j >> 1) << v)
    return lo, lo | (1 << a)


def _edge_between(c0: int, c1: int) -> int:
    a = (c0 ^ c1).bit_length() - 1
    lo = min(c0, c1)
    u, v = _OTHER_AXES[a]
    return 4 * a + ((lo >> u) & 1) + 2 * ((lo >> v) & 1)


def _face_cycle(f: int) -> list[int]:
    """The face's corners in cyclic order (u, v) = (0, 0), (1, 0), (1, 1), (0, 1)."""
    a, s = divmod(f, 2)
    u, v = _OTHER_AXES[a]
    base = s << a
    return [base, base | (1 << u), base | (1 << u) | (1 << v), base | (1 << v)]


def _cube_triangles(case: int, connected: int) -> list[tuple[int, int, int]]:
    """Triangles (as edge ids) of one cube; bit f of ``connected``: on ambiguous face f the inside corners join."""
    inside = [(case >> c) & 1 for c in range(8)]
    mid = [(_corner_offset(_edge_corners(e)[0]) + _corner_offset(_edge_corners(e)[1])) / 2 for e in range(12)]
    following: dict[int, int] = {}
    for f in range(6):
        a, s = divmod(f, 2)
        face_normal = np.zeros(3)
        face_normal[a] = 1.0 if s else -1.0
        cyc = _face_cycle(f)
        edges = [_edge_between(cyc[i], cyc[(i + 1) % 4]) for i in range(4)]
        crossing = [inside[cyc[i]] != inside[cyc[(i + 1) % 4]] for i in range(4)]
        if sum(crossing) == 2:
            segments = [tuple(edges[i] for i in range(4) if crossing[i])]
        elif sum(crossing) == 4:
            # Cut off each corner of the side that stays disconnected across this face.
            cut = 0 if (connected >> f) & 1 else 1
            segments = [(edges[(i - 1) % 4], edges[i]) for i in range(4) if inside[cyc[i]] == cut]
        else:
            continue
        for p, q in segments:
            # Orientation: with the surface normal N pointing outside (increasing values), the loop bounding the
            # patch runs so that N × t points into the cube; on this face N's in-plane part is ``towards_out``.
            towards_out = np.zeros(3)
            for e in (p, q):
                lo, hi = _edge_corners(e)
                towards_out += (_corner_offset(hi) - _corner_offset(lo)) * (1 if inside[lo] else -1)
            if np.dot(np.cross(towards_out, mid[q] - mid[p]), face_normal) > 0:
                p, q = q, p
            following[p] = q
    triangles = []
    todo = set(following)
    while todo:
        loop = [min(todo)]
        while following[loop[-1]] != loop[0]:
            loop.append(following[loop[-1]])
        todo -= set(loop)
        triangles += _triangulate_loop(loop)
    return triangles


def _edge_faces(e: int) -> set[int]:
    a, j = divmod(e, 4)
    u, v = _OTHER_AXES[a]
    return {2 * u + (j & 1), 2 * v + (j >> 1)}


def _triangulate_loop(loop: list[int]) -> list[tuple[int, int, int]]:
    """Triangulate a loop (order kept, so the winding is kept). A diagonal between two vertices on a common cube
    face could also be drawn by the cube across that face, and the edge would then carry four triangles; so such
    diagonals are never drawn on a cube's lower faces (only the cube below, for which the face is upper, may),
    and avoided where possible on upper faces. Dynamic programme over the loop's triangulations."""
    n = len(loop)
    forbidden, avoided = 1000, 1

    def diagonal_cost(i: int, j: int) -> int:
        if abs(i - j) in (1, n - 1):
            return 0  # a loop segment, not a diagonal
        shared = _edge_faces(loop[i]) & _edge_faces(loop[j])
        if not shared:
            return 0
        return avoided if next(iter(shared)) % 2 else forbidden

    best: dict[tuple[int, int], tuple[int, int]] = {}  # (i, j) -> (cost of sub-polygon i..j, apex k)
    for span in range(2, n):
        for i in range(n - span):
            j = i + span
            best[(i, j)] = min(
                (
                    best.get((i, k), (0, 0))[0]
                    + best.get((k, j), (0, 0))[0]
                    + diagonal_cost(i, k)
                    + diagonal_cost(k, j),
                    k,
                )
                for k in range(i + 1, j)
            )
    if n < 3:
        return []
    if best[(0, n - 1)][0] >= forbidden:
        # No such triangulation (a few 9-vertex loops): fan around a vertex of the cube's own, CENTRE.
        return [(loop[i], loop[(i + 1) % n], CENTRE) for i in range(n)]
    out = []
    stack = [(0, n - 1)]
    while stack:
        i, j = stack.pop()
        k = best[(i, j)][1]
        out.append((loop[i], loop[k], loop[j]))
        stack += [(a, b) for a, b in ((i, k), (k, j)) if b - a >= 2]
    return sorted(out)


_TABLES: dict[str, np.ndarray] = {}


def marching_cubes_tables() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(ambiguous (256,) uint8 face mask, triangles (256 * 64, T, 3) uint8 edge ids, counts (256 * 64,),
    centre_edges (256 * 64,) int32)``; row ``case * 64 + connected`` (``connected`` ⊆ ambiguous faces). Edge id
    ``CENTRE`` is the cube's own centre vertex, placed at the mean of the edge vertices in the bit mask
    ``centre_edges`` (0: the row has none). Built once per process."""
    if not _TABLES:
        ambiguous = np.zeros(256, np.uint8)
        for case in range(256):
            for f in range(6):
                c = [(case >> k) & 1 for k in _face_cycle(f)]
                if c[0] == c[2] != c[1] == c[3]:
                    ambiguous[case] |= 1 << f
        rows = {}
        for case in range(256):
            amb = int(ambiguous[case])
            sub = amb
            while True:  # every subset of the ambiguous faces
                rows[case * 64 + sub] = _cube_triangles(case, sub)
                if sub == 0:
                    break
                sub = (sub - 1) & amb
        triangles = np.zeros((256 * 64, max(len(t) for t in rows.values()), 3), np.uint8)
        counts = np.zeros(256 * 64, np.uint8)
        centre_edges = np.zeros(256 * 64, np.int32)
        for row, tris in rows.items():
            counts[row] = len(tris)
            if tris:
                triangles[row, : len(tris)] = tris
            for tri in tris:
                if CENTRE in tri:
                    centre_edges[row] |= sum(1 << e for e in tri if e != CENTRE)
        _TABLES.update(ambiguous=ambiguous, triangles=triangles, counts=counts, centre_edges=centre_edges)
    return _TABLES["ambiguous"], _TABLES["triangles"], _TABLES["counts"], _TABLES["centre_edges"]


# --------------------------------------------------------------------------- vectorised marching cubes


def _edge_points(
    values_flat: np.ndarray,
    origin: np.ndarray,
    local_xyz: np.ndarray,
    at: np.ndarray,
    lo: int,
    a: int,
    level: np.float32,
) -> np.ndarray:
    """Crossing points (padded sample coordinates) on the edge from corner ``lo`` along axis ``a`` of the cubes at
    flat block positions ``at`` (``local_xyz``: block position → local coordinates, one row per position)."""
    side = int(local_xyz[-1, 0]) + 1
    block = len(local_xyz)
    strides = np.array([side * side, side, 1], np.int64)
    start = at + int(_corner_offset(lo) @ strides)
    v0 = values_flat[start]
    t = (level - v0) / (values_flat[start + strides[a]] - v0)
    slot = at // block
    point = (origin[slot] + local_xyz[at - slot * block] + _corner_offset(lo).astype(np.int32)).astype(np.float32)
    point[:, a] += t
    return point


def _popcount(mask: np.ndarray) -> np.ndarray:
    return np.unpackbits(np.ascontiguousarray(mask, "<u4").view(np.uint8).reshape(-1, 4), axis=1).sum(1)


def _marching_cubes_numpy(
    coords: np.ndarray, values: np.ndarray, resolution: int, level: np.float32, fill: float, brick: int
) -> tuple[np.ndarray, np.ndarray]:
    """All active cubes at once. Samples live in dense bricks of ``brick``³ plus one apron layer copied from the
    upper neighbours, so every cube of a brick and every grid edge of it is a fixed flat offset away; each
    crossing edge is owned by the cube at its lower end, which numbers it, so vertices are shared by
    construction (no welding, no sort)."""
    ambiguous, tri_table, tri_counts, centre_edges = marching_cubes_tables()
    b, side = brick, brick + 1
    block = side**3
    strides = np.array([side * side, side, 1], np.int64)  # flat offsets of +x, +y, +z inside a block

    # Bricks: those holding a sample, plus their lower neighbours (whose apron holds it, so cubes there may be
    # active). Samples: voxel i at i + 1; 0 and R + 1 are the outside padding.
    n_axis = -(-(resolution + 2) // b)
    samples = coords.astype(np.int64) + 1
    brick_of = samples // b
    sample_flat = (samples - brick_of * b) @ strides
    brick_key = (brick_of[:, 0] * n_axis + brick_of[:, 1]) * n_axis + brick_of[:, 2]
    del samples, brick_of
    needed = np.zeros((n_axis,) * 3, bool)
    needed.reshape(-1)[brick_key] = True
    for axis in range(3):
        lower = [slice(None)] * 3
        upper = [slice(None)] * 3
        lower[axis], upper[axis] = slice(0, -1), slice(1, None)
        needed[tuple(lower)] |= needed[tuple(upper)]
    slot_of = np.full(n_axis**3, -1, np.int32)
    brick_keys = np.flatnonzero(needed.reshape(-1))
    del needed
    n_bricks = len(brick_keys)
    slot_of[brick_keys] = np.arange(n_bricks, dtype=np.int32)
    brick_coords = np.stack(np.unravel_index(brick_keys, (n_axis,) * 3), axis=1).astype(np.int32)
    del brick_keys

    grid = np.full(n_bricks * block, fill, np.float32)
    grid[slot_of[brick_key].astype(np.int64) * block + sample_flat] = values
    del brick_key, sample_flat
    grid = grid.reshape(n_bricks, side, side, side)
    # Apron: the layer at local index ``b`` along an axis is the upper neighbour's layer 0 (absent neighbour:
    # everything outside, already ``fill``).
    aprons = []
    for d in range(1, 8):
        off = np.array([d & 1, (d >> 1) & 1, (d >> 2) & 1], np.int32)
        nb = brick_coords + off
        ok = np.all(nb < n_axis, axis=1)
        dst = np.flatnonzero(ok)
        src = slot_of[(nb[ok, 0].astype(np.int64) * n_axis + nb[ok, 1]) * n_axis + nb[ok, 2]]
        dst, src = dst[src >= 0], src[src >= 0]
        dst_index = tuple(b if o else slice(0, b) for o in off)
        src_index = tuple(0 if o else slice(0, b) for o in off)
        aprons.append((dst, src, dst_index, src_index))
        grid[(dst, *dst_index)] = grid[(src, *src_index)]
    del slot_of, nb

    # Keep only bricks with an inside sample (apron included): the others have no surface, and no cube elsewhere
    # owns an edge in them. Thin shells: about half of the bricks go.
    inside = (grid < level).view(np.uint8)
    kept = inside.reshape(n_bricks, block).any(axis=1)
    if not kept.all():
        new_slot = np.cumsum(kept, dtype=np.int64) - 1
        grid, inside, brick_coords = grid[kept], inside[kept], brick_coords[kept]
        aprons = [
            (new_slot[dst[ok]], new_slot[src[ok]], dst_index, src_index)
            for dst, src, dst_index, src_index in aprons
            for ok in [kept[dst] & kept[src]]
        ]
        n_bricks = len(grid)
        del new_slot
    del kept
    inside = inside.reshape(-1)

    # Case index of every cube, on the flat layout (corner c is a fixed offset away), then cleared where the
    # min corner is in the apron (those "cubes" would wrap into the next row or brick).
    corner_offsets = [int(_corner_offset(c) @ strides) for c in range(8)]
    n_cells = len(inside) - corner_offsets[7]
    cases = np.zeros(n_bricks * block, np.uint8)
    head = cases[:n_cells]
    head |= inside[:n_cells]
    for c in range(1, 8):
        o = corner_offsets[c]
        head |= inside[o : o + n_cells] << np.uint8(c)
    del inside, head
    cases4 = cases.reshape(n_bricks, side, side, side)
    cases4[:, b] = cases4[:, :, b] = cases4[:, :, :, b] = 0
    del cases4
    active = np.flatnonzero((cases + np.uint8(1)) > 1)  # neither all outside (0) nor all inside (255)
    cases = cases[active]
    n_active = len(active)
    values_flat = grid.reshape(-1)

    # Ambiguous faces: inside corners connected iff their product beats the outside pair's (asymptotic decider,
    # from the face's four values in a fixed order, so both cubes sharing the face decide alike).
    connected = np.zeros(n_active, np.uint8)
    amb = ambiguous[cases]
    for f in range(6):
        sel = np.flatnonzero(amb & np.uint8(1 << f))
        if len(sel) == 0:
            continue
        cyc = _face_cycle(f)
        base = active[sel]
        v00, v10, v11, v01 = (values_flat[base + _corner_offset(c).astype(np.int64) @ strides] - level for c in cyc)
        diag, anti = v00 * v11, v10 * v01
        joined = np.where(v00 < 0, diag > anti, anti > diag)
        connected[sel] |= joined.astype(np.uint8) << np.uint8(f)
    del amb
    rows = cases.astype(np.int32) * 64 + connected
    del connected

    # Vertices: cube i owns the crossing edges at its min corner (corner 0 to corners 1, 2, 4), then its centre
    # vertex if its row has one; ``own_vertex[i, a]`` (a = 3: the centre) is valid where owned.
    bit0 = cases & np.uint8(1)
    owned = np.zeros(n_active, np.uint8)
    for a in range(3):
        owned |= (bit0 ^ ((cases >> np.uint8(1 << a)) & np.uint8(1))) << np.uint8(a)
    del bit0, cases
    has_centre = centre_edges[rows] != 0
    owned |= has_centre.astype(np.uint8) << np.uint8(3)
    # own_vertex[:, a] = first vertex of the cube + number of owned vertices before slot a.
    own_vertex = np.empty((n_active, 4), np.int32)
    own_vertex[:, 0] = 0
    n_owned = (owned & np.uint8(1)).astype(np.int32)
    for a in range(1, 4):
        own_vertex[:, a] = n_owned
        n_owned += (owned >> np.uint8(a)) & np.uint8(1)
    first_vertex = np.cumsum(n_owned, dtype=np.int64) - n_owned
    n_verts = int(first_vertex[-1] + n_owned[-1]) if n_active else 0
    del n_owned
    own_vertex += first_vertex.astype(np.int32)[:, None]
    del first_vertex
    verts = np.empty((n_verts, 3), np.float32)
    origin = brick_coords * np.int32(b)
    local_xyz = np.stack(np.unravel_index(np.arange(block), (side,) * 3), axis=1).astype(np.int32)
    geometry = (values_flat, origin, local_xyz)

    for a in range(3):
        sel = np.flatnonzero(owned & np.uint8(1 << a))
        verts[own_vertex[sel, a]] = _edge_points(*geometry, active[sel], 0, a, level)
    sel = np.flatnonzero(has_centre)
    if len(sel):
        mask = centre_edges[rows[sel]]
        total = np.zeros((len(sel), 3), np.float32)
        for e in range(12):  # in edge order, as the Warp kernel sums
            on = np.flatnonzero((mask >> e) & 1)
            total[on] += _edge_points(*geometry, active[sel[on]], _edge_corners(e)[0], e // 4, level)
        verts[own_vertex[sel, 3]] = total / _popcount(mask).astype(np.float32)[:, None]
    del owned, has_centre, grid, values_flat, brick_coords, origin, geometry

    # Faces: edge e of a cube is owned by the cube at the edge's lower corner, a fixed flat offset away in the
    # block layout (apron included); the dense map ``owner_of`` gives 4 × that cube's index, + the edge axis
    # (3 for the centre, whose owner is the cube itself) indexes ``own_vertex``.
    owner_of = np.full(n_bricks * block, -1, np.int32)
    owner_of[active] = np.arange(0, 4 * n_active, 4, dtype=np.int32)
    owner4 = owner_of.reshape(n_bricks, side, side, side)
    for dst, src, dst_index, src_index in aprons:
        owner4[(dst, *dst_index)] = owner4[(src, *src_index)]
    del aprons, owner4
    edge_owner_offset = np.array([_corner_offset(_edge_corners(e)[0]) @ strides for e in range(12)] + [0], np.int64)
    flat_table = tri_table.reshape(len(tri_table), -1)
    row_offset = edge_owner_offset[flat_table]
    row_axis = (flat_table // 4).astype(np.int64)
    own_vertex_flat = own_vertex.reshape(-1)
    n_tris = tri_counts[rows]
    face_parts = []
    for n in range(1, tri_table.shape[1] + 1):
        sel = np.flatnonzero(n_tris == n)
        if len(sel) == 0:
            continue
        sel_rows = rows[sel]
        owner = owner_of[active[sel][:, None] + row_offset[sel_rows, : 3 * n]]
        face_parts.append(own_vertex_flat[owner + row_axis[sel_rows, : 3 * n]].reshape(-1, 3))
    faces = np.concatenate(face_parts) if face_parts else np.zeros((0, 3), np.int32)
    if len(faces) == 0:
        raise NoSurfaceError(f"the SDF does not cross the level {level}: no surface to extract")
    return verts, faces


# --------------------------------------------------------------------------- compiled fast path (NVIDIA Warp, CPU)


class _TooLargeForWarp(RuntimeError):
    """The Warp kernels index with 32-bit ints; bigger inputs take the NumPy path."""


def _marching_cubes_warp(
    coords: np.ndarray, values: np.ndarray, resolution: int, level: float, fill: float, brick: int
) -> tuple[np.ndarray, np.ndarray]:
    """The Warp kernels of :mod:`~consistent3dgen.geometry.warp_marching_cubes` (compiled on first use)."""
    return warp_kernels("marching_cubes").marching_cubes(coords, values, resolution, level, fill, brick)


# --------------------------------------------------------------------------- reference: skimage per brick


def _marching_cubes_skimage(
    coords: np.ndarray, values: np.ndarray, resolution: int, level: float, fill: float, brick: int
) -> tuple[np.ndarray, np.ndarray]:
    """skimage's Lewiner marching cubes on dense ``(brick + 1)³`` blocks (one extra layer of samples so the cubes
    on a block's upper faces are complete), vertices on block faces welded by grid edge. Returns vertices in
    padded sample coordinates."""
    from skimage.measure import marching_cubes

    # Padded sample coordinates: voxel i sits at sample i + 1; samples 0 and R + 1 are outside padding.
    samples = coords.astype(np.int32) + 1
    side = brick + 1  # samples per block side
    n_bricks_axis = -(-(resolution + 1) // brick)  # cubes per axis = samples per axis - 1
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
        raise NoSurfaceError(f"the SDF does not cross the level {level}: no surface to extract")
    verts = np.concatenate(all_verts)
    del all_verts
    faces = np.concatenate(all_faces)
    del all_faces
    if border_ids:
        verts, faces = _weld(verts, faces, np.concatenate(border_ids), np.concatenate(border_keys))
    return verts, faces


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

