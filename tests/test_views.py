"""Mesh files read for synthetic views: every problem with the file is one InputError line naming it."""

from __future__ import annotations

import pytest

from consistent3dgen.errors import InputError
from consistent3dgen.views import load_normalized_mesh


def test_bad_mesh_files_are_named(tmp_path):
    with pytest.raises(InputError, match="mesh file not found"):
        load_normalized_mesh(tmp_path / "none.obj")
    nan = tmp_path / "nan.obj"
    nan.write_text("v 0 0 0\nv 1 0 0\nv nan 1 0\nf 1 2 3\n")
    with pytest.raises(InputError, match=r"nan\.obj has non-finite"):
        load_normalized_mesh(nan)
    flat = tmp_path / "point.obj"
    flat.write_text("v 1 1 1\nv 1 1 1\nv 1 1 1\nf 1 2 3\n")
    with pytest.raises(InputError, match=r"point\.obj has zero or overflowing extent"):
        load_normalized_mesh(flat)
    ok = tmp_path / "tri.obj"
    ok.write_text("v 0 0 0\nv 2 0 0\nv 0 1 0\nf 1 2 3\n")
    v, f = load_normalized_mesh(ok)
    assert v.max(0).tolist() == [0.5, 0.25, 0.0] and f.tolist() == [[0, 1, 2]]


def test_orbit_views_are_distinct_cameras_whose_points_lie_on_the_mesh():
    import numpy as np
    import trimesh

    from consistent3dgen.pointmap import relative_to_first
    from consistent3dgen.views import orbit_camera, orbit_views_rgbd, views_to_pointmaps

    mesh = trimesh.creation.box(extents=(0.6, 0.4, 0.5))  # flat faces: the exact surface is easy to measure
    views = orbit_views_rgbd(mesh.vertices, mesh.faces, 3, size=48, azimuth_deg=35.0, elevation_deg=20.0)
    assert len(views) == 3
    assert np.allclose(views[0].cam_from_world, orbit_camera(35.0, 20.0, 2.5))  # view 0 = the single-view camera
    centres = np.array([-v.cam_from_world[:3, :3].T @ v.cam_from_world[:3, 3] for v in views])
    gaps = np.linalg.norm(centres[:, None] - centres[None], axis=-1)
    assert gaps[~np.eye(3, dtype=bool)].min() > 1.0  # 120° apart on a 2.5 m sphere
    assert np.allclose(np.linalg.norm(centres, axis=1), 2.5)
    pms = views_to_pointmaps(views)
    for pm, view in zip(pms, views, strict=True):
        assert np.allclose(pm.pose @ view.cam_from_world, np.eye(4))
        world = pm.to_shared(pm.valid_points())  # the mesh's frame
        _, dist, _ = trimesh.proximity.closest_point(mesh, world)
        assert len(world) > 100 and dist.max() < 1e-4  # float32 depth of a ray cast: exact up to rounding
    rel = relative_to_first(pms)
    assert np.allclose(rel[0].pose, np.eye(4), atol=1e-12)
    # relative poses carry view k's points into view 0's camera = the world seen by camera 0
    pts = rel[1].to_shared(rel[1].valid_points())
    cam0 = views[0].cam_from_world
    expect = pms[1].to_shared(pms[1].valid_points()) @ cam0[:3, :3].T + cam0[:3, 3]
    assert np.abs(pts - expect).max() < 1e-9


def test_a_view_count_below_one_is_refused():
    import numpy as np

    from consistent3dgen.views import orbit_views_rgbd

    with pytest.raises(ValueError, match="at least 1"):
        orbit_views_rgbd(np.zeros((3, 3)), np.array([[0, 1, 2]]), 0)
