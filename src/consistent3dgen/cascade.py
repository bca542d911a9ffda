"""Model-agnostic stage runner: dense occupancy stage, then sparse SDF stages, with front-partial guidance.

Written against :mod:`consistent3dgen.generators.base` only. Data flow per stage:

* dense: start from the encoded foreground occupancy (SDEdit: noised to ``sdedit_strength``), optional
  guidance towards it, decode → occupancy probabilities; free space (if given) is cleared;
* dense → first sparse stage: cells with probability ≥ threshold ∪ the foreground cells (minus free cells);
* sparse stage k → k + 1: decode SDF → mesh → re-normalise it into the cube (the foreground must follow the
  same similarity, so the target is re-encoded in the new frame) → cells within a distance of its surface;
* every sparse stage: tokens in ``stage.token_order`` order, target latent joined by coordinates (mask 1 where
  a token has a target), optional decoded-SDF fusion with the seen surface and free-space clamp.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .generators.base import DenseStage, SparseLatent, SparseStage
from .geometry.voxels import SparseVoxels
from .sampling import FlowMatchSchedule, FrontGuidance, initial_noise, sample


@dataclass(frozen=True)
class Similarity:
    """``p' = scale · p + offset``: a change of canonical frame between stages."""

    scale: float = 1.0
    offset: tuple[float, float, float] = (0.0, 0.0, 0.0)

    def apply(self, points: np.ndarray) -> np.ndarray:
        return (self.scale * np.asarray(points, np.float64) + np.asarray(self.offset)).astype(np.float32)

    def inverse(self) -> Similarity:
        return Similarity(1.0 / self.scale, tuple(-np.asarray(self.offset) / self.scale))

    def then(self, other: Similarity) -> Similarity:
        """First ``self``, then ``other``."""
        return Similarity(self.scale * other.scale, tuple(other.scale * np.asarray(self.offset) + other.offset))


def normalize_to_cube(vertices: np.ndarray, extent: float = 0.95) -> Similarity:
    """Bounding-box centre to the origin, largest side to ``2·extent`` (Direct3D-S2's ``normalize_mesh``)."""
    v = np.asarray(vertices, np.float64)
    lo, hi = v.min(axis=0), v.max(axis=0)
    scale = 2.0 * extent / float(max(hi - lo))
    return Similarity(scale, tuple(-scale * (lo + hi) / 2))


# --------------------------------------------------------------------------- dense stage


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


@dataclass
class DenseResult:
    latent: torch.Tensor  # (1, C, L, L, L)
    probability: torch.Tensor  # (R, R, R) occupancy probability after free-space clearing


def run_dense_stage(
    stage: DenseStage,
    cond: Any,
    schedule: FlowMatchSchedule,
    *,
    foreground: np.ndarray | None = None,
    sdedit_strength: float = 1.0,
    guidance_strength: float = 0.0,
    guidance_variant: str = "paper",
    free_space: np.ndarray | None = None,
    cfg_scale: float = 7.0,
    generator: torch.Generator | None = None,
    progress: bool = True,
    **sample_kw: Any,
) -> DenseResult:
    """Dense stage from the foreground occupancy (R³ bool, index [x, y, z]).

    sdedit_strength: sigma the encoded foreground is noised to (1 = start from pure noise as the official
    pipeline). guidance_strength > 0 additionally guides the latent cells that hold foreground voxels.
    free_space: R³ bool voxels the view shows empty; their probability is set to 0 (foreground voxels kept).
    """
    shape = (1, *stage.latent_shape)
    r = stage.occupancy_resolution
    noise = initial_noise(shape, generator)
    x_start, start, guidance = None, 0, None
    if foreground is not None:
        fg = torch.as_tensor(np.asarray(foreground, np.float32))[None, None]
        if fg.shape[-1] != r:
            raise ValueError(f"foreground occupancy is {fg.shape[-1]}^3, the dense stage needs {r}^3")
        target = stage.encode_occupancy(fg).to(noise.dtype)
        if sdedit_strength < 1.0:
            x_start, start = target, schedule.start_index(sdedit_strength)
        if guidance_strength > 0:
            cells = pool_occupancy(np.asarray(foreground, bool), stage.latent_shape[-1])
            mask = torch.as_tensor(cells, dtype=torch.float32)[None, None]
            guidance = FrontGuidance(target, mask, guidance_strength, guidance_variant)
    latent = sample(
        stage.velocity, noise, schedule, cond, cfg_scale=cfg_scale, guidance=guidance, x_start=x_start,
        start_index=start, generator=generator, progress=progress, desc="dense", **sample_kw,
    ).x
    prob = torch.sigmoid(stage.decode_occupancy(latent).float())[0, 0]
    if free_space is not None:
        clear = torch.as_tensor(np.asarray(free_space, bool))
        if foreground is not None:
            clear &= ~torch.as_tensor(np.asarray(foreground, bool))
        prob = prob.masked_fill(clear, 0.0)
    return DenseResult(latent, prob)


