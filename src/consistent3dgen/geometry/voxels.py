"""`SparseVoxels`: integer voxel coordinates at a resolution plus per-voxel features.

Voxel (i, j, k) at resolution R covers the canonical box ``[-1 + 2i/R, -1 + 2(i+1)/R]`` (same for j, k along
canonical x, y, z); its centre is ``-1 + (2i + 1)/R``. Latent cells are blocks of ``factor`` voxels per axis
(Direct3D-S2: 8, so 512 → 64 and 1024 → 128).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

BITMAP_MAX_CELLS = 256**3  # above this many cells, sort-based set operations instead of a dense bitmap


def linear_index(coords: np.ndarray, resolution: int) -> np.ndarray:
    """(N, 3) int coords → (N,) int64 keys, unique per voxel (row-major i, j, k)."""
    c = np.asarray(coords, np.int64)
    return (c[:, 0] * resolution + c[:, 1]) * resolution + c[:, 2]


def voxel_centers(coords: np.ndarray, resolution: int) -> np.ndarray:
    """Canonical-frame centres (N, 3) float32 of integer voxel coords."""
    return (-1.0 + (2.0 * np.asarray(coords, np.float64) + 1.0) / resolution).astype(np.float32)


def points_to_voxels(points: np.ndarray, resolution: int) -> np.ndarray:
    """Canonical points → integer voxel coords (clipped into the grid)."""
    c = np.floor((np.asarray(points, np.float64) + 1.0) * 0.5 * resolution).astype(np.int64)
    return np.clip(c, 0, resolution - 1).astype(np.int32)


@dataclass
class SparseVoxels:
    """coords (N, 3) int32 in [0, resolution); feats (N, C) float32 or None."""

    coords: np.ndarray
    resolution: int
    feats: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.coords = np.asarray(self.coords, np.int32).reshape(-1, 3)
        if self.feats is not None:
            self.feats = np.asarray(self.feats)
            if self.feats.ndim == 1:
                self.feats = self.feats[:, None]
            if len(self.feats) != len(self.coords):
                raise ValueError(f"{len(self.feats)} feature rows for {len(self.coords)} voxels")
        if len(self.coords) and (self.coords.min() < 0 or self.coords.max() >= self.resolution):
            raise ValueError(f"voxel coordinates outside [0, {self.resolution})")

    def __len__(self) -> int:
        return len(self.coords)

    @property
    def keys(self) -> np.ndarray:
        return linear_index(self.coords, self.resolution)

    def centers(self) -> np.ndarray:
        return voxel_centers(self.coords, self.resolution)

    def sorted(self) -> SparseVoxels:
        """Row-major order (deterministic; models that need another order sort themselves)."""
        order = np.argsort(self.keys, kind="stable")
        return self.select(order)

    def select(self, index: np.ndarray) -> SparseVoxels:
        return SparseVoxels(self.coords[index], self.resolution, None if self.feats is None else self.feats[index])

    def downsample(self, factor: int) -> SparseVoxels:
        """Unique cells of ``factor``³ voxels (e.g. latent cells); features are averaged per cell."""
        if self.resolution % factor:
            raise ValueError(f"resolution {self.resolution} is not divisible by {factor}")
        res = self.resolution // factor
        cell = self.coords // factor
        keys = linear_index(cell, res)
        uniq, inv = np.unique(keys, return_inverse=True)
        coords = np.stack(np.unravel_index(uniq, (res, res, res)), axis=1)
        feats = None
        if self.feats is not None:
            sums = np.zeros((len(uniq), self.feats.shape[1]), np.float64)
            np.add.at(sums, inv, self.feats)
            feats = (sums / np.bincount(inv, minlength=len(uniq))[:, None]).astype(self.feats.dtype)
        return SparseVoxels(coords, res, feats)

    def upsample_cells(self, factor: int) -> SparseVoxels:
        """Every voxel of each cell at ``factor`` times the resolution (features repeated)."""
        off = np.stack(np.meshgrid(*[np.arange(factor)] * 3, indexing="ij"), -1).reshape(-1, 3)
        coords = (self.coords[:, None, :] * factor + off[None]).reshape(-1, 3)
        feats = None if self.feats is None else np.repeat(self.feats, len(off), axis=0)
        return SparseVoxels(coords, self.resolution * factor, feats)

    def union(self, other: SparseVoxels) -> SparseVoxels:
        """Coordinate union (sorted); features of ``self`` win where both have a voxel, zeros where neither."""
        if other.resolution != self.resolution:
            raise ValueError("union of voxels at different resolutions")
        keys = np.concatenate([self.keys, other.keys])
        uniq, first = np.unique(keys, return_index=True)
        coords = np.concatenate([self.coords, other.coords])[first]
        feats = None
        if self.feats is not None or other.feats is not None:
            c = (self.feats if self.feats is not None else other.feats).shape[1]
            fa = self.feats if self.feats is not None else np.zeros((len(self), c), np.float32)
            fb = other.feats if other.feats is not None else np.zeros((len(other), c), np.float32)
            feats = np.concatenate([fa, fb])[first]
        return SparseVoxels(coords, self.resolution, feats)

    def lookup(self, coords: np.ndarray) -> np.ndarray:
        """Row index of each query coord in ``self`` (-1 where absent): the coordinate join."""
        keys = self.keys
        order = np.argsort(keys)
        sk = keys[order]
        q = linear_index(np.asarray(coords).reshape(-1, 3), self.resolution)
        pos = np.clip(np.searchsorted(sk, q), 0, max(len(sk) - 1, 0))
        found = (len(sk) > 0) & (sk[pos] == q) if len(sk) else np.zeros(len(q), bool)
        return np.where(found, order[pos], -1)

    def to_dense(self, fill: float = 0.0) -> np.ndarray:
        """(C, R, R, R) dense array (only for small resolutions: refuses above 256³)."""
        if self.resolution > 256:
            raise ValueError(f"refusing a dense {self.resolution}^3 array")
        c = 1 if self.feats is None else self.feats.shape[1]
        out = np.full((c,) + (self.resolution,) * 3, fill, np.float32)
        vals = np.ones((len(self), 1), np.float32) if self.feats is None else self.feats
        i, j, k = self.coords.T
        out[:, i, j, k] = vals.T
        return out

    @classmethod
    def from_dense(cls, grid: np.ndarray, threshold: float | None = None) -> SparseVoxels:
        """Occupied voxels of a (R, R, R) grid (> threshold, or != 0), or all voxels' features of (C, R, R, R)."""
        g = np.asarray(grid)
        if g.ndim == 3:
            occ = g > threshold if threshold is not None else g != 0
            return cls(np.argwhere(occ), g.shape[0])
        if g.ndim == 4:
            occ = np.ones(g.shape[1:], bool) if threshold is None else (g > threshold).any(axis=0)
            coords = np.argwhere(occ)
            return cls(coords, g.shape[1], g[:, coords[:, 0], coords[:, 1], coords[:, 2]].T)
        raise ValueError(f"dense grid must be 3-D or 4-D, got shape {g.shape}")

    def save_npz(self, path: str, **extra: np.ndarray) -> None:
        from ..io.atomic import atomic_write_npz

        arrays = {"coords": self.coords, "resolution": np.int64(self.resolution), **extra}
        if self.feats is not None:
            arrays["feats"] = self.feats
        atomic_write_npz(path, **arrays)

    @classmethod
    def load_npz(cls, path: str) -> SparseVoxels:
        with np.load(path, allow_pickle=False) as z:
            return cls(z["coords"], int(z["resolution"]), z["feats"] if "feats" in z else None)


