"""Training samples for the mini prior: dense surface-cell occupancy + sparse narrow-band SDF, cached on disk.

One sample of a shape at sparse resolution ``R`` with latent factor ``F`` (the mini sparse stage):

* ``cells`` (M, 3) int32: the latent cells (blocks of F³ voxels, grid ``R / F``) that hold at least one
  narrow-band voxel. They are the sparse stage's tokens, and, as a dense (R/F)³ {0, 1} grid, the dense stage's
  occupancy (Direct3D-S2: the 64³ dense occupancy is the set of 512-stage latent cells, 512 / 8 = 64).
* ``values`` (M, F, F, F) float16: the SDF value convention (see :func:`distance_to_value`) at **every**
  voxel centre of those cells, because the sparse SDF decoder subdivides each latent cell into all its F³
  voxels and is supervised on all of them (unset voxels read as +1, as the official ``sparse2mesh`` fills).
* the encoder's input is the narrow band (:func:`band_mask`): voxels within ``band`` voxels of the surface.

Values are computed coarse-to-fine: the SDF at the latent-cell centres picks the cells that can hold band
voxels (|d| below half a cell diagonal plus the band, with a safety factor for first-order SDFs), then only
those cells' voxels are evaluated, so no dense R³ array is built.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..geometry.voxels import SparseVoxels, linear_index
from ..io.atomic import atomic_write_npz, atomic_write_text
from .config import DataConfig
from .shapes import Shape, make_shape, sample_shapes
from .training_meshes import mesh_shape

FORMAT_VERSION = 2


def distance_to_value(distance: np.ndarray, resolution: int, config: DataConfig) -> np.ndarray:
    """World-unit signed distance (canonical cube, side 2) → the sparse SDF value in [-1, 1].

    With ``d_vox = d · R / 2`` the distance in voxels:

    * ``thin_shell`` (default): ``clip((|d_vox| - shell) / (band - shell), -1, 1)``, exactly the formula of
      :func:`consistent3dgen.geometry.shell.thin_shell_sdf`, which makes the seen-surface target at inference:
      a thin closed shell (thickness 2·shell) around the watertight surface, +1 (outside, as the official
      decoder assumes for absent voxels) from ``band`` voxels on. The prior then learns the same kind of field
      the guidance target is.
    * ``signed``: ``clip(d_vox / band, -1, 1)``, negative inside the watertight solid.
    """
    d_vox = np.asarray(distance, np.float64) * (resolution / 2.0)
    if config.convention == "thin_shell":
        return np.clip((np.abs(d_vox) - config.shell_voxels) / (config.band_voxels - config.shell_voxels), -1.0, 1.0)
    if config.convention == "signed":
        return np.clip(d_vox / config.band_voxels, -1.0, 1.0)
    raise ValueError(f"unknown SDF convention {config.convention!r}")


def band_mask(values: np.ndarray, convention: str) -> np.ndarray:
    """Voxels in the narrow band (the encoder's input): ``udf < band`` ⇔ value < 1 for the thin shell
    (value -1 is the surface itself), ``|d| < band`` ⇔ |value| < 1 for the signed field."""
    v = np.asarray(values)
    return v < 1.0 if convention == "thin_shell" else np.abs(v) < 1.0


@dataclass
class ShapeSample:
    """Latent cells + per-voxel SDF values of one shape (see module doc)."""

    cells: np.ndarray  # (M, 3) int32 at resolution // factor
    values: np.ndarray  # (M, F, F, F) float16/32
    resolution: int
    factor: int
    source: str = ""
    convention: str = "thin_shell"

    @property
    def cell_resolution(self) -> int:
        return self.resolution // self.factor

    def occupancy(self) -> np.ndarray:
        """Dense (R/F)³ float32 {0, 1} grid of the cells (the dense VAE's input)."""
        d = self.cell_resolution
        occ = np.zeros((d, d, d), np.float32)
        occ[tuple(self.cells.T)] = 1.0
        return occ

    def voxel_coords(self) -> np.ndarray:
        """(M·F³, 3) int32 coords of every voxel of every cell, cell-major, then (i, j, k) C order."""
        f = self.factor
        off = np.stack(np.meshgrid(*[np.arange(f)] * 3, indexing="ij"), -1).reshape(-1, 3)
        return (self.cells[:, None, :] * f + off[None]).reshape(-1, 3).astype(np.int32)

    def all_voxels(self) -> SparseVoxels:
        """Every voxel of the cells with its value: the decoder's target."""
        return SparseVoxels(self.voxel_coords(), self.resolution, self.values.reshape(-1, 1).astype(np.float32))

    def band(self) -> SparseVoxels:
        """The narrow band (see :func:`band_mask`): the encoder's input."""
        flat = self.values.reshape(-1).astype(np.float32)
        keep = band_mask(flat, self.convention)
        return SparseVoxels(self.voxel_coords()[keep], self.resolution, flat[keep, None])

    def lookup(self, coords: np.ndarray) -> np.ndarray:
        """Values (N,) float32 at voxel coords (N, 3); +1 (outside, far) where the voxel's cell is absent."""
        c = np.asarray(coords, np.int64).reshape(-1, 3)
        f = self.factor
        cell_keys = linear_index(self.cells, self.cell_resolution)
        order = np.argsort(cell_keys)
        sorted_keys = cell_keys[order]
        q = linear_index(c // f, self.cell_resolution)
        pos = np.clip(np.searchsorted(sorted_keys, q), 0, max(len(sorted_keys) - 1, 0))
        found = sorted_keys[pos] == q if len(sorted_keys) else np.zeros(len(q), bool)
        rows = order[pos]
        local = c % f
        vals = self.values[rows, local[:, 0], local[:, 1], local[:, 2]].astype(np.float32)
        return np.where(found, vals, np.float32(1.0))

    def save(self, path: str | Path) -> None:
        atomic_write_npz(
            path,
            cells=self.cells.astype(np.int16),
            values=self.values.astype(np.float16),
            resolution=np.int64(self.resolution),
            factor=np.int64(self.factor),
            source=np.array(self.source),
            convention=np.array(self.convention),
            format_version=np.int64(FORMAT_VERSION),
        )

    @classmethod
    def load(cls, path: str | Path) -> ShapeSample:
        try:
            with np.load(path, allow_pickle=False) as z:
                version = int(z["format_version"])
                fields = {k: z[k] for k in z.files}
        except (OSError, KeyError, ValueError) as e:
            raise InputError(f"cannot read training sample {path}: {e}") from e
        if version != FORMAT_VERSION:
            raise InputError(f"{path}: sample format {version}, expected {FORMAT_VERSION}; rebuild the cache")
        return cls(
            fields["cells"].astype(np.int32),
            fields["values"],
            int(fields["resolution"]),
            int(fields["factor"]),
            str(fields["source"]),
            str(fields["convention"]),
        )


def build_sample(shape: Shape | object, config: DataConfig, source: str = "") -> ShapeSample:
    """Evaluate ``shape`` (a callable SDF) coarse-to-fine at the config's resolution (see module doc)."""
    r, f = config.sparse_resolution, config.latent_factor
    d = r // f
    ax = -1.0 + (2.0 * np.arange(d) + 1.0) / d
    centres = np.stack(np.meshgrid(ax, ax, ax, indexing="ij"), -1).reshape(-1, 3)
    voxel = 2.0 / r
    reach = np.sqrt(3.0) * f * voxel / 2.0 + config.band_voxels * voxel
    d_centre = np.asarray(shape(centres), np.float64)
    candidates = np.argwhere(np.abs(d_centre.reshape(d, d, d)) < reach * config.candidate_safety).astype(np.int32)
    if len(candidates) == 0:
        raise ValueError(f"shape {source or ''} has no surface inside the cube")
    off = np.stack(np.meshgrid(*[np.arange(f)] * 3, indexing="ij"), -1).reshape(-1, 3)
    coords = (candidates[:, None, :] * f + off[None]).reshape(-1, 3)
    points = -1.0 + (2.0 * coords + 1.0) / r
    values = np.empty(len(points), np.float32)
    chunk = 1 << 18
    for s in range(0, len(points), chunk):
        values[s : s + chunk] = distance_to_value(shape(points[s : s + chunk]), r, config)
    values = values.reshape(len(candidates), f, f, f)
    keep = band_mask(values, config.convention).reshape(len(candidates), -1).any(axis=1)
    if not keep.any():
        raise ValueError(f"shape {source or ''} has no narrow-band voxel at resolution {r}")
    return ShapeSample(candidates[keep], values[keep].astype(np.float16), r, f, source, config.convention)


# ------------------------------------------------------------------------------------------------ sources


def parse_source(source: str, meshes_dir: str | Path | None = None) -> Shape:
    """``"<family>:<seed>"`` → procedural shape; ``"mesh:<name>:<yaw_deg>"`` → a training mesh view."""
    parts = source.split(":")
    if parts[0] == "mesh" and len(parts) == 3:
        return mesh_shape(parts[1], float(parts[2]), meshes_dir)
    if len(parts) == 2:
        return make_shape(parts[0], int(parts[1]))
    raise ValueError(f"bad sample source {source!r}: expected 'family:seed' or 'mesh:name:yaw'")


def default_sources(config: DataConfig) -> list[str]:
    """The seeded source list of a config: procedural shapes (balanced families) + mesh views at even yaws."""
    out = [f"{fam}:{seed}" for fam, seed in sample_shapes(config.num_procedural, config.seed, config.families)]
    for name in config.meshes:
        for k in range(config.mesh_views):
            out.append(f"mesh:{name}:{360.0 * k / max(config.mesh_views, 1):.1f}")
    return out


def second_stage_indices(train_idx: np.ndarray, held_idx: np.ndarray, config: DataConfig
                         ) -> tuple[np.ndarray, np.ndarray]:
    """Which shapes are also built at ``config.second_resolution``: a seeded pick of ``second_samples`` of the
    training shapes (0 = all) and every held-out one, so the second stage's split is the first's, by shape."""
    train_idx, held_idx = np.asarray(train_idx), np.asarray(held_idx)
    n = config.second_samples
    if 0 < n < len(train_idx):
        train_idx = np.sort(np.random.default_rng([config.seed, 2]).choice(train_idx, n, replace=False))
    return train_idx, held_idx


def cache_key(config: DataConfig) -> str:
    """Folder name of a config's samples: the settings that change a sample's content (not the count)."""
    content = {
        "v": FORMAT_VERSION,
        "resolution": config.sparse_resolution,
        "factor": config.latent_factor,
        "band": config.band_voxels,
        "convention": config.convention,
        "shell": config.shell_voxels,
        "safety": config.candidate_safety,
    }
    digest = hashlib.sha1(json.dumps(content, sort_keys=True).encode()).hexdigest()[:10]
    return f"r{config.sparse_resolution}_f{config.latent_factor}_{config.convention}_{digest}"


def sample_path(cache_dir: str | Path, config: DataConfig, source: str) -> Path:
    safe = source.replace(":", "_").replace("/", "_")
    return Path(cache_dir) / cache_key(config) / f"{safe}.npz"


def _build_one(args: tuple[str, str, DataConfig, str | None]) -> str:
    path, src, config, meshes_dir = args
    build_sample(parse_source(src, meshes_dir), config, src).save(path)
    return path


def build_dataset(
    cache_dir: str | Path,
    config: DataConfig,
    sources: list[str] | None = None,
    meshes_dir: str | Path | None = None,
    log=print,
    workers: int = 1,
) -> list[Path]:
    """Build (or reuse) every sample of ``sources`` under ``cache_dir``; resumable: finished files are kept.

    ``workers`` > 1 builds in that many processes (each sample is seeded by its source, so the result is the
    same whatever the order).
    """
    sources = default_sources(config) if sources is None else sources
    paths = [sample_path(cache_dir, config, src) for src in sources]
    mdir = None if meshes_dir is None else str(meshes_dir)
    todo = [(str(p), src, config, mdir) for p, src in zip(paths, sources, strict=True) if not p.is_file()]
    t0 = time.time()
    if todo:
        if workers > 1:
            from concurrent.futures import ProcessPoolExecutor

            with ProcessPoolExecutor(workers) as pool:
                for done, _ in enumerate(pool.map(_build_one, todo, chunksize=1), 1):
                    if log and (done % 20 == 0 or done == len(todo)):
                        log(f"data: built {done}/{len(todo)} samples ({time.time() - t0:.0f} s)")
        else:
            for done, job in enumerate(todo, 1):
                _build_one(job)
                if log and (done % 20 == 0 or done == len(todo)):
                    log(f"data: built {done}/{len(todo)} samples ({time.time() - t0:.0f} s)")
    manifest = {"config": asdict(config), "key": cache_key(config), "sources": sources}
    atomic_write_text(Path(cache_dir) / cache_key(config) / "manifest.json", json.dumps(manifest, indent=1))
    return paths


class SampleSet:
    """All samples in memory (float16 values: ~1 MB a sample at 128³) with seeded batch drawing."""

    def __init__(self, samples: list[ShapeSample]):
        if not samples:
            raise ValueError("no training samples")
        self.samples = samples

    @classmethod
    def from_paths(cls, paths: list[Path]) -> SampleSet:
        return cls([ShapeSample.load(p) for p in paths])

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> ShapeSample:
        return self.samples[i]

    def occupancy_batch(self, indices) -> np.ndarray:
        """(B, 1, D, D, D) float32 occupancy."""
        return np.stack([self.samples[i].occupancy() for i in indices])[:, None]
