"""A photo without alpha through the command line: a bundled render composited on a busy, noisy background,
saved as RGB, a tiny random VGGT in the official folder layout (model.safetensors + config.json), the bundled
mini prior. Refused in one line without a mask or segmenter; with ``--mask`` a mesh comes out."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from consistent3dgen.cli import build_parser, main, read_views, surface_drop_percent
from consistent3dgen.errors import InputError
from consistent3dgen.reconstruct import segment
from consistent3dgen.reconstruct.vggt.pretrained import random_vggt

EXAMPLES = Path(__file__).resolve().parents[2] / "src" / "consistent3dgen" / "examples"


@pytest.fixture(scope="module")
def vggt_dir(tmp_path_factory, tiny_config) -> Path:
    """A tiny random VGGT as the official files: depth 2 and confidence 2 everywhere (a flat seen side; random
    depths would leave too few pixels for a surface), a 0.8 rad field of view."""
    model = random_vggt(tiny_config, seed=2, enable_track=False)
    with torch.no_grad():
        model.camera_head.pose_branch.fc2.weight[7:] = 0
        model.camera_head.pose_branch.fc2.bias[7:] = 0.2
        last = model.depth_head.scratch.output_conv2[2]
        last.weight.zero_()
        last.bias.copy_(torch.tensor([math.log(2.0), 0.0]))  # exp → depth 2; 1 + exp(0) → confidence 2
    folder = tmp_path_factory.mktemp("vggt_tiny")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(tiny_config.to_dict()))
    return folder


@pytest.fixture(scope="module")
def photo(tmp_path_factory) -> dict[str, Path]:
    """spot (a bundled render) on uniform noise + blotches, as an RGB PNG; its alpha as the mask PNG."""
    d = tmp_path_factory.mktemp("photo")
    rgba = np.asarray(Image.open(EXAMPLES / "spot_rgba.png").convert("RGBA"))
    rng = np.random.default_rng(0)
    h, w = rgba.shape[:2]
    background = rng.integers(0, 256, (h, w, 3)).astype(np.float64)
    yy, xx = np.mgrid[0:h, 0:w]
    for _ in range(12):  # busy: coloured blotches over the noise
        cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(5, 25)
        background[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = rng.integers(0, 256, 3)
    a = rgba[..., 3:] / 255.0
    rgb = (rgba[..., :3] * a + background * (1 - a)).round().astype(np.uint8)
    Image.fromarray(rgb).save(d / "spot_photo.png")
    Image.fromarray(rgba[..., 3]).save(d / "spot_mask.png")
    white = (rgba[..., :3] * a + 255 * (1 - a)).round().astype(np.uint8)
    Image.fromarray(white).save(d / "spot_white.png")
    return {"photo": d / "spot_photo.png", "mask": d / "spot_mask.png", "white": d / "spot_white.png",
            "alpha": rgba[..., 3]}


def _args(*argv):
    return build_parser().parse_args(["generate", *map(str, argv), "--out", "unused.glb"])


def test_photo_with_mask_through_generate_gives_a_mesh(tmp_path, vggt_dir, photo, capsys, no_models_around):
    out = tmp_path / "spot.obj"
    code = main(["generate", str(photo["photo"]), "--mask", str(photo["mask"]), "--vggt-weights", str(vggt_dir),
                 "--out", str(out), "--quiet"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    import trimesh

    mesh = trimesh.load(out, force="mesh")
    assert len(mesh.faces) > 100 and np.isfinite(mesh.vertices).all()
    assert "wrote" in captured.out and "silhouette IoU" in captured.out


def test_photo_without_mask_or_segmenter_is_refused_in_one_line(tmp_path, vggt_dir, photo, capsys, monkeypatch,
                                                                no_models_around):
    import consistent3dgen.reconstruct.vggt.pretrained as pretrained

    def never(*a, **k):
        raise AssertionError("VGGT loaded before the mask was refused")

    monkeypatch.setattr(pretrained, "load_vggt", never)
    out = tmp_path / "spot.obj"
    code = main(["generate", str(photo["photo"]), "--vggt-weights", str(vggt_dir), "--out", str(out), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error: ") and "\n" not in err, err
    assert str(photo["photo"]) in err and "--mask" in err and "RGBA" in err and "--birefnet-weights" in err
    assert not out.exists()


def test_segmenter_and_mask_options_reach_the_reconstructor(vggt_dir, photo, monkeypatch, no_models_around):
    alpha = photo["alpha"]
    (pm,) = read_views(_args(photo["photo"], "--mask", photo["mask"], "--vggt-weights", vggt_dir))
    np.testing.assert_array_equal(pm.meta["condition_rgba"][..., 3], alpha)
    # the mask's pixels, less those below the median confidence of the whole frame (the default filter)
    np.testing.assert_array_equal(pm.mask, (alpha > 0) & (pm.conf >= np.percentile(pm.conf, 50)))
    assert pm.mask.sum() > 0.99 * (alpha > 0).sum()  # (nearly constant confidence)
    # a registered segmenter, by name (its matte: object at >= 0.5)
    matte = np.clip(alpha.astype(np.int32) + 60, 0, 255).astype(np.uint8)
    monkeypatch.setitem(segment._REGISTRY, "stand-in", lambda weights, device: lambda rgb: matte)
    (pm,) = read_views(_args(photo["photo"], "--segmenter", "stand-in", "--vggt-weights", vggt_dir,
                             "--conf-percentile", "0"))
    np.testing.assert_array_equal(pm.mask, matte >= segment.SEGMENT_THRESHOLD)
    # a render on white goes through auto (no model around: the uniform background)
    (pm,) = read_views(_args(photo["white"], "--vggt-weights", vggt_dir))
    iou = (pm.mask & (alpha > 0)).sum() / (pm.mask | (alpha > 0)).sum()
    assert iou > 0.95
    # the whole frame only when asked for
    (pm,) = read_views(_args(photo["photo"], "--segmenter", "none", "--vggt-weights", vggt_dir,
                             "--conf-percentile", "0"))
    assert pm.mask.all() and (pm.meta["condition_rgba"][..., 3] == 255).all()
    with pytest.raises(InputError, match="2 masks for 1 images"):
        read_views(_args(photo["photo"], "--mask", photo["mask"], "--mask", photo["mask"], "--vggt-weights",
                            vggt_dir))
    with pytest.raises(InputError, match="unknown segmenter 'magic'"):
        read_views(_args(photo["photo"], "--segmenter", "magic", "--vggt-weights", vggt_dir))


def test_conf_percentile_is_vggts_filter_for_images_and_drop_percent_otherwise(tmp_path, vggt_dir, photo):
    img = _args(photo["photo"], "--mask", photo["mask"], "--vggt-weights", vggt_dir)
    assert img.conf_percentile is None and surface_drop_percent(img) == 0.0
    assert read_views(img)[0].meta["conf_percentile"] == 50  # the VGGT demo's default
    img = _args(photo["photo"], "--mask", photo["mask"], "--vggt-weights", vggt_dir, "--conf-percentile", "0")
    assert surface_drop_percent(img) == 0.0 and read_views(img)[0].meta["conf_percentile"] == 0
    npz = _args(tmp_path / "p.npz", "--drop-percent", "20")  # the old spelling: the same option
    assert npz.conf_percentile == 20 and surface_drop_percent(npz) == 20.0
    assert surface_drop_percent(_args(tmp_path / "p.npz")) == 0.0  # depth / .npz: no filter by default
    for bad in ("100", "-1", "nan"):
        with pytest.raises(InputError, match=r"--conf-percentile \(drop_percent\) must be in \[0, 100\)"):
            surface_drop_percent(_args(photo["photo"], "--conf-percentile", bad))
