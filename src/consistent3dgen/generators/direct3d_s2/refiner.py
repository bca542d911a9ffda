"""Direct3D-S2 dense refiners (optional at inference), official state-dict layout, patch-wise inference.

* ``Voxel_RefinerXL`` (512): decoded SDF + the decoder's last features (32 ch) → refined tanh SDF on the dense
  grid. Inference runs on overlapping cubic patches (official: 192 with stride 160 → 3³ patches at 512) built
  directly from the sparse inputs, blended linearly across the overlaps (separable, as the official code).
* ``Voxel_RefinerXL_sign`` (1024): the 1024 SDF pooled to 512 (official ``SparseDownsample`` quirk included)
  → inside/outside sign per 512 voxel (patches 256 with stride 128, later patches overwrite earlier ones). The
  official result is ``|sdf_1024| * sign`` with the decoded sparse values kept; off the sparse set |sdf| = 1, so
  the sign grid at 512 plus the sparse SDF describe it fully (no 1024³ array is formed here).

Memory is bounded by one patch's activations plus the dense output grid (res³ floats / int8 signs).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .sparse_conv import SparseDownsample
from .sparse_tensor import SparseTensor


def _convert_fp16(module: nn.Module) -> None:
    # official FP16_MODULES: convs and linears; GroupNorms stay float32
    for sub in module.modules():
        if isinstance(sub, (nn.Conv3d, nn.ConvTranspose3d, nn.Linear)):
            for p in sub.parameters(recurse=False):
                p.data = p.data.half()


class ResnetBlock3D(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, groups: int, eps: float):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_channels, eps=eps, affine=True)
        self.conv1 = nn.Conv3d(in_channels, out_channels, 3, padding=1)
        self.norm2 = nn.GroupNorm(groups, out_channels, eps=eps, affine=True)
        self.conv2 = nn.Conv3d(out_channels, out_channels, 3, padding=1)
        self.conv_shortcut = nn.Conv3d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        h = F.silu(self.norm1(x.float()).to(dtype))
        h = self.conv1(h)
        h = F.silu(self.norm2(h.float()).to(dtype))
        h = self.conv2(h)
        skip = self.conv_shortcut(x) if self.conv_shortcut is not None else x
        return skip + h


class _ConvHolder(nn.Module):
    """Keeps the official ``...samplers.0.conv.*`` key names."""

    def __init__(self, conv: nn.Module):
        super().__init__()
        self.conv = conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class DownBlock3D(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, num_layers: int, groups: int, eps: float, down: bool):
        super().__init__()
        self.resnets = nn.ModuleList(
            ResnetBlock3D(in_channels if i == 0 else out_channels, out_channels, groups, eps) for i in range(num_layers)
        )
        self.downsamplers = (
            nn.ModuleList([_ConvHolder(nn.Conv3d(out_channels, out_channels, 2, stride=2))]) if down else None
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        states = []
        for r in self.resnets:
            x = r(x)
            states.append(x)
        if self.downsamplers is not None:
            x = self.downsamplers[0](x)
            states.append(x)
        return x, states


class UpBlock3D(nn.Module):
    def __init__(
        self,
        in_channels: int,
        prev_channels: int,
        out_channels: int,
        num_layers: int,
        groups: int,
        eps: float,
        up: bool,
    ):
        super().__init__()
        self.resnets = nn.ModuleList()
        for i in range(num_layers):
            skip_ch = in_channels if i == num_layers - 1 else out_channels
            res_in = prev_channels if i == 0 else out_channels
            self.resnets.append(ResnetBlock3D(res_in + skip_ch, out_channels, groups, eps))
        # official Upsample3D(use_conv=True) still takes its transposed-conv branch (use_conv_transpose=True)
        self.upsamplers = (
            nn.ModuleList([_ConvHolder(nn.ConvTranspose3d(out_channels, out_channels, 2, stride=2))]) if up else None
        )

    def forward(self, x: torch.Tensor, skips: list[torch.Tensor]) -> torch.Tensor:
        for r in self.resnets:
            x = r(torch.cat([x, skips.pop()], dim=1))
        if self.upsamplers is not None:
            x = self.upsamplers[0](x)
        return x


class UNet3DModel(nn.Module):
    """The official refiner UNet (4 levels, GroupNorm(4) resnets, stride-2 conv down, transposed-conv up)."""

    def __init__(
        self,
        in_channels: int = 4,
        out_channels: int = 4,
        use_conv_out: bool = True,
        block_out_channels: tuple[int, ...] = (4, 16, 64, 256),
        layers_per_block: int = 4,
        layers_mid_block: int = 4,
        norm_num_groups: int = 4,
        norm_eps: float = 1e-5,
        use_checkpoint: bool = False,
    ):
        super().__init__()
        chans = list(block_out_channels)
        self.conv_in = nn.Conv3d(in_channels, chans[0], 3, padding=1)
        self.down_blocks = nn.ModuleList()
        self.up_blocks = nn.ModuleList()  # registered here so the key order matches the official model
        out_ch = chans[0]
        for i, ch in enumerate(chans):
            in_ch, out_ch = out_ch, ch
            self.down_blocks.append(
                DownBlock3D(in_ch, out_ch, layers_per_block, norm_num_groups, norm_eps, down=i < len(chans) - 1)
            )
        mid = chans[-1]
        self.mid_block = nn.Module()
        self.mid_block.resnets = nn.ModuleList(
            ResnetBlock3D(mid, mid, norm_num_groups, norm_eps) for _ in range(layers_mid_block + 1)
        )
        rev = chans[::-1]
        out_ch = rev[0]
        for i in range(len(rev)):
            prev, out_ch = out_ch, rev[i]
            in_ch = rev[min(i + 1, len(rev) - 1)]
            self.up_blocks.append(
                UpBlock3D(in_ch, prev, out_ch, layers_per_block + 1, norm_num_groups, norm_eps, up=i < len(rev) - 1)
            )
        self.conv_norm_out = nn.GroupNorm(norm_num_groups, chans[0], eps=norm_eps)
        self.conv_out = nn.Conv3d(chans[0], out_channels, 3, padding=1) if use_conv_out else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(x)
        skips = [x]
        for block in self.down_blocks:
            x, states = block(x)
            skips.extend(states)
        for r in self.mid_block.resnets:
            x = r(x)
        for block in self.up_blocks:
            n = len(block.resnets)
            x = block(x, skips[len(skips) - n :])
            del skips[len(skips) - n :]
        x = F.silu(self.conv_norm_out(x.float()).to(x.dtype))
        if self.conv_out is not None:
            return torch.tanh(self.conv_out(x)) * 2
        return x


class GeoDecoder(nn.Module):
    """Per-voxel MLP (keys ``net.0``, ``net.2``, ...): features → 8 channels."""

    def __init__(self, n_features: int, hidden_dim: int = 32, num_layers: int = 4):
        super().__init__()
        layers: list[nn.Module] = [nn.Linear(n_features, hidden_dim), nn.ReLU()]
        for _ in range(num_layers - 2):
            layers += [nn.Linear(hidden_dim, hidden_dim), nn.ReLU()]
        layers.append(nn.Linear(hidden_dim, 8))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def adaptive_conv(x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Per-voxel 3³ filter: ``out = sum_k shift_k(x) * weights[:, k]`` with k = 9i + 3j + l over (x, y, z)."""
    size = x.shape[-3:]
    padded = F.pad(x, (1, 1, 1, 1, 1, 1))
    out = torch.zeros_like(x)
    for i in range(3):
        for j in range(3):
            for k in range(3):
                idx = i * 9 + j * 3 + k
                window = padded[:, :, i : i + size[0], j : j + size[1], k : k + size[2]]
                out = out + window * weights[:, idx : idx + 1]
    return out


