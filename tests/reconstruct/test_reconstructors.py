"""Reconstructor selection, depth / point-map sources, VGGT preprocessing geometry and the VGGT reconstructor."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from consistent3dgen.errors import InputError
from consistent3dgen.pointmap import PointMap
from consistent3dgen.reconstruct import get_reconstructor, infer_reconstructor
from consistent3dgen.reconstruct.vggt.preprocess import (
    intrinsics_to_original,
    original_pixel_grid,
    preprocess_images,
    sample_to_original,
)
from consistent3dgen.reconstruct.vggt.pretrained import random_vggt
from consistent3dgen.reconstruct.vggt.reconstructor import (
    VGGTReconstructor,
    object_mask,
    reference_from_camera,
    transform_points,
)


def _rgba(w: int, h: int, seed: int = 0) -> np.ndarray:
    """Smooth colour gradient with an elliptical opaque object on a transparent background."""
    yy, xx = np.mgrid[0:h, 0:w]
    rgb = np.stack([xx / w * 255, yy / h * 255, np.full_like(xx, 128.0)], -1)
    inside = ((xx - w / 2) / (0.35 * w)) ** 2 + ((yy - h / 2) / (0.35 * h)) ** 2 < 1
    alpha = np.where(inside, 255, 0)
    return np.concatenate([rgb, alpha[..., None]], -1).astype(np.uint8)


# ----------------------------------------------------------------------------------------------- selection


def test_infer_reconstructor_from_inputs(tmp_path):
    Image.fromarray(np.zeros((4, 4), np.uint16)).save(tmp_path / "d.png")
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "rgb.png")
    assert infer_reconstructor(tmp_path / "d.png") == "depth"
    assert infer_reconstructor([tmp_path / "rgb.png", tmp_path / "x.jpg"]) == "vggt"
    assert infer_reconstructor("scan.npy") == "depth"
    assert infer_reconstructor("view.npz") == "pointmap"
    assert infer_reconstructor([np.zeros((4, 4, 3), np.uint8)]) == "vggt"
    assert infer_reconstructor(PointMap(np.ones((3, 3, 3)))) == "pointmap"
    with pytest.raises(InputError, match="mix"):
        infer_reconstructor(["a.npz", tmp_path / "rgb.png"])
    with pytest.raises(InputError, match="--reconstructor"):
        infer_reconstructor("mesh.obj")
    with pytest.raises(InputError, match="unknown reconstructor"):
        get_reconstructor("colmap")
    assert get_reconstructor(None, "a.npz").name == "pointmap"
    assert get_reconstructor("vggt", weights="nowhere").name == "vggt"  # weights load lazily


def test_depth_reconstructor_unprojects_with_intrinsics(tmp_path):
    depth = np.full((6, 8), 2.0)
    depth[0, 0] = 0.0  # no measurement
    np.save(tmp_path / "d.npy", depth)
    rec = get_reconstructor(None, tmp_path / "d.npy", intrinsics=(100.0, 100.0, 4.0, 3.0))
    (pm,) = rec([tmp_path / "d.npy"])
    assert pm.meta["source"] == "depth" and not pm.mask[0, 0] and pm.mask.sum() == 47
    np.testing.assert_allclose(pm.points[3, 4], [0.0, 0.0, 2.0], atol=1e-6)
    np.testing.assert_allclose(pm.points[3, 6], [2 * 2 / 100, 0.0, 2.0], atol=1e-6)
    (pm2,) = rec([depth])  # arrays in metres work the same
    np.testing.assert_array_equal(pm2.points[pm2.mask], pm.points[pm.mask])
    with pytest.raises(InputError, match="2 depth maps need a camera pose each"):
        rec([depth, depth])  # several views without poses cannot be placed together


def test_pointmap_file_reconstructor_roundtrip(tmp_path):
    from consistent3dgen.io.pointmap_io import save_npz

    pts = (np.random.default_rng(0).normal(size=(5, 7, 3)) + [0, 0, 5]).astype(np.float32)
    save_npz(PointMap(pts), tmp_path / "p.npz")
    (pm,) = get_reconstructor("pointmap")(tmp_path / "p.npz")
    np.testing.assert_array_equal(pm.points, pts)
    with pytest.raises(InputError):
        get_reconstructor("pointmap")([tmp_path / "missing.npz"])


# ---------------------------------------------------------------------------------------- VGGT geometry


@pytest.mark.parametrize("mode,size", [("pad", (60, 90)), ("pad", (120, 80)), ("crop", (60, 90)), ("crop", (90, 40))])
def test_network_maps_come_back_to_input_pixels(mode, size):
    w, h = size
    rgb = _rgba(w, h)[..., :3]
    batch, (geom,) = preprocess_images([rgb], mode=mode)
    back = sample_to_original(batch[0].permute(1, 2, 0), geom, mode="bilinear").numpy() * 255
    # Smooth gradient: bicubic resize + bilinear sampling back stays within a few grey levels, on the input
    # pixels that are inside the network image (crop mode cuts rows off).
    gx, gy = original_pixel_grid(geom)
    seen = (gy > 1) & (gy < geom.net_h - 2) & (gx > 1) & (gx < geom.net_w - 2)
    assert seen.sum() > 0.5 * w * h
    assert np.abs(back[seen] - rgb[seen]).max() < 4.0
    if not seen[1:-1, 1:-1].all():
        return  # cropped rows: the plane check below needs every pixel
    # Geometry: a tilted plane seen by the network camera, resampled and unprojected in input pixels,
    # stays on the plane (checks intrinsics_to_original against sample_to_original).
    k_net = np.array([[400.0, 0, geom.net_w / 2], [0, 420.0, geom.net_h / 2], [0, 0, 1]])
    normal, offset = np.array([0.2, -0.1, 1.0]), 3.0
    vv, uu = np.mgrid[0:geom.net_h, 0:geom.net_w]
    rays = np.stack([uu, vv, np.ones_like(uu)], -1) @ np.linalg.inv(k_net).T
    depth_net = offset / (rays @ normal)
    depth = sample_to_original(torch.from_numpy(depth_net), geom, mode="bilinear").numpy()
    k = intrinsics_to_original(k_net, geom)
    vo, uo = np.mgrid[0:h, 0:w]
    pts = np.stack([uo, vo, np.ones_like(uo)], -1) @ np.linalg.inv(k).T * depth[..., None]
    residual = np.abs(pts @ normal - offset)
    assert residual.max() < 2e-3 * offset


def test_points_of_all_views_land_in_the_first_camera_frame():
    rng = np.random.default_rng(1)
    extr = []
    for _ in range(3):
        q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
        q *= np.sign(np.linalg.det(q))
        extr.append(np.concatenate([q, rng.normal(size=(3, 1))], 1))
    extr = np.stack(extr)
    to_ref = reference_from_camera(extr)
    world = rng.normal(size=(10, 3))
    expected = world @ extr[0, :, :3].T + extr[0, :, 3]
    for i in range(3):
        cam_i = world @ extr[i, :, :3].T + extr[i, :, 3]
        np.testing.assert_allclose(transform_points(cam_i, to_ref[i]), expected, atol=1e-5)
    np.testing.assert_allclose(to_ref[0], np.eye(4), atol=1e-12)


def test_background_mask_keeps_enclosed_object_regions():
    rgb = np.full((40, 40, 3), 255, np.uint8)
    rgb[10:30, 10:30] = 30  # dark object with a white window inside
    rgb[15:25, 15:25] = 255
    m = object_mask(rgb, None, "auto")
    assert m[20, 20] and m[12, 12] and not m[2, 2]
    assert m.sum() == 400
    alpha = np.zeros((40, 40), np.uint8)
    alpha[5:8, 5:8] = 200
    assert object_mask(rgb, alpha, "auto").sum() == 9
    assert object_mask(rgb, alpha, "none").all()
    with pytest.raises(InputError):
        object_mask(rgb, None, "alpha")
    noisy = np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8)
    with pytest.raises(InputError, match="not a uniform white or black"):  # never the whole frame silently
        object_mask(noisy, None, "auto")


# ------------------------------------------------------------------------------------- VGGT end to end


@pytest.fixture(scope="module")
def tiny_model(tiny_config):
    model = random_vggt(tiny_config, seed=2, enable_track=False)
    # Random weights can give a zero field of view (relu); fix it at 4 x 0.2 = 0.8 rad like a real camera.
    with torch.no_grad():
        model.camera_head.pose_branch.fc2.weight[7:] = 0
        model.camera_head.pose_branch.fc2.bias[7:] = 0.2
    return model


def test_vggt_reconstructor_two_views(tiny_model, tmp_path):
    a, b = _rgba(60, 90), _rgba(120, 80)
    Image.fromarray(a).save(tmp_path / "a.png")
    rec = VGGTReconstructor(model=tiny_model, conf_percentile=0)  # every object pixel (the filter: below)
    pms = rec([tmp_path / "a.png", b])
    assert [pm.shape for pm in pms] == [(90, 60), (80, 120)]
    for pm, src in zip(pms, (a, b), strict=True):
        assert pm.meta["source"] == "vggt"
        assert not (pm.mask & ~(src[..., 3] > 0)).any()  # mask within alpha > 0
        assert pm.mask.sum() > 0.9 * (src[..., 3] > 0).sum()
        assert np.isfinite(pm.points[pm.mask]).all() and np.isnan(pm.points[~pm.mask]).all()
        assert pm.intrinsics[0, 0] > 0 and pm.intrinsics[1, 1] > 0
        assert (pm.conf >= 1).all()  # expp1 confidence
        assert pm.image[0, 0].tolist() == [255, 255, 255]  # transparent corner composited on white
    np.testing.assert_allclose(pms[0].cam_to_world, np.eye(4), atol=1e-5)
    # View 0 is in its own camera frame: K projects every point back onto its own pixel.
    pm = pms[0]
    v, u = np.nonzero(pm.mask)
    p = pm.points[v, u].astype(np.float64)
    proj = p @ pm.intrinsics.T
    np.testing.assert_allclose(proj[:, 0] / proj[:, 2], u, atol=1e-3)
    np.testing.assert_allclose(proj[:, 1] / proj[:, 2], v, atol=1e-3)
    # View 1's points are in its own camera too (cam_to_world takes them to the first camera's frame).
    pm1 = pms[1]
    v, u = np.nonzero(pm1.mask)
    proj = pm1.points[pm1.mask].astype(np.float64) @ pm1.intrinsics.T
    np.testing.assert_allclose(proj[:, 0] / proj[:, 2], u, atol=2e-2)
    assert pm1.cam_to_world.shape == (4, 4)
    np.testing.assert_allclose(pm1.cam_to_world[:3, :3].T @ pm1.cam_to_world[:3, :3], np.eye(3), atol=1e-9)


def test_vggt_reconstructor_options(tiny_model):
    img = _rgba(50, 50)
    base = VGGTReconstructor(model=tiny_model, conf_percentile=0)([img])[0]
    filtered = VGGTReconstructor(model=tiny_model)([img])[0]  # default: the demo's 50th percentile
    assert filtered.mask.sum() < base.mask.sum() and not (filtered.mask & ~base.mask).any()
    assert filtered.meta["conf_percentile"] == 50 and base.meta["conf_percentile"] == 0
    head = VGGTReconstructor(model=tiny_model, points_from="point_head")([img])[0]
    assert head.meta["points_from"] == "point_head" and np.isfinite(head.points[head.mask]).all()
    # Same input twice (S=2) must not change view 0 shapes / masks.
    two = VGGTReconstructor(model=tiny_model, conf_percentile=0)([img, img])
    assert np.array_equal(two[0].mask, base.mask)
    # Crop mode: a tall image loses its top and bottom rows, which must not be in the mask.
    tall = _rgba(40, 100)
    tall[..., 3] = 255
    cropped = VGGTReconstructor(model=tiny_model, mode="crop", mask="none", conf_percentile=0)([tall])[0]
    rows = cropped.mask.any(axis=1)
    assert not rows[0] and not rows[-1] and rows[50] and cropped.mask[50].all()
    with pytest.raises(InputError):
        VGGTReconstructor(model=tiny_model, points_from="rays")
    with pytest.raises(InputError, match="not found"):
        VGGTReconstructor(model=tiny_model)(["/nonexistent/image.png"])


def test_vggt_inputs_as_path_pil_or_array_agree(tiny_model, tmp_path):
    a = _rgba(40, 30)
    Image.fromarray(a).save(tmp_path / "a.png")
    rec = VGGTReconstructor(model=tiny_model)
    (ref,) = rec([a])
    for src in (tmp_path / "a.png", Image.fromarray(a), a.astype(np.float32) / 255):
        (pm,) = rec([src])
        np.testing.assert_array_equal(pm.mask, ref.mask)
        np.testing.assert_array_equal(pm.points, ref.points)
        np.testing.assert_array_equal(pm.image, ref.image)


def test_degenerate_camera_is_reported(tiny_model, tiny_config):
    broken = random_vggt(tiny_config, seed=2, enable_track=False)
    with torch.no_grad():
        broken.camera_head.pose_branch.fc2.weight[7:] = 0
        broken.camera_head.pose_branch.fc2.bias[7:] = -1.0  # relu -> fov 0 -> infinite focal length
    with pytest.raises(InputError, match="degenerate camera"):
        VGGTReconstructor(model=broken)([_rgba(30, 30)])
