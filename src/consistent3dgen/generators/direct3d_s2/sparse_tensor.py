"""A minimal sparse tensor: features on integer voxel coordinates with a batch column.

``coords`` (N, 4) int32 = (batch, x, y, z), rows grouped by batch in increasing batch order; ``feats`` (N, C).
This mirrors the official ``SparseTensor`` closely enough for the models (which only use feats, coords,
per-batch slices and replace), without torchsparse.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class SparseTensor:
    feats: torch.Tensor
    coords: torch.Tensor
    # extra per-tensor cache (e.g. neighbour maps keyed by (stride, kernel)), shared by replace()
    cache: dict = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.coords.ndim != 2 or self.coords.shape[1] != 4:
            raise ValueError(f"coords must be (N, 4), got {tuple(self.coords.shape)}")
        if self.feats.shape[0] != self.coords.shape[0]:
            raise ValueError(f"{self.feats.shape[0]} feature rows for {self.coords.shape[0]} coords")

    @property
    def shape(self) -> torch.Size:
        return torch.Size([self.batch_size, *self.feats.shape[1:]])

    @property
    def device(self) -> torch.device:
        return self.feats.device

    @property
    def dtype(self) -> torch.dtype:
        return self.feats.dtype

    @property
    def batch_size(self) -> int:
        return int(self.coords[:, 0].max().item()) + 1 if self.coords.shape[0] else 0

    def layout(self) -> list[slice]:
        """Row slice of each batch element (rows are grouped by batch)."""
        counts = torch.bincount(self.coords[:, 0].long(), minlength=self.batch_size).tolist()
        out, start = [], 0
        for c in counts:
            out.append(slice(start, start + c))
            start += c
        return out

    def replace(self, feats: torch.Tensor, coords: torch.Tensor | None = None) -> SparseTensor:
        """Same sites (and cache) with new features, or new sites (fresh cache)."""
        if coords is None:
            return SparseTensor(feats, self.coords, self.cache)
        return SparseTensor(feats, coords)

    def to(self, *args, **kwargs) -> SparseTensor:
        return SparseTensor(self.feats.to(*args, **kwargs), self.coords.to(self.feats.to(*args, **kwargs).device))