def adaptive_block(x: torch.Tensor, conv: nn.Module, guide: torch.Tensor | None = None) -> torch.Tensor:
    """Three rounds of the L1-normalised per-voxel filter predicted by ``conv`` from ``guide`` (or ``x``)."""
    weights = F.normalize(conv(x if guide is None else guide), dim=1, p=1)
    for _ in range(3):
        x = adaptive_conv(x, weights)
    return x


def _patch_starts(res: int, patch: int, stride: int) -> list[int]:
    if patch > res:
        raise ValueError(f"patch size {patch} exceeds the grid {res}")
    starts = list(range(0, res - patch + 1, stride))
    if starts[-1] + patch < res:
        raise ValueError(f"patches of {patch} with stride {stride} do not cover a {res} grid")
    return starts


def _blend_weights(res: int, starts: list[int], patch: int, dtype, device) -> list[torch.Tensor]:
    """Per-patch 1-D weights (length ``patch``) that sum to 1 along the axis: linear ramps across overlaps."""
    out = []
    for n, s in enumerate(starts):
        w = torch.ones(patch, dtype=torch.float64)
        if n > 0:
            overlap = starts[n - 1] + patch - s
            if overlap > 0:
                w[:overlap] = torch.linspace(0, 1, overlap, dtype=torch.float64)
        if n + 1 < len(starts):
            overlap = s + patch - starts[n + 1]
            if overlap > 0:
                w[patch - overlap :] = 1 - torch.linspace(0, 1, overlap, dtype=torch.float64)
        out.append(w.to(dtype=dtype, device=device))
    return out