def pool_occupancy(occupancy: np.ndarray, resolution: int) -> np.ndarray:
    """(R, R, R) bool → (r, r, r) bool by 'any' over blocks (R a multiple of r) or nearest up-sampling."""
    occ = np.asarray(occupancy, bool)
    big = occ.shape[0]
    if big == resolution:
        return occ
    if big % resolution == 0:
        f = big // resolution
        return occ.reshape(resolution, f, resolution, f, resolution, f).any(axis=(1, 3, 5))
    if resolution % big == 0:
        f = resolution // big
        return occ.repeat(f, 0).repeat(f, 1).repeat(f, 2)
    raise ValueError(f"cannot resample occupancy {big}^3 to {resolution}^3")


def all_voxels(resolution: int) -> np.ndarray:
    """(R³, 3) integer coords of every voxel of an R³ grid, row-major (for dense tests of small grids)."""
    return np.argwhere(np.ones((resolution,) * 3, bool))


def latent_cells(voxels: SparseVoxels, factor: int = 8) -> SparseVoxels:
    """The cells (row-major, no features) holding ``voxels``: ``SparseVoxels(coords).downsample(factor)`` in one
    linear pass (a bitmap of the cell grid instead of a sort; 2 MB at 1024 / 8)."""
    if voxels.resolution % factor:
        raise ValueError(f"resolution {voxels.resolution} is not divisible by {factor}")
    res = voxels.resolution // factor
    if res**3 > BITMAP_MAX_CELLS:
        return SparseVoxels(voxels.coords, voxels.resolution).downsample(factor)
    keys = np.flatnonzero(cell_bitmap(voxels.coords // factor, res))
    return SparseVoxels(np.stack(np.unravel_index(keys, (res, res, res)), axis=1), res)


def cells_to_occupancy(cells: SparseVoxels, keep: np.ndarray | None = None, resolution: int = 64) -> np.ndarray:
    """Dense (R, R, R) bool occupancy (index [x, y, z]) of the kept cells at another resolution (R a multiple or
    a divisor of the cells' resolution), e.g. the dense stage's."""
    c = cells.coords if keep is None else cells.coords[np.asarray(keep, bool)]
    src = cells.resolution
    out = np.zeros((resolution,) * 3, bool)
    if len(c) == 0:
        return out
    if src >= resolution:
        if src % resolution:
            raise ValueError(f"cell resolution {src} is not a multiple of {resolution}")
        d = c // (src // resolution)
        out[d[:, 0], d[:, 1], d[:, 2]] = True
    else:
        if resolution % src:
            raise ValueError(f"{resolution} is not a multiple of the cell resolution {src}")
        up = SparseVoxels(c, src).upsample_cells(resolution // src).coords
        out[up[:, 0], up[:, 1], up[:, 2]] = True
    return out


def cell_bitmap(cells: np.ndarray, res: int) -> np.ndarray:
    """(res³,) bool, True at the row-major keys of integer ``cells`` (a dense set for fast membership)."""
    flat = np.zeros(res**3, bool)
    flat[(cells[:, 0].astype(np.int64) * res + cells[:, 1]) * res + cells[:, 2]] = True
    return flat
