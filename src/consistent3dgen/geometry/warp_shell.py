"""The thin-shell passes and the exact point-mesh distance as NVIDIA Warp CPU kernels (the ``warp`` backend of
:func:`~consistent3dgen.geometry.shell.thin_shell` and of :func:`~consistent3dgen.geometry.shell.exact_distance`).

Three passes over x slabs of the grid (column z ranges, distance scatter, compaction), each slab owned by one
thread; see :mod:`~consistent3dgen.geometry.shell` for the enumeration and its exactness. Imported only through
:func:`~consistent3dgen.geometry.warp_runtime.warp_kernels`, which compiles and loads the module once.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .warp_runtime import init_warp

wp = init_warp()


@wp.func
def closest_d2(p: wp.vec3, a: wp.vec3, b: wp.vec3, c: wp.vec3) -> float:
    # squared point-triangle distance, Ericson RTCD 5.1.5 (the same rules as closest_point_region)
    ab = b - a
    ac = c - a
    ap = p - a
    d1 = wp.dot(ab, ap)
    d2 = wp.dot(ac, ap)
    if d1 <= 0.0 and d2 <= 0.0:
        return wp.length_sq(ap)
    bp = p - b
    d3 = wp.dot(ab, bp)
    d4 = wp.dot(ac, bp)
    if d3 >= 0.0 and d4 <= d3:
        return wp.length_sq(bp)
    vc = d1 * d4 - d3 * d2
    if vc <= 0.0 and d1 >= 0.0 and d3 <= 0.0:
        return wp.length_sq(p - (a + (d1 / (d1 - d3)) * ab))
    cp = p - c
    d5 = wp.dot(ab, cp)
    d6 = wp.dot(ac, cp)
    if d6 >= 0.0 and d5 <= d6:
        return wp.length_sq(cp)
    vb = d5 * d2 - d1 * d6
    if vb <= 0.0 and d2 >= 0.0 and d6 <= 0.0:
        return wp.length_sq(p - (a + (d2 / (d2 - d6)) * ac))
    va = d3 * d6 - d5 * d4
    e43 = d4 - d3
    e56 = d5 - d6
    if va <= 0.0 and e43 >= 0.0 and e56 >= 0.0:
        return wp.length_sq(p - (b + (e43 / (e43 + e56)) * (c - b)))
    denom = va + vb + vc
    if wp.abs(denom) < 1.0e-30:
        denom = 1.0e-30
    return wp.length_sq(p - (a + (vb / denom) * ab + (vc / denom) * ac))

@wp.func
def column_z_range(
    a: wp.vec3, b: wp.vec3, c: wp.vec3, n: wp.vec3, zmin: float, zmax: float, x: float, y: float,
    reach: float, top: int,
) -> wp.vec2i:
    # A voxel p = (x, y, k) within `reach` of a point q of the triangle has |q_xy - (x, y)| >= d_xy (the
    # footprint distance), so |k - q_z| < h = sqrt(reach² - d_xy²); and q_xy lies within `reach` of
    # (x, y), where the plane's z differs from zc (its z at the column) by at most slope * reach; and
    # the plane distance |k - zc| * nz / |n| is below reach. Empty (1, 0) when d_xy >= reach.
    d2xy = closest_d2(wp.vec3(x, y, 0.0), wp.vec3(a[0], a[1], 0.0), wp.vec3(b[0], b[1], 0.0),
                      wp.vec3(c[0], c[1], 0.0))
    r2 = reach * reach
    if not (d2xy < r2):
        return wp.vec2i(1, 0)
    h = wp.sqrt(wp.max(r2 - d2xy, 0.0))
    lo = zmin - h
    hi = zmax + h
    nlen = wp.length(n)
    if n[2] > 1.0e-6 * nlen:
        zc = a[2] - (n[0] * (x - a[0]) + n[1] * (y - a[1])) / n[2]
        g = wp.sqrt(n[0] * n[0] + n[1] * n[1]) / n[2]
        w = reach * nlen / n[2]
        lo = wp.max(wp.max(lo, wp.max(zmin, zc - g * reach) - h), zc - w)
        hi = wp.min(wp.min(hi, wp.min(zmax, zc + g * reach) + h), zc + w)
    return wp.vec2i(wp.max(int(wp.ceil(lo)), 0), wp.min(int(wp.floor(hi)), top))

@wp.kernel
def ranges(
    tri_ids: wp.array(dtype=wp.int32),
    ta: wp.array(dtype=wp.vec3), tb: wp.array(dtype=wp.vec3), tc: wp.array(dtype=wp.vec3),
    tn: wp.array(dtype=wp.vec3), tlo: wp.array(dtype=wp.vec3), thi: wp.array(dtype=wp.vec3),
    reach: float, res: int, x_begin: int, x_end: int,
    col_lo: wp.array(dtype=wp.int32), col_hi: wp.array(dtype=wp.int32),
):
    # serial CPU launch, one x slab per launch: plain read-modify-write is race-free
    t = tri_ids[wp.tid()]
    lo3 = tlo[t]
    hi3 = thi[t]
    i0 = wp.max(int(wp.ceil(lo3[0] - reach)), x_begin)
    i1 = wp.min(int(wp.floor(hi3[0] + reach)), x_end - 1)
    j0 = wp.max(int(wp.ceil(lo3[1] - reach)), 0)
    j1 = wp.min(int(wp.floor(hi3[1] + reach)), res - 1)
    for i in range(i0, i1 + 1):
        for j in range(j0, j1 + 1):
            kr = column_z_range(ta[t], tb[t], tc[t], tn[t], lo3[2], hi3[2], float(i), float(j), reach,
                                res - 1)
            if kr[0] <= kr[1]:
                col = i * res + j
                col_lo[col] = wp.min(col_lo[col], kr[0])
                col_hi[col] = wp.max(col_hi[col], kr[1])

@wp.kernel
def scatter(
    tri_ids: wp.array(dtype=wp.int32),
    ta: wp.array(dtype=wp.vec3), tb: wp.array(dtype=wp.vec3), tc: wp.array(dtype=wp.vec3),
    tn: wp.array(dtype=wp.vec3), tlo: wp.array(dtype=wp.vec3), thi: wp.array(dtype=wp.vec3),
    reach: float, res: int, x_begin: int, x_end: int,
    col_lo: wp.array(dtype=wp.int32), col_off: wp.array(dtype=wp.int32),
    best_d2: wp.array(dtype=wp.float32), best_tri: wp.array(dtype=wp.int32),
    n_eval: wp.array(dtype=wp.int32),
):
    # triangles of a launch run in increasing index order and only strictly smaller distances replace,
    # so ties keep the lowest triangle index whatever the slab split
    slot_t = wp.tid()
    t = tri_ids[slot_t]
    lo3 = tlo[t]
    hi3 = thi[t]
    a = ta[t]
    b = tb[t]
    c = tc[t]
    i0 = wp.max(int(wp.ceil(lo3[0] - reach)), x_begin)
    i1 = wp.min(int(wp.floor(hi3[0] + reach)), x_end - 1)
    j0 = wp.max(int(wp.ceil(lo3[1] - reach)), 0)
    j1 = wp.min(int(wp.floor(hi3[1] + reach)), res - 1)
    n = tn[t]
    unit = n / wp.max(wp.length(n), 1.0e-30)
    count = int(0)  # noqa: UP018 - warp needs a typed, mutable local
    for i in range(i0, i1 + 1):
        for j in range(j0, j1 + 1):
            kr = column_z_range(a, b, c, n, lo3[2], hi3[2], float(i), float(j), reach, res - 1)
            if kr[0] <= kr[1]:
                col = i * res + j
                base = col_off[col] - col_lo[col]
                plane0 = unit[0] * (float(i) - a[0]) + unit[1] * (float(j) - a[1]) - unit[2] * a[2]
                for k in range(kr[0], kr[1] + 1):
                    s = base + k
                    # the plane distance bounds the triangle distance from below: skip voxels that
                    # an earlier triangle already brought closer
                    plane = plane0 + unit[2] * float(k)
                    if plane * plane * 0.9999 < best_d2[s]:  # margin: rounding of the bound
                        d2 = closest_d2(wp.vec3(float(i), float(j), float(k)), a, b, c)
                        count += 1
                        if d2 < best_d2[s]:
                            best_d2[s] = d2
                            best_tri[s] = t
    n_eval[slot_t] = count

@wp.kernel
def count_kept(
    col0: int, col_off: wp.array(dtype=wp.int32), best_d2: wp.array(dtype=wp.float32), band2: float,
    kept: wp.array(dtype=wp.int32),
):
    col = col0 + wp.tid()
    m = int(0)  # noqa: UP018 - warp needs a typed, mutable local
    for s in range(col_off[col], col_off[col + 1]):
        if best_d2[s] < band2:
            m += 1
    kept[col] = m

@wp.kernel
def compact(
    col0: int, col_lo: wp.array(dtype=wp.int32), col_off: wp.array(dtype=wp.int32),
    out_off: wp.array(dtype=wp.int32),
    best_d2: wp.array(dtype=wp.float32), best_tri: wp.array(dtype=wp.int32), band2: float, res: int,
    band: float, shell: float, ta: wp.array(dtype=wp.vec3), tn: wp.array(dtype=wp.vec3),
    coords: wp.array(dtype=wp.vec3i), udf: wp.array(dtype=wp.float32), sdf: wp.array(dtype=wp.float32),
    front: wp.array(dtype=wp.uint8),
):
    col = col0 + wp.tid()
    o = out_off[col]
    i = col // res
    j = col - i * res
    for s in range(col_off[col], col_off[col + 1]):
        d2 = best_d2[s]
        if d2 < band2:
            k = col_lo[col] + s - col_off[col]
            d = wp.sqrt(d2)
            coords[o] = wp.vec3i(i, j, k)
            udf[o] = d
            sdf[o] = wp.clamp((d - shell) / (band - shell), -1.0, 1.0)
            t = best_tri[s]
            side = wp.dot(wp.vec3(float(i), float(j), float(k)) - ta[t], tn[t])
            front[o] = wp.uint8(0)
            if side >= 0.0:
                front[o] = wp.uint8(1)
            o += 1


@wp.kernel
def query(mesh: wp.uint64, pts: wp.array(dtype=wp.vec3), max_dist: float, out: wp.array(dtype=wp.float32)):
    i = wp.tid()
    q = wp.mesh_query_point_no_sign(mesh, pts[i], max_dist)
    if q.result:
        out[i] = wp.length(pts[i] - wp.mesh_eval_position(mesh, q.face, q.u, q.v))
    else:
        out[i] = max_dist


def _slabs(tris, resolution: int, reach: float, threads: int) -> list[tuple[int, int, np.ndarray]]:
    """Split the x axis into ``threads`` slabs of about equal triangle counts: (x_begin, x_end, triangle ids)."""
    x_lo = np.floor(tris.lo[:, 0] - reach)
    x_hi = np.ceil(tris.hi[:, 0] + reach)
    if threads <= 1:
        cuts = [0, resolution]
    else:
        centre = np.sort((tris.lo[:, 0] + tris.hi[:, 0]) / 2)
        inner = [int(np.clip(round(float(centre[len(centre) * q // threads])), 1, resolution - 1))
                 for q in range(1, threads)]
        cuts = [0, *sorted(set(inner)), resolution]
    out = []
    for x0, x1 in zip(cuts[:-1], cuts[1:], strict=True):
        ids = np.flatnonzero((x_hi >= x0) & (x_lo <= x1 - 1)).astype(np.int32)  # ascending: the tie rule
        if len(ids):
            out.append((x0, x1, ids))
    return out


def _run_parallel(fn, items: list) -> list:  # noqa: ANN001
    """fn over items on threads (Warp CPU launches release the GIL; each item owns disjoint output)."""
    if len(items) <= 1:
        return [fn(it) for it in items]
    with ThreadPoolExecutor(len(items)) as pool:
        return list(pool.map(fn, items))


def thin_shell_passes(tris, resolution: int, band: float, shell: float, threads: int, reach: float) -> tuple:
    """The shell's voxels within ``band`` of triangles ``tris`` (``shell._Triangles``, voxel units), enumerated
    within ``reach``: ``(coords (N, 3) int32 row-major, udf (N,), sdf (N,), front (N,) bool, evaluations)``."""
    dev = "cpu"
    res = int(resolution)
    n_col = res * res

    def arr(x, dtype):  # noqa: ANN001, ANN202 - zero-copy views of NumPy memory
        return wp.array(x, dtype=dtype, device=dev, copy=False)

    geo = [arr(tris.a, wp.vec3), arr(tris.b, wp.vec3), arr(tris.c, wp.vec3), arr(tris.normal, wp.vec3),
           arr(np.ascontiguousarray(tris.lo), wp.vec3), arr(np.ascontiguousarray(tris.hi), wp.vec3)]
    slabs = _slabs(tris, res, reach, threads)
    ids_w = [arr(ids, wp.int32) for _, _, ids in slabs]
    col_lo = np.full(n_col, res, np.int32)
    col_hi = np.full(n_col, -1, np.int32)
    col_lo_w, col_hi_w = arr(col_lo, wp.int32), arr(col_hi, wp.int32)

    def pass_ranges(s: int) -> None:
        x0, x1, ids = slabs[s]
        wp.launch(ranges, dim=len(ids), inputs=[ids_w[s], *geo, reach, res, x0, x1, col_lo_w, col_hi_w],
                  device=dev)

    _run_parallel(pass_ranges, list(range(len(slabs))))
    col_len = np.maximum(col_hi - col_lo + 1, 0).astype(np.int64)
    n_slots = int(col_len.sum())
    if n_slots >= 2**31:
        raise RuntimeError(f"{n_slots} band voxel slots at {res}^3: beyond the int32 indexing of the kernels")
    col_off = np.zeros(n_col + 1, np.int32)
    np.cumsum(col_len, out=col_off[1:])
    best_d2 = np.full(n_slots, np.float32(band * band), np.float32)  # "not within the band yet"
    best_tri = np.full(n_slots, -1, np.int32)
    col_off_w, best_d2_w, best_tri_w = arr(col_off, wp.int32), arr(best_d2, wp.float32), arr(best_tri, wp.int32)
    n_eval = [np.zeros(len(ids), np.int32) for _, _, ids in slabs]

    def pass_scatter(s: int) -> None:
        x0, x1, _ = slabs[s]
        wp.launch(scatter, dim=len(slabs[s][2]),
                  inputs=[ids_w[s], *geo, reach, res, x0, x1, col_lo_w, col_off_w, best_d2_w, best_tri_w,
                          arr(n_eval[s], wp.int32)], device=dev)

    _run_parallel(pass_scatter, list(range(len(slabs))))
    band2 = float(np.float32(band * band))
    kept = np.zeros(n_col, np.int32)
    kept_w = arr(kept, wp.int32)
    parts = np.linspace(0, n_col, len(slabs) + 1).astype(np.int64)  # column ranges, one per thread

    def pass_count(s: int) -> None:
        c0, c1 = int(parts[s]), int(parts[s + 1])
        wp.launch(count_kept, dim=c1 - c0, inputs=[c0, col_off_w, best_d2_w, band2, kept_w], device=dev)

    _run_parallel(pass_count, list(range(len(slabs))))
    out_off = np.zeros(n_col + 1, np.int32)
    np.cumsum(kept, out=out_off[1:])
    n = int(out_off[-1])
    coords = np.empty((n, 3), np.int32)
    udf = np.empty(n, np.float32)
    sdf = np.empty(n, np.float32)
    front = np.empty(n, np.uint8)
    outs = [arr(coords, wp.vec3i), arr(udf, wp.float32), arr(sdf, wp.float32), arr(front, wp.uint8)]

    def pass_compact(s: int) -> None:
        c0, c1 = int(parts[s]), int(parts[s + 1])
        wp.launch(compact, dim=c1 - c0,
                  inputs=[c0, col_lo_w, col_off_w, arr(out_off, wp.int32), best_d2_w, best_tri_w, band2, res,
                          float(band), float(shell), geo[0], geo[3], *outs], device=dev)

    _run_parallel(pass_compact, list(range(len(slabs))))
    return coords, udf, sdf, front.astype(bool), int(sum(int(e.sum()) for e in n_eval))


def exact_distance(points: np.ndarray, vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Exact unsigned distance from points to a triangle mesh (Warp BVH closest-point query)."""
    dev = "cpu"
    mesh = wp.Mesh(
        points=wp.array(np.ascontiguousarray(vertices, np.float32), dtype=wp.vec3, device=dev),
        indices=wp.array(np.ascontiguousarray(faces, np.int32).reshape(-1), dtype=wp.int32, device=dev),
    )
    pts = wp.array(np.ascontiguousarray(points, np.float32), dtype=wp.vec3, device=dev)
    out = wp.empty(len(points), dtype=wp.float32, device=dev)
    wp.launch(query, dim=len(points), inputs=[mesh.id, pts, 1.0e6], outputs=[out], device=dev)
    wp.synchronize_device(dev)
    return out.numpy().astype(np.float64)

