"""Preview panels: the input, the mesh from the input view and three turned views (sides and back), ≥ 256 px."""

from __future__ import annotations

import numpy as np
import trimesh

from consistent3dgen.geometry.render import intrinsics_from_fov, render_pointmap
from consistent3dgen.preview import PREVIEW_ANGLES, fit_distance, orbit_views, preview_panel, shade


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
    assert back > 0.5 * front  # the back: the plate seen from behind (nearer: the turned views zoom to fit)
    (bh, bw), (s1h, s1w), (s2h, s2w) = (_extent(tiles[i]) for i in (3, 2, 4))
    assert abs(bw - bh) < 0.1 * bh  # square, as the plate is
    assert s1w < 0.25 * s1h and s2w < 0.25 * s2h  # the sides: edge-on, a sliver


def _extent(tile: np.ndarray) -> tuple[int, int]:
    """(rows, columns) spanned by the object's pixels."""
    rows, cols = np.nonzero((tile < 250).any(axis=2))
    return int(np.ptp(rows)) + 1, int(np.ptp(cols)) + 1


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


def _tiles(panel: np.ndarray, n: int = 5) -> list[np.ndarray]:
    return np.split(panel, n, axis=1)


def _object(tile: np.ndarray) -> np.ndarray:
    """Pixels that are not the white background."""
    return (tile < 250).any(axis=2)


def test_turned_views_frame_the_whole_object() -> None:
    # a long box seen end-on, off the image centre: from the side it is 2.6 long, more than the input camera's
    # distance (2.5) shows at 40°; the turned views move back until its bounding sphere fills ~85 % of the tile
    box = trimesh.creation.box(extents=(0.3, 0.3, 2.6))
    box.apply_translation([0.25, 0.1, 2.5])
    k = intrinsics_from_fov(40.0, 64, 48)
    pm = render_pointmap(box.vertices, box.faces, k, 64, 48)
    v = box.vertices.astype(np.float32)
    _, front, *turned = _tiles(preview_panel(v, box.faces, pm))
    # the input-view tile is the input camera itself (at the input's size: its intrinsics as they are)
    assert np.array_equal(_tiles(preview_panel(v, box.faces, pm, tile=48))[1], shade(v, box.faces, k, 64, 48))
    assert _object(front).any()
    for i, tile in enumerate(turned):
        obj = _object(tile)
        border = np.concatenate([obj[0], obj[-1], obj[:, 0], obj[:, -1]])
        assert obj.any() and not border.any()  # the whole object inside the tile
        if i != 1:  # the sides (90°, 270°): the long box across most of the 85 % its bounding sphere takes
            rows, cols = np.nonzero(obj)
            assert np.ptp(cols) + 1 > 0.6 * min(obj.shape) and obj.mean() > 0.05


def test_fit_distance_puts_the_bounding_sphere_at_the_asked_fill() -> None:
    sphere = trimesh.creation.icosphere(subdivisions=3, radius=1.0)
    sphere.apply_translation([0.0, 0.0, 10.0])
    k = intrinsics_from_fov(40.0, 200, 100)
    d = fit_distance(sphere.vertices, k, 200, 100, fill=0.85)
    (pose,) = orbit_views(sphere.vertices, (180.0,), distance=d)
    eye = -pose[:3, :3].T @ pose[:3, 3]
    assert abs(np.linalg.norm(eye - [0.0, 0.0, 10.0]) - d) < 1e-6
    obj = _object(shade(sphere.vertices, sphere.faces, k, 200, 100, cam_from_world=pose))
    rows = np.nonzero(obj.any(axis=1))[0]
    assert abs((rows.max() - rows.min() + 1) / 100 - 0.85) < 0.04  # the narrower side (height) is 85 % filled


def _red_blue_plate() -> tuple[trimesh.Trimesh, np.ndarray]:
    # the plate's left half red, right half blue (by vertex x): a subdivided box so each half has its own vertices
    plate = _plate().subdivide().subdivide()
    colours = np.where((plate.vertices[:, 0] < 0.0)[:, None], [[220, 30, 30]], [[30, 30, 220]]).astype(np.uint8)
    return plate, colours


def test_coloured_panel_shows_the_vertex_colours_in_the_output_tiles() -> None:
    plate, colours = _red_blue_plate()
    k = intrinsics_from_fov(40.0, 64, 48)
    pm = render_pointmap(plate.vertices, plate.faces, k, 64, 48)
    v = plate.vertices.astype(np.float32)
    panel = preview_panel(v, plate.faces, pm, colours=colours)
    grey = preview_panel(v, plate.faces, pm)
    assert panel.shape == grey.shape == (256, 5 * 341, 3)
    inp_c, inp_g = _tiles(panel)[0], _tiles(grey)[0]
    assert np.array_equal(inp_c, inp_g)  # the input tile does not depend on the colours
    for name, tile in zip(("front", "back"), (_tiles(panel)[1], _tiles(panel)[3]), strict=True):
        px = tile[_object(tile)].astype(int)
        red = (px[:, 0] > px[:, 2] + 60).mean()
        blue = (px[:, 2] > px[:, 0] + 60).mean()
        assert red > 0.3 and blue > 0.3, (name, red, blue)  # both halves, in their colours
        third = tile.shape[1] // 3
        left, right = tile[:, :third][_object(tile[:, :third])], tile[:, -third:][_object(tile[:, -third:])]
        if name == "front":  # x right in the image: red (x < 0) on the left
            assert left[:, 0].mean() > left[:, 2].mean() and right[:, 2].mean() > right[:, 0].mean()
        else:  # from behind the plate the halves swap sides
            assert left[:, 2].mean() > left[:, 0].mean() and right[:, 0].mean() > right[:, 2].mean()
    for tile in _tiles(grey)[1:]:  # the grey path: one blue-grey hue, as before
        px = tile[_object(tile)].astype(float)
        if len(px):
            ratio = px / np.maximum(px[:, 2:3], 1.0)
            assert np.allclose(ratio, [0.62 / 0.78, 0.68 / 0.78, 1.0], atol=0.03)
