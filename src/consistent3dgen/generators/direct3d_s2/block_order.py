"""Block order of latent coordinates (the official ``sort_block``) used by the sparse DiT's block attention.

Rows are sorted by ``(x // bs, y // bs, z // bs, x % bs, y % bs, z % bs)``: block-major, then row-major inside a
block. Column 0 (batch) is ignored, as in the official function, which is only ever called on one shape.
Unlike the official function on a CPU tensor, the input is never modified.
"""

from __future__ import annotations

import torch


def block_order(coords: torch.Tensor, block_size: int) -> torch.Tensor:
    """Permutation (int64) putting ``coords`` ((N, 4) with a batch column, or (N, 3)) in block order."""
    if coords.ndim != 2 or coords.shape[1] not in (3, 4):
        raise ValueError(f"latent coords must be (N, 3) or (N, 4), got {tuple(coords.shape)}")
    if block_size < 1:
        raise ValueError(f"block size must be positive, got {block_size}")
    xyz = coords[:, -3:].long()
    if xyz.numel() == 0:
        return torch.zeros(0, dtype=torch.long, device=coords.device)
    if (xyz < 0).any():
        raise ValueError("latent coords must be non-negative")
    span = int(xyz.max()) // block_size + 1
    block = torch.div(xyz, block_size, rounding_mode="floor")
    inner = xyz % block_size
    # one int64 key with the six fields nested like np.lexsort's keys; the sort is stable like lexsort's
    key = ((block[:, 0] * span + block[:, 1]) * span + block[:, 2]) * block_size**3
    key = key + (inner[:, 0] * block_size + inner[:, 1]) * block_size + inner[:, 2]
    return torch.sort(key, stable=True).indices


def sort_block(latent_index: torch.Tensor, block_size: int) -> torch.Tensor:
    """``latent_index`` rows in block order (what the official pipeline does on CUDA tensors)."""
    return latent_index[block_order(latent_index, block_size)]
