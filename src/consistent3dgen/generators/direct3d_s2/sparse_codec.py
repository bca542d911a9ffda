"""SparseStage side of the sparse SDF VAE: ``SparseVoxels`` SDF ↔ ``SparseLatent`` tokens (one shape, batch 0).

Latent normalisation follows the official pipeline, which decodes ``z / latents_scale + latents_shift``; the
encoder output is mapped the other way, ``(mean - latents_shift) * latents_scale``, so that
``decode_sdf(encode_sdf(v))`` is the VAE's reconstruction. Latent coords come out sorted by (x, y, z).
"""

from __future__ import annotations

import torch

from ...devices import module_device
from ...geometry.voxels import SparseVoxels
from ..base import SparseLatent
from .sparse_tensor import SparseTensor
from .sparse_vae import SparseSDFVAE

# voxels per latent cell per axis (three ×2 down/up-sampling blocks)
LATENT_FACTOR = 8


@torch.no_grad()
def encode_sdf(vae: SparseSDFVAE, sdf: SparseVoxels, sample_posterior: bool = False) -> SparseLatent:
    """Narrow-band SDF voxels (feats (N, 1) in [-1, 1] at ``8 * vae.resolution``) → latent tokens."""
    expected = vae.resolution * LATENT_FACTOR
    if sdf.resolution != expected:
        raise ValueError(f"SDF voxels are at resolution {sdf.resolution}, this VAE encodes {expected}")
    if len(sdf) == 0:
        raise ValueError("no SDF voxels to encode")
    if sdf.feats is None or sdf.feats.shape[1] != 1:
        raise ValueError("SDF voxels need one feature channel (the signed/unsigned distance)")
    feats = torch.as_tensor(sdf.feats, dtype=torch.float32)
    if not torch.isfinite(feats).all():
        raise ValueError("SDF values contain NaN or infinity")
    device = module_device(vae)
    xyz = torch.as_tensor(sdf.coords, dtype=torch.int32)
    coords = torch.cat([torch.zeros(len(xyz), 1, dtype=torch.int32), xyz], dim=1).to(device)
    z, _ = vae.encode(SparseTensor(feats.to(device), coords), sample_posterior=sample_posterior)
    tokens = (z.feats.float() - vae.latents_shift) * vae.latents_scale
    return SparseLatent(z.coords[:, 1:].to(torch.int32).cpu(), tokens.cpu(), vae.resolution)


@torch.no_grad()
def decode_sdf(vae: SparseSDFVAE, latent: SparseLatent, chunk_size: int | None = None, return_feat: bool = False
               ) -> SparseVoxels | tuple[SparseVoxels, torch.Tensor]:
    """Latent tokens → tanh SDF voxels at ``8 * vae.resolution`` (``chunk_size`` overrides the VAE's split).

    ``return_feat``: also the decoder's last features (N, C) on the VAE's device, row-aligned with the voxels
    (what the official 512 refiner takes, ``decode_mesh(return_feat=True)``).
    """
    if latent.resolution != vae.resolution:
        raise ValueError(f"latent grid is {latent.resolution}, this VAE decodes a {vae.resolution} grid")
    if len(latent) == 0:
        raise ValueError("no latent tokens to decode")
    if latent.feats.ndim != 2 or latent.feats.shape[1] != vae.embed_dim:
        raise ValueError(f"latent features must be (N, {vae.embed_dim}), got {tuple(latent.feats.shape)}")
    device = module_device(vae)
    xyz = latent.coords.to(torch.int32)
    if xyz.min() < 0 or xyz.max() >= vae.resolution:
        raise ValueError(f"latent coords outside [0, {vae.resolution})")
    coords = torch.cat([torch.zeros(len(xyz), 1, dtype=torch.int32), xyz.cpu()], dim=1).to(device)
    z = latent.feats.float().to(device) / vae.latents_scale + vae.latents_shift
    out = vae.decode(SparseTensor(z, coords), factor=1.0, chunk_size=chunk_size, return_feat=return_feat)
    out, feat = out if return_feat else (out, None)
    voxels = SparseVoxels(out.coords[:, 1:].cpu().numpy(), vae.resolution * LATENT_FACTOR,
                          out.feats.float().cpu().numpy())
    return (voxels, feat.feats) if return_feat else voxels
