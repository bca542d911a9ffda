"""Sparse marching cubes as NVIDIA Warp CPU kernels (the ``warp`` method of
:func:`~consistent3dgen.geometry.marching_cubes.sparse_marching_cubes`).

Same layout and rules as the NumPy path (``marching_cubes._marching_cubes_numpy``), one thread per brick, so that
each brick writes its vertices and faces in a fixed order at offsets from prefix sums: the output is
deterministic. Imported only through :func:`~consistent3dgen.geometry.warp_runtime.warp_kernels`, which compiles
and loads the module once.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ..errors import NoSurfaceError
from .marching_cubes import _corner_offset, _edge_corners, _face_cycle, _TooLargeForWarp, marching_cubes_tables
from .warp_runtime import default_threads, init_warp

wp = init_warp()
# Forward kernels only: no adjoint code to generate and compile (about halves the one-off compile).
wp.set_module_options({"enable_backward": False})

@wp.kernel
def mark_bricks(
    begin: int, coords: wp.array(dtype=wp.int32), b: int, n_axis: int, occupied: wp.array(dtype=wp.uint8)
):
    i = begin + wp.tid()  # threads may race here, harmlessly: they all write 1
    bx = (coords[3 * i] + 1) // b
    by = (coords[3 * i + 1] + 1) // b
    bz = (coords[3 * i + 2] + 1) // b
    occupied[(bx * n_axis + by) * n_axis + bz] = wp.uint8(1)

@wp.kernel
def scatter(
    begin: int,
    coords: wp.array(dtype=wp.int32),
    values: wp.array(dtype=wp.float32),
    b: int,
    side: int,
    n_axis: int,
    slot_of: wp.array(dtype=wp.int32),
    level: float,
    grid: wp.array(dtype=wp.float32),
    has_inside: wp.array(dtype=wp.uint8),
):
    # A sample is written into its brick and, where it lies on the brick's lower faces, into the apron
    # (local index b) of the lower neighbours; those always exist (they are "needed" bricks). Every write
    # goes to its own grid cell, so threads over disjoint voxel ranges do not race (on ``has_inside`` they
    # may, harmlessly: they all write 1).
    i = begin + wp.tid()
    sx = coords[3 * i] + 1
    sy = coords[3 * i + 1] + 1
    sz = coords[3 * i + 2] + 1
    bx = sx // b
    by = sy // b
    bz = sz // b
    lx = sx - bx * b
    ly = sy - by * b
    lz = sz - bz * b
    v = values[i]
    for d in range(8):
        dx = d & 1
        dy = (d >> 1) & 1
        dz = (d >> 2) & 1
        if (dx == 0 or lx == 0) and (dy == 0 or ly == 0) and (dz == 0 or lz == 0):
            slot = slot_of[((bx - dx) * n_axis + (by - dy)) * n_axis + (bz - dz)]
            grid[slot * side * side * side + ((lx + dx * b) * side + ly + dy * b) * side + lz + dz * b] = v
            if v < level:
                has_inside[slot] = wp.uint8(1)

@wp.func
def popcount3(m: int) -> int:
    return (m & 1) + ((m >> 1) & 1) + ((m >> 2) & 1)

@wp.kernel
def classify(
    begin: int,
    grid: wp.array(dtype=wp.float32),
    level: float,
    b: int,
    side: int,
    corner_offset: wp.array(dtype=wp.int32),
    face_corner_offset: wp.array(dtype=wp.int32),
    ambiguous: wp.array(dtype=wp.int32),
    tri_counts: wp.array(dtype=wp.int32),
    centre_edges: wp.array(dtype=wp.int32),
    has_inside: wp.array(dtype=wp.uint8),
    cell: wp.array(dtype=wp.int32),
    brick_verts: wp.array(dtype=wp.int32),
    brick_tris: wp.array(dtype=wp.int32),
):
    # cell word: vertex prefix within the brick << 17 | table row << 3 | owned-edge bits.
    slot = begin + wp.tid()
    n_verts = int(0)  # noqa: UP018 - Warp: a literal would be an immutable constant
    n_tris = int(0)  # noqa: UP018 - Warp: a literal would be an immutable constant
    # A brick without an inside sample (apron included) has no surface, and no cube of another brick
    # owns an edge here: skipping it saves the cube loop for about half of the bricks.
    if has_inside[slot] == 0:
        brick_verts[slot] = 0
        brick_tris[slot] = 0
        return
    for x in range(b):
        for y in range(b):
            # Slide along z: the cube's upper four corners are the next cube's lower four.
            q = slot * side * side * side + (x * side + y) * side
            upper = int(0)  # noqa: UP018 - Warp: a literal would be an immutable constant
            for c in range(4):
                upper = upper | (wp.where(grid[q + corner_offset[c]] < level, 1, 0) << c)
            for z in range(b):
                p = q + z
                lower = upper
                upper = int(0)  # noqa: UP018 - Warp: a literal would be an immutable constant
                for c in range(4):  # branch-free: the signs are unpredictable
                    upper = upper | (wp.where(grid[p + 1 + corner_offset[c]] < level, 1, 0) << c)
                case = lower | (upper << 4)
                word = n_verts << 17
                if case != 0 and case != 255:
                    amb = ambiguous[case]
                    connected = int(0)  # noqa: UP018 - Warp: a literal would be an immutable constant
                    for f in range(6):
                        if (amb >> f) & 1:
                            v00 = grid[p + face_corner_offset[4 * f]] - level
                            v10 = grid[p + face_corner_offset[4 * f + 1]] - level
                            v11 = grid[p + face_corner_offset[4 * f + 2]] - level
                            v01 = grid[p + face_corner_offset[4 * f + 3]] - level
                            diag = v00 * v11
                            anti = v10 * v01
                            joined = anti > diag
                            if v00 < 0.0:
                                joined = diag > anti
                            if joined:
                                connected = connected | (1 << f)
                    row = case * 64 + connected
                    bit0 = case & 1
                    owned = (bit0 ^ ((case >> 1) & 1)) | ((bit0 ^ ((case >> 2) & 1)) << 1)
                    owned = owned | ((bit0 ^ ((case >> 4) & 1)) << 2)
                    word = word | (row << 3) | owned
                    n_verts += popcount3(owned) + wp.where(centre_edges[row] != 0, 1, 0)
                    n_tris += tri_counts[row]
                cell[(slot * b + x) * b * b + y * b + z] = word
    brick_verts[slot] = n_verts
    brick_tris[slot] = n_tris

@wp.kernel
def emit(
    begin: int,
    grid: wp.array(dtype=wp.float32),
    level: float,
    b: int,
    side: int,
    cell: wp.array(dtype=wp.int32),
    vert_start: wp.array(dtype=wp.int32),
    tri_start: wp.array(dtype=wp.int32),
    brick_origin: wp.array(dtype=wp.int32),
    neighbour: wp.array(dtype=wp.int32),
    tri_table: wp.array(dtype=wp.int32),
    tri_counts: wp.array(dtype=wp.int32),
    max_tris: int,
    edge_corner: wp.array(dtype=wp.int32),
    corner_offset: wp.array(dtype=wp.int32),
    centre_edges: wp.array(dtype=wp.int32),
    brick_verts: wp.array(dtype=wp.int32),
    brick_tris: wp.array(dtype=wp.int32),
    verts: wp.array(dtype=wp.float32),
    faces: wp.array(dtype=wp.int32),
):
    slot = begin + wp.tid()
    if brick_verts[slot] == 0 and brick_tris[slot] == 0:
        return  # also: classify skipped it and wrote no cell words
    block = side * side * side
    vbase = vert_start[slot]
    t = tri_start[slot]
    for x in range(b):
        for y in range(b):
            for z in range(b):
                word = cell[(slot * b + x) * b * b + y * b + z]
                owned = word & 7
                row = (word >> 3) & 16383
                centre = centre_edges[row]
                if owned != 0 or centre != 0:
                    p = slot * block + (x * side + y) * side + z
                    k = vbase + (word >> 17)
                    ox = brick_origin[3 * slot] + x
                    oy = brick_origin[3 * slot + 1] + y
                    oz = brick_origin[3 * slot + 2] + z
                    v0 = grid[p]
                    for a in range(3):  # owned edges, from corner 0
                        if (owned >> a) & 1:
                            frac = (level - v0) / (grid[p + corner_offset[1 << a]] - v0)
                            verts[3 * k] = float(ox) + wp.where(a == 0, frac, 0.0)
                            verts[3 * k + 1] = float(oy) + wp.where(a == 1, frac, 0.0)
                            verts[3 * k + 2] = float(oz) + wp.where(a == 2, frac, 0.0)
                            k += 1
                    if centre != 0:  # the mean of its loop's edge points, summed in edge order (as NumPy)
                        sx = float(0.0)  # noqa: UP018 - Warp: mutable in the loop
                        sy = float(0.0)  # noqa: UP018 - Warp: mutable in the loop
                        sz = float(0.0)  # noqa: UP018 - Warp: mutable in the loop
                        for e in range(12):
                            if (centre >> e) & 1:
                                lo = edge_corner[e]
                                a = e // 4
                                u0 = grid[p + corner_offset[lo]]
                                frac = (level - u0) / (grid[p + corner_offset[lo | (1 << a)]] - u0)
                                sx = sx + (float(ox + (lo & 1)) + wp.where(a == 0, frac, 0.0))
                                sy = sy + (float(oy + ((lo >> 1) & 1)) + wp.where(a == 1, frac, 0.0))
                                sz = sz + (float(oz + ((lo >> 2) & 1)) + wp.where(a == 2, frac, 0.0))
                        n_centre = float(popcount3(centre) + popcount3(centre >> 3) + popcount3(centre >> 6))
                        n_centre = n_centre + float(popcount3(centre >> 9))
                        verts[3 * k] = sx / n_centre
                        verts[3 * k + 1] = sy / n_centre
                        verts[3 * k + 2] = sz / n_centre
                n = tri_counts[row]
                for i in range(3 * n):
                    e = tri_table[row * 3 * max_tris + i]
                    corner = edge_corner[e]
                    ox = x + (corner & 1)
                    oy = y + ((corner >> 1) & 1)
                    oz = z + ((corner >> 2) & 1)
                    direction = int(0)  # noqa: UP018 - Warp: a literal would be an immutable constant
                    if ox == b:
                        ox = 0
                        direction = direction | 1
                    if oy == b:
                        oy = 0
                        direction = direction | 2
                    if oz == b:
                        oz = 0
                        direction = direction | 4
                    owner = slot
                    if direction != 0:
                        owner = neighbour[8 * slot + direction]
                    other = cell[(owner * b + ox) * b * b + oy * b + oz]
                    axis = e // 4
                    rank = int(0)  # noqa: UP018 - Warp: a literal would be an immutable constant
                    if axis > 0:
                        rank = other & 1
                    if axis > 1:
                        rank = rank + ((other >> 1) & 1)
                    if axis > 2:  # the centre vertex follows the owned edges'
                        rank = rank + ((other >> 2) & 1)
                    faces[3 * t + i] = vert_start[owner] + (other >> 17) + rank
                t += n


def marching_cubes(
    coords: np.ndarray, values: np.ndarray, resolution: int, level: float, fill: float, brick: int
) -> tuple[np.ndarray, np.ndarray]:
    """The NumPy path's algorithm as four Warp CPU kernels (mark bricks, scatter with aprons, classify cubes,
    emit vertices and faces). Returns vertices in padded sample coordinates."""
    ambiguous, tri_table, tri_counts, centre_edges = marching_cubes_tables()
    b, side = brick, brick + 1
    block = side**3
    n_axis = -(-(resolution + 2) // b)
    if n_axis**3 >= 2**31:
        raise _TooLargeForWarp(f"resolution {resolution} needs 64-bit brick keys")
    device = "cpu"
    # Every buffer is a NumPy array that Warp only views (copy=False): memory shows up in tracemalloc, and the
    # results need no copy back. ``keep`` holds the arrays for as long as their views are in use.
    keep: list[np.ndarray] = []

    def view(a: np.ndarray, dtype=None):  # noqa: ANN001, ANN202
        a = np.ascontiguousarray(a).reshape(-1)
        keep.append(a)
        return wp.array(a, dtype=dtype or wp.dtype_from_numpy(a.dtype), device=device, copy=False)

    def ints(a) -> object:  # noqa: ANN001
        return view(np.asarray(a, np.int32))

    flat_coords = ints(coords)
    occupied = np.zeros(n_axis**3, np.uint8)
    threads = default_threads()

    def launch(kernel, n: int, inputs: list) -> None:  # noqa: ANN001
        """``kernel`` over ``begin + tid`` for tid < n, split into contiguous ranges on threads (Warp's CPU launches
        release the GIL; every kernel here writes disjoint outputs per index)."""
        cuts = np.linspace(0, n, min(threads, max(n, 1)) + 1).astype(int)

        def run(r: int) -> None:
            if cuts[r + 1] > cuts[r]:
                wp.launch(kernel, dim=int(cuts[r + 1] - cuts[r]), inputs=[int(cuts[r]), *inputs], device=device)

        if len(cuts) <= 2:
            run(0)
        else:
            with ThreadPoolExecutor(len(cuts) - 1) as pool:
                list(pool.map(run, range(len(cuts) - 1)))
        wp.synchronize_device(device)

    launch(mark_bricks, len(values), [flat_coords, b, n_axis, view(occupied)])
    needed = occupied.astype(bool).reshape((n_axis,) * 3)
    del occupied
    for axis in range(3):  # lower neighbours of occupied bricks: their apron holds samples
        lower = [slice(None)] * 3
        upper = [slice(None)] * 3
        lower[axis], upper[axis] = slice(0, -1), slice(1, None)
        needed[tuple(lower)] |= needed[tuple(upper)]
    brick_keys = np.flatnonzero(needed.reshape(-1))
    del needed
    n_bricks = len(brick_keys)
    if n_bricks * block >= 2**31:
        raise _TooLargeForWarp(f"{n_bricks} bricks need 64-bit sample indices")
    slot_of = np.full(n_axis**3, -1, np.int32)
    slot_of[brick_keys] = np.arange(n_bricks, dtype=np.int32)
    brick_coords = np.stack(np.unravel_index(brick_keys, (n_axis,) * 3), axis=1).astype(np.int32)
    neighbour = np.full((n_bricks, 8), -1, np.int32)
    for d in range(1, 8):
        nb = brick_coords + np.array([d & 1, (d >> 1) & 1, (d >> 2) & 1], np.int32)
        ok = np.all(nb < n_axis, axis=1)
        neighbour[ok, d] = slot_of[(nb[ok, 0].astype(np.int64) * n_axis + nb[ok, 1]) * n_axis + nb[ok, 2]]
    del brick_keys

    grid = view(np.full(n_bricks * block, fill, np.float32))
    has_inside = view(np.zeros(n_bricks, np.uint8))
    launch(
        scatter,
        len(values),
        [
            flat_coords,
            view(np.asarray(values, np.float32)),
            b,
            side,
            n_axis,
            ints(slot_of),
            float(level),
            grid,
            has_inside,
        ],
    )
    del flat_coords, slot_of

    strides = np.array([side * side, side, 1], np.int64)
    corner_offset = ints([int(_corner_offset(c) @ strides) for c in range(8)])
    face_corner_offset = ints([int(_corner_offset(c) @ strides) for f in range(6) for c in _face_cycle(f)])
    counts_wp = ints(tri_counts)
    centre_wp = ints(centre_edges)
    cell = ints(np.empty(n_bricks * b**3, np.int32))
    brick_verts_np = np.empty(n_bricks, np.int32)
    brick_tris_np = np.empty(n_bricks, np.int32)
    brick_verts, brick_tris = view(brick_verts_np), view(brick_tris_np)
    tables = [corner_offset, face_corner_offset, ints(ambiguous), counts_wp, centre_wp]
    launch(classify, n_bricks, [grid, float(level), b, side, *tables, has_inside, cell, brick_verts, brick_tris])
    n_verts_per_brick = brick_verts_np.astype(np.int64)
    n_tris_per_brick = brick_tris_np.astype(np.int64)
    n_verts, n_tris = int(n_verts_per_brick.sum()), int(n_tris_per_brick.sum())
    if n_tris == 0:
        raise NoSurfaceError(f"the SDF does not cross the level {level}: no surface to extract")
    if 3 * max(n_verts, n_tris) >= 2**31:
        raise _TooLargeForWarp(f"{n_verts} vertices / {n_tris} faces need 64-bit indices")
    verts = np.empty(3 * n_verts, np.float32)
    faces = np.empty(3 * n_tris, np.int32)
    launch(
        emit,
        n_bricks,
        [
            grid,
            float(level),
            b,
            side,
            cell,
            ints(np.cumsum(n_verts_per_brick) - n_verts_per_brick),
            ints(np.cumsum(n_tris_per_brick) - n_tris_per_brick),
            ints(brick_coords * b),
            ints(neighbour),
            ints(tri_table),
            counts_wp,
            int(tri_table.shape[1]),
            ints([_edge_corners(e)[0] for e in range(12)] + [0]),
            corner_offset,
            centre_wp,
            brick_verts,
            brick_tris,
            view(verts),
            view(faces),
        ],
    )
    keep.clear()
    return verts.reshape(-1, 3), faces.reshape(-1, 3)

