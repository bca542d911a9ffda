"""io.images.read_image: modes, path = PIL = array, EXIF orientation, the decompression-bomb guard, one-line errors."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from PIL import Image

from consistent3dgen.errors import InputError
from consistent3dgen.io.images import image_mode, read_depth_png, read_image, split_alpha


def _one_line(excinfo) -> str:
    text = str(excinfo.value)
    assert "\n" not in text
    return text


@pytest.fixture
def rgba() -> np.ndarray:
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (13, 17, 4), dtype=np.uint8)
    img[:3, :, 3] = 0
    return img


def test_modes_become_rgb_or_rgba(tmp_path, rgba):
    rgb, grey = rgba[..., :3], rgba[..., 0]
    pal = Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=8)
    cases = {
        "rgb.png": (Image.fromarray(rgb), {}, 3),
        "rgba.png": (Image.fromarray(rgba), {}, 4),
        "l.png": (Image.fromarray(grey), {}, 3),
        "la.png": (Image.fromarray(np.dstack([grey, rgba[..., 3]]), "LA"), {}, 4),
        "p.png": (pal, {}, 3),
        "p_trns.png": (pal, {"transparency": 2}, 4),
        "rgb_trns.png": (Image.fromarray(rgb), {"transparency": tuple(int(v) for v in rgb[0, 0])}, 4),
        "one.png": (Image.fromarray(grey > 128), {}, 3),
        "i16.png": (Image.fromarray(grey.astype(np.uint16) * 300), {}, 3),
        "cmyk.jpg": (Image.fromarray(rgb).convert("CMYK"), {}, 3),
        "rgba.webp": (Image.fromarray(rgba), {"lossless": True, "exact": True}, 4),
        "rgb.tiff": (Image.fromarray(rgb), {}, 3),
    }
    for name, (img, kw, channels) in cases.items():
        img.save(tmp_path / name, **kw)
        arr = read_image(tmp_path / name)
        assert arr.dtype == np.uint8 and arr.shape == (13, 17, channels), name
    np.testing.assert_array_equal(read_image(tmp_path / "rgba.png"), rgba)
    np.testing.assert_array_equal(read_image(tmp_path / "rgba.webp"), rgba)
    np.testing.assert_array_equal(read_image(tmp_path / "l.png"), np.repeat(grey[..., None], 3, axis=2))
    np.testing.assert_array_equal(read_image(tmp_path / "la.png")[..., 3], rgba[..., 3])
    # a transparent colour (tRNS) is alpha 0 exactly where that colour is
    trns = read_image(tmp_path / "rgb_trns.png")
    np.testing.assert_array_equal(trns[..., 3] == 0, (rgb == rgb[0, 0]).all(axis=2))
    assert read_image(tmp_path / "i16.png").max() == 255  # 16-bit grey clips to 8 bits


def test_path_pil_and_array_agree(tmp_path, rgba):
    Image.fromarray(rgba).save(tmp_path / "a.png")
    from_path = read_image(tmp_path / "a.png")
    with Image.open(tmp_path / "a.png") as im:
        from_pil = read_image(im)
    np.testing.assert_array_equal(from_path, from_pil)
    assert read_image(rgba) is rgba  # arrays are not copied
    grey = rgba[..., 0]
    np.testing.assert_array_equal(read_image(grey), np.repeat(grey[..., None], 3, axis=2))
    np.testing.assert_array_equal(read_image(grey[..., None]), read_image(grey))
    rgb, alpha = split_alpha(from_path)
    np.testing.assert_array_equal(rgb, rgba[..., :3])
    np.testing.assert_array_equal(alpha, rgba[..., 3])
    assert split_alpha(rgb)[1] is None and split_alpha(rgb)[0] is rgb


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_exif_orientation_is_applied(tmp_path, orientation):
    img = np.zeros((10, 20, 3), np.uint8)
    img[:4, :4] = 255  # a white block in the top-left corner of the stored pixels
    pil = Image.fromarray(img)
    exif = pil.getexif()
    exif[0x0112] = orientation
    pil.save(tmp_path / "o.png", exif=exif)
    arr = read_image(tmp_path / "o.png")
    shown = {3: np.rot90(img, 2), 6: np.rot90(img, -1), 8: np.rot90(img, 1)}[orientation]
    np.testing.assert_array_equal(arr, shown)
    with Image.open(tmp_path / "o.png") as im:
        im.load()
        np.testing.assert_array_equal(read_image(im), shown)
        assert im.size == (20, 10)  # the caller's image is left as it was


@pytest.mark.parametrize("limit", [100, 400])  # above 2x the limit PIL raises, between 1x and 2x it warns
def test_decompression_bomb_guard_is_one_line(tmp_path, monkeypatch, limit):
    Image.fromarray(np.zeros((20, 31, 3), np.uint8)).save(tmp_path / "big.png")  # 620 pixels
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", limit)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no DecompressionBombWarning may escape
        with pytest.raises(InputError, match=f"big.png is too large: more than PIL's limit of {limit} pixels") as e:
            read_image(tmp_path / "big.png")
    _one_line(e)


def test_unreadable_files_are_one_line(tmp_path, rgba):
    (tmp_path / "text.png").write_text("not an image\n")
    Image.fromarray(rgba).save(tmp_path / "good.png")
    data = (tmp_path / "good.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    (tmp_path / "empty.jpg").write_bytes(b"")
    for name in ("text.png", "cut.png", "empty.jpg"):
        with pytest.raises(InputError, match=f"cannot read image .*{name}") as e:
            read_image(tmp_path / name)
        _one_line(e)
    with pytest.raises(InputError, match="image not found: .*none.png"):
        read_image(tmp_path / "none.png")
    with pytest.raises(InputError, match="uint8"):
        read_image(np.zeros((4, 4, 3), np.float32))
    with pytest.raises(InputError, match=r"\(4, 4, 2\)"):
        read_image(np.zeros((4, 4, 2), np.uint8))
    with pytest.raises(InputError, match="empty"):
        read_image(np.zeros((0, 4, 3), np.uint8))
    with pytest.raises(InputError, match="unsupported image type"):
        read_image(3)


def test_depth_png_keeps_16_bits(tmp_path):
    depth = np.array([[0, 1, 255], [256, 1000, 65535]], np.uint16)
    Image.fromarray(depth).save(tmp_path / "d.png")
    Image.fromarray(depth.astype(np.uint8)).save(tmp_path / "l.png")
    assert image_mode(tmp_path / "d.png").startswith("I") and image_mode(tmp_path / "l.png") == "L"
    assert image_mode(tmp_path / "missing.png") is None
    out = read_depth_png(tmp_path / "d.png")
    assert out.dtype == np.int64
    np.testing.assert_array_equal(out, depth)
    with pytest.raises(InputError, match="must be single-channel 16-bit .*got L") as e:
        read_depth_png(tmp_path / "l.png")
    _one_line(e)
