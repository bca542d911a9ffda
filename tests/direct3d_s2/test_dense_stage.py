"""DenseStage adapter over tiny dense models: protocol, shapes, validation, sampler integration."""

from __future__ import annotations

import pytest
import torch

from consistent3dgen.generators.base import DenseStage
from consistent3dgen.generators.direct3d_s2.adapters import Direct3DS2DenseStage, load_dense_stage
from consistent3dgen.generators.direct3d_s2.dense_dit import DenseDiT
from consistent3dgen.generators.direct3d_s2.dense_vae import DenseShapeVAE


def _tiny(scale: float = 1.0, shift: float = 0.0, fp16: bool = False) -> Direct3DS2DenseStage:
    torch.manual_seed(0)
    vae = DenseShapeVAE(
        embed_dim=4,
        model_channels_encoder=[8, 16],
        model_channels_decoder=[16, 8],
        num_res_blocks_encoder=1,
        num_res_blocks_middle_encoder=1,
        num_res_blocks_decoder=1,
        num_res_blocks_middle_decoder=1,
        latents_scale=scale,
        latents_shift=shift,
    )
    dit = DenseDiT(
        resolution=4,
        in_channels=4,
        out_channels=4,
        model_channels=32,
        cond_channels=16,
        num_blocks=1,
        num_heads=2,
        patch_size=1,
        qk_rms_norm=True,
        latent_shape=[4, 4, 4, 4],
        use_fp16=fp16,
    )
    # the official init zeroes the out layer; give it values so the velocity is informative
    with torch.no_grad():
        for p in dit.parameters():
            if p.ndim >= 2 and not p.any():
                p.normal_(0, 0.02)
    return Direct3DS2DenseStage(vae, dit)


def test_protocol_and_shapes():
    stage = _tiny()
    assert isinstance(stage, DenseStage)
    assert stage.occupancy_resolution == 8 and stage.latent_shape == (4, 4, 4, 4)
    occ = (torch.rand(2, 1, 8, 8, 8) > 0.5).float()
    z = stage.encode_occupancy(occ)
    assert z.shape == (2, 4, 4, 4, 4) and z.dtype == torch.float32
    logits = stage.decode_occupancy(z)
    assert logits.shape == (2, 1, 8, 8, 8) and logits.dtype == torch.float32


def test_latent_scale_and_shift_roundtrip():
    plain, scaled = _tiny(), _tiny(scale=2.0, shift=0.5)
    occ = (torch.rand(1, 1, 8, 8, 8) > 0.3).float()
    z_plain, z_scaled = plain.encode_occupancy(occ), scaled.encode_occupancy(occ)
    torch.testing.assert_close(z_scaled, (z_plain - 0.5) * 2.0)
    torch.testing.assert_close(scaled.decode_occupancy(z_scaled), plain.decode_occupancy(z_plain))


def test_velocity_equals_dit_and_broadcasts_cond():
    stage = _tiny()
    x = torch.randn(2, 4, 4, 4, 4)
    cond = torch.randn(1, 5, 16)
    v = stage.velocity(x, torch.tensor([700.0]), cond)
    with torch.no_grad():
        ref = stage.dit(x, torch.tensor([700.0, 700.0]), cond.expand(2, -1, -1))
    assert torch.equal(v, ref)
    assert v.abs().sum() > 0


def test_fp16_velocity_dtype():
    stage = _tiny(fp16=True)
    v = stage.velocity(torch.randn(1, 4, 4, 4, 4), torch.tensor([500.0], dtype=torch.float16), torch.randn(1, 3, 16))
    assert v.dtype == torch.float16


def test_validation_errors():
    stage = _tiny()
    with pytest.raises(ValueError, match="occupancy must be"):
        stage.encode_occupancy(torch.zeros(1, 1, 4, 4, 4))
    with pytest.raises(ValueError, match="only 0 and 1"):
        stage.encode_occupancy(torch.full((1, 1, 8, 8, 8), 0.5))
    with pytest.raises(ValueError, match="dense latent"):
        stage.decode_occupancy(torch.zeros(1, 3, 4, 4, 4))
    with pytest.raises(ValueError, match="timesteps for a batch"):
        stage.velocity(torch.zeros(2, 4, 4, 4, 4), torch.tensor([1.0, 2.0, 3.0]), torch.zeros(2, 1, 16))
    with pytest.raises(ValueError, match="condition"):
        stage.velocity(torch.zeros(1, 4, 4, 4, 4), torch.tensor([1.0]), None)


def test_runs_in_the_sampler():
    from consistent3dgen.sampling.sampler import sample
    from consistent3dgen.sampling.schedule import FlowMatchSchedule

    stage = _tiny()
    noise = torch.randn(1, *stage.latent_shape, generator=torch.Generator().manual_seed(1))
    cond = torch.randn(1, 5, 16)
    out = sample(stage.velocity, noise, FlowMatchSchedule.shifted(3, 6.0), cond, uncond=torch.zeros_like(cond),
                 cfg_scale=3.0, progress=False)
    assert out.x.shape == noise.shape and torch.isfinite(out.x).all()
    assert not torch.equal(out.x, noise)


def test_load_dense_stage_missing_weights(tmp_path):
    from consistent3dgen.errors import WeightsNotFoundError

    with pytest.raises(WeightsNotFoundError):
        load_dense_stage(tmp_path / "missing")