# --------------------------------------------------------------------------- tokens


def occupancy_to_cells(
    probability: torch.Tensor | np.ndarray,
    threshold: float,
    latent_resolution: int,
    foreground_cells: SparseVoxels | None = None,
    free_cells: SparseVoxels | None = None,
) -> SparseVoxels:
    """Cells with occupancy probability ≥ threshold (Direct3D-S2: 0.1), ∪ foreground cells, minus free cells.

    Foreground cells always stay (the view saw a surface there); free cells are cells the view shows empty.
    """
    prob = probability.detach().cpu().numpy() if torch.is_tensor(probability) else np.asarray(probability)
    occ = pool_occupancy(prob >= threshold, latent_resolution)
    cells = SparseVoxels(np.argwhere(occ), latent_resolution)
    if free_cells is not None and len(free_cells) and len(cells):
        cells = cells.select(free_cells.lookup(cells.coords) < 0)
    if foreground_cells is not None:
        if foreground_cells.resolution != latent_resolution:
            raise ValueError(f"foreground cells at {foreground_cells.resolution}, tokens at {latent_resolution}")
        cells = cells.union(SparseVoxels(foreground_cells.coords, latent_resolution))
    return cells.sorted()


def order_tokens(stage: SparseStage, cells: SparseVoxels) -> SparseVoxels:
    """Cells in the order the stage's model needs (e.g. Direct3D-S2's block order)."""
    perm = stage.token_order(torch.as_tensor(cells.coords, dtype=torch.int32))
    return cells.select(np.asarray(torch.as_tensor(perm).cpu().numpy(), np.int64))


def align_target(token_coords: np.ndarray, target: SparseLatent) -> tuple[torch.Tensor, torch.Tensor]:
    """Coordinate join of the target latent onto the token list: (feats (N, C), mask (N,) 1 where present)."""
    rows = torch.as_tensor(target.to_voxels().lookup(np.asarray(token_coords)), dtype=torch.int64)
    present = rows >= 0
    feats = torch.zeros((len(rows), target.feats.shape[1]), dtype=target.feats.dtype, device=target.feats.device)
    feats[present] = target.feats[rows[present].to(target.feats.device)]
    return feats, present.to(torch.float32)


def mesh_to_cells(
    vertices: np.ndarray, faces: np.ndarray, resolution: int, latent_factor: int, distance: float = 4.0
) -> SparseVoxels:
    """Latent cells of the voxels (at ``resolution``) within ``distance`` voxels of the mesh surface.

    Direct3D-S2's ``mesh2index`` uses 4 voxels at 1024. The mesh must already be in the stage's canonical frame.
    """
    from .geometry.shell import thin_shell

    voxels = thin_shell(vertices, faces, resolution, band=distance, shell=min(1.0, distance / 2)).sdf
    return SparseVoxels(voxels.coords, resolution).downsample(latent_factor)


def transform_voxels(voxels: SparseVoxels, similarity: Similarity) -> SparseVoxels:
    """Move voxel centres by a similarity and re-voxelise at the same resolution (features follow)."""
    from .geometry.voxels import points_to_voxels

    centres = similarity.apply(voxels.centers())
    inside = (np.abs(centres) < 1).all(axis=1)
    coords = points_to_voxels(centres[inside], voxels.resolution)
    feats = None if voxels.feats is None else voxels.feats[inside]
    keys = SparseVoxels(coords, voxels.resolution).keys
    _, first = np.unique(keys, return_index=True)
    return SparseVoxels(coords[first], voxels.resolution, None if feats is None else feats[first])


# --------------------------------------------------------------------------- sparse stage


def run_sparse_stage(
    stage: SparseStage,
    cells: SparseVoxels,
    cond: Any,
    schedule: FlowMatchSchedule,
    *,
    target: SparseLatent | None = None,
    guidance_strength: float = 0.0,
    guidance_variant: str = "paper",
    cfg_scale: float = 7.0,
    generator: torch.Generator | None = None,
    progress: bool = True,
    **sample_kw: Any,
) -> SparseLatent:
    """Sample the latent tokens of ``cells`` (already ordered), guided towards ``target`` where it has tokens."""
    coords = torch.as_tensor(cells.coords, dtype=torch.int32)
    noise = initial_noise((len(cells), stage.latent_channels), generator)
    guidance = None
    if target is not None and guidance_strength > 0:
        feats, mask = align_target(cells.coords, target)
        guidance = FrontGuidance(feats.to(noise.dtype), mask, guidance_strength, guidance_variant)

    def velocity(x: torch.Tensor, t: torch.Tensor, c: Any) -> torch.Tensor:
        return stage.velocity(x, coords, t, c)

    x = sample(velocity, noise, schedule, cond, cfg_scale=cfg_scale, guidance=guidance, generator=generator,
               progress=progress, desc=f"sparse{stage.resolution}", **sample_kw).x
    return SparseLatent(coords, x, cells.resolution)


