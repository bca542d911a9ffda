"""Model-agnostic cascade: dense occupancy stage, then sparse SDF stages, with front-partial guidance.

Written against :mod:`consistent3dgen.generators.base` and a seen side (:class:`SeenView`, implemented by
:class:`consistent3dgen.seen_side.SeenSide`). Data flow per stage:

* dense: start from the encoded seen occupancy (SDEdit: noised to ``sdedit_strength``), optional guidance
  towards it, decode → occupancy probabilities; free space (if given) is cleared;
* dense → first sparse stage: cells with probability ≥ threshold ∪ the seen cells (minus free cells);
* sparse stage k → k + 1: decode SDF → mesh → re-normalise it into the cube (the seen side must follow the
  same similarity, so the target is re-encoded in the new frame) → cells within a distance of its surface;
* every sparse stage: tokens in ``stage.token_order`` order, target latent joined by coordinates (mask 1 where
  a token has a target), optional decoded-SDF fusion with the seen surface and free-space clamp;
* a stage with a ``refiner`` (``SparseStageConfig.refine``): its refiner decodes, and after fusion and free space
  turns the SDF into the stage's mesh at its own level (the hand-off and the output then use that mesh).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch

from .generators.base import DenseStage, SparseLatent, SparseStage, stage_device
from .geometry.frames import Similarity, normalize_to_cube
from .geometry.interior import fill_enclosed_interior
from .geometry.voxels import SparseVoxels, pool_occupancy
from .sampling import FlowMatchSchedule, FrontGuidance, StepInfo, initial_noise, sample


@dataclass(frozen=True)
class Condition:
    """What the models are conditioned on: the positive input and, for classifier-free guidance, a negative.

    With no negative (an unconditional prior such as the mini prior) each step runs the model once.
    """

    positive: Any
    negative: Any = None
    cfg_scale: float = 1.0
    # what came with the image tokens for stages that build their own condition from them (``prepare_condition``),
    # e.g. the per-patch foreground mask (B, h, w) of Direct3D-S2 v1.0's sparse conditions
    mask: Any = None


def stage_condition(stage: Any, condition: Condition) -> tuple[Any, Any]:
    """(positive, negative) in the stage's own form: its ``prepare_condition(cond, mask)`` when it has one."""
    prepare = getattr(stage, "prepare_condition", None)
    if prepare is None:
        return condition.positive, condition.negative
    negative = None if condition.negative is None else prepare(condition.negative, condition.mask)
    return prepare(condition.positive, condition.mask), negative


# --------------------------------------------------------------------------- dense stage


@dataclass
class DenseResult:
    latent: torch.Tensor  # (1, C, L, L, L)
    probability: torch.Tensor  # (R, R, R) occupancy probability after free-space clearing


def run_dense_stage(
    stage: DenseStage,
    condition: Condition,
    schedule: FlowMatchSchedule,
    *,
    start: np.ndarray | None = None,
    sdedit_strength: float = 1.0,
    guidance_strength: float = 0.0,
    guidance_variant: str = "paper",
    free_space: np.ndarray | None = None,
    generator: torch.Generator | None = None,
    progress: bool | dict = True,
    candidates: int = 1,
    **sample_kw: Any,
) -> DenseResult:
    """Dense stage from the seen occupancy ``start`` (R³ bool, index [x, y, z]).

    sdedit_strength: sigma the encoded start is noised to (1 = start from pure noise as the official pipeline).
    guidance_strength > 0 additionally guides the latent cells that hold seen voxels.
    free_space: R³ bool voxels the view shows empty; their probability is set to 0 (seen voxels kept).
    candidates > 1: that many samples (noise drawn one after another from ``generator``), the one that agrees
    best with the view kept (:func:`view_agreement`; the first when nothing is seen).
    """
    best, best_score = None, -np.inf
    for _ in range(max(1, int(candidates))):
        result, raw = _dense_sample(stage, condition, schedule, start, sdedit_strength, guidance_strength,
                                    guidance_variant, free_space, generator, progress, **sample_kw)
        if candidates <= 1 or start is None:
            return result
        score = view_agreement(raw, start, free_space)
        if score > best_score:
            best, best_score = result, score
    return best


