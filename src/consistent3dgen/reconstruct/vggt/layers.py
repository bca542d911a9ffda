"""Transformer building blocks of VGGT: attention with QK-norm and 2D RoPE, MLP, LayerScale, blocks, DINOv2.

Parameter names follow the official `facebookresearch/vggt` modules (``qkv``, ``q_norm``, ``ls1.gamma``,
``mlp.fc1`` ...) so official checkpoints load with ``strict=True``. Nothing here allocates or reads tensor
values in ``__init__`` beyond parameter creation, so the whole model can be built on the ``meta`` device and
filled from a memory-mapped checkpoint without a second copy.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class Mlp(nn.Module):
    """Two linear layers with GELU (the ViT feed-forward)."""

    def __init__(self, in_features: int, hidden_features: int | None = None, out_features: int | None = None,
                 bias: bool = True) -> None:
        super().__init__()
        hidden_features = hidden_features or in_features
        out_features = out_features or in_features
        self.fc1 = nn.Linear(in_features, hidden_features, bias=bias)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_features, out_features, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class LayerScale(nn.Module):
    """Per-channel residual scale ``x * gamma``."""

    def __init__(self, dim: int, init_values: float = 1e-5) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), float(init_values)))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gamma


class PositionGetter:
    """(y, x) integer patch coordinates of an ``height x width`` grid, row-major, cached per grid size."""

    def __init__(self) -> None:
        self._cache: dict[tuple[int, int, str], Tensor] = {}

    def __call__(self, batch_size: int, height: int, width: int, device: torch.device | str = "cpu") -> Tensor:
        key = (height, width, str(device))
        if key not in self._cache:
            ys = torch.arange(height, device=device)
            xs = torch.arange(width, device=device)
            self._cache[key] = torch.cartesian_prod(ys, xs)
        return self._cache[key].view(1, height * width, 2).expand(batch_size, -1, -1).clone()


class RotaryPositionEmbedding2D(nn.Module):
    """2D RoPE: the first half of each head's channels is rotated by the y position, the second half by x.

    Within each half the rotation pairs channel ``i`` with ``i + d/2`` ("rotate half" layout), with inverse
    frequencies ``base ** (-2k/d)`` where ``d`` is the half width.
    """

    def __init__(self, frequency: float = 100.0) -> None:
        super().__init__()
        self.base_frequency = float(frequency)
        self._cache: dict[tuple, tuple[Tensor, Tensor]] = {}

    def _cos_sin(self, dim: int, length: int, device: torch.device, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        key = (dim, length, str(device), dtype)
        if key not in self._cache:
            exponents = torch.arange(0, dim, 2, device=device).float() / dim
            inv_freq = 1.0 / (self.base_frequency**exponents)
            angles = torch.outer(torch.arange(length, device=device, dtype=inv_freq.dtype), inv_freq).to(dtype)
            angles = torch.cat((angles, angles), dim=-1)
            self._cache[key] = (angles.cos().to(dtype), angles.sin().to(dtype))
        return self._cache[key]

    @staticmethod
    def _rotate_half(x: Tensor) -> Tensor:
        half = x.shape[-1] // 2
        return torch.cat((-x[..., half:], x[..., :half]), dim=-1)

    def _rope_1d(self, x: Tensor, pos: Tensor, cos_table: Tensor, sin_table: Tensor) -> Tensor:
        cos = F.embedding(pos, cos_table)[:, None]
        sin = F.embedding(pos, sin_table)[:, None]
        return x * cos + self._rotate_half(x) * sin

    def forward(self, tokens: Tensor, positions: Tensor) -> Tensor:
        """tokens (B, heads, N, D) with D % 4 == 0; positions (B, N, 2) integer (y, x)."""
        if tokens.shape[-1] % 4 != 0:
            raise ValueError(f"2D RoPE needs a head dimension divisible by 4, got {tokens.shape[-1]}")
        half = tokens.shape[-1] // 2
        cos_t, sin_t = self._cos_sin(half, int(positions.max()) + 1, tokens.device, tokens.dtype)
        y_part, x_part = tokens.chunk(2, dim=-1)
        y_part = self._rope_1d(y_part, positions[..., 0], cos_t, sin_t)
        x_part = self._rope_1d(x_part, positions[..., 1], cos_t, sin_t)
        return torch.cat((y_part, x_part), dim=-1)


class Attention(nn.Module):
    """Multi-head self-attention with optional per-head LayerNorm on q/k and optional 2D RoPE."""

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = True, proj_bias: bool = True,
                 qk_norm: bool = False, rope: RotaryPositionEmbedding2D | None = None,
                 norm_layer: Callable[[int], nn.Module] = nn.LayerNorm) -> None:
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        # q/k norms use the default LayerNorm eps (1e-5) like the official Attention, whatever the block uses.
        self.q_norm = nn.LayerNorm(self.head_dim) if qk_norm else nn.Identity()
        self.k_norm = nn.LayerNorm(self.head_dim) if qk_norm else nn.Identity()
        self.proj = nn.Linear(dim, dim, bias=proj_bias)
        self.rope = rope

    def forward(self, x: Tensor, pos: Tensor | None = None) -> Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        if self.rope is not None and pos is not None:
            q = self.rope(q, pos)
            k = self.rope(k, pos)
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(b, n, c))


class Block(nn.Module):
    """Pre-norm transformer block: ``x + ls1(attn(norm1 x))``, then ``x + ls2(mlp(norm2 x))``."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 proj_bias: bool = True, ffn_bias: bool = True, init_values: float | None = None,
                 norm_layer: Callable[[int], nn.Module] = nn.LayerNorm, qk_norm: bool = False,
                 rope: RotaryPositionEmbedding2D | None = None) -> None:
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.attn = Attention(dim, num_heads=num_heads, qkv_bias=qkv_bias, proj_bias=proj_bias, qk_norm=qk_norm,
                              rope=rope)
        self.ls1 = LayerScale(dim, init_values) if init_values else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), bias=ffn_bias)
        self.ls2 = LayerScale(dim, init_values) if init_values else nn.Identity()

    def forward(self, x: Tensor, pos: Tensor | None = None) -> Tensor:
        x = x + self.ls1(self.attn(self.norm1(x), pos=pos))
        return x + self.ls2(self.mlp(self.norm2(x)))


