"""Object masks for images without alpha (reconstruct/segment.py, BiRefNet loading) and VGGT's confidence filter.

BiRefNet itself cannot be downloaded here: its loading is shown on tiny stand-in code and random weights in the
hub layout (config.json's auto_map naming the code files, model.safetensors), from a folder and from an offline
hub cache; rembg through a stand-in module.
"""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest
import torch
from PIL import Image

from consistent3dgen.errors import InputError, WeightsNotFoundError
from consistent3dgen.generators.direct3d_s2 import conditioner as cm
from consistent3dgen.reconstruct import segment
from consistent3dgen.reconstruct.vggt.reconstructor import VGGTReconstructor

from .conftest import birefnet_files


def _noisy(h: int = 48, w: int = 64, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _disc(h: int = 48, w: int = 64) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    return ((yy - h / 2) ** 2 + (xx - w / 2) ** 2 < (h / 3) ** 2)


class _Fixed(VGGTReconstructor):
    """VGGT with chosen predictions (no model): depth 2 everywhere, confidence = 1 + the column index + 10·view."""

    def __init__(self, **kw):
        kw.setdefault("model", torch.nn.Identity())  # a model given: no VGGT weights are looked for
        super().__init__(**kw)

    def predict(self, images):
        self.predicted = True
        s, _, h, w = images.shape
        cols = torch.arange(w, dtype=torch.float32).view(1, 1, w).expand(s, h, w)
        conf = 1 + cols + 10 * torch.arange(s, dtype=torch.float32).view(s, 1, 1)
        return dict(pose_enc=torch.tensor([[0, 0, 0, 0, 0, 0, 1, 0.9, 0.9]]).float().repeat(s, 1),
                    depth=torch.full((s, h, w, 1), 2.0), depth_conf=conf,
                    world_points=torch.zeros(s, h, w, 3), world_points_conf=conf)


# ----------------------------------------------------------------------------------------------- confidence


def test_default_confidence_filter_is_the_demo_percentile_of_all_pixels_of_all_views():
    rgba = np.dstack([_noisy(), np.where(_disc(), 255, 0).astype(np.uint8)])
    pms = _Fixed()([rgba, rgba])  # default: 50
    pooled = np.concatenate([pm.conf.ravel() for pm in pms])  # every pixel of both views, background included
    threshold = np.percentile(pooled, 50)
    for pm in pms:
        np.testing.assert_array_equal(pm.mask, _disc() & (pm.conf >= threshold))
    # one threshold for both views: view 1 (confidence + 10) keeps more than view 0, and less than its whole disc
    assert not (pms[0].mask & ~pms[1].mask).any() and pms[0].mask.sum() < pms[1].mask.sum() < _disc().sum()
    # percentiles of the object's pixels alone (the other reading) would keep a different set
    obj = np.concatenate([pm.conf[_disc()] for pm in pms])
    assert np.percentile(obj, 50) != threshold
    kept = _Fixed(conf_percentile=0)([rgba])[0]  # 0 disables
    np.testing.assert_array_equal(kept.mask, _disc())
    with pytest.raises(InputError, match="conf_percentile"):
        VGGTReconstructor(conf_percentile=100)


# ----------------------------------------------------------------------------------------------- masks


def test_rgb_on_a_busy_background_without_mask_or_segmenter_is_refused_before_vggt(no_models_around):
    rec = _Fixed()
    with pytest.raises(InputError) as e:
        rec([_noisy()])
    msg = str(e.value)
    assert "\n" not in msg and "image 0" in msg and "--mask" in msg and "RGBA" in msg and "BiRefNet" in msg
    assert not hasattr(rec, "predicted")  # refused before VGGT ran
    with pytest.raises(InputError, match="no alpha channel and no mask"):
        _Fixed(segmenter=None)([_noisy()])
    with pytest.raises(InputError, match="unknown segmenter 'bogus'"):
        VGGTReconstructor(segmenter="bogus")


def test_a_given_mask_goes_through_and_reaches_the_condition_image(tmp_path, no_models_around):
    photo = _noisy()
    soft = np.where(_disc(), 200, 0).astype(np.uint8)
    soft[0, 0] = 3  # a faint value the user gave: still object (non-zero)
    Image.fromarray(soft).save(tmp_path / "m.png")
    (pm,) = _Fixed(masks=[tmp_path / "m.png"], conf_percentile=0)([photo])
    np.testing.assert_array_equal(pm.mask, soft > 0)
    rgba = pm.meta["condition_rgba"]
    np.testing.assert_array_equal(rgba[..., :3], photo)  # the photo itself, not composited
    np.testing.assert_array_equal(rgba[..., 3], soft)
    np.testing.assert_array_equal(pm.image, photo)  # VGGT saw the photo with its background
    with pytest.raises(InputError, match="2 masks for 1 images"):
        _Fixed(masks=[soft, soft])([photo])
    with pytest.raises(InputError, match="64x48"):
        _Fixed(masks=[soft[:10]])([photo])


def test_a_registered_segmenter_soft_alpha(monkeypatch, no_models_around):
    soft = (np.linspace(0, 255, 64)[None, :].repeat(48, 0)).astype(np.uint8)
    calls = []

    def factory(weights, device):
        calls.append((weights, device))
        return lambda rgb: soft

    monkeypatch.setitem(segment._REGISTRY, "fake", factory)
    (pm,) = _Fixed(segmenter="fake", segmenter_weights="w", conf_percentile=0)([_noisy()])
    np.testing.assert_array_equal(pm.mask, soft >= segment.SEGMENT_THRESHOLD)  # a matte: object at ≥ 0.5
    np.testing.assert_array_equal(pm.meta["condition_rgba"][..., 3], soft)  # the conditioner gets it soft
    assert calls == [("w", "cpu")]
    monkeypatch.setitem(segment._REGISTRY, "broken", lambda w, d: lambda rgb: soft[:5])
    with pytest.raises(InputError, match="segmenter .* returned a uint8 \\(5, 64\\) mask"):
        _Fixed(segmenter="broken")([_noisy()])
    # a callable is used as is, an image with alpha never reaches it
    (pm,) = _Fixed(segmenter=lambda rgb: pytest.fail("segmenter called"), conf_percentile=0)(
        [np.dstack([_noisy(), np.where(_disc(), 255, 0).astype(np.uint8)])])
    np.testing.assert_array_equal(pm.mask, _disc())


def test_builtin_segmenters():
    white = np.full((40, 50, 3), 255, np.uint8)
    white[10:30, 10:40] = 40
    assert (segment.get_segmenter("background")(white) > 0).sum() == 600
    black = 255 - white
    assert (segment.get_segmenter("background")(black) > 0).sum() == 600
    with pytest.raises(InputError, match="not a uniform white or black"):
        segment.get_segmenter("background")(_noisy())
    assert (segment.get_segmenter("none")(_noisy()) == 255).all()
    assert segment.get_segmenter(None) is None
    with pytest.raises(InputError, match="unknown segmenter"):
        segment.get_segmenter("bogus")


def test_auto_uses_a_uniform_background_when_no_model_is_found(no_models_around):
    white = np.full((48, 64, 3), 255, np.uint8)
    white[_disc()] = (200, 30, 30)
    auto = segment.get_segmenter("auto")
    assert auto.chosen == "background" and "ZhengPeng7/BiRefNet" in auto.why_not[0]
    np.testing.assert_array_equal(auto(white) > 0, _disc())
    with pytest.raises(WeightsNotFoundError, match="nowhere"):  # a folder the user names must be there
        segment.get_segmenter("auto", weights="/nowhere/birefnet")


# ----------------------------------------------------------------------------------------------- BiRefNet


def _reference_alpha(rgb: np.ndarray, files: dict) -> np.ndarray:
    """The official utils/rembg.py steps, on the stand-in network written out by hand."""
    from safetensors.torch import load

    sd = load(files["model.safetensors"])
    h, w = rgb.shape[:2]
    x = np.asarray(Image.fromarray(rgb).resize((1024, 1024), Image.BILINEAR), np.float32) / 255
    x = torch.from_numpy(x).permute(2, 0, 1)[None]
    x = (x - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor([0.229, 0.224, 0.225]).view(
        1, 3, 1, 1)
    pred = (torch.nn.functional.conv2d(x, sd["conv.weight"], sd["conv.bias"], padding=1) * sd["scale"]).sigmoid()
    return np.asarray(Image.fromarray((pred[0, 0].numpy() * 255).astype(np.uint8)).resize((w, h)))


def test_birefnet_from_a_local_folder(birefnet_dir):
    seg = cm.BiRefNetSegmenter(birefnet_dir)
    assert seg.model.scale.item() == 3.0  # the weights, not the initialisation
    rgb = _noisy(30, 41)
    alpha = seg(rgb)
    assert alpha.shape == (30, 41) and alpha.dtype == np.uint8
    np.testing.assert_array_equal(alpha, _reference_alpha(rgb, birefnet_files()))
    assert segment.get_segmenter("birefnet", weights=birefnet_dir)(rgb).shape == (30, 41)


def test_birefnet_from_the_offline_hub_cache_and_auto_picks_it(tmp_path, monkeypatch, hub_cache, offline_hub):
    from huggingface_hub import constants

    cache = hub_cache(tmp_path / "cache", cm.DEFAULT_BIREFNET, birefnet_files())
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    folder = cm.find_birefnet()
    assert folder.parent.name == "snapshots" or folder.parent.parent.name == "snapshots"
    auto = segment.get_segmenter("auto")
    assert auto.chosen == "birefnet"
    rgb = _noisy(20, 20)
    np.testing.assert_array_equal(auto(rgb), _reference_alpha(rgb, birefnet_files()))


def test_birefnet_errors_are_one_line(tmp_path, birefnet_dir, no_models_around):
    with pytest.raises(WeightsNotFoundError, match="ZhengPeng7/BiRefNet/config.json is not in the local hub cache"):
        cm.BiRefNetSegmenter()
    (birefnet_dir / "model.safetensors").unlink()
    with pytest.raises(WeightsNotFoundError, match="model.safetensors or pytorch_model.bin"):
        cm.BiRefNetSegmenter(birefnet_dir)
    # code that needs a package this machine lacks
    bad = tmp_path / "needs_pkg"
    bad.mkdir()
    for name, data in birefnet_files().items():
        (bad / name).write_bytes(data)
    (bad / "birefnet.py").write_text("import no_such_package_c3dg\n")
    with pytest.raises(InputError, match="needs the Python package 'no_such_package_c3dg'") as e:
        cm.BiRefNetSegmenter(bad)
    assert "\n" not in str(e.value)
    (bad / "config.json").write_text('{"auto_map": {"AutoModelForImageSegmentation": "other--repo.birefnet.X"}}')
    with pytest.raises(InputError, match="auto_map"):
        cm.BiRefNetSegmenter(bad)


# ----------------------------------------------------------------------------------------------- rembg


def test_rembg_only_with_its_model_file_on_disk(tmp_path, monkeypatch, no_models_around):
    fake = types.ModuleType("rembg")
    fake.__spec__ = __import__("importlib.machinery").machinery.ModuleSpec("rembg", None)
    fake.new_session = lambda model: ("session", model)
    fake.remove = lambda img, session, only_mask: Image.fromarray(np.asarray(img)[..., 0])
    monkeypatch.setitem(sys.modules, "rembg", fake)
    with pytest.raises(WeightsNotFoundError, match="u2net.onnx"):
        segment.get_segmenter("rembg")
    assert segment.get_segmenter("auto").chosen == "background"
    home = tmp_path / "u2net"
    home.mkdir()
    (home / "u2net.onnx").write_bytes(b"onnx")
    monkeypatch.setenv("U2NET_HOME", str(home))
    rgb = _noisy()
    np.testing.assert_array_equal(segment.get_segmenter("rembg")(rgb), rgb[..., 0])
    auto = segment.get_segmenter("auto")
    assert auto.chosen == "rembg"
    np.testing.assert_array_equal(auto(rgb), rgb[..., 0])
