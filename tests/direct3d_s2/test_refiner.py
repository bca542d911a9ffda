"""Refiners: official key layout, patch blending rule, patch-wise inference on small grids."""

from __future__ import annotations

import json

import pytest
import torch

from consistent3dgen.generators.direct3d_s2.refiner import (
    Voxel_RefinerXL,
    Voxel_RefinerXL_sign,
    _blend_weights,
    signed_far_field,
)
from consistent3dgen.generators.direct3d_s2.sparse_tensor import SparseTensor

SMALL = (8, 8, 8, 8)  # 4 UNet levels like the official (8, 32, 128, 512), cheap


@pytest.mark.parametrize("version", ["v1_0", "v1_1"])
@pytest.mark.parametrize("part,cls", [("refiner", Voxel_RefinerXL), ("refiner_1024", Voxel_RefinerXL_sign)])
def test_state_dict_matches_manifest(version, part, cls, fixture_file):
    import yaml

    manifest = json.loads(fixture_file("direct3d_s2", f"{version}_model_{part}_refiner.json").read_text())
    params = yaml.safe_load(fixture_file("direct3d_s2", f"configs_{version}.yaml").read_text())[part]["params"]
    with torch.device("meta"):
        model = cls(**params)
    ours = {k: [list(v.shape), str(v.dtype).removeprefix("torch.")] for k, v in model.state_dict().items()}
    assert list(ours) == list(manifest)
    assert ours == manifest


def test_blend_weights_follow_official_rule():
    # official 512 layout: patches at 0, 160, 320 of size 192; [0,160) patch 0, [160,192) ramp, ...
    w = _blend_weights(512, [0, 160, 320], 192, torch.float64, "cpu")
    total = torch.zeros(512, dtype=torch.float64)
    ramp = torch.linspace(0, 1, 32, dtype=torch.float64)
    for s, wi in zip([0, 160, 320], w, strict=True):
        total[s : s + 192] += wi
    torch.testing.assert_close(total, torch.ones(512, dtype=torch.float64))
    torch.testing.assert_close(w[0][160:], 1 - ramp)
    torch.testing.assert_close(w[1][:32], ramp)
    assert (w[0][:160] == 1).all() and (w[1][32:160] == 1).all() and (w[2][32:] == 1).all()


def _sparse_shell(res: int, channels: int, seed: int) -> tuple[SparseTensor, SparseTensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ax = torch.arange(res, dtype=torch.float32) - res / 2 + 0.5
    r = torch.sqrt(ax[:, None, None] ** 2 + ax[None, :, None] ** 2 + ax[None, None, :] ** 2)
    band = (r - res / 3).abs() < 1.5
    coords = torch.cat([torch.zeros(int(band.sum()), 1, dtype=torch.long), band.nonzero()], 1).int()
    sdf = ((r - res / 3) / 1.5)[band][:, None]
    feat = torch.randn(len(coords), channels, generator=g)
    dense_sdf = torch.ones(1, 1, res, res, res)
    dense_feat = torch.zeros(1, channels, res, res, res)
    x, y, z = coords[:, 1:].long().T
    dense_sdf[0, 0, x, y, z] = sdf[:, 0]
    dense_feat[0, :, x, y, z] = feat.T
    return SparseTensor(sdf, coords), SparseTensor(feat, coords), dense_sdf, dense_feat


def test_refiner_patchwise_equals_blended_dense_patches():
    torch.manual_seed(0)
    model = Voxel_RefinerXL(layers_per_block=1, layers_mid_block=1, res=24, block_out_channels=SMALL).eval()
    sdf, feat, dense_sdf, dense_feat = _sparse_shell(24, 32, 1)
    starts, patch = [0, 8], 16
    out = model.refine(sdf, feat, patch_size=patch, stride=8)
    assert out.shape == (1, 1, 24, 24, 24) and out.abs().max() <= 1
    w = _blend_weights(24, starts, patch, torch.float32, "cpu")
    ref = torch.zeros(24, 24, 24)
    with torch.no_grad():
        for i, a in enumerate(starts):
            for j, b in enumerate(starts):
                for k, c in enumerate(starts):
                    sl = (slice(a, a + patch), slice(b, b + patch), slice(c, c + patch))
                    y = model(dense_sdf[(..., *sl)], dense_feat[(..., *sl)])[0, 0]
                    ref[sl] += y * w[i][:, None, None] * w[j][None, :, None] * w[k][None, None, :]
    torch.testing.assert_close(out[0, 0], ref, atol=1e-5, rtol=1e-5)


def test_sign_refiner_patchwise():
    torch.manual_seed(0)
    model = Voxel_RefinerXL_sign(layers_per_block=1, layers_mid_block=1, res=24, block_out_channels=SMALL).eval()
    sdf, _, _, _ = _sparse_shell(48, 1, 2)
    signs = model.predict_signs(sdf, patch_size=16, stride=8)
    assert signs.shape == (1, 24, 24, 24) and set(signs.unique().tolist()) <= {-1, 1}
    pooled = model.downsample(sdf)
    dense = torch.ones(1, 1, 24, 24, 24)
    x, y, z = pooled.coords[:, 1:].long().T
    dense[0, 0, x, y, z] = pooled.feats[:, 0]
    with torch.no_grad():
        last = model(dense[..., 8:24, 8:24, 8:24])[0, 0]  # the last patch overwrites the overlaps
        first = model(dense[..., 0:16, 0:16, 0:16])[0, 0]
    as_sign = lambda t: torch.where(torch.sigmoid(t) >= 0.5, 1, -1).to(torch.int8)  # noqa: E731
    assert torch.equal(signs[0, 8:24, 8:24, 8:24], as_sign(last))
    assert torch.equal(signs[0, 0:8, 0:8, 0:8], as_sign(first)[:8, :8, :8])
    far = signed_far_field(signs, sdf.coords)
    assert far.shape == (len(sdf.coords),)
