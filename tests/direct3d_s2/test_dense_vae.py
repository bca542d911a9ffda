"""Dense shape VAE against the official tiny fixture (shared/fixtures/direct3d_s2/dense_vae_tiny.*)."""

from __future__ import annotations

import json

import pytest
import torch

from consistent3dgen.generators.direct3d_s2.dense_vae import DenseShapeVAE, pixel_shuffle_3d

ATOL = 1e-5


@pytest.fixture(scope="module")
def tiny(fixture_file) -> tuple[DenseShapeVAE, dict[str, torch.Tensor]]:
    from safetensors.torch import load_file

    tensors = load_file(str(fixture_file("direct3d_s2", "dense_vae_tiny.safetensors")))
    args = json.loads(fixture_file("direct3d_s2", "dense_vae_tiny.json").read_text())["constructor_args"]
    vae = DenseShapeVAE(**args).eval()
    vae.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("state.")}, strict=True)
    return vae, tensors


def test_encoder_raw_and_posterior(tiny):
    vae, fx = tiny
    with torch.no_grad():
        raw = vae.encoder(fx["input.dense_index"] * 2.0 - 1.0)
        mean, logvar = vae.encode_moments(fx["input.dense_index"])
        z = vae.encode(fx["input.dense_index"])
    torch.testing.assert_close(raw, fx["output.encoder_raw"], atol=ATOL, rtol=0)
    torch.testing.assert_close(mean, fx["output.posterior_mean"], atol=ATOL, rtol=0)
    torch.testing.assert_close(logvar, fx["output.posterior_logvar"], atol=ATOL, rtol=0)
    torch.testing.assert_close(z, fx["output.z_mean"], atol=ATOL, rtol=0)


def test_decoder_logits(tiny):
    vae, fx = tiny
    with torch.no_grad():
        recon = vae.decode(fx["output.z_mean"])
        dec = vae.decode(fx["input.latents"])
    torch.testing.assert_close(recon, fx["output.recon_logits"], atol=ATOL, rtol=0)
    torch.testing.assert_close(dec, fx["output.decoded_logits"], atol=ATOL, rtol=0)


def test_decode_index_matches_official(tiny):
    vae, fx = tiny
    with torch.no_grad():
        idx = vae.decode_index(fx["input.latents"], threshold=0.5)
    logits = fx["output.decoded_logits"]
    for b in range(2):
        ref = fx[f"output.decode_index_b{b}"]
        got = idx[b]
        assert got.dtype == torch.int64 and got.shape[1] == 4
        assert torch.all(got[:, 0] == 0)
        if not torch.equal(got, ref):
            # a voxel may flip only when its logit sits at the threshold (sigmoid 0.5 ↔ logit 0)
            diff = set(map(tuple, got.tolist())) ^ set(map(tuple, ref.tolist()))
            assert all(abs(logits[b, 0, i, j, k].item()) < 1e-4 for _, i, j, k in diff), diff


def test_sample_posterior_is_seeded_and_near_mean(tiny):
    vae, fx = tiny
    occ = fx["input.dense_index"]
    with torch.no_grad():
        a = vae.encode(occ, sample_posterior=True, generator=torch.Generator().manual_seed(0))
        b = vae.encode(occ, sample_posterior=True, generator=torch.Generator().manual_seed(0))
        mean, logvar = vae.encode_moments(occ)
    assert torch.equal(a, b)
    z = (a - mean) / torch.exp(0.5 * logvar)
    assert abs(z.mean().item()) < 0.2 and abs(z.std().item() - 1) < 0.2


def test_pixel_shuffle_3d_layout():
    # channel c*8 + (dx*4 + dy*2 + dz) of voxel (i,j,k) lands at (2i+dx, 2j+dy, 2k+dz)
    x = torch.arange(2 * 8 * 2 * 3 * 1, dtype=torch.float32).reshape(1, 16, 2, 3, 1)
    y = pixel_shuffle_3d(x, 2)
    assert y.shape == (1, 2, 4, 6, 2)
    for c, dx, dy, dz, i, j, k in [(1, 1, 0, 1, 1, 2, 0), (0, 0, 1, 1, 0, 1, 0)]:
        assert y[0, c, 2 * i + dx, 2 * j + dy, 2 * k + dz] == x[0, c * 8 + dx * 4 + dy * 2 + dz, i, j, k]


def test_fp16_layout_and_run():
    vae = DenseShapeVAE(
        embed_dim=4,
        model_channels_encoder=[8, 16],
        model_channels_decoder=[16, 8],
        num_res_blocks_encoder=1,
        num_res_blocks_middle_encoder=1,
        num_res_blocks_decoder=1,
        num_res_blocks_middle_decoder=1,
        use_fp16=True,
    )
    sd = vae.state_dict()
    # official: encoder converts only blocks + middle_block; decoder converts every conv; norms stay fp32
    assert sd["encoder.input_layer.weight"].dtype == torch.float32
    assert sd["encoder.out_layer.2.weight"].dtype == torch.float32
    assert sd["encoder.blocks.0.conv1.weight"].dtype == torch.float16
    assert sd["encoder.blocks.0.norm1.weight"].dtype == torch.float32
    assert sd["decoder.input_layer.weight"].dtype == torch.float16
    assert sd["decoder.out_layer.0.weight"].dtype == torch.float32
    vae.convert_to(torch.bfloat16)
    with torch.no_grad():
        logits = vae.decode(torch.randn(1, 4, 4, 4, 4))
        mean = vae.encode(torch.ones(1, 1, 8, 8, 8))
    assert logits.dtype == torch.bfloat16 and logits.shape == (1, 1, 8, 8, 8)
    assert mean.shape == (1, 4, 4, 4, 4) and torch.isfinite(mean.float()).all()
