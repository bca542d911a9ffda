"""VGGT prediction heads: output activations, the DPT dense head (depth / points), the camera head, and the
track head's parameter layout.

The track head is *not runnable* here: only its modules are built so official checkpoints load strictly
(keys and shapes as released). Point tracking is not used by this project; calling it raises.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .layers import Block, Mlp

# ----------------------------------------------------------------------------------------------- activations


def inverse_log_transform(y: Tensor) -> Tensor:
    """sign(y) * (exp(|y|) - 1): the inverse of the log-scaling the point head was trained with."""
    return torch.sign(y) * torch.expm1(torch.abs(y))


def _base_act(x: Tensor, kind: str) -> Tensor:
    if kind == "linear":
        return x
    if kind == "inv_log":
        return inverse_log_transform(x)
    if kind == "exp":
        return torch.exp(x)
    if kind == "relu":
        return F.relu(x)
    raise ValueError(f"unknown activation {kind!r}")


def activate_pose(pose_enc: Tensor, trans_act: str = "linear", quat_act: str = "linear",
                  fl_act: str = "linear") -> Tensor:
    """Activate a (..., 9) pose encoding part by part: translation (3), quaternion (4), field of view (2)."""
    return torch.cat([_base_act(pose_enc[..., :3], trans_act), _base_act(pose_enc[..., 3:7], quat_act),
                      _base_act(pose_enc[..., 7:], fl_act)], dim=-1)


def activate_head(out: Tensor, activation: str = "norm_exp", conf_activation: str = "expp1") -> tuple[Tensor, Tensor]:
    """(B, C, H, W) head output → values (B, H, W, C-1) and confidence (B, H, W) from the last channel."""
    fmap = out.permute(0, 2, 3, 1)
    xyz, conf = fmap[..., :-1], fmap[..., -1]
    if activation == "norm_exp":
        d = xyz.norm(dim=-1, keepdim=True).clamp(min=1e-8)
        values = xyz / d * torch.expm1(d)
    elif activation == "norm":
        values = xyz / xyz.norm(dim=-1, keepdim=True)
    elif activation in ("exp", "relu", "inv_log", "linear"):
        values = _base_act(xyz, activation)
    elif activation == "xy_inv_log":
        xy, z = xyz.split([2, 1], dim=-1)
        z = inverse_log_transform(z)
        values = torch.cat([xy * z, z], dim=-1)
    elif activation == "sigmoid":
        values = torch.sigmoid(xyz)
    else:
        raise ValueError(f"unknown activation {activation!r}")
    if conf_activation == "expp1":
        conf_out = 1 + conf.exp()
    elif conf_activation == "expp0":
        conf_out = conf.exp()
    elif conf_activation == "sigmoid":
        conf_out = torch.sigmoid(conf)
    else:
        raise ValueError(f"unknown conf_activation {conf_activation!r}")
    return values, conf_out


# --------------------------------------------------------------------------------------- DPT positional terms


def make_sincos_pos_embed(embed_dim: int, pos: Tensor, omega_0: float = 100) -> Tensor:
    """1D sin/cos embedding (M,) → (M, embed_dim), frequencies computed in float64 as upstream."""
    if embed_dim % 2:
        raise ValueError("embed_dim must be even")
    dtype = torch.float32 if pos.device.type == "mps" else torch.float64
    omega = torch.arange(embed_dim // 2, dtype=dtype, device=pos.device) / (embed_dim / 2.0)
    omega = 1.0 / omega_0**omega
    angles = pos.reshape(-1).to(dtype)[:, None] * omega[None, :]
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1).float()


def position_grid_to_embed(pos_grid: Tensor, embed_dim: int, omega_0: float = 100) -> Tensor:
    """(H, W, 2) grid → (H, W, embed_dim): x embedding in the first half, y in the second."""
    h, w, _ = pos_grid.shape
    flat = pos_grid.reshape(-1, 2)
    emb = torch.cat([make_sincos_pos_embed(embed_dim // 2, flat[:, 0], omega_0),
                     make_sincos_pos_embed(embed_dim // 2, flat[:, 1], omega_0)], dim=-1)
    return emb.view(h, w, embed_dim)


def create_uv_grid(width: int, height: int, aspect_ratio: float | None = None, dtype: torch.dtype | None = None,
                   device: torch.device | None = None) -> Tensor:
    """(height, width, 2) UV grid spanning ±aspect/diag horizontally and ±1/diag vertically (pixel centres)."""
    if aspect_ratio is None:
        aspect_ratio = float(width) / float(height)
    diag = (aspect_ratio**2 + 1.0) ** 0.5
    span_x, span_y = aspect_ratio / diag, 1.0 / diag
    xs = torch.linspace(-span_x * (width - 1) / width, span_x * (width - 1) / width, steps=width, dtype=dtype,
                        device=device)
    ys = torch.linspace(-span_y * (height - 1) / height, span_y * (height - 1) / height, steps=height, dtype=dtype,
                        device=device)
    uu, vv = torch.meshgrid(xs, ys, indexing="xy")
    return torch.stack((uu, vv), dim=-1)


# ---------------------------------------------------------------------------------------------------- DPT head


def _interpolate(x: Tensor, size: tuple[int, int], align_corners: bool = True) -> Tensor:
    """Bilinear resize, chunked over the batch to stay below the kernel's INT_MAX element limit."""
    limit = 1610612736
    n = size[0] * size[1] * x.shape[0] * x.shape[1]
    if n > limit:
        parts = torch.chunk(x, n // limit + 1, dim=0)
        return torch.cat([F.interpolate(p, size=size, mode="bilinear", align_corners=align_corners)
                          for p in parts]).contiguous()
    return F.interpolate(x, size=size, mode="bilinear", align_corners=align_corners)


class ResidualConvUnit(nn.Module):
    """relu → conv → relu → conv, plus a skip.

    The official unit applies an *in-place* ReLU to its input first, so the skip adds ReLU(x), not x. That is
    what the released weights were trained with; we reproduce it explicitly (without mutating the caller's
    tensor, which gives the same numbers).
    """

    def __init__(self, features: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(features, features, 3, 1, 1, bias=True)
        self.conv2 = nn.Conv2d(features, features, 3, 1, 1, bias=True)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(x)
        out = self.conv2(F.relu(self.conv1(x)))
        return out + x


class FeatureFusionBlock(nn.Module):
    """RefineNet-style fusion: (x [+ unit1(skip)]) → unit2 → bilinear upsample → 1x1 conv."""

    def __init__(self, features: int, has_residual: bool = True) -> None:
        super().__init__()
        self.out_conv = nn.Conv2d(features, features, 1, 1, 0, bias=True)
        if has_residual:
            self.resConfUnit1 = ResidualConvUnit(features)  # noqa: N815 - official parameter name
        self.has_residual = has_residual
        self.resConfUnit2 = ResidualConvUnit(features)  # noqa: N815 - official parameter name

    def forward(self, x: Tensor, skip: Tensor | None = None, size: tuple[int, int] | None = None) -> Tensor:
        if self.has_residual:
            x = x + self.resConfUnit1(skip)
        x = self.resConfUnit2(x)
        if size is None:
            size = (int(x.shape[-2] * 2), int(x.shape[-1] * 2))
        return self.out_conv(_interpolate(x, size, align_corners=True))


class DPTHead(nn.Module):
    """Dense prediction head over four intermediate aggregator layers (DPT), output at input resolution.

    ``output_dim=4, activation="inv_log"`` is the point head (xyz + conf), ``output_dim=2, activation="exp"``
    the depth head (depth + conf). ``feature_only=True`` (track head) returns features and skips output_conv2.
    """

    def __init__(self, dim_in: int, patch_size: int = 14, output_dim: int = 4, activation: str = "inv_log",
                 conf_activation: str = "expp1", features: int = 256,
                 out_channels: tuple[int, ...] = (256, 512, 1024, 1024),
                 intermediate_layer_idx: tuple[int, ...] = (4, 11, 17, 23), pos_embed: bool = True,
                 feature_only: bool = False, down_ratio: int = 1) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.activation = activation
        self.conf_activation = conf_activation
        self.pos_embed = pos_embed
        self.feature_only = feature_only
        self.down_ratio = down_ratio
        self.intermediate_layer_idx = tuple(intermediate_layer_idx)
        oc = list(out_channels)
        self.norm = nn.LayerNorm(dim_in)
        self.projects = nn.ModuleList(nn.Conv2d(dim_in, c, 1, 1, 0) for c in oc)
        self.resize_layers = nn.ModuleList([
            nn.ConvTranspose2d(oc[0], oc[0], kernel_size=4, stride=4, padding=0),
            nn.ConvTranspose2d(oc[1], oc[1], kernel_size=2, stride=2, padding=0),
            nn.Identity(),
            nn.Conv2d(oc[3], oc[3], kernel_size=3, stride=2, padding=1),
        ])
        self.scratch = nn.Module()
        for i in range(4):
            setattr(self.scratch, f"layer{i + 1}_rn", nn.Conv2d(oc[i], features, 3, 1, 1, bias=False))
        self.scratch.refinenet1 = FeatureFusionBlock(features)
        self.scratch.refinenet2 = FeatureFusionBlock(features)
        self.scratch.refinenet3 = FeatureFusionBlock(features)
        self.scratch.refinenet4 = FeatureFusionBlock(features, has_residual=False)
        if feature_only:
            self.scratch.output_conv1 = nn.Conv2d(features, features, 3, 1, 1)
        else:
            self.scratch.output_conv1 = nn.Conv2d(features, features // 2, 3, 1, 1)
            self.scratch.output_conv2 = nn.Sequential(
                nn.Conv2d(features // 2, 32, 3, 1, 1), nn.ReLU(), nn.Conv2d(32, output_dim, 1, 1, 0))

    def _add_pos_embed(self, x: Tensor, width: int, height: int, ratio: float = 0.1) -> Tensor:
        grid = create_uv_grid(x.shape[-1], x.shape[-2], aspect_ratio=width / height, dtype=x.dtype, device=x.device)
        emb = position_grid_to_embed(grid, x.shape[1]) * ratio
        return x + emb.permute(2, 0, 1)[None].to(x.dtype)

    def forward(self, aggregated_tokens_list: list[Tensor], images: Tensor, patch_start_idx: int,
                frames_chunk_size: int | None = 8) -> Tensor | tuple[Tensor, Tensor]:
        """Returns (values (B, S, H, W, C-1), conf (B, S, H, W)), or features (B, S, C, H', W')."""
        s = images.shape[1]
        if frames_chunk_size is None or frames_chunk_size >= s:
            return self._forward_frames(aggregated_tokens_list, images, patch_start_idx, 0, s)
        parts = [self._forward_frames(aggregated_tokens_list, images, patch_start_idx, i, min(i + frames_chunk_size, s))
                 for i in range(0, s, frames_chunk_size)]
        if self.feature_only:
            return torch.cat(parts, dim=1)
        return torch.cat([p[0] for p in parts], dim=1), torch.cat([p[1] for p in parts], dim=1)

    def _forward_frames(self, tokens_list: list[Tensor], images: Tensor, patch_start_idx: int, start: int,
                        end: int) -> Tensor | tuple[Tensor, Tensor]:
        b, _, _, h, w = images.shape
        s = end - start
        ph, pw = h // self.patch_size, w // self.patch_size
        feats = []
        for i, layer_idx in enumerate(self.intermediate_layer_idx):
            x = tokens_list[layer_idx][:, start:end, patch_start_idx:]
            x = self.norm(x.reshape(b * s, -1, x.shape[-1]))
            x = x.permute(0, 2, 1).reshape(b * s, x.shape[-1], ph, pw)
            x = self.projects[i](x)
            if self.pos_embed:
                x = self._add_pos_embed(x, w, h)
            feats.append(self.resize_layers[i](x))
        l1, l2, l3, l4 = (getattr(self.scratch, f"layer{i + 1}_rn")(f) for i, f in enumerate(feats))
        out = self.scratch.refinenet4(l4, size=l3.shape[2:])
        out = self.scratch.refinenet3(out, l3, size=l2.shape[2:])
        out = self.scratch.refinenet2(out, l2, size=l1.shape[2:])
        out = self.scratch.refinenet1(out, l1)
        out = self.scratch.output_conv1(out)
        out_size = (int(ph * self.patch_size / self.down_ratio), int(pw * self.patch_size / self.down_ratio))
        out = _interpolate(out, out_size)
        if self.pos_embed:
            out = self._add_pos_embed(out, w, h)
        if self.feature_only:
            return out.view(b, s, *out.shape[1:])
        out = self.scratch.output_conv2(out)
        values, conf = activate_head(out, self.activation, self.conf_activation)
        return values.view(b, s, *values.shape[1:]), conf.view(b, s, *conf.shape[1:])


# ------------------------------------------------------------------------------------------------- camera head


class CameraHead(nn.Module):
    """Iterative camera regression from the camera tokens of the last aggregator layer.

    Each iteration embeds the running (pre-activation) encoding, modulates the normalised tokens (adaLN:
    shift, scale, gate), runs the trunk and adds a delta. The returned encodings are activated
    (translation linear, quaternion linear, field of view relu); the running encoding is not.
    """

    def __init__(self, dim_in: int = 2048, trunk_depth: int = 4, num_heads: int = 16, mlp_ratio: int = 4,
                 init_values: float = 0.01, trans_act: str = "linear", quat_act: str = "linear",
                 fl_act: str = "relu") -> None:
        super().__init__()
        self.target_dim = 9
        self.trans_act, self.quat_act, self.fl_act = trans_act, quat_act, fl_act
        self.empty_pose_tokens = nn.Parameter(torch.zeros(1, 1, self.target_dim))
        self.trunk = nn.Sequential(*[Block(dim_in, num_heads, mlp_ratio, init_values=init_values)
                                     for _ in range(trunk_depth)])
        self.token_norm = nn.LayerNorm(dim_in)
        self.trunk_norm = nn.LayerNorm(dim_in)
        self.embed_pose = nn.Linear(self.target_dim, dim_in)
        self.poseLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim_in, 3 * dim_in, bias=True))  # noqa: N815
        self.adaln_norm = nn.LayerNorm(dim_in, elementwise_affine=False, eps=1e-6)
        self.pose_branch = Mlp(dim_in, dim_in // 2, self.target_dim)

    def forward(self, aggregated_tokens_list: list[Tensor], num_iterations: int = 4) -> list[Tensor]:
        """→ list of (B, S, 9) activated encodings, one per iteration (the last is the prediction)."""
        pose_tokens = self.token_norm(aggregated_tokens_list[-1][:, :, 0])
        b, s, _ = pose_tokens.shape
        running: Tensor | None = None
        results = []
        for _ in range(num_iterations):
            if running is None:
                module_input = self.embed_pose(self.empty_pose_tokens.expand(b, s, -1))
            else:
                module_input = self.embed_pose(running.detach())
            shift, scale, gate = self.poseLN_modulation(module_input).chunk(3, dim=-1)
            x = gate * (self.adaln_norm(pose_tokens) * (1 + scale) + shift) + pose_tokens
            delta = self.pose_branch(self.trunk_norm(self.trunk(x)))
            running = delta if running is None else running + delta
            results.append(activate_pose(running, self.trans_act, self.quat_act, self.fl_act))
        return results


# ------------------------------------------------------------------------------------ track head (layout only)


class _TrackAttnBlock(nn.Module):
    def __init__(self, hidden: int, num_heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden)
        self.norm2 = nn.LayerNorm(hidden)
        self.attn = nn.MultiheadAttention(hidden, num_heads, batch_first=True)
        self.mlp = Mlp(hidden, int(hidden * mlp_ratio))


class _TrackCrossAttnBlock(nn.Module):
    def __init__(self, hidden: int, num_heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden)
        self.norm_context = nn.LayerNorm(hidden)
        self.norm2 = nn.LayerNorm(hidden)
        self.cross_attn = nn.MultiheadAttention(hidden, num_heads, batch_first=True)
        self.mlp = Mlp(hidden, int(hidden * mlp_ratio))


class _UpdateFormerLayout(nn.Module):
    def __init__(self, depth: int, input_dim: int, hidden: int, output_dim: int, num_heads: int = 8,
                 mlp_ratio: float = 4.0, num_virtual_tracks: int = 64) -> None:
        super().__init__()
        self.virual_tracks = nn.Parameter(torch.zeros(1, num_virtual_tracks, 1, hidden))  # official spelling
        self.input_norm = nn.LayerNorm(input_dim)
        self.input_transform = nn.Linear(input_dim, hidden)
        self.output_norm = nn.LayerNorm(hidden)
        self.flow_head = nn.Linear(hidden, output_dim)
        self.time_blocks = nn.ModuleList(_TrackAttnBlock(hidden, num_heads, mlp_ratio) for _ in range(depth))
        self.space_virtual_blocks = nn.ModuleList(_TrackAttnBlock(hidden, num_heads, mlp_ratio) for _ in range(depth))
        self.space_point2virtual_blocks = nn.ModuleList(
            _TrackCrossAttnBlock(hidden, num_heads, mlp_ratio) for _ in range(depth))
        self.space_virtual2point_blocks = nn.ModuleList(
            _TrackCrossAttnBlock(hidden, num_heads, mlp_ratio) for _ in range(depth))


class _TrackerLayout(nn.Module):
    def __init__(self, latent_dim: int = 128, corr_levels: int = 7, corr_radius: int = 4, hidden: int = 384,
                 depth: int = 6) -> None:
        super().__init__()
        transformer_dim = 3 * latent_dim + 4
        self.query_ref_token = nn.Parameter(torch.zeros(1, 2, transformer_dim))
        self.corr_mlp = Mlp(corr_levels * (2 * corr_radius + 1) ** 2, hidden, latent_dim)
        self.updateformer = _UpdateFormerLayout(depth, transformer_dim, hidden, latent_dim + 2)
        self.fmap_norm = nn.LayerNorm(latent_dim)
        self.ffeat_norm = nn.GroupNorm(1, latent_dim)
        self.ffeat_updater = nn.Sequential(nn.Linear(latent_dim, latent_dim), nn.GELU())
        self.vis_predictor = nn.Sequential(nn.Linear(latent_dim, 1))
        self.conf_predictor = nn.Sequential(nn.Linear(latent_dim, 1))


class TrackHeadLayout(nn.Module):
    """Parameter layout of the official TrackHead (DPT feature extractor + tracker), for strict loading only.

    The feature extractor is a working :class:`DPTHead` (``feature_only``); the iterative tracker is not
    implemented, so :meth:`forward` raises ``NotImplementedError``.
    """

    def __init__(self, dim_in: int, patch_size: int = 14, features: int = 128, hidden: int = 384,
                 out_channels: tuple[int, ...] = (256, 512, 1024, 1024),
                 intermediate_layer_idx: tuple[int, ...] = (4, 11, 17, 23)) -> None:
        super().__init__()
        self.feature_extractor = DPTHead(dim_in, patch_size=patch_size, features=features, feature_only=True,
                                         down_ratio=2, pos_embed=False, out_channels=out_channels,
                                         intermediate_layer_idx=intermediate_layer_idx)
        self.tracker = _TrackerLayout(latent_dim=features, hidden=hidden)

    def forward(self, *args: object, **kwargs: object) -> None:
        raise NotImplementedError("VGGT point tracking is not implemented in consistent3dgen (weights load only)")
