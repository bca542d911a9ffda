"""Timestep / position embedders against the official fixtures (shared/fixtures/direct3d_s2/embedders.*)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from consistent3dgen.generators.direct3d_s2.embedders import (
    AbsolutePositionEmbedder,
    TimestepEmbedder,
    grid_coords,
    timestep_embedding,
)

# The official float32 formula itself, run on this CPU, differs from the fixture by up to 3e-5 for t ~ 1000
# (the float32 ulp of t*f there is 6e-5; sin/cos kernels differ between CPUs), hence 1e-4 for timesteps.
TIMESTEP_ATOL = 1e-4


@pytest.fixture(scope="module")
def fx(fixture_file) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(fixture_file("direct3d_s2", "embedders.safetensors")))


@pytest.mark.parametrize("dim", [256, 1024, 512, 64])
def test_timestep_embedding_matches_official(fx, dim):
    out = timestep_embedding(fx["input.t"], dim)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, fx[f"output.timestep_embedding_dim{dim}"], atol=TIMESTEP_ATOL, rtol=0)


def test_timestep_embedding_odd_dim_pads_zero(fx):
    out = timestep_embedding(fx["input.t"], 255)
    torch.testing.assert_close(out, fx["output.timestep_embedding_dim255_odd"], atol=TIMESTEP_ATOL, rtol=0)
    assert torch.all(out[:, -1] == 0)


def test_timestep_embedding_float64_formula():
    # independent re-derivation: cos first, f_i = exp(-ln(1e4) i / half)
    t = torch.tensor([0.0, 1.5, 999.0], dtype=torch.float64)
    half = 8
    f = torch.exp(-math.log(1e4) * torch.arange(half, dtype=torch.float64) / half)
    ref = torch.cat([torch.cos(t[:, None] * f), torch.sin(t[:, None] * f)], -1)
    torch.testing.assert_close(timestep_embedding(t, 16).double(), ref, atol=1e-4, rtol=0)


def test_timestep_embedder_module(fx):
    emb = TimestepEmbedder(64)
    state = {k[len("state.") :]: v for k, v in fx.items() if k.startswith("state.")}
    emb.load_state_dict(state, strict=True)
    with torch.no_grad():
        out = emb(fx["input.t"])
    torch.testing.assert_close(out, fx["output.timestep_embedder_h64"], atol=1e-5, rtol=0)


def test_timestep_embedder_casts_to_weight_dtype():
    emb = TimestepEmbedder(16).to(torch.bfloat16)
    out = emb(torch.tensor([500.0], dtype=torch.float16))
    assert out.dtype == torch.bfloat16 and out.shape == (1, 16)


@pytest.mark.parametrize("channels", [1024, 512, 64])
@pytest.mark.parametrize("which", ["coords_int", "coords_grid4", "coords_cond"])
def test_ape_matches_official(fx, channels, which):
    ape = AbsolutePositionEmbedder(channels, 3)
    out = ape(fx[f"input.{which}"])
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, fx[f"output.ape{channels}_{which}"], atol=1e-5, rtol=0)


@pytest.mark.parametrize("channels", [1024, 512, 64])
def test_ape_factor_matches_official(fx, channels):
    out = AbsolutePositionEmbedder(channels, 3)(fx["input.coords_int"], factor=0.5)
    torch.testing.assert_close(out, fx[f"output.ape{channels}_coords_int_factor0.5"], atol=1e-5, rtol=0)


def test_grid_coords_is_ij_meshgrid(fx):
    assert torch.equal(grid_coords(4), fx["input.coords_grid4"])
    g = grid_coords(3)
    # token n = i*9 + j*3 + k
    assert g[5].tolist() == [0, 1, 2] and g[9].tolist() == [1, 0, 0]


def test_ape_layout_and_padding():
    ape = AbsolutePositionEmbedder(64, 3)  # freq_dim 10 → 60 values + 4 zeros
    x = torch.tensor([[1, 2, 3]])
    out = ape(x)
    f = 1.0 / (1e4 ** (torch.arange(10, dtype=torch.float64) / 10))
    ref = torch.cat(
        [
            torch.sin(v * f).float().unsqueeze(0) if s else torch.cos(v * f).float().unsqueeze(0)
            for v in (1.0, 2.0, 3.0)
            for s in (True, False)
        ],
        -1,
    )
    torch.testing.assert_close(out[:, :60], ref, atol=1e-6, rtol=0)
    assert torch.all(out[:, 60:] == 0)


def test_ape_rejects_wrong_shape():
    with pytest.raises(ValueError):
        AbsolutePositionEmbedder(64, 3)(torch.zeros(4, 2))


def test_fixture_sidecar_states_layout(fixture_file):
    meta = fixture_file("direct3d_s2", "embedders.json")
    assert "sin(x*f), cos(x*f)" in json.loads(meta.read_text())["ape_layout"]