def _dense_crop(x: SparseTensor, batch: int, lo: tuple[int, int, int], size: int, fill: float) -> torch.Tensor:
    """(C, size, size, size) dense crop of batch element ``batch`` starting at ``lo`` (unset voxels = fill)."""
    c = x.coords.long()
    rel = c[:, 1:] - torch.tensor(lo, device=c.device)
    keep = (c[:, 0] == batch) & ((rel >= 0) & (rel < size)).all(dim=1)
    out = torch.full((x.feats.shape[1], size, size, size), fill, dtype=x.feats.dtype, device=x.feats.device)
    r = rel[keep]
    out[:, r[:, 0], r[:, 1], r[:, 2]] = x.feats[keep].T
    return out


class Voxel_RefinerXL(nn.Module):  # noqa: N801 - official class name
    """512 refiner: keys ``unet3d1.*``, ``conv_in``, ``latent_mlp``, ``adaptive_conv{1,2,3}``, ``mid_conv``,
    ``conv_out``. ``block_out_channels`` and ``feat_channels`` (the decoder's last feature width, official 32 =
    its 512 channels / 16) are not official arguments: they only exist to build small test models."""

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 1,
        layers_per_block: int = 2,
        layers_mid_block: int = 2,
        patch_size: int = 192,
        res: int = 512,
        use_checkpoint: bool = False,
        use_fp16: bool = False,
        block_out_channels: tuple[int, ...] = (8, 32, 128, 512),
        feat_channels: int = 32,
    ):
        super().__init__()
        self.unet3d1 = UNet3DModel(16, 8, False, block_out_channels, layers_per_block, layers_mid_block, 4)
        self.conv_in = nn.Conv3d(in_channels, 8, 3, padding=1)
        self.latent_mlp = GeoDecoder(feat_channels)
        for n in (1, 2, 3):
            seq = nn.Sequential(nn.Conv3d(8, 8, 3, padding=1), nn.ReLU(), nn.Conv3d(8, 27, 3, padding=1, bias=False))
            setattr(self, f"adaptive_conv{n}", seq)
        self.mid_conv = nn.Conv3d(8, 8, 3, padding=1)
        self.conv_out = nn.Conv3d(8, out_channels, 3, padding=1)
        self.patch_size = patch_size
        self.res = res
        self.use_fp16 = use_fp16
        if use_fp16:
            _convert_fp16(self)

    @property
    def dtype(self) -> torch.dtype:
        return self.conv_in.weight.dtype

    def forward(self, sdf: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
        """One dense patch: sdf (B, 1, D, H, W), decoder features (B, 32, D, H, W) → refined tanh SDF."""
        h = self.conv_in(sdf)
        f = self.latent_mlp(feats.permute(0, 2, 3, 4, 1)).permute(0, 4, 1, 2, 3)
        mid = self.unet3d1(torch.cat([h, f], dim=1))
        mid = adaptive_block(mid, self.adaptive_conv1)
        mid = self.mid_conv(mid)
        mid = adaptive_block(mid, self.adaptive_conv2)
        out = self.conv_out(mid)
        out = adaptive_block(out, self.adaptive_conv3, guide=mid)
        return torch.tanh(out)

    @torch.no_grad()
    def refine(
        self,
        sdf: SparseTensor,
        feat: SparseTensor,
        patch_size: int | None = None,
        stride: int | None = None,
        res: int | None = None,
    ) -> torch.Tensor:
        """Sparse decoded SDF (N, 1) + features (N, 32) at ``res`` → dense refined SDF (B, 1, res, res, res).

        Official: patch 192, stride 160, linear blending over the 32-voxel overlaps.
        """
        res = res or self.res
        patch = patch_size or self.patch_size
        stride = stride or (160 if patch == 192 else patch - patch // 6)
        starts = _patch_starts(res, patch, stride)
        dtype, device = self.dtype, self.conv_in.weight.device
        weights = _blend_weights(res, starts, patch, dtype, device)
        batch = sdf.batch_size
        out = torch.zeros(batch, 1, res, res, res, dtype=dtype, device=device)
        for b in range(batch):
            for i, si in enumerate(starts):
                for j, sj in enumerate(starts):
                    for k, sk in enumerate(starts):
                        lo = (si, sj, sk)
                        s = _dense_crop(sdf, b, lo, patch, 1.0).to(dtype)[None]
                        f = _dense_crop(feat, b, lo, patch, 0.0).to(dtype)[None]
                        y = self(s, f)[0, 0]
                        w = weights[i][:, None, None] * weights[j][None, :, None] * weights[k][None, None, :]
                        out[b, 0, si : si + patch, sj : sj + patch, sk : sk + patch] += y * w
        return out


class Voxel_RefinerXL_sign(nn.Module):  # noqa: N801 - official class name
    """1024 sign refiner: keys ``unet3d1.*``, ``conv_in``, ``conv_out`` (a sigmoid inside/outside classifier).
    ``block_out_channels`` (not an official argument) only exists to build small test models."""

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 1,
        layers_per_block: int = 2,
        layers_mid_block: int = 2,
        patch_size: int = 192,
        res: int = 512,
        infer_patch_size: int = 192,
        use_checkpoint: bool = False,
        use_fp16: bool = False,
        block_out_channels: tuple[int, ...] = (8, 32, 128, 512),
    ):
        super().__init__()
        self.unet3d1 = UNet3DModel(8, 8, False, block_out_channels, layers_per_block, layers_mid_block, 4)
        self.conv_in = nn.Conv3d(in_channels, 8, 3, padding=1)
        self.conv_out = nn.Conv3d(8, out_channels, 3, padding=1)
        self.downsample = SparseDownsample(2)
        self.patch_size = patch_size
        self.infer_patch_size = infer_patch_size
        self.res = res
        self.use_fp16 = use_fp16
        if use_fp16:
            _convert_fp16(self)

    @property
    def dtype(self) -> torch.dtype:
        return self.conv_in.weight.dtype

    def forward(self, sdf: torch.Tensor) -> torch.Tensor:
        """One dense patch of the pooled SDF (B, 1, D, H, W) → inside/outside logits."""
        return self.conv_out(self.unet3d1(self.conv_in(sdf)))

    @torch.no_grad()
    def predict_signs(
        self, sdf_1024: SparseTensor, patch_size: int | None = None, stride: int | None = None
    ) -> torch.Tensor:
        """Sparse SDF at 2 × ``res`` → int8 signs (B, res, res, res): +1 where sigmoid(logit) >= 0.5, else -1.

        Official: patch 256 (config), stride 128; later patches overwrite earlier ones.
        """
        res = self.res
        patch = patch_size or self.patch_size
        stride = stride or patch // 2
        starts = _patch_starts(res, patch, stride)
        pooled = self.downsample(sdf_1024)
        dtype = self.dtype
        signs = torch.ones(pooled.batch_size, res, res, res, dtype=torch.int8, device=pooled.device)
        for b in range(pooled.batch_size):
            for si in starts:
                for sj in starts:
                    for sk in starts:
                        crop = _dense_crop(pooled, b, (si, sj, sk), patch, 1.0).to(dtype)[None]
                        logits = self(crop)[0, 0]
                        inside = torch.sigmoid(logits.float()) >= 0.5
                        signs[b, si : si + patch, sj : sj + patch, sk : sk + patch] = inside.to(torch.int8) * 2 - 1
        return signs


def signed_far_field(signs_512: torch.Tensor, coords_1024: torch.Tensor) -> torch.Tensor:
    """Sign (int8) at 1024-grid coords (N, 4) from the 512 sign grid: the official ``|sdf| * sign`` off the band."""
    c = coords_1024.long()
    return signs_512[c[:, 0], c[:, 1] // 2, c[:, 2] // 2, c[:, 3] // 2]