def fuse_sdf(decoded: SparseVoxels, seen: SparseVoxels, weight: float = 1.0) -> SparseVoxels:
    """Correct the decoded SDF towards the seen surface's SDF where the latter exists (same units and grid).

    ``seen`` should hold signed values only where they are trustworthy (e.g. the thin-shell voxels on the
    camera side of the seen surface): fused = (1 − w)·decoded + w·seen there; decoded voxels elsewhere kept.
    """
    if decoded.resolution != seen.resolution:
        raise ValueError("fusion needs both SDFs at the same resolution")
    rows = seen.lookup(decoded.coords)
    out = decoded.feats.astype(np.float32).copy()
    hit = rows >= 0
    out[hit] = (1 - weight) * out[hit] + weight * seen.feats[rows[hit]]
    return SparseVoxels(decoded.coords, decoded.resolution, out)


def clamp_free_space(decoded: SparseVoxels, free: np.ndarray, value: float = 1.0) -> SparseVoxels:
    """Voxels the view shows empty become at least ``value`` (outside), so nothing bulges into the seen view."""
    out = decoded.feats.astype(np.float32).copy()
    free = np.asarray(free, bool)
    out[free] = np.maximum(out[free], value)
    return SparseVoxels(decoded.coords, decoded.resolution, out)


# --------------------------------------------------------------------------- the pipeline over stages


@dataclass
class SparseStageConfig:
    schedule: FlowMatchSchedule
    guidance_strength: float = 0.0
    guidance_variant: str = "paper"
    cell_distance: float = 4.0  # voxels, for tokens from the previous stage's mesh
    fuse_weight: float = 0.0  # 0 = no decoded-SDF fusion


@dataclass
class StageCallbacks:
    """What the runner needs from the rest of the package (injected so the runner stays model-agnostic).

    foreground(stage, frame) → target latent of the seen surface in that stage's frame (``frame`` maps the
        first sparse stage's canonical frame to this stage's);
    seen_sdf(stage, frame) → trustworthy seen-surface SDF voxels for fusion (or None);
    free_voxels(points, frame) → (N,) bool free-space test of points in the stage's frame (map them back with
        ``frame.inverse()`` before :func:`consistent3dgen.geometry.freespace.free_space_mask`);
    extract(sdf) → (vertices, faces) canonical mesh.
    """

    foreground: Callable[[SparseStage, Similarity], SparseLatent | None]
    extract: Callable[[SparseVoxels], tuple[np.ndarray, np.ndarray]]
    seen_sdf: Callable[[SparseStage, Similarity], SparseVoxels | None] | None = None
    free_voxels: Callable[[np.ndarray, Similarity], np.ndarray] | None = None


@dataclass
class StagesResult:
    sdf: SparseVoxels
    frame: Similarity  # first sparse stage's frame → the result's frame
    latents: list[SparseLatent] = field(default_factory=list)


def run_sparse_stages(
    stages: list[SparseStage],
    configs: list[SparseStageConfig],
    first_cells: SparseVoxels,
    cond: Any,
    callbacks: StageCallbacks,
    *,
    cfg_scale: float = 7.0,
    generator: torch.Generator | None = None,
    progress: bool = True,
) -> StagesResult:
    """Run the sparse stages coarse to fine; see the module docstring for the hand-offs."""
    if len(stages) != len(configs) or not stages:
        raise ValueError(f"{len(stages)} sparse stages for {len(configs)} configs")
    frame, cells, latents, sdf = Similarity(), first_cells, [], None
    for k, (stage, cfg) in enumerate(zip(stages, configs, strict=True)):
        target = None
        if k > 0:
            vertices, faces = callbacks.extract(sdf)
            renorm = normalize_to_cube(vertices)
            frame = frame.then(renorm)
            cells = mesh_to_cells(renorm.apply(vertices), faces, stage.resolution, stage.latent_factor,
                                  cfg.cell_distance)
            target = callbacks.foreground(stage, frame)
            if target is not None:  # the seen surface's cells are always tokens
                cells = cells.union(SparseVoxels(target.coords.cpu().numpy(), cells.resolution))
        else:
            target = callbacks.foreground(stage, frame)
        cells = order_tokens(stage, cells)
        latent = run_sparse_stage(stage, cells, cond, cfg.schedule, target=target,
                                  guidance_strength=cfg.guidance_strength, guidance_variant=cfg.guidance_variant,
                                  cfg_scale=cfg_scale, generator=generator, progress=progress)
        latents.append(latent)
        sdf = stage.decode_sdf(latent)
        if cfg.fuse_weight > 0 and callbacks.seen_sdf is not None:
            seen = callbacks.seen_sdf(stage, frame)
            if seen is not None:
                sdf = fuse_sdf(sdf, seen, cfg.fuse_weight)
        if callbacks.free_voxels is not None:
            sdf = clamp_free_space(sdf, callbacks.free_voxels(sdf.centers(), frame))
    return StagesResult(sdf, frame, latents)
