"""First ray hits on a triangle mesh as an NVIDIA Warp CPU kernel (BVH ``mesh_query_ray``): the ``warp`` backend
of :func:`~consistent3dgen.geometry.render.raycast`. Imported only through
:func:`~consistent3dgen.geometry.warp_runtime.warp_kernels`, which compiles and loads the module once.
"""

from __future__ import annotations

import numpy as np

from .warp_runtime import init_warp

wp = init_warp()


@wp.kernel
def first_hit(
    mesh: wp.uint64,
    dirs: wp.array(dtype=wp.vec3),
    max_t: float,
    dist: wp.array(dtype=float),
    face: wp.array(dtype=int),
):
    i = wp.tid()
    q = wp.mesh_query_ray(mesh, wp.vec3(0.0, 0.0, 0.0), dirs[i], max_t)
    if q.result:
        dist[i] = q.t
        face[i] = q.face
    else:
        dist[i] = -1.0
        face[i] = -1


def cast_rays(verts: np.ndarray, faces: np.ndarray, dirs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(distance along the ray, hit face or -1) per unit direction ``dirs`` from the origin (camera frame)."""
    device = "cpu"
    mesh = wp.Mesh(
        points=wp.array(verts.astype(np.float32), dtype=wp.vec3, device=device),
        indices=wp.array(faces.astype(np.int32).reshape(-1), dtype=wp.int32, device=device),
    )
    max_t = float(np.linalg.norm(verts, axis=1).max() * 2.0 + 1.0)
    d = wp.array(dirs.astype(np.float32), dtype=wp.vec3, device=device)
    dist = wp.empty(len(dirs), dtype=float, device=device)
    face = wp.empty(len(dirs), dtype=int, device=device)
    wp.launch(first_hit, dim=len(dirs), inputs=[mesh.id, d, max_t], outputs=[dist, face], device=device)
    wp.synchronize_device(device)
    return dist.numpy().astype(np.float64), face.numpy().astype(np.int64)
