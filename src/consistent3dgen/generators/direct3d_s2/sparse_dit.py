"""Direct3D-S2 sparse DiT: flow velocity for latent tokens on sparse voxels (the 512³ / 1024³ stages).

Tokens are the occupied latent cells (coords (N, 4) = (batch, x, y, z), rows grouped by batch; the pipeline
puts them in block order with ``sort_block``). Input: Linear(in → C) + sin-cos position of ``coords * factor``.
Each block: adaLN-modulated spatial sparse attention (``ssa.SpatialSparseAttention``), affine-LayerNorm →
cross-attention to the image tokens (no modulation), adaLN-modulated GELU MLP. Output: LayerNorm (no affine,
eps 1e-5) → Linear(C → out).

Constructor = the official ``sparse_dit_*.params``; parameter names, shapes, order and (with ``use_fp16``)
dtypes equal the official ``SparseDiT`` state dict, so checkpoints load with ``strict=True``.

Batches: the modulation of batch element b uses ``t[b]`` and the cross-attention uses ``cond[b]``, so a
classifier-free-guidance pair can run as one batch of two (same coords twice, cond then zeros) and equals two
separate calls. Memory is linear in the number of tokens: attention is chunked (see ``ssa``), and the MLP and
cross-attention run over row chunks. ``chunk_bytes`` and ``dense_max_tokens`` (batch elements up to this many
tokens take SSA's exact dense fast path; 0 = always chunked; None = as its mask memory allows) are not
official parameters and add no weights. The forward is autograd-safe, so the same class trains (the mini prior).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .attention import FeedForwardNet, LayerNorm32, MultiHeadAttention, convert_module_dtype
from .embedders import AbsolutePositionEmbedder, TimestepEmbedder
from .sparse_conv import TorchsparseConv3d
from .sparse_tensor import SparseTensor
from .ssa import DEFAULT_CHUNK_BYTES, SpatialSparseAttention, batch_slices

# rows of tokens per MLP / cross-attention chunk (the MLP hidden layer is 4x the width)
ROW_CHUNK = 8192


def _check_tokens(x: SparseTensor) -> list[slice]:
    """Validate coords (int, non-negative, rows grouped by increasing batch) and return the batch slices."""
    coords = x.coords
    if coords.dtype.is_floating_point:
        raise ValueError(f"sparse DiT coords must be integers, got {coords.dtype}")
    if coords.shape[0] == 0:
        raise ValueError("sparse DiT got no tokens")
    if (coords < 0).any():
        raise ValueError("sparse DiT coords must be non-negative")
    batch = coords[:, 0]
    if (batch[1:] < batch[:-1]).any():
        raise ValueError("sparse DiT rows must be grouped by batch index in increasing order")
    slices = batch_slices(batch)
    if any(s.stop == s.start for s in slices):
        raise ValueError("sparse DiT batch indices must be 0..B-1 with tokens for every element")
    return slices


class SparseCrossBlock(nn.Module):
    """``ModulatedSparseTransformerCrossBlock`` with SSA self-attention (official keys)."""

    def __init__(
        self,
        channels: int,
        ctx_channels: int,
        num_heads: int,
        num_kv_heads: int = 2,
        compression_block_size: int = 4,
        selection_block_size: int = 8,
        topk: int = 8,
        mlp_ratio: float = 4.0,
        compression_version: str = "v2",
        qk_rms_norm_cross: bool = False,
        share_mod: bool = False,
        resolution: int = 64,
        window_size: int = 8,
        shift_window: int = 0,
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
        dense_max_tokens: int | None = None,
    ):
        super().__init__()
        self.share_mod = share_mod
        self.norm1 = LayerNorm32(channels, elementwise_affine=False, eps=1e-6)
        self.norm2 = LayerNorm32(channels, elementwise_affine=True, eps=1e-6)
        self.norm3 = LayerNorm32(channels, elementwise_affine=False, eps=1e-6)
        self.self_attn = SpatialSparseAttention(
            channels,
            num_q_heads=num_heads,
            num_kv_heads=num_kv_heads,
            head_dim=channels // num_heads,
            compression_block_size=compression_block_size,
            selection_block_size=selection_block_size,
            topk=topk,
            window_size=window_size,
            shift_window=shift_window,
            resolution=resolution,
            compression_version=compression_version,
            chunk_bytes=chunk_bytes,
            dense_max_tokens=dense_max_tokens,
        )
        self.cross_attn = MultiHeadAttention(
            channels, num_heads, ctx_channels=ctx_channels, kind="cross", qk_rms_norm=qk_rms_norm_cross
        )
        self.mlp = FeedForwardNet(channels, mlp_ratio)
        if not share_mod:
            self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(channels, 6 * channels, bias=True))

    @staticmethod
    def _per_batch(feats: torch.Tensor, slices: list[slice], fn) -> torch.Tensor:
        out = torch.empty_like(feats)
        for b, rows in enumerate(slices):
            out[rows] = fn(feats[rows], b)
        return out

    def forward(
        self, x: SparseTensor, mod: torch.Tensor, context: list[torch.Tensor], slices: list[slice]
    ) -> SparseTensor:
        """x (N, C) tokens; mod (B, C) timestep embedding (or (B, 6C) with share_mod); context[b] (L_b, Cc)."""
        if not self.share_mod:
            mod = self.adaLN_modulation(mod)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = mod.chunk(6, dim=1)
        feats = x.feats
        h = self._per_batch(self.norm1(feats), slices, lambda f, b: f * (1 + scale_msa[b]) + shift_msa[b])
        h = self.self_attn(x.replace(h)).feats
        feats = feats + self._per_batch(h, slices, lambda f, b: f * gate_msa[b])
        del h
        # cross-attention and MLP act per token: row chunks keep their scratch memory bounded
        out = torch.empty_like(feats)
        for b, rows in enumerate(slices):
            ctx = context[b].unsqueeze(0)
            for start in range(rows.start, rows.stop, ROW_CHUNK):
                stop = min(start + ROW_CHUNK, rows.stop)
                f = feats[start:stop]
                f = f + self.cross_attn(self.norm2(f).unsqueeze(0), ctx)[0]
                g = self.norm3(f) * (1 + scale_mlp[b]) + shift_mlp[b]
                out[start:stop] = f + self.mlp(g) * gate_mlp[b]
        return x.replace(out)


class SparseDiT(nn.Module):
    """The official sparse DiT; constructor takes the ``sparse_dit_{512,1024}.params`` of a Direct3D-S2 config."""

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
        num_kv_heads: int = 2,
        compression_block_size: int = 4,
        selection_block_size: int = 8,
        topk: int = 8,
        compression_version: str = "v2",
        mlp_ratio: float = 4,
        pe_mode: str = "ape",
        use_fp16: bool = False,
        use_checkpoint: bool = False,  # training-only option of the official class; accepted and ignored
        share_mod: bool = False,
        qk_rms_norm: bool = False,  # official: only for non-SSA self-attention, so no parameters here
        qk_rms_norm_cross: bool = False,
        sparse_conditions: bool = False,
        factor: float = 1.0,
        window_size: int = 8,
        use_shift: bool = True,
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
        dense_max_tokens: int | None = None,
    ):
        super().__init__()
        if pe_mode != "ape":
            raise NotImplementedError(f"pe_mode {pe_mode!r}: only 'ape' is used by the released models")
        if sparse_conditions and cond_channels != model_channels:
            raise ValueError("sparse_conditions adds a model_channels position embedding to the condition tokens")
        self.resolution = resolution
        self.in_channels = in_channels
        self.model_channels = model_channels
        self.cond_channels = cond_channels
        self.out_channels = out_channels
        self.num_blocks = num_blocks
        self.num_heads = num_heads or model_channels // num_head_channels
        self.pe_mode = pe_mode
        self.share_mod = share_mod
        self.qk_rms_norm = qk_rms_norm
        self.sparse_conditions = sparse_conditions
        self.factor = factor
        self.compression_block_size = compression_block_size
        self.selection_block_size = selection_block_size
        self.dtype = torch.float32

        self.t_embedder = TimestepEmbedder(model_channels)
        if share_mod:
            self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(model_channels, 6 * model_channels, bias=True))
        if sparse_conditions:
            self.cond_proj = nn.Linear(cond_channels, cond_channels)
            self.pos_embedder_cond = AbsolutePositionEmbedder(model_channels, in_channels=3)
        self.pos_embedder = AbsolutePositionEmbedder(model_channels)
        self.input_layer = nn.Linear(in_channels, model_channels)
        self.blocks = nn.ModuleList(
            SparseCrossBlock(
                model_channels,
                cond_channels,
                num_heads=self.num_heads,
                num_kv_heads=num_kv_heads,
                compression_block_size=compression_block_size,
                selection_block_size=selection_block_size,
                topk=topk,
                mlp_ratio=mlp_ratio,
                compression_version=compression_version,
                qk_rms_norm_cross=qk_rms_norm_cross,
                share_mod=share_mod,
                resolution=resolution,
                window_size=window_size,
                # Swin-style: odd blocks shift the window grid by half a window (all blocks if not use_shift)
                shift_window=window_size // 2 * (i % 2) if use_shift else window_size // 2,
                chunk_bytes=chunk_bytes,
                dense_max_tokens=dense_max_tokens,
            )
            for i in range(num_blocks)
        )
        self.out_layer = nn.Linear(model_channels, out_channels)
        if use_fp16:
            self.convert_to(torch.float16)

    def convert_to(self, dtype: torch.dtype) -> None:
        """Set the compute dtype: every Linear and sparse conv converts (official ``convert_module_to_f16``);
        norms and ``intra_block_pe`` stay float32."""
        self.dtype = dtype
        convert_module_dtype(self, dtype)
        for sub in self.modules():
            if isinstance(sub, TorchsparseConv3d):
                for p in sub.parameters(recurse=False):
                    p.data = p.data.to(dtype)

    def _conditions(self, cond: torch.Tensor | SparseTensor, batch_size: int) -> list[torch.Tensor]:
        """Per batch element condition tokens (L_b, C) in the compute dtype."""
        if isinstance(cond, SparseTensor):
            if not self.sparse_conditions:
                raise ValueError("this sparse DiT takes dense condition tokens (B, L, C), got a SparseTensor")
            feats = self.cond_proj(cond.feats.to(self.dtype))
            feats = feats + self.pos_embedder_cond(cond.coords[:, 1:]).to(self.dtype)
            slices = batch_slices(cond.coords[:, 0])
            tokens = [feats[s] for s in slices]
        else:
            if self.sparse_conditions:
                raise ValueError("this sparse DiT (sparse_conditions) takes condition tokens as a SparseTensor")
            if cond.ndim != 3 or cond.shape[-1] != self.cond_channels:
                raise ValueError(f"condition tokens must be (B, L, {self.cond_channels}), got {tuple(cond.shape)}")
            tokens = list(cond.to(self.dtype).unbind(0))
        if len(tokens) != batch_size:
            raise ValueError(f"{len(tokens)} condition sets for {batch_size} batch elements of tokens")
        return tokens

    def forward(self, x: SparseTensor, t: torch.Tensor, cond: torch.Tensor | SparseTensor) -> SparseTensor:
        """Velocity (N, out) on x's sites for tokens x (N, in), timesteps t (B,) or (1,) on the 0..1000 scale,
        condition tokens cond (B, L, Cc) (or a SparseTensor with ``sparse_conditions``)."""
        slices = _check_tokens(x)
        if x.feats.ndim != 2 or x.feats.shape[1] != self.in_channels:
            raise ValueError(f"sparse DiT tokens must be (N, {self.in_channels}), got {tuple(x.feats.shape)}")
        batch_size = len(slices)
        t = torch.as_tensor(t, device=x.feats.device).reshape(-1)
        if t.shape[0] == 1:
            t = t.expand(batch_size)
        if t.shape[0] != batch_size:
            raise ValueError(f"{t.shape[0]} timesteps for {batch_size} batch elements")
        context = self._conditions(cond, batch_size)

        h = self.input_layer(x.feats.to(self.input_layer.weight.dtype)).type(self.dtype)
        t_emb = self.t_embedder(t)
        if self.share_mod:
            t_emb = self.adaLN_modulation(t_emb)
        t_emb = t_emb.type(self.dtype)
        h = h + self.pos_embedder(x.coords[:, 1:], factor=self.factor).type(self.dtype)
        # one cache per forward: coarse coords, block layout and neighbour maps are shared by all blocks
        hs = SparseTensor(h, x.coords, {})
        for block in self.blocks:
            hs = block(hs, t_emb, context, slices)
        h = F.layer_norm(hs.feats.float(), hs.feats.shape[-1:]).type(self.dtype)  # eps 1e-5, no affine
        out = self.out_layer(h.to(self.out_layer.weight.dtype))
        return SparseTensor(out.to(x.feats.dtype), x.coords)


__all__ = ["SparseCrossBlock", "SparseDiT"]