def view_agreement(probability: torch.Tensor, start: np.ndarray, free_space: np.ndarray | None,
                   threshold: float = 0.5) -> float:
    """How well a dense sample's occupancy (before free-space clearing) fits the view: the share of the seen
    occupancy ``start`` it covers, minus the share of its occupied voxels that lie in the view's free space."""
    occ = probability.detach().cpu().numpy() >= threshold
    seen = np.asarray(start, bool)
    covered = float((occ & seen).sum()) / max(int(seen.sum()), 1)
    if free_space is None:
        return covered
    return covered - float((occ & np.asarray(free_space, bool) & ~seen).sum()) / max(int(occ.sum()), 1)


def _dense_sample(stage: DenseStage, condition: Condition, schedule: FlowMatchSchedule, start: np.ndarray | None,
                  sdedit_strength: float, guidance_strength: float, guidance_variant: str,
                  free_space: np.ndarray | None, generator: torch.Generator | None, progress: bool | dict,
                  **sample_kw: Any) -> tuple[DenseResult, torch.Tensor]:
    """One dense sample, and its occupancy probability before free-space clearing."""
    shape = (1, *stage.latent_shape)
    r = stage.occupancy_resolution
    device = stage_device(stage)
    noise = initial_noise(shape, generator, device=device)  # drawn on the generator's device, then moved
    x_start, start_index, guidance = None, 0, None
    if start is not None:
        occ = torch.as_tensor(np.asarray(start, np.float32), device=device)[None, None]
        if occ.shape[-1] != r:
            raise ValueError(f"start occupancy is {occ.shape[-1]}^3, the dense stage needs {r}^3")
        target = stage.encode_occupancy(occ).to(device=device, dtype=noise.dtype)
        if sdedit_strength < 1.0:
            x_start, start_index = target, schedule.start_index(sdedit_strength)
        if guidance_strength > 0:
            cells = pool_occupancy(np.asarray(start, bool), stage.latent_shape[-1])
            mask = torch.as_tensor(cells, dtype=torch.float32, device=device)[None, None]
            guidance = FrontGuidance(target, mask, guidance_strength, guidance_variant)
    latent = sample(
        stage.velocity, noise, schedule, condition.positive, uncond=condition.negative,
        cfg_scale=condition.cfg_scale, guidance=guidance, x_start=x_start, start_index=start_index,
        generator=generator, progress=progress, desc="dense", **sample_kw,
    ).x
    raw = torch.sigmoid(stage.decode_occupancy(latent).float())[0, 0]
    prob = raw
    if free_space is not None:
        clear = np.asarray(free_space, bool)
        if start is not None:
            clear = clear & ~np.asarray(start, bool)
        clear = torch.as_tensor(clear, device=prob.device)
        prob = prob.masked_fill(clear, 0.0)
    return DenseResult(latent, prob), raw


# --------------------------------------------------------------------------- tokens


def occupancy_to_cells(
    probability: torch.Tensor | np.ndarray,
    threshold: float,
    latent_resolution: int,
    seen_cells: SparseVoxels | None = None,
    free_cells: SparseVoxels | None = None,
    dilation: int = 0,
) -> SparseVoxels:
    """Cells with occupancy probability ≥ threshold (Direct3D-S2: 0.1), grown by ``dilation`` cells (26-connected),
    ∪ seen cells, minus free cells.

    Seen cells always stay (the view saw a surface there); free cells are cells the view shows empty. A surface
    the sparse stage places in a cell next to a missing one is cut by it (absent voxels read as outside), which
    the growth leaves room against.
    """
    prob = probability.detach().cpu().numpy() if torch.is_tensor(probability) else np.asarray(probability)
    occ = pool_occupancy(prob >= threshold, latent_resolution)
    if dilation > 0:
        from scipy.ndimage import binary_dilation

        occ = binary_dilation(occ, structure=np.ones((3, 3, 3), bool), iterations=int(dilation))
    cells = SparseVoxels(np.argwhere(occ), latent_resolution)
    if free_cells is not None and len(free_cells) and len(cells):
        cells = cells.select(free_cells.lookup(cells.coords) < 0)
    if seen_cells is not None:
        if seen_cells.resolution != latent_resolution:
            raise ValueError(f"seen cells at {seen_cells.resolution}, tokens at {latent_resolution}")
        cells = cells.union(SparseVoxels(seen_cells.coords, latent_resolution))
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
    vertices: np.ndarray, faces: np.ndarray, resolution: int, latent_factor: int, distance: float = 4.0,
    max_memory_gb: float | None = None,
) -> SparseVoxels:
    """Latent cells of the voxels (at ``resolution``) within ``distance`` voxels of the mesh surface.

    Direct3D-S2's ``mesh2index`` uses 4 voxels at 1024. The mesh must already be in the stage's canonical frame.
    The band's memory is estimated first and refused (one line) above ``max_memory_gb`` (:mod:`.limits`).
    """
    from .geometry.shell import thin_shell
    from .geometry.warp_runtime import warp_available
    from .limits import check_memory, shell_voxel_bound

    est = shell_voxel_bound(vertices, faces, resolution, distance)
    check_memory(f"the next stage's cells at {resolution}^3", est.bytes("warp" if warp_available("shell") else "numpy"),
                 max_memory_gb, detail=f"at most {est.voxels:,} voxels within {distance:g} voxels of the "
                 f"previous stage's mesh")
    voxels = thin_shell(vertices, faces, resolution, band=distance, shell=min(1.0, distance / 2)).sdf
    return SparseVoxels(voxels.coords, resolution).downsample(latent_factor)


