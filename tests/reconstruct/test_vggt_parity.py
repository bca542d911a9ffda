"""Numerical parity with fixtures recorded from the official VGGT code (commit 44b3afb), tiny configs, float32.

Tolerances: the fixture README measured at most ~5e-6 between correct float32 paths (threads, fused vs explicit
attention, float64 reruns). Modules are checked at atol 1e-4 (+ rtol 1e-4 where values reach ~1e2); the pure
functions (activations, preprocessing) are expected to be exact or within float32 rounding.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from consistent3dgen.reconstruct.vggt.aggregator import Aggregator
from consistent3dgen.reconstruct.vggt.heads import (
    CameraHead,
    DPTHead,
    activate_head,
    activate_pose,
    create_uv_grid,
    inverse_log_transform,
    position_grid_to_embed,
)
from consistent3dgen.reconstruct.vggt.layers import PositionGetter, RotaryPositionEmbedding2D
from consistent3dgen.reconstruct.vggt.pose_encoding import extri_intri_to_pose_encoding, pose_encoding_to_extri_intri
from consistent3dgen.reconstruct.vggt.preprocess import preprocess_images

MODULE_ATOL = 1e-4


def split(tensors: dict[str, torch.Tensor]) -> tuple[dict, dict, dict]:
    weights = {k: v for k, v in tensors.items() if not k.startswith(("input.", "output."))}
    inputs = {k[len("input."):]: v for k, v in tensors.items() if k.startswith("input.")}
    outputs = {k[len("output."):]: v for k, v in tensors.items() if k.startswith("output.")}
    return weights, inputs, outputs


def listed(d: dict, prefix: str) -> list[torch.Tensor]:
    n = len([k for k in d if k.startswith(prefix + ".")])
    return [d[f"{prefix}.{i}"] for i in range(n)]


def assert_close(actual: torch.Tensor, expected: torch.Tensor, atol: float, rtol: float = 0.0) -> None:
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    torch.testing.assert_close(actual, expected, atol=atol, rtol=rtol)


def test_aggregator_conv_tiny_matches_official(vggt_fixture):
    t, meta = vggt_fixture("aggregator_conv_tiny")
    weights, inputs, outputs = split(t)
    args = meta["module"]["constructor_args"]
    agg = Aggregator(img_size=args["img_size"], patch_size=args["patch_size"], embed_dim=args["embed_dim"],
                     depth=args["depth"], num_heads=args["num_heads"], patch_embed=args["patch_embed"]).eval()
    agg.load_state_dict(weights, strict=True)
    assert list(agg.state_dict()) == list(meta["state_dict"]["entries_in_order"])
    with torch.no_grad():
        tokens, start = agg(inputs["images"])
    assert start == int(outputs["patch_start_idx"])
    expected = listed(outputs, "aggregated_tokens")
    assert len(tokens) == len(expected)
    for got, want in zip(tokens, expected, strict=True):
        assert_close(got, want, atol=MODULE_ATOL)


def test_dpt_head_points_tiny_matches_official(vggt_fixture):
    t, meta = vggt_fixture("dpt_head_points_tiny")
    weights, inputs, outputs = split(t)
    a = meta["module"]["constructor_args"]
    head = DPTHead(a["dim_in"], output_dim=a["output_dim"], activation=a["activation"],
                   conf_activation=a["conf_activation"], features=a["features"], out_channels=a["out_channels"],
                   intermediate_layer_idx=a["intermediate_layer_idx"], pos_embed=a["pos_embed"]).eval()
    head.load_state_dict(weights, strict=True)
    tokens = listed(inputs, "aggregated_tokens")
    with torch.no_grad():
        preds, conf = head(tokens, inputs["images"], int(inputs["patch_start_idx"]))
    assert_close(preds, outputs["preds"], atol=MODULE_ATOL, rtol=1e-4)
    assert_close(conf, outputs["conf"], atol=MODULE_ATOL, rtol=1e-4)
    # The skip connection must add ReLU(x) (upstream's in-place ReLU); the inputs must not be mutated.
    assert torch.equal(tokens[0], inputs["aggregated_tokens.0"])


def test_camera_head_tiny_matches_official(vggt_fixture):
    t, meta = vggt_fixture("camera_head_tiny")
    weights, inputs, outputs = split(t)
    a = meta["module"]["constructor_args"]
    head = CameraHead(a["dim_in"], trunk_depth=a["trunk_depth"], num_heads=a["num_heads"]).eval()
    head.load_state_dict(weights, strict=True)
    with torch.no_grad():
        poses = head(listed(inputs, "aggregated_tokens"), num_iterations=4)
    expected = listed(outputs, "pose_enc_list")
    assert len(poses) == len(expected) == 4
    for got, want in zip(poses, expected, strict=True):
        assert_close(got, want, atol=MODULE_ATOL)
        assert (got[..., 7:] >= 0).all()


def test_pose_encoding_conversions_match_official(vggt_fixture):
    t, _ = vggt_fixture("pose_encoding")
    _, inputs, outputs = split(t)
    extr, intr = pose_encoding_to_extri_intri(inputs["pose_encoding"], image_size_hw=(70, 98))
    assert_close(extr, outputs["extrinsics"], atol=1e-6, rtol=1e-6)
    assert_close(intr, outputs["intrinsics"], atol=1e-5, rtol=1e-6)
    back = extri_intri_to_pose_encoding(extr, intr, image_size_hw=(70, 98))
    assert_close(back, outputs["roundtrip_pose_encoding"], atol=1e-6, rtol=1e-6)
    extr2, none = pose_encoding_to_extri_intri(inputs["pose_encoding"], build_intrinsics=False)
    assert none is None and torch.equal(extr2, extr)


def test_rope2d_matches_official(vggt_fixture):
    t, _ = vggt_fixture("rope2d")
    _, inputs, outputs = split(t)
    assert torch.equal(PositionGetter()(2, 3, 4, device="cpu"), outputs["position_getter_2x3x4"])
    for freq in (100, 10):
        got = RotaryPositionEmbedding2D(freq)(inputs["standalone.tokens"], inputs["standalone.positions"])
        assert_close(got, outputs[f"standalone.rotated_freq{freq}"], atol=1e-6)
    rope = RotaryPositionEmbedding2D(100)
    for where in ("aggregator_frame_block0", "aggregator_global_block0"):
        got = rope(inputs[f"{where}.q"], inputs[f"{where}.positions"])
        assert_close(got, outputs[f"{where}.q_rotated"], atol=1e-6)


def test_activations_match_official(vggt_fixture):
    t, _ = vggt_fixture("activations")
    _, inputs, outputs = split(t)
    v = inputs["vector"]
    assert_close(inverse_log_transform(v), outputs["vector.inv_log"], atol=0, rtol=1e-6)
    both = torch.stack([v, v])[None, :, None, :]
    vals, conf = activate_head(both, activation="exp", conf_activation="expp1")
    assert_close(vals.reshape(-1), outputs["vector.exp"], atol=0, rtol=1e-6)
    assert_close(conf.reshape(-1), outputs["vector.expp1"], atol=0, rtol=1e-6)
    pts, pconf = activate_head(inputs["map_points"], activation="inv_log", conf_activation="expp1")
    assert_close(pts, outputs["map_points.pts3d"], atol=0, rtol=1e-6)
    assert_close(pconf, outputs["map_points.conf"], atol=0, rtol=1e-6)
    dep, dconf = activate_head(inputs["map_depth"], activation="exp", conf_activation="expp1")
    assert_close(dep, outputs["map_depth.depth"], atol=0, rtol=1e-6)
    assert_close(dconf, outputs["map_depth.conf"], atol=0, rtol=1e-6)
    pose = activate_pose(inputs["pose_raw"], "linear", "linear", "relu")
    assert_close(pose, outputs["pose_raw.activated"], atol=0, rtol=1e-6)


def test_dpt_positional_helpers_match_official(vggt_fixture):
    t, meta = vggt_fixture("dpt_pos_embed")
    _, inputs, outputs = split(t)
    grids = {k: v for k, v in outputs.items() if "uv" in k}
    embeds = {k: v for k, v in outputs.items() if "embed" in k and "uv" not in k}
    assert grids and embeds, sorted(outputs)
    for want in grids.values():
        h, w = want.shape[:2]
        got = create_uv_grid(w, h, aspect_ratio=98 / 70, dtype=torch.float32)
        assert_close(got, want, atol=1e-7)
    for want in embeds.values():
        h, w = want.shape[:2]
        grid = create_uv_grid(w, h, aspect_ratio=98 / 70, dtype=torch.float32)
        assert_close(position_grid_to_embed(grid, want.shape[-1], omega_0=100), want, atol=1e-6)


@pytest.mark.parametrize("mode", ["pad", "crop"])
def test_preprocessing_matches_official_load_fn(mode, tmp_path, vggt_fixture):
    t, _ = vggt_fixture(f"load_fn_{mode}")
    _, inputs, outputs = split(t)
    paths = []
    for name in ("png_rgba_portrait_60x90", "png_rgb_landscape_120x80"):
        p = tmp_path / f"{name}.png"
        p.write_bytes(inputs[name].numpy().tobytes())
        paths.append(p)
    images, geoms = preprocess_images(paths, mode=mode)
    expected = outputs["images_u8"].to(torch.float32) / 255
    assert torch.equal(images, expected)
    if mode == "pad":
        assert (geoms[0].resized_w, geoms[0].resized_h) == (350, 518)
        assert (geoms[1].resized_w, geoms[1].resized_h) == (518, 350)
        single, _ = preprocess_images([paths[0]], mode=mode)
        assert torch.equal(single[0], expected[0])
    else:
        single, _ = preprocess_images([paths[1]], mode=mode)
        assert single.shape == (1, 3, 350, 518)
        assert torch.equal(single[0], expected[1, :, 84:434])
    # Bytes in memory (PIL / arrays) give the same as files.
    from PIL import Image

    pil = [Image.open(io.BytesIO(inputs["png_rgba_portrait_60x90"].numpy().tobytes()))]
    arr, _ = preprocess_images([np.asarray(pil[0])], mode=mode)
    assert torch.equal(arr[0], expected[0])
