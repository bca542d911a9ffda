"""Timestep and absolute-position embedders shared by the dense and sparse Direct3D-S2 models.

Formulas (checked against the official fixtures):
* timestep: ``cat([cos(t f), sin(t f)])`` with ``f_i = exp(-ln(1e4) i / half)``, computed in float32, cast to
  the MLP weight dtype before ``mlp`` (Linear(256, C) → SiLU → Linear(C, C)).
* position: per coordinate axis ``[sin(x f), cos(x f)]`` with ``f_i = 1e4^(-i / freq_dim)``,
  ``freq_dim = C // in_channels // 2``, axes concatenated in order, zero-padded to ``C``.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding (N, dim) float32 of timesteps ``t`` (N,) on the 0..1000 scale; cos half first."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t[:, None].float() * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class TimestepEmbedder(nn.Module):
    """Scalar timesteps → (N, hidden_size) vectors (keys ``mlp.0``, ``mlp.2``)."""

    def __init__(self, hidden_size: int, frequency_embedding_size: int = 256):
        super().__init__()
        self.frequency_embedding_size = frequency_embedding_size
        self.mlp = nn.Sequential(
            nn.Linear(frequency_embedding_size, hidden_size, bias=True),
            nn.SiLU(),
            nn.Linear(hidden_size, hidden_size, bias=True),
        )

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        freq = timestep_embedding(t, self.frequency_embedding_size).to(self.mlp[0].weight.dtype)
        return self.mlp(freq)


def position_frequencies(channels: int, in_channels: int = 3, device: torch.device | str | None = None) -> torch.Tensor:
    """The ``freq_dim`` float32 frequencies of the absolute position embedding."""
    freq_dim = channels // in_channels // 2
    exponents = torch.arange(freq_dim, dtype=torch.float32, device=device) / freq_dim
    return 1.0 / (10000.0**exponents)


class AbsolutePositionEmbedder(nn.Module):
    """Sin-cos embedding of (N, in_channels) positions to (N, channels) float32. Holds no state."""

    def __init__(self, channels: int, in_channels: int = 3):
        super().__init__()
        self.channels = channels
        self.in_channels = in_channels
        self.freq_dim = channels // in_channels // 2

    def forward(self, x: torch.Tensor, factor: float | None = None) -> torch.Tensor:
        if x.ndim != 2 or x.shape[1] != self.in_channels:
            raise ValueError(f"positions must be (N, {self.in_channels}), got {tuple(x.shape)}")
        if factor is not None:
            x = x * factor
        n = x.shape[0]
        freqs = position_frequencies(self.channels, self.in_channels, device=x.device)
        # torch.outer promotes integer coordinates to float32, like the official code
        args = torch.outer(x.reshape(-1), freqs)
        emb = torch.cat([torch.sin(args), torch.cos(args)], dim=-1).reshape(n, -1)
        if emb.shape[1] < self.channels:
            pad = torch.zeros(n, self.channels - emb.shape[1], device=emb.device, dtype=emb.dtype)
            emb = torch.cat([emb, pad], dim=-1)
        return emb


def grid_coords(resolution: int, device: torch.device | str | None = None) -> torch.Tensor:
    """All (i, j, k) of a resolution³ grid in C order (``meshgrid(indexing='ij')``), int64 (resolution³, 3)."""
    axes = [torch.arange(resolution, device=device)] * 3
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, 3)
