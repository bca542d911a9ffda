"""Direct3D-S2 dense DiT: flow velocity on the 16³ × 8 latent grid, cross-attending to image tokens.

Tokens are the grid cells in C order (patch size 1: token n = i·R² + j·R + k), plus a fixed sin-cos absolute
position embedding (persistent buffer ``pos_emb``). Each block: adaLN-modulated self-attention (q/k RMS norm),
affine-LayerNorm → cross-attention (no modulation), adaLN-modulated GELU MLP.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .attention import FeedForwardNet, LayerNorm32, MultiHeadAttention, convert_module_dtype
from .embedders import AbsolutePositionEmbedder, TimestepEmbedder, grid_coords


def patchify(x: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(B, C, *spatial) → (B, C·p^d, *spatial/p), patch offsets after channels (official layout)."""
    if patch_size == 1:
        return x
    dims = x.dim() - 2
    for d in range(2, dims + 2):
        if x.shape[d] % patch_size:
            raise ValueError(f"dim {d} of size {x.shape[d]} not divisible by patch size {patch_size}")
    x = x.reshape(*x.shape[:2], *sum(([x.shape[d] // patch_size, patch_size] for d in range(2, dims + 2)), []))
    x = x.permute(0, 1, *([2 * i + 3 for i in range(dims)] + [2 * i + 2 for i in range(dims)]))
    return x.reshape(x.shape[0], x.shape[1] * patch_size**dims, *x.shape[-dims:])


def unpatchify(x: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Inverse of ``patchify``."""
    if patch_size == 1:
        return x
    dims = x.dim() - 2
    x = x.reshape(x.shape[0], x.shape[1] // patch_size**dims, *([patch_size] * dims), *x.shape[-dims:])
    x = x.permute(0, 1, *sum(([2 + dims + i, 2 + i] for i in range(dims)), []))
    return x.reshape(x.shape[0], x.shape[1], *[x.shape[2 + 2 * i] * patch_size for i in range(dims)])


class ModulatedTransformerCrossBlock(nn.Module):
    """Self-attention + cross-attention + MLP with adaLN (shift, scale, gate) for attention and MLP."""

    def __init__(
        self,
        channels: int,
        ctx_channels: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qk_rms_norm: bool = False,
        qk_rms_norm_cross: bool = False,
        qkv_bias: bool = True,
        share_mod: bool = False,
    ):
        super().__init__()
        self.share_mod = share_mod
        self.norm1 = LayerNorm32(channels, elementwise_affine=False, eps=1e-6)
        self.norm2 = LayerNorm32(channels, elementwise_affine=True, eps=1e-6)
        self.norm3 = LayerNorm32(channels, elementwise_affine=False, eps=1e-6)
        self.self_attn = MultiHeadAttention(
            channels, num_heads, kind="self", qkv_bias=qkv_bias, qk_rms_norm=qk_rms_norm
        )
        self.cross_attn = MultiHeadAttention(
            channels,
            num_heads,
            ctx_channels=ctx_channels,
            kind="cross",
            qkv_bias=qkv_bias,
            qk_rms_norm=qk_rms_norm_cross,
        )
        self.mlp = FeedForwardNet(channels, mlp_ratio)
        if not share_mod:
            self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(channels, 6 * channels, bias=True))

    def forward(self, x: torch.Tensor, mod: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        if not self.share_mod:
            mod = self.adaLN_modulation(mod)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = (m.unsqueeze(1) for m in mod.chunk(6, 1))
        h = self.norm1(x) * (1 + scale_msa) + shift_msa
        x = x + self.self_attn(h) * gate_msa
        x = x + self.cross_attn(self.norm2(x), context)
        h = self.norm3(x) * (1 + scale_mlp) + shift_mlp
        return x + self.mlp(h) * gate_mlp


class DenseDiT(nn.Module):
    """The official dense DiT; constructor takes the ``dense_dit.params`` of the Direct3D-S2 config."""

    def __init__(
        self,
        resolution: int,
        in_channels: int,
        model_channels: int,
        cond_channels: int,
        out_channels: int,
        num_blocks: int,
        num_heads: int | None = None,
        num_head_channels: int | None = 64,
        mlp_ratio: float = 4,
        patch_size: int = 2,
        pe_mode: str = "ape",
        use_fp16: bool = False,
        use_checkpoint: bool = False,  # training-only option of the official class; accepted and ignored
        share_mod: bool = False,
        qk_rms_norm: bool = False,
        qk_rms_norm_cross: bool = False,
        latent_shape: list[int] | tuple[int, ...] = (8, 16, 16, 16),
    ):
        super().__init__()
        if pe_mode != "ape":
            raise NotImplementedError(f"pe_mode {pe_mode!r}: only 'ape' is used by the released models")
        self.resolution = resolution
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.model_channels = model_channels
        self.patch_size = patch_size
        self.share_mod = share_mod
        self.num_heads = num_heads or model_channels // num_head_channels
        self.latent_shape = list(latent_shape)
        self.dtype = torch.float32

        self.t_embedder = TimestepEmbedder(model_channels)
        if share_mod:
            self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(model_channels, 6 * model_channels, bias=True))
        # persistent buffer (it is in the official checkpoints), float32 whatever the compute dtype
        coords = grid_coords(resolution // patch_size)
        self.register_buffer("pos_emb", AbsolutePositionEmbedder(model_channels, 3)(coords))
        self.input_layer = nn.Linear(in_channels * patch_size**3, model_channels)
        self.blocks = nn.ModuleList(
            ModulatedTransformerCrossBlock(
                model_channels,
                cond_channels,
                self.num_heads,
                mlp_ratio,
                qk_rms_norm=qk_rms_norm,
                qk_rms_norm_cross=qk_rms_norm_cross,
                share_mod=share_mod,
            )
            for _ in range(num_blocks)
        )
        self.out_layer = nn.Linear(model_channels, out_channels * patch_size**3)
        if use_fp16:
            self.convert_to(torch.float16)

    def convert_to(self, dtype: torch.dtype) -> None:
        """Set the compute dtype: every Linear converts (official ``self.apply(convert_module_to_f16)``)."""
        self.dtype = dtype
        convert_module_dtype(self, dtype)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """Velocity for latents x (B, C, R, R, R) at timesteps t (B,) (0..1000) given cond tokens (B, L, Cc)."""
        expected = (self.in_channels, *[self.resolution] * 3)
        if tuple(x.shape[1:]) != expected:
            raise ValueError(f"DenseDiT input must be (B, {expected}), got {tuple(x.shape)}")
        h = patchify(x, self.patch_size)
        h = h.reshape(*h.shape[:2], -1).permute(0, 2, 1)
        h = self.input_layer(h.to(self.input_layer.weight.dtype))
        h = h + self.pos_emb[None]  # promotes to float32 like the official code, cast back below
        t_emb = self.t_embedder(t)
        if self.share_mod:
            t_emb = self.adaLN_modulation(t_emb)
        t_emb = t_emb.type(self.dtype)
        h = h.type(self.dtype)
        cond = cond.type(self.dtype)
        for block in self.blocks:
            h = block(h, t_emb, cond)
        h = h.type(x.dtype)
        h = F.layer_norm(h, h.shape[-1:])  # eps 1e-5, no affine (unlike the in-block norms)
        h = self.out_layer(h.to(self.out_layer.weight.dtype))
        h = h.permute(0, 2, 1).reshape(h.shape[0], h.shape[2], *[self.resolution // self.patch_size] * 3)
        return unpatchify(h, self.patch_size).contiguous()
