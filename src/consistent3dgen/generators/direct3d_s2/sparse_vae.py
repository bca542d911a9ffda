"""Direct3D-S2 sparse SDF VAE (encoder, decoder, VAE wrapper) in pure PyTorch; official state-dict layout.

Encoder: SDF voxels (N, 1) at the SDF resolution → SparseLinear(1, C/16) → 3 × SparseDownBlock3d (mean pool by 2)
→ sparse transformer (swin windows) at the latent resolution → LayerNorm → SparseLinear → posterior mean/logvar.
Decoder: latents → sparse transformer → 3 × SparseSubdivideBlock3d (×2 each) → SparseLinear → tanh SDF.

Swin attention: block i shifts coords by ``window_size // 2 * (i % 2)``, windows are ``shifted // window_size``
per batch element, and attention is exact softmax attention inside each window. Windows are grouped by size
into power-of-two buckets and padded (key-padding mask), so no N × N matrix is ever formed.

Mixed precision: ``use_fp16`` converts linear/conv parameters to float16 like the official ``convert_to_fp16``
(norms stay float32). The transformer runs in the dtype of ``input_layer.weight`` (so ``model.float()`` gives
a float32 model); layers handed another dtype compute in their input's dtype.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from .attention import MultiHeadRMSNorm
from .embedders import AbsolutePositionEmbedder
from .sparse_conv import (
    SparseConv3d,
    SparseDownsample,
    SparseGroupNorm32,
    SparseSiLU,
    SparseSubdivide,
    SparseTanh,
    TorchsparseConv3d,
)
from .sparse_tensor import SparseTensor

# bytes the attention scores of one window bucket chunk may take
_ATTN_BUDGET_BYTES = 64 * 2**20


def convert_to_dtype(module: nn.Module, dtype: torch.dtype) -> None:
    """Cast linear and (sparse) conv parameters to ``dtype``; norms stay as they are (official FP16_MODULES)."""
    for sub in module.modules():
        if isinstance(sub, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose3d, TorchsparseConv3d)):
            for p in sub.parameters(recurse=False):
                p.data = p.data.to(dtype)


def _linear(layer: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """``layer(x)`` computed in x's dtype (official fp16 models hand fp32 tensors to fp16 layers in places)."""
    w, b = layer.weight, layer.bias
    if w.dtype != x.dtype:
        w, b = w.to(x.dtype), None if b is None else b.to(x.dtype)
    return F.linear(x, w, b)


class SparseLinear(nn.Linear):
    """``nn.Linear`` on the features of a SparseTensor (keys ``weight``, ``bias``)."""

    def forward(self, x: SparseTensor) -> SparseTensor:  # type: ignore[override]
        return x.replace(_linear(self, x.feats))


class LayerNorm32(nn.LayerNorm):
    """LayerNorm computed in float32, cast back to the input dtype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float()).to(x.dtype)


# ---------------------------------------------------------------------------------------------- windowed attention


def window_partition(coords: torch.Tensor, window_size: int, shift: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows sorted by window (official ``calc_window_partition``): (forward permutation, window lengths).

    Window id packs (batch, x, y, z) of ``(coords + shift) // window_size``; the sort is by that id.
    """
    c = coords.long().clone()
    c[:, 1:] += shift
    n_windows = [math.ceil((int(m) + 1) / window_size) for m in c[:, 1:].max(dim=0).values.tolist()]
    w = torch.div(c[:, 1:], window_size, rounding_mode="floor")
    wid = ((c[:, 0] * n_windows[0] + w[:, 0]) * n_windows[1] + w[:, 1]) * n_windows[2] + w[:, 2]
    order = torch.argsort(wid, stable=True)
    _, lengths = torch.unique_consecutive(wid[order], return_counts=True)
    return order, lengths


