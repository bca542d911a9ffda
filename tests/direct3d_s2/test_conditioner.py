"""DINOv2 conditioner: official preprocessing properties, pre-norm tokens, clear errors (tiny random DINOv2)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from consistent3dgen.errors import InputError, WeightsNotFoundError
from consistent3dgen.generators.direct3d_s2 import conditioner as cm

# tiny model at 126 px (9×9 patches) keeps the test fast; the preprocessing tests use the real 518
SIZE = 126
transformers = pytest.importorskip("transformers", reason="the DINOv2 conditioner needs transformers")


@pytest.fixture(scope="module")
def tiny_dino():
    cfg = transformers.Dinov2WithRegistersConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        patch_size=14,
        image_size=SIZE,
        num_register_tokens=4,
    )
    torch.manual_seed(0)
    return transformers.Dinov2WithRegistersModel(cfg).eval()


def _rgba_square(h=120, w=200, box=(30, 50, 80, 150), color=(255, 0, 0)) -> np.ndarray:
    img = np.zeros((h, w, 4), np.uint8)
    r0, c0, r1, c1 = box
    img[r0:r1, c0:c1, :3] = color
    img[r0:r1, c0:c1, 3] = 255
    return img


def test_preprocess_crops_centres_pads_on_white():
    out = cm.preprocess_image(_rgba_square())  # 50×100 foreground box
    assert out.shape == (4, 518, 518) and out.dtype == torch.float32
    rgb, mask = out[:3], out[3]
    # box 50 high × 100 wide → padded to 100×100: 25 rows above/below; then 16/550 extra border
    border = 16 * 518 / 550
    inner = 518 - 2 * border
    rows = torch.nonzero(mask.any(1)).flatten()
    cols = torch.nonzero(mask.any(0)).flatten()
    assert abs(cols.min().item() - border) <= 1.5 and abs(cols.max().item() + 1 - (518 - border)) <= 1.5
    assert abs(rows.min().item() - (border + inner * 0.25)) <= 1.5
    assert abs(rows.max().item() + 1 - (border + inner * 0.75)) <= 1.5
    assert torch.all(rgb[:, 0, 0] == 1.0) and torch.all(rgb[:, 259, 0] == 1.0)  # white outside
    assert torch.allclose(rgb[:, 259, 259], torch.tensor([1.0, 0.0, 0.0]))  # object colour inside


def test_preprocess_composites_alpha_on_white():
    img = _rgba_square(color=(0, 0, 0))
    img[..., 3][img[..., 3] > 0] = 128  # half-transparent black → grey
    out = cm.preprocess_image(img)
    assert abs(out[0, 259, 259].item() - 127 / 255) < 1 / 255 + 1e-6
    assert abs(out[3, 259, 259].item() - 128 / 255) < 1e-6


def test_tiny_foreground_keeps_whole_image():
    img = np.zeros((100, 100, 4), np.uint8)
    img[..., :3] = 255
    img[50, 50] = (0, 0, 0, 255)  # 1 pixel < 0.1 % of 10 000
    out = cm.preprocess_image(img)
    assert out[3].sum() > 0 and out[3].mean() < 0.01


def test_rgb_without_segmenter_is_a_clear_error():
    with pytest.raises(InputError, match="no alpha channel"):
        cm.preprocess_image(np.zeros((20, 20, 3), np.uint8))


def test_rgb_with_segmenter_uses_its_mask():
    rgb = np.full((60, 60, 3), 200, np.uint8)

    def seg(a):
        m = np.zeros(a.shape[:2], np.uint8)
        m[10:30, 20:40] = 255
        return m

    out = cm.preprocess_image(rgb, segmenter=seg)
    assert out[3].float().mean() > 0.5  # the 20×20 box fills the frame after the crop


def test_paths_pil_images_and_arrays_agree(tmp_path):
    from PIL import Image

    img = _rgba_square()
    Image.fromarray(img).save(tmp_path / "a.png")
    ref = cm.preprocess_image(img)
    assert torch.equal(cm.preprocess_image(tmp_path / "a.png"), ref)
    assert torch.equal(cm.preprocess_image(Image.fromarray(img)), ref)
    Image.fromarray(img).convert("LA").save(tmp_path / "la.png")  # grey + alpha → RGBA
    assert cm.to_rgba(tmp_path / "la.png").shape == (120, 200, 4)


def test_bad_inputs(tmp_path):
    with pytest.raises(InputError, match="image not found"):
        cm.preprocess_image(tmp_path / "none.png")
    with pytest.raises(InputError, match="uint8"):
        cm.preprocess_image(np.zeros((5, 5, 4), np.float32))


def test_tokens_are_layer_normed_prenorm_hidden_states(tiny_dino):
    cond = cm.DinoConditioner(size=SIZE, encoder=tiny_dino)
    tokens = cond(_rgba_square())
    assert tokens.shape == (1, 5 + 9 * 9, 32) and tokens.dtype == torch.float32
    x = cond.prepare(_rgba_square())[:, :3]
    x = (x - torch.tensor(cm.IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(cm.IMAGENET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        out = tiny_dino(pixel_values=x, output_hidden_states=True)
    pre = out.hidden_states[-1]
    # hidden_states[-1] is the pre-norm output (the hub model's x_prenorm) …
    torch.testing.assert_close(tiny_dino.layernorm(pre), out.last_hidden_state)
    # … and the conditioner returns it through an affine-free LayerNorm
    torch.testing.assert_close(tokens, torch.nn.functional.layer_norm(pre, (32,)), atol=1e-5, rtol=0)
    # a preprocessed tensor gives the same tokens
    torch.testing.assert_close(cond(cond.prepare(_rgba_square())), tokens)


def test_tokens_and_patch_mask(tiny_dino):
    cond = cm.DinoConditioner(size=SIZE, encoder=tiny_dino)
    tokens, mask = cond.tokens_and_mask([_rgba_square(), _rgba_square(box=(0, 0, 120, 200))])
    assert tokens.shape[0] == 2 and mask.shape == (2, 9, 9) and mask.dtype == torch.bool
    alpha = cond.prepare([_rgba_square()])[0, 3]
    ref = alpha.reshape(9, 14, 9, 14).amax(dim=(1, 3)) > 0  # any foreground pixel in the 14×14 patch
    assert torch.equal(mask[0], ref)
    assert 0 < mask[0].float().mean() < 1 and mask[0, 4].all() and not mask[0, 0].any()


def test_missing_weights_name_the_path(tmp_path):
    with pytest.raises(WeightsNotFoundError, match="nowhere"):
        cm.DinoConditioner(weights=tmp_path / "nowhere")
    with pytest.raises(WeightsNotFoundError, match="BiRefNet"):
        cm.BiRefNetSegmenter(tmp_path / "no_birefnet")
    (tmp_path / "model.bin").write_bytes(b"")
    with pytest.raises(WeightsNotFoundError, match="model.bin is a file"):
        cm.DinoConditioner(weights=tmp_path / "model.bin")


def test_missing_hub_weights_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsNotFoundError, match="dinov2-with-registers-large"):
        cm.DinoConditioner(weights="facebook/dinov2-with-registers-large")