def next_stage_cells(sdf: SparseVoxels, stage: SparseStage, mc_level: float, distance: float = 4.0,
                     max_memory_gb: float | None = None, mesh: tuple[np.ndarray, np.ndarray] | None = None
                     ) -> tuple[SparseVoxels, Similarity]:
    """Hand-off between sparse stages: the previous stage's mesh, re-normalised into the cube, gives the next
    stage's cells (within ``distance`` voxels of it) and the similarity that re-normalised it. ``mesh``: the
    previous stage's refined mesh (then ``sdf`` and ``mc_level`` are not used)."""
    from .geometry.marching_cubes import sparse_marching_cubes

    vertices, faces = mesh if mesh is not None else sparse_marching_cubes(sdf, level=mc_level)
    renorm = normalize_to_cube(vertices)
    cells = mesh_to_cells(renorm.apply(vertices), faces, stage.resolution, stage.latent_factor, distance,
                          max_memory_gb=max_memory_gb)
    return cells, renorm


def resample_signed_field(sdf: SparseVoxels, renorm: Similarity, resolution: int,
                          cells: SparseVoxels) -> SparseVoxels:
    """A signed field (``clip(d_vox / band, -1, 1)``) of one stage at the voxels of the next stage's ``cells``.

    ``renorm`` maps ``sdf``'s canonical frame to the next stage's. Trilinear in the previous grid over the
    voxels it has (weights renormalised over the present corners); distances rescaled to the next stage's
    voxels (``renorm.scale · resolution / sdf.resolution``, same band in voxels). Only voxels inside the band
    (|value| < 1, what the stage's encoder saw in training) and with a present corner are returned.
    """
    voxels = SparseVoxels(cells.coords, cells.resolution).upsample_cells(resolution // cells.resolution)
    points = renorm.inverse().apply(voxels.centers()).astype(np.float64)
    # continuous index in the previous grid: voxel i's centre sits at i + 0.5
    g = (points + 1.0) * 0.5 * sdf.resolution - 0.5
    base = np.floor(g).astype(np.int64)
    frac = g - base
    total = np.zeros(len(points))
    weights = np.zeros(len(points))
    values = sdf.feats[:, 0].astype(np.float64)
    for corner in np.ndindex(2, 2, 2):
        c = base + np.asarray(corner)
        inside = np.all((c >= 0) & (c < sdf.resolution), axis=1)
        rows = np.full(len(points), -1)
        rows[inside] = sdf.lookup(c[inside])
        w = np.prod(np.where(np.asarray(corner, bool), frac, 1.0 - frac), axis=1) * (rows >= 0)
        total += w * values[np.maximum(rows, 0)]
        weights += w
    present = weights > 1e-6
    value = np.clip(total[present] / weights[present] * renorm.scale * resolution / sdf.resolution, -1.0, 1.0)
    band = np.abs(value) < 1.0
    kept = voxels.select(np.flatnonzero(present)[band])
    return SparseVoxels(kept.coords, resolution, value[band].astype(np.float32)[:, None])


def previous_stage_start(stage: SparseStage, sdf: SparseVoxels, renorm: Similarity,
                         cells: SparseVoxels) -> torch.Tensor:
    """An SDEdit start for a later sparse stage: the previous stage's signed field at this stage's voxels,
    encoded by this stage's VAE, one row per token of ``cells`` (zeros for tokens the band does not reach)."""
    start_field = resample_signed_field(sdf, renorm, stage.resolution, cells)
    if not len(start_field):
        return torch.zeros(len(cells), stage.latent_channels)
    feats, _ = align_target(cells.coords, stage.encode_sdf(start_field).to("cpu"))
    return feats


# --------------------------------------------------------------------------- sparse stage


def run_sparse_stage(
    stage: SparseStage,
    cells: SparseVoxels,
    condition: Condition,
    schedule: FlowMatchSchedule,
    *,
    target: SparseLatent | None = None,
    guidance_strength: float = 0.0,
    guidance_variant: str = "paper",
    generator: torch.Generator | None = None,
    progress: bool | dict = True,
    **sample_kw: Any,
) -> SparseLatent:
    """Sample the latent tokens of ``cells`` (already ordered), guided towards ``target`` where it has tokens."""
    coords = torch.as_tensor(cells.coords, dtype=torch.int32)
    device = stage_device(stage)
    noise = initial_noise((len(cells), stage.latent_channels), generator, device=device)  # drawn on the CPU, moved
    guidance = None
    if target is not None and guidance_strength > 0:
        feats, mask = align_target(cells.coords, target)
        guidance = FrontGuidance(feats.to(noise.dtype), mask, guidance_strength, guidance_variant)
    velocity = _TokenVelocity(stage, coords.to(device))  # coords moved once, not at every step
    cond, uncond = stage_condition(stage, condition)  # once per stage, not per step
    x = sample(velocity, noise, schedule, cond, uncond=uncond,
               cfg_scale=condition.cfg_scale, guidance=guidance, generator=generator, progress=progress,
               desc=f"sparse{stage.resolution}", **sample_kw).x
    return SparseLatent(coords, x, cells.resolution)


@dataclass(frozen=True)
class _TokenVelocity:
    """A sparse stage's velocity at fixed token coordinates, in the sampler's ``v(x, t, cond)`` form."""

    stage: SparseStage
    coords: torch.Tensor

    def __call__(self, x: torch.Tensor, t: torch.Tensor, cond: Any) -> torch.Tensor:
        return self.stage.velocity(x, self.coords, t, cond)


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


# --------------------------------------------------------------------------- the sparse cascade


class SeenView(Protocol):
    """What the sparse stages ask of the view (``sim`` maps the first sparse stage's frame to stage ``index``'s).

    ``None`` from ``target`` / ``fusion_sdf`` / ``free_voxels`` means "nothing known" (no guidance, no fusion,
    no free space at that stage).
    """

    def target(self, index: int, sim: Similarity) -> SparseLatent | None: ...

    def fusion_sdf(self, index: int, sim: Similarity, level: float | None = None) -> SparseVoxels | None: ...

    def free_voxels(self, points: np.ndarray, sim: Similarity) -> np.ndarray | None: ...


@dataclass
class SparseStageConfig:
    schedule: FlowMatchSchedule
    guidance_strength: float = 0.0
    guidance_variant: str = "paper"
    fusion: bool = False  # write the seen shell's SDF into the decoded SDF
    fusion_at: str = "shell"  # shell: the seen shell's SDF; surface: the extracted level on the seen surface
    mc_level: float = 0.0  # marching-cubes level of this stage's decoded SDF (its refiner derives its own)
    refine: bool = False  # run the stage's refiner (when it has one) after fusion and free space
    cell_distance: float = 4.0  # voxels, for the next stage's tokens from this stage's mesh
    decode_chunks: int | None = None  # decode in chunks³ spatial pieces (low memory); None = the stage's own way
    # a later stage's start: 1 = pure noise (the official cascade); < 1 = SDEdit from the previous stage's signed
    # field, encoded by this stage's VAE and noised to this sigma (the first stage always starts from noise)
    start_sigma: float = 1.0
    # fill the absent cells a signed field encloses as inside (geometry.interior); a thin-shell or unsigned field
    # encloses none, so the pipeline skips the search there (millions of voxels at 1024³)
    fill_interior: bool = True


@dataclass
class StagesResult:
    sdf: SparseVoxels
    frame: Similarity  # first sparse stage's frame → the result's frame
    latents: list[SparseLatent] = field(default_factory=list)  # final tokens of each stage
    targets: list[SparseLatent | None] = field(default_factory=list)  # the guidance target of each stage
    mesh: tuple[np.ndarray, np.ndarray] | None = None  # the last stage's refined mesh (None: extract ``sdf``)
    refined: list[dict | None] = field(default_factory=list)  # per stage: its refiner's name, level, faces


def run_sparse_stages(
    stages: list[SparseStage],
    configs: list[SparseStageConfig],
    first_cells: SparseVoxels,
    condition: Condition,
    seen: SeenView,
    *,
    generator: torch.Generator | None = None,
    progress: bool | dict = True,
    max_memory_gb: float | None = None,
    callback: Callable[[StepInfo], None] | None = None,
    stage_scope: Callable[[int, SparseStage], AbstractContextManager] | None = None,
) -> StagesResult:
    """Run the sparse stages coarse to fine; see the module docstring for the hand-offs.

    ``stage_scope(k, stage)``, when given, is a context entered around all of stage ``k``'s work (its cells, the
    target's encoding, sampling, decoding): the pipeline places the stage's models and measures it there.

    Before each stage samples, its memory is estimated from its tokens and the stage's widths
    (:func:`consistent3dgen.limits.sparse_stage_bytes`) and refused (one ``InputError`` line) above
    ``max_memory_gb`` (None: 80 % of the memory available then).
    """
    from .limits import check_memory, sparse_stage_bytes

    if len(stages) != len(configs) or not stages:
        raise ValueError(f"{len(stages)} sparse stages for {len(configs)} configs")
    frame, cells = Similarity(), first_cells
    result = StagesResult(sdf=None, frame=frame)  # type: ignore[arg-type]
    for k, (stage, cfg) in enumerate(zip(stages, configs, strict=True)):
        # the caller's scope per stage: e.g. its models on the device only while it runs, its time and memory
        with stage_scope(k, stage) if stage_scope is not None else nullcontext():
            if k > 0:
                limit = {} if max_memory_gb is None else {"max_memory_gb": max_memory_gb}  # None: its own default
                if result.mesh is not None:  # the previous stage's refined mesh
                    limit["mesh"] = result.mesh
                cells, renorm = next_stage_cells(result.sdf, stage, configs[k - 1].mc_level,
                                                 configs[k - 1].cell_distance, **limit)
                frame = frame.then(renorm)
            target = seen.target(k, frame)
            if k > 0 and target is not None:  # the seen surface's cells are always tokens
                cells = cells.union(SparseVoxels(target.coords.cpu().numpy(), cells.resolution))
            check_memory(f"sparse stage {k} ({stage.resolution}^3)", sparse_stage_bytes(stage, len(cells)),
                         max_memory_gb, detail=f"{len(cells):,} tokens", device=getattr(stage, "device", None))
            cells = order_tokens(stage, cells)
            start = {}
            if k > 0 and cfg.start_sigma < 1.0:
                start = {"x_start": previous_stage_start(stage, result.sdf, renorm, cells),
                         "start_index": cfg.schedule.start_index(cfg.start_sigma)}
            latent = run_sparse_stage(stage, cells, condition, cfg.schedule, target=target,
                                      guidance_strength=cfg.guidance_strength, guidance_variant=cfg.guidance_variant,
                                      generator=generator, progress=progress, callback=callback, **start)
            # a refiner decodes in the stage's place, keeping what it needs from the decoder
            refiner = getattr(stage, "refiner", None) if cfg.refine else None
            decode = stage.decode_sdf if refiner is None else refiner.decode
            # chunked decoding only when asked (a stage without chunks needs no such keyword)
            sdf = decode(latent) if cfg.decode_chunks is None else decode(latent, chunk_size=cfg.decode_chunks)
            sdf, decoded = sdf if refiner is not None else (sdf, None)
            if cfg.fusion:
                # "surface": the level the mesh is extracted at (the refiner's own, when one runs) on the seen surface
                at = None if cfg.fusion_at == "shell" else (refiner.level(cfg.mc_level) if refiner else cfg.mc_level)
                seen_sdf = seen.fusion_sdf(k, frame, level=at)
                if seen_sdf is not None:
                    sdf = fuse_sdf(sdf, seen_sdf)
            free = seen.free_voxels(sdf.centers(), frame)
            if free is not None:
                sdf = clamp_free_space(sdf, free)
            # a signed field's deep inside is absent cells: mark them inside, or marching cubes closes an inner shell
            if cfg.fill_interior:
                sdf = fill_enclosed_interior(sdf, stage.latent_factor, level=cfg.mc_level)
            result.mesh, info = None, None
            if refiner is not None:  # the stage's mesh: hand-off to the next stage, or the output
                level = refiner.level(cfg.mc_level)
                result.mesh = refiner.refine(sdf, decoded, level)
                info = {"refiner": refiner.name, "mc_level": level, "faces": len(result.mesh[1])}
                del decoded
            result.refined.append(info)
            result.sdf, result.frame = sdf, frame
            result.latents.append(latent.to("cpu"))  # results on the CPU, whatever the device
            result.targets.append(target)
    return result