def windowed_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Softmax attention within consecutive row groups of ``lengths`` (rows already in window order).

    q, k, v: (M, H, D). Returns (M, H, D). Windows are bucketed by padded length (next power of two).
    """
    m, h, d = q.shape
    out = torch.empty_like(v)
    compute_dtype = torch.float32 if q.device.type == "cpu" and q.dtype == torch.float16 else q.dtype
    starts = torch.cumsum(lengths, 0) - lengths
    padded = 2 ** torch.ceil(torch.log2(lengths.double())).long()
    for size in torch.unique(padded).tolist():
        sel = (padded == size).nonzero().squeeze(1)
        # windows of this bucket per chunk: scores take windows * H * size² floats
        per_chunk = max(1, _ATTN_BUDGET_BYTES // (h * size * size * 4))
        for s in range(0, sel.numel(), per_chunk):
            win = sel[s : s + per_chunk]
            ar = torch.arange(size, device=q.device)
            valid = ar[None, :] < lengths[win][:, None]  # [W, size]
            rows = (starts[win][:, None] + ar[None, :]).clamp(max=m - 1)  # pad rows point anywhere; masked
            qw, kw, vw = (t[rows].to(compute_dtype).permute(0, 2, 1, 3) for t in (q, k, v))  # [W, H, size, D]
            o = F.scaled_dot_product_attention(qw, kw, vw, attn_mask=valid[:, None, None, :])
            o = o.permute(0, 2, 1, 3)[valid]  # [valid rows, H, D] in window order
            out[rows[valid]] = o.to(out.dtype)
    return out


class SparseWindowSelfAttention(nn.Module):
    """Multi-head self-attention inside (shifted) windows; keys ``to_qkv``, ``to_out`` (+ rms norms)."""

    def __init__(self, channels: int, num_heads: int, window_size: int, shift_window: int, qk_rms_norm: bool = False):
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"{channels} channels do not split into {num_heads} heads")
        self.channels = channels
        self.num_heads = num_heads
        self.window_size = window_size
        self.shift_window = shift_window
        self.qk_rms_norm = qk_rms_norm
        self.to_qkv = nn.Linear(channels, channels * 3, bias=True)
        if qk_rms_norm:
            self.q_rms_norm = MultiHeadRMSNorm(channels // num_heads, num_heads)
            self.k_rms_norm = MultiHeadRMSNorm(channels // num_heads, num_heads)
        self.to_out = nn.Linear(channels, channels)

    def forward(self, x: SparseTensor) -> SparseTensor:
        n = x.feats.shape[0]
        qkv = _linear(self.to_qkv, x.feats).reshape(n, 3, self.num_heads, -1)
        q, k, v = qkv.unbind(dim=1)
        if self.qk_rms_norm:
            q, k = self.q_rms_norm(q), self.k_rms_norm(k)
        key = ("window_partition", self.window_size, self.shift_window)
        part = x.cache.get(key)
        if part is None:
            part = window_partition(x.coords, self.window_size, self.shift_window)
            x.cache[key] = part
        order, lengths = part
        h = torch.empty_like(v)
        h[order] = windowed_attention(q[order], k[order], v[order], lengths)
        return x.replace(_linear(self.to_out, h.reshape(n, self.channels)))


class SparseFeedForwardNet(nn.Module):
    def __init__(self, channels: int, mlp_ratio: float = 4.0):
        super().__init__()
        hidden = int(channels * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(channels, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = _linear(self.mlp[0], x)
        return _linear(self.mlp[2], self.mlp[1](h))


class SparseTransformerBlock(nn.Module):
    """Pre-norm block: x + attn(norm1(x)), then x + mlp(norm2(x)); norms without affine, eps 1e-6."""

    def __init__(
        self,
        channels: int,
        num_heads: int,
        mlp_ratio: float,
        window_size: int,
        shift_window: int,
        qk_rms_norm: bool = False,
    ):
        super().__init__()
        self.norm1 = LayerNorm32(channels, elementwise_affine=False, eps=1e-6)
        self.norm2 = LayerNorm32(channels, elementwise_affine=False, eps=1e-6)
        self.attn = SparseWindowSelfAttention(channels, num_heads, window_size, shift_window, qk_rms_norm)
        self.mlp = SparseFeedForwardNet(channels, mlp_ratio)

    def forward(self, x: SparseTensor) -> SparseTensor:
        feats = x.feats + self.attn(x.replace(self.norm1(x.feats))).feats
        feats = feats + self.mlp(self.norm2(feats))
        return x.replace(feats)


class SparseTransformerBase(nn.Module):
    """Input linear + absolute position embedding + swin transformer blocks (official key layout)."""

    def __init__(
        self,
        in_channels: int,
        model_channels: int,
        num_blocks: int,
        num_heads: int | None = None,
        num_head_channels: int | None = 64,
        mlp_ratio: float = 4.0,
        attn_mode: Literal["swin"] = "swin",
        window_size: int = 8,
        pe_mode: Literal["ape"] = "ape",
        use_fp16: bool = False,
        use_checkpoint: bool = False,
        qk_rms_norm: bool = False,
    ):
        super().__init__()
        if attn_mode != "swin":
            raise NotImplementedError(f"attention mode {attn_mode!r} is not implemented (Direct3D-S2 uses 'swin')")
        if pe_mode != "ape":
            raise NotImplementedError(f"position embedding {pe_mode!r} is not implemented (Direct3D-S2 uses 'ape')")
        self.in_channels = in_channels
        self.model_channels = model_channels
        self.num_blocks = num_blocks
        self.window_size = window_size
        self.num_heads = num_heads or model_channels // num_head_channels
        self.mlp_ratio = mlp_ratio
        self.use_fp16 = use_fp16
        self.use_checkpoint = use_checkpoint  # training only; accepted for config compatibility
        self.pos_embedder = AbsolutePositionEmbedder(model_channels)
        self.input_layer = SparseLinear(in_channels, model_channels)
        self.blocks = nn.ModuleList(
            SparseTransformerBlock(
                model_channels, self.num_heads, mlp_ratio, window_size, window_size // 2 * (i % 2), qk_rms_norm
            )
            for i in range(num_blocks)
        )

    @property
    def dtype(self) -> torch.dtype:
        """Compute dtype of the transformer (follows the parameters: float16 after ``use_fp16``)."""
        return self.input_layer.weight.dtype

    def transformer(self, x: SparseTensor, factor: float | None = None) -> SparseTensor:
        h = self.input_layer(x)
        h = h.replace((h.feats + self.pos_embedder(x.coords[:, 1:], factor)).to(self.dtype))
        for block in self.blocks:
            h = block(h)
        return h


class SparseDownBlock3d(nn.Module):
    """GroupNorm → SiLU → mean-pool ×2 → conv3 → GroupNorm → SiLU → conv3, plus pooled (1x1-conv) skip."""

    def __init__(self, channels: int, out_channels: int | None = None, num_groups: int = 32, use_checkpoint=False):
        super().__init__()
        self.channels = channels
        self.out_channels = out_channels or channels
        self.act_layers = nn.Sequential(SparseGroupNorm32(num_groups, channels), SparseSiLU())
        self.down = SparseDownsample(2)
        self.out_layers = nn.Sequential(
            SparseConv3d(channels, self.out_channels, 3, padding=1),
            SparseGroupNorm32(num_groups, self.out_channels),
            SparseSiLU(),
            SparseConv3d(self.out_channels, self.out_channels, 3, padding=1),
        )
        if self.out_channels == channels:
            self.skip_connection: nn.Module = nn.Identity()
        else:
            self.skip_connection = SparseConv3d(channels, self.out_channels, 1)

    def forward(self, x: SparseTensor) -> SparseTensor:
        h = self.down(self.act_layers(x))
        skip = self.down(x)  # same coords (cached pooling map), so h and skip rows line up
        h = self.out_layers(h)
        return h.replace(h.feats + self.skip_connection(skip).feats)


class SparseSubdivideBlock3d(nn.Module):
    """conv3 → SiLU → subdivide ×2 → conv3 → SiLU."""

    def __init__(self, channels: int, out_channels: int | None = None, use_checkpoint: bool = False):
        super().__init__()
        self.channels = channels
        self.out_channels = out_channels or channels
        self.act_layers = nn.Sequential(SparseConv3d(channels, self.out_channels, 3, padding=1), SparseSiLU())
        self.sub = SparseSubdivide()
        self.out_layers = nn.Sequential(SparseConv3d(self.out_channels, self.out_channels, 3, padding=1), SparseSiLU())

    def forward(self, x: SparseTensor) -> SparseTensor:
        return self.out_layers(self.sub(self.act_layers(x)))


class SparseSDFEncoder(SparseTransformerBase):
    """SDF voxels → (N_latent, 2 * latent_channels) posterior parameters at resolution / 8."""

    def __init__(
        self,
        resolution: int,
        in_channels: int,
        model_channels: int,
        latent_channels: int,
        num_blocks: int,
        num_heads: int | None = None,
        num_head_channels: int | None = 64,
        mlp_ratio: float = 4,
        attn_mode: Literal["swin"] = "swin",
        window_size: int = 8,
        pe_mode: Literal["ape"] = "ape",
        use_fp16: bool = False,
        use_checkpoint: bool = False,
        qk_rms_norm: bool = False,
        norm_groups: int = 32,
    ):
        super().__init__(
            in_channels, model_channels, num_blocks, num_heads, num_head_channels, mlp_ratio, attn_mode, window_size,
            pe_mode, use_fp16, use_checkpoint, qk_rms_norm,
        )  # fmt: skip
        self.resolution = resolution
        self.input_layer1 = SparseLinear(1, model_channels // 16)
        # norm_groups: GroupNorm groups of the down blocks (official 32; needs model_channels // 16 divisible by it)
        self.downsample = nn.ModuleList(
            [
                SparseDownBlock3d(model_channels // 16, model_channels // 8, num_groups=norm_groups),
                SparseDownBlock3d(model_channels // 8, model_channels // 4, num_groups=norm_groups),
                SparseDownBlock3d(model_channels // 4, model_channels, num_groups=norm_groups),
            ]
        )
        self.out_layer = SparseLinear(model_channels, 2 * latent_channels)
        if use_fp16:
            convert_to_dtype(self, torch.float16)

    def forward(self, x: SparseTensor, factor: float | None = None) -> SparseTensor:
        x = self.input_layer1(x.replace(x.feats.to(self.input_layer1.weight.dtype)))
        for block in self.downsample:
            x = block(x)
        h = self.transformer(x, factor).to(x.dtype)
        h = h.replace(F.layer_norm(h.feats.float(), h.feats.shape[-1:]).to(h.dtype))
        return self.out_layer(h)


class SparseSDFDecoder(SparseTransformerBase):
    """Latent tokens → tanh SDF on voxels at 8 × the latent resolution (optionally chunked in space)."""

    def __init__(
        self,
        resolution: int,
        model_channels: int,
        latent_channels: int,
        num_blocks: int,
        num_heads: int | None = None,
        num_head_channels: int | None = 64,
        mlp_ratio: float = 4,
        attn_mode: Literal["swin"] = "swin",
        window_size: int = 8,
        pe_mode: Literal["ape"] = "ape",
        use_fp16: bool = False,
        use_checkpoint: bool = False,
        qk_rms_norm: bool = False,
        representation_config: dict | None = None,
        out_channels: int = 1,
        chunk_size: int = 1,
    ):
        super().__init__(
            latent_channels, model_channels, num_blocks, num_heads, num_head_channels, mlp_ratio, attn_mode,
            window_size, pe_mode, use_fp16, use_checkpoint, qk_rms_norm,
        )  # fmt: skip
        self.resolution = resolution
        self.rep_config = representation_config
        self.out_channels = out_channels
        self.chunk_size = chunk_size
        self.upsample = nn.ModuleList(
            [
                SparseSubdivideBlock3d(model_channels, model_channels // 4),
                SparseSubdivideBlock3d(model_channels // 4, model_channels // 8),
                SparseSubdivideBlock3d(model_channels // 8, model_channels // 16),
            ]
        )
        self.out_layer = SparseLinear(model_channels // 16, out_channels)
        self.out_active = SparseTanh()
        if use_fp16:
            convert_to_dtype(self, torch.float16)

    def upsamples(self, h: SparseTensor, out_dtype: torch.dtype) -> tuple[SparseTensor, SparseTensor]:
        """Transformer output → (tanh SDF, last features) at 8 × the resolution."""
        for block in self.upsample:
            h = block(h)
        h = h.to(out_dtype)
        return self.out_active(self.out_layer(h)), h

    def forward(
        self,
        x: SparseTensor,
        factor: float | None = None,
        return_feat: bool = False,
        chunk_size: int | None = None,
        padding: int = 4,
    ) -> SparseTensor | tuple[SparseTensor, SparseTensor]:
        """Decode. ``chunk_size`` > 1 (default ``self.chunk_size``) upsamples ``chunk_size``³ spatial chunks one
        at a time, each with ``padding`` latent cells of context (the official ``split_for_meshing``).

        Difference from the official chunked path: it keeps voxels up to ``core_end * 8 + 6`` per chunk, so voxels
        just past a chunk boundary appear twice (from both chunks, same values since the context covers the
        receptive field); here every voxel is kept once, from the chunk whose core holds it. Rows are grouped by
        batch element, chunk-major inside it (the official order is chunk-major, then batch).
        """
        h = self.transformer(x, factor)
        chunks = self.chunk_size if chunk_size is None else chunk_size
        if chunks <= 1:
            sdf, feat = self.upsamples(h, x.dtype)
            return (sdf, feat) if return_feat else sdf
        sdf_parts, feat_parts, coord_parts = [], [], []
        for lo, hi, core_lo, core_hi in _chunk_boxes(self.resolution, chunks, padding, h.coords.device):
            xyz = h.coords[:, 1:]
            inside = ((xyz >= lo) & (xyz < hi)).all(dim=1)
            if not inside.any():
                continue
            # no shift to local coordinates: convolutions and subdivision are translation invariant
            sdf, feat = self.upsamples(SparseTensor(h.feats[inside], h.coords[inside]), x.dtype)
            fine = sdf.coords[:, 1:]
            core = ((fine >= core_lo * 8) & (fine < core_hi * 8)).all(dim=1)
            coord_parts.append(sdf.coords[core])
            sdf_parts.append(sdf.feats[core])
            feat_parts.append(feat.feats[core])
        coords = torch.cat(coord_parts) if coord_parts else h.coords[:0]
        # rows grouped by batch (stable), chunk order inside a batch element
        order = torch.argsort(coords[:, 0], stable=True)
        sdf_t = SparseTensor(torch.cat(sdf_parts)[order], coords[order]) if coord_parts else h.replace(h.feats[:0])
        if not return_feat:
            return sdf_t
        feat_t = sdf_t.replace(torch.cat(feat_parts)[order]) if coord_parts else sdf_t
        return sdf_t, feat_t


def _chunk_boxes(resolution: int, chunks: int, padding: int, device: torch.device | None = None):
    """(padded lo, padded hi, core lo, core hi) latent-coordinate boxes of a chunks³ split of the grid, on
    ``device`` (the coordinates' device: a CPU box beside CUDA coordinates is an error)."""
    sub = resolution // chunks
    if sub * chunks != resolution:
        raise ValueError(f"resolution {resolution} is not divisible into {chunks} chunks")
    for i in range(chunks):
        for j in range(chunks):
            for k in range(chunks):
                core_lo = torch.tensor([i * sub, j * sub, k * sub], device=device)
                core_hi = core_lo + sub
                yield (core_lo - padding).clamp(min=0), (core_hi + padding).clamp(max=resolution), core_lo, core_hi


class DiagonalGaussian:
    """Posterior N(mean, exp(logvar)) from the encoder output (mean first, logvar clamped to [-30, 20])."""

    def __init__(self, parameters: torch.Tensor):
        self.mean, logvar = torch.chunk(parameters, 2, dim=1)
        self.logvar = logvar.clamp(-30.0, 20.0)
        self.std = torch.exp(0.5 * self.logvar)

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        noise = torch.randn(self.mean.shape, generator=generator, device=self.mean.device, dtype=self.mean.dtype)
        return self.mean + self.std * noise

    def mode(self) -> torch.Tensor:
        return self.mean


class SparseSDFVAE(nn.Module):
    """The official ``SparseSDFVAE``: keys ``encoder.*`` and ``decoder.*``; ``resolution`` is the latent grid.

    ``encoder_norm_groups`` (not an official parameter; default the official 32) sets the GroupNorm groups of the
    encoder's down blocks, so narrow encoders (the mini prior's) can be built; it changes no parameter shapes.
    """

    def __init__(
        self,
        *,
        embed_dim: int = 0,
        resolution: int = 64,
        model_channels_encoder: int = 512,
        num_blocks_encoder: int = 4,
        num_heads_encoder: int = 8,
        num_head_channels_encoder: int = 64,
        model_channels_decoder: int = 512,
        num_blocks_decoder: int = 4,
        num_heads_decoder: int = 8,
        num_head_channels_decoder: int = 64,
        out_channels: int = 1,
        use_fp16: bool = False,
        use_checkpoint: bool = False,
        chunk_size: int = 1,
        latents_scale: float = 1.0,
        latents_shift: float = 0.0,
        encoder_norm_groups: int = 32,
    ):
        super().__init__()
        for channels in (model_channels_encoder // 16, model_channels_encoder // 8, model_channels_encoder // 4):
            if encoder_norm_groups < 1 or channels % encoder_norm_groups:
                raise ValueError(
                    f"encoder_norm_groups {encoder_norm_groups} does not divide the encoder's down-block width "
                    f"{channels} (model_channels_encoder {model_channels_encoder})"
                )
        self.use_checkpoint = use_checkpoint
        self.resolution = resolution
        self.latents_scale = latents_scale
        self.latents_shift = latents_shift
        self.embed_dim = embed_dim
        self.encoder = SparseSDFEncoder(
            resolution=resolution,
            in_channels=model_channels_encoder,
            model_channels=model_channels_encoder,
            latent_channels=embed_dim,
            num_blocks=num_blocks_encoder,
            num_heads=num_heads_encoder,
            num_head_channels=num_head_channels_encoder,
            use_fp16=use_fp16,
            use_checkpoint=use_checkpoint,
            norm_groups=encoder_norm_groups,
        )
        self.decoder = SparseSDFDecoder(
            resolution=resolution,
            model_channels=model_channels_decoder,
            latent_channels=embed_dim,
            num_blocks=num_blocks_decoder,
            num_heads=num_heads_decoder,
            num_head_channels=num_head_channels_decoder,
            out_channels=out_channels,
            use_fp16=use_fp16,
            use_checkpoint=use_checkpoint,
            chunk_size=chunk_size,
        )

    def encode(
        self,
        x: SparseTensor,
        sample_posterior: bool = False,
        factor: float | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[SparseTensor, DiagonalGaussian]:
        """SDF voxels (feats (N, 1), coords (batch, x, y, z) at 8 × ``resolution``) → (latents, posterior)."""
        if x.feats.ndim == 1:
            x = x.replace(x.feats[:, None])
        h = self.encoder(x, factor)
        posterior = DiagonalGaussian(h.feats)
        z = posterior.sample(generator) if sample_posterior else posterior.mode()
        return h.replace(z), posterior

    def decode(
        self,
        latents: SparseTensor,
        factor: float = 1.0,
        return_feat: bool = False,
        chunk_size: int | None = None,
    ) -> SparseTensor | tuple[SparseTensor, SparseTensor]:
        """Latents (already un-scaled: ``z / latents_scale + latents_shift``) → tanh SDF voxels."""
        return self.decoder(latents, factor=factor, return_feat=return_feat, chunk_size=chunk_size)
