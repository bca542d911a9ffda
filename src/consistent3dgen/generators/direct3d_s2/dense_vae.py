"""Direct3D-S2 dense shape VAE: 64³ occupancy ↔ 16³ × 8 latent (official ``DenseShapeVAE`` layout).

Encoder: conv → [ResBlock × n, 2³ stride-2 conv] per level → middle ResBlocks → LayerNorm/SiLU/conv to
2·embed_dim channels (mean, logvar). Decoder: conv → middle ResBlocks → [ResBlock × n, conv + 3-D pixel
shuffle] per level → LayerNorm/SiLU/conv to logits. Norms are channel LayerNorms computed in float32.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .attention import ChannelLayerNorm32, convert_module_dtype


def pixel_shuffle_3d(x: torch.Tensor, scale: int) -> torch.Tensor:
    """(B, C·s³, H, W, D) → (B, C, H·s, W·s, D·s); sub-voxel offsets are the slowest channel axes."""
    b, c, h, w, d = x.shape
    c_out = c // scale**3
    x = x.reshape(b, c_out, scale, scale, scale, h, w, d)
    x = x.permute(0, 1, 5, 2, 6, 3, 7, 4)
    return x.reshape(b, c_out, h * scale, w * scale, d * scale)


class ResBlock3d(nn.Module):
    """norm → SiLU → conv → norm → SiLU → conv, plus (1×1 conv or identity) skip."""

    def __init__(self, channels: int, out_channels: int | None = None):
        super().__init__()
        out_channels = out_channels or channels
        self.norm1 = ChannelLayerNorm32(channels)
        self.norm2 = ChannelLayerNorm32(out_channels)
        self.conv1 = nn.Conv3d(channels, out_channels, 3, padding=1)
        self.conv2 = nn.Conv3d(out_channels, out_channels, 3, padding=1)
        self.skip_connection = nn.Conv3d(channels, out_channels, 1) if channels != out_channels else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return h + self.skip_connection(x)


class DownsampleBlock3d(nn.Module):
    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = nn.Conv3d(in_channels, out_channels, 2, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class UpsampleBlock3d(nn.Module):
    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = nn.Conv3d(in_channels, out_channels * 8, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return pixel_shuffle_3d(self.conv(x), 2)


def _out_layer(channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(ChannelLayerNorm32(channels), nn.SiLU(), nn.Conv3d(channels, out_channels, 3, padding=1))


class DenseEncoder(nn.Module):
    """Occupancy in [-1, 1] (B, in, R, R, R) → (B, 2·latent, R/2^(L-1), ...) (keys ``encoder.*``)."""

    def __init__(
        self,
        in_channels: int,
        latent_channels: int,
        num_res_blocks: int,
        channels: list[int],
        num_res_blocks_middle: int = 2,
        use_fp16: bool = False,
    ):
        super().__init__()
        self.input_layer = nn.Conv3d(in_channels, channels[0], 3, padding=1)
        self.blocks = nn.ModuleList()
        for i, ch in enumerate(channels):
            self.blocks.extend(ResBlock3d(ch, ch) for _ in range(num_res_blocks))
            if i < len(channels) - 1:
                self.blocks.append(DownsampleBlock3d(ch, channels[i + 1]))
        self.middle_block = nn.Sequential(*[ResBlock3d(channels[-1]) for _ in range(num_res_blocks_middle)])
        self.out_layer = _out_layer(channels[-1], latent_channels * 2)
        self.dtype = torch.float32
        if use_fp16:
            self.convert_to(torch.float16)

    def convert_to(self, dtype: torch.dtype) -> None:
        """Official mixed precision: only the torso (blocks, middle) changes dtype; in/out layers stay fp32."""
        self.dtype = dtype
        convert_module_dtype(self.blocks, dtype)
        convert_module_dtype(self.middle_block, dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.input_layer(x.to(self.input_layer.weight.dtype))
        # the official encoder has no casts here (it is never run in fp16); cast at the torso boundaries
        h = h.to(self.dtype)
        for block in self.blocks:
            h = block(h)
        h = self.middle_block(h)
        return self.out_layer(h.to(self.out_layer[2].weight.dtype))


class DenseDecoder(nn.Module):
    """Latent (B, latent, L, L, L) → logits (B, out, L·2^(levels-1), ...) (keys ``decoder.*``)."""

    def __init__(
        self,
        out_channels: int,
        latent_channels: int,
        num_res_blocks: int,
        channels: list[int],
        num_res_blocks_middle: int = 2,
        use_fp16: bool = False,
    ):
        super().__init__()
        self.input_layer = nn.Conv3d(latent_channels, channels[0], 3, padding=1)
        self.middle_block = nn.Sequential(*[ResBlock3d(channels[0]) for _ in range(num_res_blocks_middle)])
        self.blocks = nn.ModuleList()
        for i, ch in enumerate(channels):
            self.blocks.extend(ResBlock3d(ch, ch) for _ in range(num_res_blocks))
            if i < len(channels) - 1:
                self.blocks.append(UpsampleBlock3d(ch, channels[i + 1]))
        self.out_layer = _out_layer(channels[-1], out_channels)
        self.dtype = torch.float32
        if use_fp16:
            self.convert_to(torch.float16)

    def convert_to(self, dtype: torch.dtype) -> None:
        """The decoder converts all its convs (official ``self.apply(convert_module_to_f16)``)."""
        self.dtype = dtype
        convert_module_dtype(self, dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.input_layer(x.to(self.dtype))
        h = self.middle_block(h)
        for block in self.blocks:
            h = block(h)
        return self.out_layer(h)


class DenseShapeVAE(nn.Module):
    """The official dense VAE; constructor takes the ``dense_vae.params`` of the Direct3D-S2 config."""

    def __init__(
        self,
        embed_dim: int = 0,
        model_channels_encoder: list[int] | tuple[int, ...] = (32, 128, 512),
        model_channels_decoder: list[int] | tuple[int, ...] = (512, 128, 32),
        num_res_blocks_encoder: int = 2,
        num_res_blocks_middle_encoder: int = 2,
        num_res_blocks_decoder: int = 2,
        num_res_blocks_middle_decoder: int = 2,
        in_channels: int = 1,
        out_channels: int = 1,
        use_fp16: bool = False,
        use_checkpoint: bool = False,  # training-only option of the official class; accepted and ignored
        latents_scale: float = 1.0,
        latents_shift: float = 0.0,
    ):
        super().__init__()
        self.embed_dim = embed_dim
        self.latents_scale = latents_scale
        self.latents_shift = latents_shift
        self.encoder = DenseEncoder(
            in_channels,
            embed_dim,
            num_res_blocks_encoder,
            list(model_channels_encoder),
            num_res_blocks_middle_encoder,
            use_fp16,
        )
        self.decoder = DenseDecoder(
            out_channels,
            embed_dim,
            num_res_blocks_decoder,
            list(model_channels_decoder),
            num_res_blocks_middle_decoder,
            use_fp16,
        )

    def convert_to(self, dtype: torch.dtype) -> None:
        """Set the compute dtype (float32 / float16 / bfloat16) with the official mixed-precision layout."""
        self.encoder.convert_to(dtype)
        self.decoder.convert_to(dtype)

    def encode_moments(self, occupancy: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """{0,1} occupancy (B, 1, R, R, R) → posterior (mean, logvar), logvar clamped to [-30, 20]."""
        h = self.encoder(occupancy * 2.0 - 1.0)
        mean, logvar = torch.chunk(h, 2, dim=1)
        return mean, torch.clamp(logvar, -30.0, 20.0)

    def encode(
        self, occupancy: torch.Tensor, sample_posterior: bool = False, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Latent of an occupancy grid: the posterior mean, or a sample from it."""
        mean, logvar = self.encode_moments(occupancy)
        if not sample_posterior:
            return mean
        noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        return mean + torch.exp(0.5 * logvar) * noise

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latent → occupancy logits (no sigmoid)."""
        return self.decoder(latents)

    def decode_index(self, latents: torch.Tensor, threshold: float = 0.5) -> list[torch.Tensor]:
        """Per batch element, int64 (N, 4) indices of voxels with ``sigmoid(logit) >= threshold``.

        Like the official ``decode_mesh(return_index=True)``, column 0 is always 0 (not the batch index)
        and columns 1..3 index the spatial dims in C order.
        """
        logits = self.decode(latents)
        out = []
        for b in range(logits.shape[0]):
            occupied = logits[b].sigmoid() >= threshold  # (1, R, R, R): leading 0 column
            out.append(occupied.nonzero())
        return out
