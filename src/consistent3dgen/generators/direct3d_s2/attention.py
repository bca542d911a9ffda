"""Shared building blocks of the Direct3D-S2 models: fp32-computing norms, multi-head attention, dtype conversion.

Parameter names and shapes follow the official code so that the checkpoints load with ``strict=True``.
Mixed precision follows the official ``convert_module_to_f16``: only linear and conv parameters change dtype;
norms (and their affine weights) stay float32 and compute in float32, casting back to the input dtype.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

# Module types whose parameters follow the model's compute dtype (the official FP16_MODULES, dense part).
# Sparse modules that must convert too (sparse convs) either subclass one of these or are added through
# ``register_low_precision_type``.
LOW_PRECISION_TYPES: tuple[type[nn.Module], ...] = (
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.ConvTranspose1d,
    nn.ConvTranspose2d,
    nn.ConvTranspose3d,
    nn.Linear,
)


def register_low_precision_type(module_type: type[nn.Module]) -> None:
    """Let ``convert_module_dtype`` convert parameters of ``module_type`` (e.g. a sparse conv)."""
    global LOW_PRECISION_TYPES
    if module_type not in LOW_PRECISION_TYPES:
        LOW_PRECISION_TYPES = (*LOW_PRECISION_TYPES, module_type)


def convert_module_dtype(module: nn.Module, dtype: torch.dtype) -> nn.Module:
    """Cast the parameters of every linear/conv submodule of ``module`` to ``dtype`` (norms untouched)."""
    for sub in module.modules():
        if isinstance(sub, LOW_PRECISION_TYPES):
            for p in sub.parameters(recurse=False):
                p.data = p.data.to(dtype)
    return module


class LayerNorm32(nn.LayerNorm):
    """LayerNorm computed in float32, result cast back to the input dtype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float()).type(x.dtype)


class GroupNorm32(nn.GroupNorm):
    """GroupNorm computed in float32, result cast back to the input dtype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float()).type(x.dtype)


class ChannelLayerNorm32(LayerNorm32):
    """LayerNorm over the channel axis (dim 1) of an (N, C, *spatial) tensor."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dims = x.dim()
        h = x.permute(0, *range(2, dims), 1).contiguous()
        h = super().forward(h)
        return h.permute(0, dims - 1, *range(1, dims - 1)).contiguous()


class MultiHeadRMSNorm(nn.Module):
    """Per-head RMS norm of queries/keys: ``normalize(x) * gamma * sqrt(head_dim)``, in float32."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.scale = dim**0.5
        self.gamma = nn.Parameter(torch.ones(heads, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (F.normalize(x.float(), dim=-1) * self.gamma * self.scale).to(x.dtype)


def scaled_dot_product_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Full attention on (B, L, H, C) tensors, returning (B, L, H, C); softmax(q k^T / sqrt(C)) v."""
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    return out.transpose(1, 2)


def naive_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Reference attention written out (same layout as ``scaled_dot_product_attention``); for tests."""
    q, k, v = (t.permute(0, 2, 1, 3) for t in (q, k, v))
    w = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), dim=-1)
    return (w @ v).permute(0, 2, 1, 3)


class MultiHeadAttention(nn.Module):
    """Dense full self- or cross-attention with the official parameter layout.

    Self: ``to_qkv`` (C → 3C), cross: ``to_q`` (C → C) + ``to_kv`` (ctx → 2C); optional per-head q/k RMS norm
    (``q_rms_norm.gamma``, ``k_rms_norm.gamma``); ``to_out`` (C → C).
    """

    def __init__(
        self,
        channels: int,
        num_heads: int,
        ctx_channels: int | None = None,
        kind: str = "self",
        qkv_bias: bool = True,
        qk_rms_norm: bool = False,
    ):
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"channels {channels} not divisible by num_heads {num_heads}")
        if kind not in ("self", "cross"):
            raise ValueError(f"attention kind must be 'self' or 'cross', got {kind!r}")
        self.channels = channels
        self.num_heads = num_heads
        self.head_dim = channels // num_heads
        self.ctx_channels = ctx_channels if ctx_channels is not None else channels
        self.kind = kind
        self.qk_rms_norm = qk_rms_norm
        if kind == "self":
            self.to_qkv = nn.Linear(channels, channels * 3, bias=qkv_bias)
        else:
            self.to_q = nn.Linear(channels, channels, bias=qkv_bias)
            self.to_kv = nn.Linear(self.ctx_channels, channels * 2, bias=qkv_bias)
        if qk_rms_norm:
            self.q_rms_norm = MultiHeadRMSNorm(self.head_dim, num_heads)
            self.k_rms_norm = MultiHeadRMSNorm(self.head_dim, num_heads)
        self.to_out = nn.Linear(channels, channels)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        b, n, _ = x.shape
        if self.kind == "self":
            q, k, v = self.to_qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).unbind(dim=2)
        else:
            if context is None:
                raise ValueError("cross-attention needs a context")
            q = self.to_q(x).reshape(b, n, self.num_heads, self.head_dim)
            k, v = self.to_kv(context).reshape(b, context.shape[1], 2, self.num_heads, self.head_dim).unbind(dim=2)
        if self.qk_rms_norm:
            q = self.q_rms_norm(q)
            k = self.k_rms_norm(k)
        h = scaled_dot_product_attention(q, k, v)
        return self.to_out(h.reshape(b, n, self.channels))


class FeedForwardNet(nn.Module):
    """Linear → GELU(tanh) → Linear, keys ``mlp.0`` / ``mlp.2``."""

    def __init__(self, channels: int, mlp_ratio: float = 4.0):
        super().__init__()
        hidden = int(channels * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(channels, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(x)
