"""Preview panels: the input, the mesh from the input view and three turned views (sides and back), ≥ 256 px."""

from __future__ import annotations

import numpy as np
import trimesh

from consistent3dgen.geometry.render import intrinsics_from_fov, render_pointmap
from consistent3dgen.preview import PREVIEW_ANGLES, orbit_views, preview_panel


def _plate() -> trimesh.Trimesh:
    # a square plate facing the camera: wide from the front and the back, a thin sliver from the sides
    plate = trimesh.creation.box(extents=(0.8, 0.8, 0.05))
    plate.apply_translation([0.0, 0.0, 3.0])
    return plate


def test_panel_shows_input_front_sides_and_back_at_256_px() -> None:
    plate = _plate()
    k = intrinsics_from_fov(40.0, 64, 48)
    pm = render_pointmap(plate.vertices, plate.faces, k, 64, 48)
    panel = preview_panel(plate.vertices.astype(np.float32), plate.faces, pm)
    assert PREVIEW_ANGLES == (90.0, 180.0, 270.0)
    assert panel.dtype == np.uint8 and panel.shape == (256, 5 * 341, 3)  # 64x48 scaled to 341x256, 5 tiles
    tiles = np.split(panel, 5, axis=1)
    covered = [(t < 250).any(axis=2).mean() for t in tiles]
    inp, front, side1, back, side2 = covered
    assert abs(front - inp) < 0.05 * inp  # the render from the input view covers what the input shows
    assert abs(back - front) < 0.1 * front  # the back: the plate seen from behind, as wide
    assert side1 < 0.25 * front and side2 < 0.25 * front  # the sides: edge-on, a sliver


def test_the_back_view_looks_from_behind_the_centre() -> None:
    plate = _plate()
    center = np.array([0.0, 0.0, 3.0])
    for angle, pose in zip((90.0, 180.0, 270.0), orbit_views(plate.vertices, (90.0, 180.0, 270.0)), strict=True):
        eye = -pose[:3, :3].T @ pose[:3, 3]
        assert abs(np.linalg.norm(eye - center) - 3.0) < 1e-6  # as far from the centre as the input camera
        assert abs(eye[1]) < 1e-9  # turned about the vertical axis: same height
        expected = center + 3.0 * np.array([-np.sin(np.radians(angle)), 0.0, -np.cos(np.radians(angle))])
        assert np.allclose(eye, expected, atol=1e-6)
        forward = pose[2, :3]
        assert np.allclose(forward, (center - eye) / 3.0, atol=1e-6)  # looking at the centre
