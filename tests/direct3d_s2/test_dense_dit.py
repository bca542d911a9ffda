"""Dense DiT against the official tiny fixtures (fp32 parity, fp16 dtype flow)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from consistent3dgen.generators.direct3d_s2 import attention
from consistent3dgen.generators.direct3d_s2.dense_dit import DenseDiT, patchify, unpatchify


def _load(fixture_file: Callable[..., Path], name: str) -> tuple[DenseDiT, dict[str, torch.Tensor]]:
    from safetensors.torch import load_file

    tensors = load_file(str(fixture_file("direct3d_s2", f"{name}.safetensors")))
    args = json.loads(fixture_file("direct3d_s2", f"{name}.json").read_text())["constructor_args"]
    dit = DenseDiT(**args).eval()
    dit.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("state.")}, strict=True)
    return dit, tensors


@pytest.fixture(scope="module")
def tiny(fixture_file):
    return _load(fixture_file, "dense_dit_tiny")


def test_pos_emb_buffer_equals_official(tiny, fixture_file):
    dit, fx = tiny
    fresh = DenseDiT(**json.loads(fixture_file("direct3d_s2", "dense_dit_tiny.json").read_text())["constructor_args"])
    torch.testing.assert_close(fresh.pos_emb, fx["state.pos_emb"], atol=1e-6, rtol=0)


def test_forward_fp32_parity(tiny):
    dit, fx = tiny
    with torch.no_grad():
        out = dit(fx["input.x"], fx["input.t"], fx["input.cond"])
        alone = dit(fx["input.x"][:1], fx["input.t"][:1], fx["input.cond"][:1])
        uncond = dit(fx["input.x"][:1], fx["input.t"][:1], torch.zeros_like(fx["input.cond"][:1]))
    torch.testing.assert_close(out, fx["output.out"], atol=1e-5, rtol=0)
    torch.testing.assert_close(alone, fx["output.out_b0_alone"], atol=1e-5, rtol=0)
    torch.testing.assert_close(uncond, fx["output.out_b0_uncond"], atol=1e-5, rtol=0)


def test_naive_attention_agrees_with_sdpa():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 7, 3, 8, generator=g) for _ in range(3))
    torch.testing.assert_close(
        attention.scaled_dot_product_attention(q, k, v), attention.naive_attention(q, k, v), atol=1e-6, rtol=0
    )


def test_forward_fp16_dtype_flow(fixture_file):
    dit, fx = _load(fixture_file, "dense_dit_tiny_fp16")
    sd = dit.state_dict()
    # the official use_fp16 conversion: linears fp16; norms, RMS gammas and pos_emb fp32
    assert sd["input_layer.weight"].dtype == torch.float16
    assert sd["blocks.0.self_attn.q_rms_norm.gamma"].dtype == torch.float32
    assert sd["blocks.0.norm2.weight"].dtype == torch.float32
    assert sd["pos_emb"].dtype == torch.float32
    with torch.no_grad():
        out = dit(fx["input.x"], fx["input.t"], fx["input.cond"])
    assert out.dtype == torch.float16
    torch.testing.assert_close(out.float(), fx["output.out"].float(), atol=1e-2, rtol=0)
    # and it still agrees with the fp32 model's answer to the fp16 rounding level (README: 3.8e-3)
    ref32 = _load(fixture_file, "dense_dit_tiny")[1]["output.out"]
    assert (out.float() - ref32).abs().max() < 2e-2


def test_bf16_runs_and_keeps_norms_fp32():
    dit = DenseDiT(
        resolution=4,
        in_channels=2,
        model_channels=32,
        cond_channels=16,
        out_channels=2,
        num_blocks=1,
        num_heads=2,
        patch_size=1,
        qk_rms_norm=True,
        latent_shape=[2, 4, 4, 4],
    )
    dit.convert_to(torch.bfloat16)
    with torch.no_grad():
        out = dit(torch.randn(1, 2, 4, 4, 4, dtype=torch.bfloat16), torch.tensor([500.0]), torch.randn(1, 3, 16))
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()
    assert dit.blocks[0].norm2.weight.dtype == torch.float32


def test_rejects_wrong_input_shape(tiny):
    dit, _ = tiny
    with pytest.raises(ValueError, match="DenseDiT input"):
        dit(torch.zeros(1, 8, 4, 4, 4), torch.tensor([1.0]), torch.zeros(1, 2, 32))


def test_patchify_roundtrip():
    x = torch.randn(2, 3, 4, 6, 8)
    p = patchify(x, 2)
    assert p.shape == (2, 24, 2, 3, 4)
    assert torch.equal(unpatchify(p, 2), x)
