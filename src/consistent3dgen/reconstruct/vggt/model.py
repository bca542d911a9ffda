"""The VGGT model: aggregator + camera / depth / point heads (+ the track head's weights, not runnable)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import torch
from torch import Tensor, nn

from .aggregator import Aggregator
from .heads import CameraHead, DPTHead, TrackHeadLayout


@dataclass(frozen=True)
class VGGTConfig:
    """Architecture numbers. The defaults are VGGT-1B; the others exist so tests can build small models with the
    official key names (``config.json`` of a checkpoint folder may set any of them; unknown keys are ignored)."""

    img_size: int = 518
    patch_size: int = 14
    embed_dim: int = 1024
    depth: int = 24
    num_heads: int = 16
    dino_depth: int = 24
    dino_heads: int = 16
    head_features: int = 256
    head_out_channels: tuple[int, ...] = (256, 512, 1024, 1024)
    intermediate_layer_idx: tuple[int, ...] = (4, 11, 17, 23)
    camera_trunk_depth: int = 4
    camera_num_heads: int = 16
    track_features: int = 128
    track_hidden: int = 384

    @classmethod
    def from_dict(cls, d: dict) -> VGGTConfig:
        known = {f.name for f in fields(cls)}
        kw = {k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items() if k in known}
        return cls(**kw)

    def to_dict(self) -> dict:
        return asdict(self)


class VGGT(nn.Module):
    """State-dict compatible with the official ``vggt.models.vggt.VGGT`` (``facebook/VGGT-1B``).

    ``enable_track=True`` (the official default) builds the track head so ``state_dict()`` and strict loading
    match the release exactly; the reconstructor builds without it to save 66 M parameters.
    """

    def __init__(self, config: VGGTConfig | None = None, enable_camera: bool = True, enable_point: bool = True,
                 enable_depth: bool = True, enable_track: bool = True) -> None:
        super().__init__()
        c = config or VGGTConfig()
        self.config = c
        self.aggregator = Aggregator(img_size=c.img_size, patch_size=c.patch_size, embed_dim=c.embed_dim,
                                     depth=c.depth, num_heads=c.num_heads, dino_depth=c.dino_depth,
                                     dino_heads=c.dino_heads)
        dim_in = 2 * c.embed_dim
        self.camera_head = (CameraHead(dim_in, trunk_depth=c.camera_trunk_depth, num_heads=c.camera_num_heads)
                            if enable_camera else None)
        dpt_kw = dict(patch_size=c.patch_size, features=c.head_features, out_channels=c.head_out_channels,
                      intermediate_layer_idx=c.intermediate_layer_idx)
        self.point_head = (DPTHead(dim_in, output_dim=4, activation="inv_log", conf_activation="expp1", **dpt_kw)
                           if enable_point else None)
        self.depth_head = (DPTHead(dim_in, output_dim=2, activation="exp", conf_activation="expp1", **dpt_kw)
                           if enable_depth else None)
        self.track_head = (TrackHeadLayout(dim_in, patch_size=c.patch_size, features=c.track_features,
                                           hidden=c.track_hidden, out_channels=c.head_out_channels,
                                           intermediate_layer_idx=c.intermediate_layer_idx)
                           if enable_track else None)

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        """images (S, 3, H, W) or (B, S, 3, H, W) in [0, 1] → dict with ``pose_enc`` (B, S, 9), ``depth``
        (B, S, H, W, 1), ``depth_conf``, ``world_points`` (B, S, H, W, 3), ``world_points_conf`` (those enabled).

        The aggregator may run in bf16 (bf16 weights or the caller's autocast); the heads always run in float32.
        """
        if images.ndim == 4:
            images = images.unsqueeze(0)
        # bf16 aggregator weights (memory) take bf16 images; the heads stay float32.
        agg_dtype = self.aggregator.camera_token.dtype
        tokens, patch_start_idx = self.aggregator(images.to(agg_dtype))
        preds: dict[str, Tensor] = {}
        with torch.autocast(device_type=images.device.type, enabled=False):
            tokens = [t.float() for t in tokens]
            images = images.float()
            if self.camera_head is not None:
                pose_list = self.camera_head(tokens)
                preds["pose_enc"] = pose_list[-1]
                preds["pose_enc_list"] = pose_list
            if self.depth_head is not None:
                preds["depth"], preds["depth_conf"] = self.depth_head(tokens, images, patch_start_idx)
            if self.point_head is not None:
                preds["world_points"], preds["world_points_conf"] = self.point_head(tokens, images, patch_start_idx)
        return preds