class PatchEmbed(nn.Module):
    """Non-overlapping ``patch x patch`` convolution, (B, 3, H, W) → (B, H/p * W/p, D)."""

    def __init__(self, patch_size: int = 14, in_chans: int = 3, embed_dim: int = 768) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        if h % self.patch_size or w % self.patch_size:
            raise ValueError(f"image size {h}x{w} is not a multiple of the patch size {self.patch_size}")
        return self.proj(x).flatten(2).transpose(1, 2)


class DinoV2Encoder(nn.Module):
    """DINOv2 ViT with register tokens (the VGGT patch embedder); returns the normalised patch tokens.

    Layout of the official ``DinoVisionTransformer`` built with ``block_chunks=0``: ``cls_token``, ``pos_embed``
    (trained for a ``img_size/patch`` square grid, bicubic-resized with antialias for other grids),
    ``register_tokens``, ``mask_token`` (unused at inference, kept for the state dict), ``patch_embed.proj``,
    ``blocks.{i}``, ``norm``. LayerNorm eps is 1e-6.
    """

    def __init__(self, img_size: int = 518, patch_size: int = 14, embed_dim: int = 1024, depth: int = 24,
                 num_heads: int = 16, mlp_ratio: float = 4.0, num_register_tokens: int = 4,
                 init_values: float = 1.0, interpolate_antialias: bool = True) -> None:
        super().__init__()
        norm_layer = partial(nn.LayerNorm, eps=1e-6)
        self.patch_size = patch_size
        self.num_register_tokens = num_register_tokens
        self.interpolate_antialias = interpolate_antialias
        num_patches = (img_size // patch_size) ** 2
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, embed_dim))
        self.register_tokens = nn.Parameter(torch.zeros(1, num_register_tokens, embed_dim))
        self.mask_token = nn.Parameter(torch.zeros(1, embed_dim), requires_grad=False)
        self.patch_embed = PatchEmbed(patch_size, 3, embed_dim)
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, mlp_ratio, init_values=init_values, norm_layer=norm_layer)
            for _ in range(depth)
        )
        self.norm = norm_layer(embed_dim)

    def _pos_embed_for(self, grid_h: int, grid_w: int, dtype: torch.dtype) -> Tensor:
        n_trained = self.pos_embed.shape[1] - 1
        if grid_h * grid_w == n_trained and grid_h == grid_w:
            return self.pos_embed
        side = int(math.sqrt(n_trained))
        pe = self.pos_embed.float()
        patch_pe = pe[:, 1:].reshape(1, side, side, -1).permute(0, 3, 1, 2)
        # Official: interpolate_offset=0 in VGGT, so the target size is given directly.
        patch_pe = F.interpolate(patch_pe, size=(grid_h, grid_w), mode="bicubic", antialias=self.interpolate_antialias)
        patch_pe = patch_pe.permute(0, 2, 3, 1).reshape(1, grid_h * grid_w, -1)
        return torch.cat((pe[:, :1], patch_pe), dim=1).to(dtype)

    def forward(self, x: Tensor) -> Tensor:
        """(B, 3, H, W) normalised images → (B, H/p * W/p, D) normalised patch tokens."""
        b, _, h, w = x.shape
        tokens = self.patch_embed(x)
        tokens = torch.cat((self.cls_token.expand(b, -1, -1), tokens), dim=1)
        tokens = tokens + self._pos_embed_for(h // self.patch_size, w // self.patch_size, tokens.dtype)
        tokens = torch.cat((tokens[:, :1], self.register_tokens.expand(b, -1, -1), tokens[:, 1:]), dim=1)
        for blk in self.blocks:
            tokens = blk(tokens)
        tokens = self.norm(tokens)
        return tokens[:, 1 + self.num_register_tokens:]
