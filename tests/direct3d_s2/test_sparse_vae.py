"""Sparse SDF VAE: official key layout, fixture parity (down block, tiny decoder), windowed attention, chunking."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from consistent3dgen.generators.direct3d_s2.sparse_tensor import SparseTensor
from consistent3dgen.generators.direct3d_s2.sparse_vae import (
    SparseDownBlock3d,
    SparseSDFDecoder,
    SparseSDFVAE,
    window_partition,
    windowed_attention,
)


def _fixture(fixture_file: Callable[..., Path], name: str) -> tuple[dict[str, torch.Tensor], dict]:
    from safetensors.torch import load_file

    tensors = load_file(str(fixture_file("direct3d_s2", f"{name}.safetensors")))
    meta = json.loads(fixture_file("direct3d_s2", f"{name}.json").read_text())
    return tensors, meta


def _state(t: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k[len("state.") :]: v for k, v in t.items() if k.startswith("state.")}


def _config_params(fixture_file: Callable[..., Path], version: str, key: str) -> dict:
    import yaml

    cfg = yaml.safe_load(fixture_file("direct3d_s2", f"configs_{version}.yaml").read_text())
    return cfg[key]["params"]


@pytest.mark.parametrize("version", ["v1_0", "v1_1"])
@pytest.mark.parametrize("res", ["512", "1024"])
def test_state_dict_matches_manifest(version, res, fixture_file):
    manifest = json.loads(fixture_file("direct3d_s2", f"{version}_model_sparse_{res}_vae.json").read_text())
    with torch.device("meta"):
        vae = SparseSDFVAE(**_config_params(fixture_file, version, f"sparse_vae_{res}"))
    ours = {k: [list(v.shape), str(v.dtype).removeprefix("torch.")] for k, v in vae.state_dict().items()}
    assert list(ours) == list(manifest)  # same keys in the same order
    assert ours == manifest


def test_fixture_encoder_down_block(fixture_file):
    t, _ = _fixture(fixture_file, "sparse_encoder_downblock")
    block = SparseDownBlock3d(32, 64)
    block.load_state_dict(_state(t), strict=True)
    with torch.no_grad():
        y = block(SparseTensor(t["input.feats"], t["input.coords"]))
    assert torch.equal(y.coords, t["output.coords"])
    torch.testing.assert_close(y.feats, t["output.feats"], atol=1e-5, rtol=1e-5)


def test_fixture_tiny_decoder(fixture_file):
    t, meta = _fixture(fixture_file, "sparse_sdf_decoder_tiny")
    dec = SparseSDFDecoder(**meta["constructor_args"]).eval()
    dec.load_state_dict(_state(t), strict=True)
    x = SparseTensor(t["input.latents"], t["input.coords"])
    with torch.no_grad():
        hidden = dec.transformer(x, 1.0)
        sdf, feat = dec(x, factor=1.0, return_feat=True)
    torch.testing.assert_close(hidden.feats, t["output.transformer_out"], atol=1e-5, rtol=1e-5)
    assert torch.equal(sdf.coords, t["output.sdf_coords"])
    torch.testing.assert_close(feat.feats, t["output.feat"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(sdf.feats, t["output.sdf"], atol=1e-5, rtol=1e-5)


def test_chunked_decode_equals_whole_decode(fixture_file):
    t, meta = _fixture(fixture_file, "sparse_sdf_decoder_tiny")
    dec = SparseSDFDecoder(**meta["constructor_args"]).eval()
    dec.load_state_dict(_state(t), strict=True)
    keep = t["input.coords"][:, 0] == 0  # one batch element, 24 tokens spread over the grid: keeps it fast
    x = SparseTensor(t["input.latents"][keep][::3], t["input.coords"][keep][::3])
    with torch.no_grad():
        whole = dec(x, factor=1.0)
        chunked = dec(x, factor=1.0, chunk_size=2, padding=4)
    assert chunked.coords.shape == whole.coords.shape
    key = lambda c: ((c[:, 0].long() * 256 + c[:, 1]) * 256 + c[:, 2]) * 256 + c[:, 3]  # noqa: E731
    a, b = torch.argsort(key(whole.coords)), torch.argsort(key(chunked.coords))
    assert torch.equal(whole.coords[a], chunked.coords[b])
    torch.testing.assert_close(whole.feats[a], chunked.feats[b], atol=1e-5, rtol=1e-5)


def test_windowed_attention_equals_masked_full_attention():
    g = torch.Generator().manual_seed(1)
    coords = torch.unique(torch.randint(0, 20, (400, 3), generator=g), dim=0)
    coords = torch.cat([torch.zeros(len(coords), 1, dtype=torch.long), coords], 1)
    coords = torch.cat([coords, coords[:50] + torch.tensor([1, 0, 0, 0])]).int()  # a second batch element
    n, h, d = len(coords), 2, 8
    q, k, v = (torch.randn(n, h, d, generator=g) for _ in range(3))
    order, lengths = window_partition(coords, 8, 4)
    out = torch.empty_like(v)
    out[order] = windowed_attention(q[order], k[order], v[order], lengths)
    c = coords.long()
    w = torch.cat([c[:, :1], (c[:, 1:] + 4) // 8], 1)
    same = (w[:, None] == w[None]).all(-1)  # [n, n] fine at this size
    scores = torch.einsum("nhd,mhd->hnm", q, k) / d**0.5
    ref = torch.einsum("hnm,mhd->nhd", scores.masked_fill(~same, float("-inf")).softmax(-1), v)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    assert int(lengths.sum()) == n and lengths.max() <= 512


def test_encode_shapes_posterior_and_dtype_flow():
    vae = SparseSDFVAE(
        embed_dim=4, resolution=4, model_channels_encoder=512, num_blocks_encoder=1, num_heads_encoder=8,
        model_channels_decoder=64, num_blocks_decoder=1, num_heads_decoder=4, num_head_channels_decoder=16,
    ).eval()  # fmt: skip
    g = torch.Generator().manual_seed(2)
    xyz = torch.unique(torch.randint(0, 32, (120, 3), generator=g), dim=0)
    coords = torch.cat([torch.zeros(len(xyz), 1, dtype=torch.long), xyz], 1).int()
    sdf = torch.rand(len(xyz), 1, generator=g) * 2 - 1
    with torch.no_grad():
        z, post = vae.encode(SparseTensor(sdf, coords))
        z2, _ = vae.encode(SparseTensor(sdf, coords), sample_posterior=True, generator=g)
        rec = vae.decode(z)
    expected = torch.unique(torch.cat([coords[:, :1], coords[:, 1:] // 8], 1), dim=0)
    assert torch.equal(z.coords, expected)
    assert z.feats.shape == (len(expected), 4) and torch.equal(z.feats, post.mean)
    assert not torch.equal(z2.feats, z.feats)
    assert rec.coords.shape[0] == 512 * len(expected) and rec.feats.abs().max() <= 1
    half = SparseSDFVAE(
        embed_dim=4,
        resolution=4,
        model_channels_decoder=64,
        num_blocks_decoder=1,
        num_heads_decoder=4,
        num_head_channels_decoder=16,
        num_blocks_encoder=1,
        use_fp16=True,
    )
    assert half.decoder.input_layer.weight.dtype == torch.float16
    assert half.encoder.downsample[0].act_layers[0].weight.dtype == torch.float32  # norms stay fp32
    with torch.no_grad():
        rec16 = half.decode(SparseTensor(torch.randn(3, 4), torch.tensor([[0, 0, 0, 0], [0, 0, 0, 1], [0, 3, 3, 3]])))
    assert rec16.feats.dtype == torch.float32 and rec16.coords.shape[0] == 3 * 512


def _tiny_vae() -> SparseSDFVAE:
    return SparseSDFVAE(
        embed_dim=4, resolution=4, model_channels_encoder=512, num_blocks_encoder=1, num_heads_encoder=8,
        model_channels_decoder=64, num_blocks_decoder=1, num_heads_decoder=4, num_head_channels_decoder=16,
        latents_scale=2.0, latents_shift=0.5,
    ).eval()  # fmt: skip


def test_codec_roundtrip_and_bad_input():
    import numpy as np

    from consistent3dgen.generators.base import SparseLatent
    from consistent3dgen.generators.direct3d_s2.sparse_codec import decode_sdf, encode_sdf
    from consistent3dgen.geometry.voxels import SparseVoxels

    torch.manual_seed(0)
    vae = _tiny_vae()
    rng = np.random.default_rng(0)
    xyz = np.unique(rng.integers(0, 32, (80, 3)), axis=0)
    sdf = SparseVoxels(xyz, 32, rng.uniform(-1, 1, (len(xyz), 1)).astype(np.float32))
    lat = encode_sdf(vae, sdf)
    assert lat.resolution == 4 and lat.feats.shape[1] == 4
    assert set(map(tuple, lat.coords.tolist())) == set(map(tuple, (xyz // 8).tolist()))
    with torch.no_grad():
        z, _ = vae.encode(
            SparseTensor(
                torch.as_tensor(sdf.feats), torch.cat([torch.zeros(len(xyz), 1), torch.as_tensor(xyz)], 1).int()
            )
        )
    torch.testing.assert_close(lat.feats, (z.feats - 0.5) * 2.0)  # normalised like the DiT's latents
    rec = decode_sdf(vae, lat)
    assert rec.resolution == 32 and len(rec) == 512 * len(lat) and rec.feats.shape == (len(rec), 1)
    with torch.no_grad():
        direct = vae.decode(SparseTensor(z.feats, z.coords))
    np.testing.assert_allclose(rec.feats, direct.feats.numpy(), atol=1e-5)
    with pytest.raises(ValueError):
        encode_sdf(vae, SparseVoxels(xyz, 64, sdf.feats))  # wrong resolution
    with pytest.raises(ValueError):
        encode_sdf(vae, SparseVoxels(xyz, 32))  # no SDF values
    with pytest.raises(ValueError):
        decode_sdf(vae, SparseLatent(lat.coords, lat.feats[:, :2], 4))


def _encoder_norm_groups(vae: SparseSDFVAE) -> list[int]:
    return [m.num_groups for m in vae.encoder.modules() if isinstance(m, torch.nn.GroupNorm)]


def test_encoder_norm_groups_parameter():
    """Default = the official 32 groups; another count changes the GroupNorms only (same keys and shapes), so a
    narrow encoder can be built; a count that does not divide the widths is a clear error."""
    kw = dict(
        embed_dim=4,
        resolution=4,
        num_blocks_encoder=1,
        num_heads_encoder=2,
        num_head_channels_encoder=32,
        model_channels_decoder=64,
        num_blocks_decoder=1,
        num_heads_decoder=4,
        num_head_channels_decoder=16,
    )
    with torch.device("meta"):
        official = SparseSDFVAE(model_channels_encoder=512, **kw)
        regrouped = SparseSDFVAE(model_channels_encoder=512, encoder_norm_groups=4, **kw)
    assert _encoder_norm_groups(official) == [32] * 6
    assert _encoder_norm_groups(regrouped) == [4] * 6
    assert {k: v.shape for k, v in official.state_dict().items()} == {
        k: v.shape for k, v in regrouped.state_dict().items()
    }
    assert SparseDownBlock3d.__init__.__defaults__[1] == 32  # no class-level default was swapped

    narrow = SparseSDFVAE(model_channels_encoder=64, encoder_norm_groups=4, **kw).eval()  # widths 4, 8, 16
    assert _encoder_norm_groups(narrow) == [4] * 6
    xyz = torch.unique(torch.randint(0, 32, (80, 3), generator=torch.Generator().manual_seed(3)), dim=0)
    coords = torch.cat([torch.zeros(len(xyz), 1, dtype=torch.long), xyz], 1).int()
    with torch.no_grad():
        z, _ = narrow.encode(SparseTensor(torch.rand(len(xyz), 1) * 2 - 1, coords))
    assert z.feats.shape[1] == 4 and torch.isfinite(z.feats).all()
    with pytest.raises(ValueError, match="encoder_norm_groups 3"):
        SparseSDFVAE(model_channels_encoder=64, encoder_norm_groups=3, **kw)
