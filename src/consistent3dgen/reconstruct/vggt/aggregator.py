"""VGGT aggregator: patch tokens + camera/register tokens, alternating frame-wise and global attention."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .layers import Block, DinoV2Encoder, PatchEmbed, PositionGetter, RotaryPositionEmbedding2D

# ImageNet statistics: the aggregator normalises [0, 1] images itself (official non-persistent buffers).
RESNET_MEAN = (0.485, 0.456, 0.406)
RESNET_STD = (0.229, 0.224, 0.225)


def first_and_rest_tokens(tokens: Tensor, batch: int, frames: int) -> Tensor:
    """(1, 2, X, C) learned tokens → (B*S, X, C): slot 0 for the first frame of each batch, slot 1 for the rest."""
    first = tokens[:, :1].expand(batch, 1, *tokens.shape[2:])
    rest = tokens[:, 1:].expand(batch, frames - 1, *tokens.shape[2:])
    return torch.cat([first, rest], dim=1).reshape(batch * frames, *tokens.shape[2:])


class Aggregator(nn.Module):
    """Alternating-attention transformer over S frames.

    ``patch_embed="dinov2_vitl14_reg"`` (the released model) or ``"conv"`` (a plain patch convolution, used by
    the small test configurations). Returns one (B, S, P, 2C) tensor per block pair (frame output joined with
    global output) and the index where patch tokens start (1 camera + registers).
    The released model uses the defaults; ``dino_depth``/``dino_heads`` exist only to shrink test models.
    """

    def __init__(self, img_size: int = 518, patch_size: int = 14, embed_dim: int = 1024, depth: int = 24,
                 num_heads: int = 16, mlp_ratio: float = 4.0, num_register_tokens: int = 4,
                 qkv_bias: bool = True, proj_bias: bool = True, ffn_bias: bool = True,
                 patch_embed: str = "dinov2_vitl14_reg", aa_order: tuple[str, ...] = ("frame", "global"),
                 aa_block_size: int = 1, qk_norm: bool = True, rope_freq: float = 100, init_values: float = 0.01,
                 dino_depth: int = 24, dino_heads: int = 16) -> None:
        super().__init__()
        # Parameters registered first so the state_dict order matches the official one.
        self.camera_token = nn.Parameter(torch.zeros(1, 2, 1, embed_dim))
        self.register_token = nn.Parameter(torch.zeros(1, 2, num_register_tokens, embed_dim))
        if "conv" in patch_embed:
            self.patch_embed: nn.Module = PatchEmbed(patch_size, 3, embed_dim)
        elif patch_embed == "dinov2_vitl14_reg":
            # ViT-L/14 in the release (1024 wide = embed_dim); depth/heads only shrink for small test configs.
            self.patch_embed = DinoV2Encoder(img_size, patch_size, embed_dim, dino_depth, dino_heads, 4.0,
                                             num_register_tokens)
        else:
            raise ValueError(f"unsupported patch_embed {patch_embed!r}; use 'dinov2_vitl14_reg' or 'conv'")
        self.rope = RotaryPositionEmbedding2D(rope_freq) if rope_freq > 0 else None
        self.position_getter = PositionGetter() if self.rope is not None else None

        def make_block() -> Block:
            return Block(embed_dim, num_heads, mlp_ratio, qkv_bias, proj_bias, ffn_bias, init_values=init_values,
                         qk_norm=qk_norm, rope=self.rope)

        self.frame_blocks = nn.ModuleList(make_block() for _ in range(depth))
        self.global_blocks = nn.ModuleList(make_block() for _ in range(depth))
        if depth % aa_block_size:
            raise ValueError(f"depth ({depth}) must be divisible by aa_block_size ({aa_block_size})")
        self.depth = depth
        self.aa_order = tuple(aa_order)
        self.aa_block_size = aa_block_size
        self.patch_size = patch_size
        self.patch_start_idx = 1 + num_register_tokens

    def forward(self, images: Tensor) -> tuple[list[Tensor], int]:
        """images (B, S, 3, H, W) in [0, 1] → (list of (B, S, P, 2C), patch_start_idx)."""
        b, s, c_in, h, w = images.shape
        if c_in != 3:
            raise ValueError(f"expected 3 input channels, got {c_in}")
        mean = torch.tensor(RESNET_MEAN, device=images.device, dtype=images.dtype).view(1, 1, 3, 1, 1)
        std = torch.tensor(RESNET_STD, device=images.device, dtype=images.dtype).view(1, 1, 3, 1, 1)
        images = ((images - mean) / std).reshape(b * s, c_in, h, w)
        patch_tokens = self.patch_embed(images)

        camera = first_and_rest_tokens(self.camera_token, b, s).to(patch_tokens.dtype)
        registers = first_and_rest_tokens(self.register_token, b, s).to(patch_tokens.dtype)
        tokens = torch.cat([camera, registers, patch_tokens], dim=1)
        _, p, c = tokens.shape

        pos = None
        if self.rope is not None:
            # Patches at grid position + 1; the special tokens sit at (0, 0), i.e. get no rotation.
            pos = self.position_getter(b * s, h // self.patch_size, w // self.patch_size, device=images.device) + 1
            special = torch.zeros(b * s, self.patch_start_idx, 2, device=images.device, dtype=pos.dtype)
            pos = torch.cat([special, pos], dim=1)

        frame_idx = global_idx = 0
        outputs: list[Tensor] = []
        frame_inter: list[Tensor] = []
        global_inter: list[Tensor] = []
        for _ in range(self.depth // self.aa_block_size):
            for attn_type in self.aa_order:
                if attn_type == "frame":
                    tokens = tokens.reshape(b * s, p, c)
                    frame_pos = None if pos is None else pos.reshape(b * s, p, 2)
                    frame_inter = []
                    for _ in range(self.aa_block_size):
                        tokens = self.frame_blocks[frame_idx](tokens, pos=frame_pos)
                        frame_idx += 1
                        frame_inter.append(tokens.view(b, s, p, c))
                elif attn_type == "global":
                    tokens = tokens.reshape(b, s * p, c)
                    global_pos = None if pos is None else pos.reshape(b, s * p, 2)
                    global_inter = []
                    for _ in range(self.aa_block_size):
                        tokens = self.global_blocks[global_idx](tokens, pos=global_pos)
                        global_idx += 1
                        global_inter.append(tokens.view(b, s, p, c))
                else:
                    raise ValueError(f"unknown attention type {attn_type!r}")
            for f_out, g_out in zip(frame_inter, global_inter, strict=True):
                outputs.append(torch.cat([f_out, g_out], dim=-1))
        return outputs, self.patch_start_idx
