"""Adapters from the Direct3D-S2 models to the stage protocols the sampler and pipeline use (``base.py``).

Latent space seen by the sampler = the diffusion space of the official pipeline:
``z_diffusion = (z_vae − latents_shift) · latents_scale`` (both 1.0 / 0.0 in the released configs; the official
pipeline decodes ``z / latents_scale + latents_shift``).
"""

from __future__ import annotations

import os
from typing import Any

import torch

from ...errors import InputError
from .dense_dit import DenseDiT
from .dense_vae import DenseShapeVAE, UpsampleBlock3d


def _model_device(module: torch.nn.Module) -> torch.device:
    return next(module.parameters()).device


class Direct3DS2DenseStage:
    """Dense stage (``DenseStage``): 64³ occupancy ↔ (8, 16, 16, 16) latent, velocity from the dense DiT.

    Inputs are cast to the models' compute dtype; outputs keep that dtype for ``velocity`` (so a float16 model
    runs the sampler in float16, as the official pipeline does) and are float32 for encode/decode.
    """

    def __init__(self, vae: DenseShapeVAE, dit: DenseDiT):
        self.vae = vae.eval()
        self.dit = dit.eval()
        self.latent_shape = (dit.in_channels, dit.resolution, dit.resolution, dit.resolution)
        levels = sum(isinstance(b, UpsampleBlock3d) for b in vae.decoder.blocks)
        self.occupancy_resolution = dit.resolution * 2**levels
        self.latents_scale = float(vae.latents_scale)
        self.latents_shift = float(vae.latents_shift)

    @property
    def dtype(self) -> torch.dtype:
        return self.dit.dtype

    @property
    def device(self) -> torch.device:
        return _model_device(self.dit)

    def _check_latent(self, latent: torch.Tensor) -> None:
        if latent.ndim != 5 or tuple(latent.shape[1:]) != self.latent_shape:
            raise InputError(f"dense latent must be (B, {self.latent_shape}), got {tuple(latent.shape)}")

    @torch.no_grad()
    def encode_occupancy(self, occupancy: torch.Tensor) -> torch.Tensor:
        """(B, 1, R, R, R) {0, 1} occupancy → (B, 8, 16, 16, 16) float32 latent (posterior mean)."""
        r = self.occupancy_resolution
        if occupancy.ndim != 5 or tuple(occupancy.shape[1:]) != (1, r, r, r):
            raise InputError(f"occupancy must be (B, 1, {r}, {r}, {r}), got {tuple(occupancy.shape)}")
        occ = occupancy.to(device=_model_device(self.vae), dtype=torch.float32)
        if not torch.all((occ == 0) | (occ == 1)):
            raise InputError("occupancy must contain only 0 and 1")
        mean = self.vae.encode(occ).float()
        return (mean - self.latents_shift) * self.latents_scale

    @torch.no_grad()
    def decode_occupancy(self, latent: torch.Tensor) -> torch.Tensor:
        """(B, 8, 16, 16, 16) latent → (B, 1, 64, 64, 64) float32 occupancy logits."""
        self._check_latent(latent)
        z = latent.to(_model_device(self.vae)).float() / self.latents_scale + self.latents_shift
        return self.vae.decode(z.to(self.vae.decoder.dtype)).float()

    @torch.no_grad()
    def occupied_cells(self, latent: torch.Tensor, threshold: float = 0.1) -> list[torch.Tensor]:
        """Per batch element, int32 (N, 3) cells with ``sigmoid(logit) >= threshold`` (pipeline: 0.1)."""
        logits = self.decode_occupancy(latent)
        return [(logits[b, 0].sigmoid() >= threshold).nonzero().to(torch.int32) for b in range(logits.shape[0])]

    @torch.no_grad()
    def velocity(self, x: torch.Tensor, timestep: torch.Tensor, cond: Any) -> torch.Tensor:
        """DiT velocity for (B, 8, 16, 16, 16) latents; ``timestep`` (1,) or (B,) = 1000·sigma; cond (B|1, L, C)."""
        self._check_latent(x)
        device = self.device
        b = x.shape[0]
        t = torch.as_tensor(timestep, device=device).reshape(-1)
        if t.numel() == 1:
            t = t.expand(b)
        elif t.numel() != b:
            raise InputError(f"{t.numel()} timesteps for a batch of {b}")
        if not torch.is_tensor(cond) or cond.ndim != 3:
            raise InputError("dense stage condition must be a (B, L, C) tensor of image tokens")
        cond = cond.to(device)
        if cond.shape[0] == 1 and b > 1:
            cond = cond.expand(b, -1, -1)
        return self.dit(x.to(device=device, dtype=self.dit.dtype), t, cond)


def load_dense_stage(
    source: str | os.PathLike | None = None,
    subfolder: str | None = None,
    dtype: str | torch.dtype | None = None,
    device: str | torch.device = "cpu",
    **kwargs: Any,
) -> Direct3DS2DenseStage:
    """Dense stage from a local folder or the hub id (default ``wushuang98/Direct3D-S2``, v1.1)."""
    from . import loading

    parts = loading.load_parts(
        source if source is not None else loading.HUB_ID,
        parts=("dense_vae", "dense_dit"),
        subfolder=subfolder if subfolder is not None else loading.DEFAULT_SUBFOLDER,
        dtype=dtype,
        device=device,
        **kwargs,
    )
    return Direct3DS2DenseStage(parts["dense_vae"], parts["dense_dit"])
