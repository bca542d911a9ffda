"""The whole method: inputs → point map → foreground target → dense stage → sparse stage(s) → mesh.

``ConsistentPipeline.from_pretrained("mini")`` runs offline with the bundled prior; ``"direct3d-s2"`` (or a
local folder) uses the paper's base model. A call returns a :class:`PipelineResult` (mesh in the canonical
frame, the frame to give it back in the camera's frame, timings, and what each stage did).

Data flow (one view):
1. point map (given, or from a reconstructor: VGGT / depth / .npz);
2. :func:`~consistent3dgen.foreground.build_foreground` at the first sparse stage's resolution: seen mesh in the
   canonical cube, thin-shell SDF, latent cells and their camera-side half;
3. the shell is encoded by the stage's own VAE; the tokens in front cells are the target ``x_fg``;
4. dense stage: the front cells' occupancy, encoded by the dense VAE, starts the sampler SDEdit-style
   (``dense_start_sigma``); its decoded occupancy ∪ the foreground cells = the sparse stage's tokens;
5. sparse stage: guided flow-matching sampling (``guidance``/``guidance_variant``), decode, optional fusion with
   the seen shell, then the next stage's tokens from this stage's mesh; marching cubes, simplification.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import InputError
from .foreground import Foreground, build_foreground
from .generators.base import Generator, SparseLatent
from .geometry.frames import CanonicalFrame, canonical_to_camera
from .geometry.voxels import SparseVoxels
from .pointmap import PointMap
from .sampling import FlowMatchSchedule, FrontGuidance, initial_noise, sample


@dataclass
class GenerationOptions:
    """Everything a call can change; the defaults are the measured choices (see README, "Ablations")."""

    guidance: float = 8.0  # λ; 0 = the unguided prior (the baseline)
    guidance_variant: str = "paper"  # paper | noised | x0 | replace (sampling.guidance)
    guidance_sigma_range: tuple[float, float] = (0.0, 1.0)
    front_cut: bool = True  # keep only the camera-side half of the shell's latent cells as target
    dense_start: str = "sdedit"  # sdedit: start from the encoded foreground occupancy; noise: plain sampling
    dense_start_sigma: float = 0.8  # SDEdit strength (sigma the foreground latent is noised to)
    dense_guidance: float = 0.0  # optional guidance of the dense latent towards the foreground occupancy latent
    occupancy_threshold: float = 0.5  # sigmoid(logit) threshold of the dense decoder
    fusion: bool = False  # write the seen shell's SDF into the decoded SDF where the seen surface exists
    free_space: bool = False  # drop tokens / clear SDF in front of the seen surface and outside its silhouette
    cfg_scale: float = 7.0
    dense_steps: int | None = None
    sparse_steps: int | None = None
    seed: int = 0
    band: float = 2.0
    shell: float = 1.0
    conf_threshold: float = 0.0
    drop_percent: float = 0.0
    mc_level: float = 0.0
    max_faces: int | None = 200_000
    progress: bool = True

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class PipelineResult:
    """A generated mesh in the canonical frame, plus how to put it back into the input camera's frame."""

    vertices: np.ndarray  # (V, 3) canonical
    faces: np.ndarray  # (F, 3)
    frame: CanonicalFrame
    pointmap: PointMap
    options: GenerationOptions
    timings: dict[str, float] = field(default_factory=dict)
    stages: list[dict] = field(default_factory=list)
    foreground: Foreground | None = None

    def mesh(self, frame: str = "camera") -> tuple[np.ndarray, np.ndarray]:
        """``(vertices, faces)`` in ``camera`` (input camera, its units) or ``canonical`` (generator cube) frame."""
        if frame == "canonical":
            return self.vertices, self.faces
        if frame == "camera":
            return canonical_to_camera(self.vertices.astype(np.float64), self.frame).astype(np.float32), self.faces
        raise InputError(f"unknown frame {frame!r}; use camera or canonical")

    def export(self, path: str | Path, frame: str = "camera") -> Path:
        from .geometry.extract import export_mesh

        v, f = self.mesh(frame)
        return export_mesh(v, f, path)

    def metrics(self) -> dict:
        """Input-view consistency of the camera-frame mesh against the input point map."""
        from .metrics import input_view_consistency

        v, f = self.mesh("camera")
        return input_view_consistency(v, f, self.pointmap).to_dict()

    def report(self) -> dict:
        return {
            "options": self.options.to_dict(),
            "frame": self.frame.to_dict(),
            "timings": self.timings,
            "stages": self.stages,
            "vertices": len(self.vertices),
            "faces": len(self.faces),
        }


class ConsistentPipeline:
    """Reconstruction at the seen side + generation at the unseen side, with a given generator."""

    def __init__(self, generator: Generator, device: str | torch.device = "cpu"):
        self.generator = generator
        self.device = torch.device(device)

    @classmethod
    def from_pretrained(cls, name: str | Path = "mini", device: str | torch.device = "cpu", **kwargs: Any):
        from .generators.registry import load_generator

        return cls(load_generator(name, device=device, **kwargs), device=device)

    # ------------------------------------------------------------------------------------------- inputs

    def condition(self, pointmap: PointMap) -> tuple[Any, Any]:
        """(cond, uncond) for the models: image tokens and zeros, or the prior's null condition and no CFG."""
        gen = self.generator
        if gen.conditioner is not None:
            if pointmap.image is None:
                raise InputError("this generator is image-conditioned but the input has no colour image")
            rgba = np.dstack([pointmap.image, np.where(pointmap.mask, 255, 0).astype(np.uint8)])
            cond = gen.conditioner(rgba).to(self.device)
            return cond, torch.zeros_like(cond)
        if gen.null_condition is None:
            raise InputError("generator has neither an image conditioner nor a null condition")
        return gen.null_condition.to(self.device), None

    def _schedule(self, kind: str, index: int, steps: int | None) -> FlowMatchSchedule:
        defaults = self.generator.sampler_defaults
        if defaults:
            d = defaults["dense"] if kind == "dense" else defaults["sparse"][min(index, len(defaults["sparse"]) - 1)]
            return FlowMatchSchedule.shifted(steps or int(d["steps"]), float(d["shift"]))
        stage = "dense" if kind == "dense" else f"sparse{self.generator.sparse[index].resolution}"
        return FlowMatchSchedule.direct3d_s2(stage, steps)

    # ------------------------------------------------------------------------------------------- stages

    def foreground_target(self, fg: Foreground, stage_index: int, front_cut: bool = True) -> SparseLatent:
        """Encode the thin shell with the stage's VAE and keep the tokens in the camera-side cells."""
        stage = self.generator.sparse[stage_index]
        latent = stage.encode_sdf(fg.sdf)
        if not front_cut:
            return latent
        keep_cells = SparseVoxels(fg.cells.coords[fg.front], fg.cells.resolution)
        keep = keep_cells.lookup(latent.coords.numpy()) >= 0
        idx = torch.as_tensor(np.flatnonzero(keep))
        return SparseLatent(latent.coords[idx], latent.feats[idx], latent.resolution)

    def run_dense(self, fg: Foreground, cond: Any, uncond: Any, opts: GenerationOptions,
                  generator: torch.Generator) -> tuple[np.ndarray, dict]:
        """Dense stage → occupied cells (K, 3) at the dense occupancy resolution."""
        dense = self.generator.dense
        r = dense.occupancy_resolution
        schedule = self._schedule("dense", 0, opts.dense_steps)
        occ = torch.from_numpy(fg.occupancy(r, front_only=opts.front_cut).astype(np.float32))[None, None]
        x_fg = dense.encode_occupancy(occ)
        noise = initial_noise((1, *dense.latent_shape), generator=generator)
        start, x_start = 0, None
        if opts.dense_start == "sdedit":
            start, x_start = schedule.start_index(opts.dense_start_sigma), x_fg
        elif opts.dense_start != "noise":
            raise InputError(f"dense_start must be sdedit or noise, got {opts.dense_start!r}")
        guidance = None
        if opts.dense_guidance > 0:
            # latent voxels covering seen cells; the latent grid is coarser than the occupancy grid
            f = r // dense.latent_shape[1]
            m = torch.nn.functional.max_pool3d(occ, f) > 0
            guidance = FrontGuidance(x_fg, m.expand_as(x_fg).float(), opts.dense_guidance, opts.guidance_variant)
        out = sample(dense.velocity, noise, schedule, cond, uncond=uncond, cfg_scale=opts.cfg_scale,
                     guidance=guidance, x_start=x_start, start_index=start, generator=generator,
                     progress=opts.progress, desc="dense")
        logits = dense.decode_occupancy(out.x)[0, 0]
        cells = (logits.sigmoid() >= opts.occupancy_threshold).nonzero().numpy().astype(np.int32)
        return cells, {"stage": "dense", "steps": len(schedule) - start, "cells": len(cells)}

    def run_sparse(self, index: int, tokens: np.ndarray, target: SparseLatent, cond: Any, uncond: Any,
                   opts: GenerationOptions, generator: torch.Generator) -> tuple[SparseVoxels, dict]:
        """Guided sampling of one sparse stage on ``tokens`` (latent cells) → decoded SDF voxels."""
        stage = self.generator.sparse[index]
        coords = torch.as_tensor(np.unique(tokens, axis=0), dtype=torch.int32)
        coords = coords[stage.token_order(coords)]
        # x_fg aligned to the token list by coordinate join; tokens without a target get M = 0
        t_vox = SparseVoxels(target.coords.numpy(), target.resolution)
        row = torch.as_tensor(t_vox.lookup(coords.numpy()))
        mask = (row >= 0).float()
        x_fg = torch.zeros(len(coords), stage.latent_channels)
        x_fg[row >= 0] = target.feats[row[row >= 0]].float()
        schedule = self._schedule("sparse", index, opts.sparse_steps)
        noise = initial_noise((len(coords), stage.latent_channels), generator=generator)
        guidance = None
        if opts.guidance > 0 and mask.any():
            guidance = FrontGuidance(x_fg, mask, opts.guidance, opts.guidance_variant, opts.guidance_sigma_range)

        def velocity(x: torch.Tensor, t: torch.Tensor, c: Any) -> torch.Tensor:
            return stage.velocity(x, coords, t, c)

        out = sample(velocity, noise, schedule, cond, uncond=uncond, cfg_scale=opts.cfg_scale, guidance=guidance,
                     generator=generator, progress=opts.progress, desc=f"sparse {stage.resolution}")
        sdf = stage.decode_sdf(SparseLatent(coords, out.x.float(), target.resolution))
        info = {"stage": f"sparse{stage.resolution}", "steps": len(schedule), "tokens": len(coords),
                "guided_tokens": int(mask.sum()), "decoded_voxels": len(sdf)}
        if mask.any():
            err = (out.x.float()[mask > 0] - x_fg[mask > 0]).norm(dim=1) / x_fg[mask > 0].norm(dim=1).clamp_min(1e-6)
            info["target_rel_error"] = float(err.mean())
        return sdf, info

    # ------------------------------------------------------------------------------------------- call

    @torch.no_grad()
    def __call__(self, inputs: PointMap | Any, options: GenerationOptions | None = None, **overrides: Any
                 ) -> PipelineResult:
        """Generate a mesh for ``inputs`` (a PointMap, or anything a reconstructor reads)."""
        from .geometry.extract import simplify_mesh, sparse_marching_cubes

        opts = options or GenerationOptions()
        for k, v in overrides.items():
            if not hasattr(opts, k):
                raise InputError(f"unknown generation option {k!r}")
            setattr(opts, k, v)
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        pm = inputs if isinstance(inputs, PointMap) else self._reconstruct(inputs)
        timings["reconstruct"] = time.perf_counter() - t0

        gen = torch.Generator().manual_seed(int(opts.seed))
        first = self.generator.sparse[0]
        t = time.perf_counter()
        fg = build_foreground(pm, first.resolution, band=opts.band, shell=opts.shell, factor=first.latent_factor,
                              conf_threshold=opts.conf_threshold, drop_percent=opts.drop_percent)
        target = self.foreground_target(fg, 0, opts.front_cut)
        timings["foreground"] = time.perf_counter() - t
        cond, uncond = self.condition(pm)
        stages: list[dict] = []

        t = time.perf_counter()
        cells, info = self.run_dense(fg, cond, uncond, opts, gen)
        stages.append(info)
        timings["dense"] = time.perf_counter() - t
        tokens = _rescale_cells(cells, self.generator.dense.occupancy_resolution, target.resolution)
        seen_cells = fg.cells.coords[fg.front] if opts.front_cut else fg.cells.coords
        tokens = np.concatenate([tokens, seen_cells]) if len(tokens) else seen_cells
        if opts.free_space:
            tokens = tokens[~_in_free_space(tokens, target.resolution, fg)]

        sdf = None
        for i, stage in enumerate(self.generator.sparse):
            t = time.perf_counter()
            if i > 0:
                # next stage's tokens: cells within a voxel of the previous stage's surface, same canonical frame
                fg = build_foreground(pm, stage.resolution, band=opts.band, shell=opts.shell,
                                      factor=stage.latent_factor, conf_threshold=opts.conf_threshold,
                                      drop_percent=opts.drop_percent, frame=fg.frame)
                target = self.foreground_target(fg, i, opts.front_cut)
                tokens = _cells_near_surface(sdf, stage.resolution // stage.latent_factor)
                tokens = np.concatenate([tokens, fg.cells.coords[fg.front]])
            sdf, info = self.run_sparse(i, tokens, target, cond, uncond, opts, gen)
            if opts.fusion:
                sdf = fuse_seen_shell(sdf, fg)
            if opts.free_space:
                sdf = _clear_free_space(sdf, fg)
            stages.append(info)
            timings[f"sparse{stage.resolution}"] = time.perf_counter() - t

        t = time.perf_counter()
        verts, faces = sparse_marching_cubes(sdf, level=opts.mc_level)
        if opts.max_faces and len(faces) > opts.max_faces:
            verts, faces = simplify_mesh(verts, faces, opts.max_faces)
        timings["extract"] = time.perf_counter() - t
        timings["total"] = time.perf_counter() - t0
        return PipelineResult(verts, faces, fg.frame, pm, opts, timings, stages, fg)

    def _reconstruct(self, inputs: Any) -> PointMap:
        from .reconstruct.base import get_reconstructor

        return get_reconstructor(None, inputs)(inputs)[0]


# ----------------------------------------------------------------------------------------------- helpers


def _rescale_cells(cells: np.ndarray, src: int, dst: int) -> np.ndarray:
    """Cells at grid ``src`` → cells at grid ``dst`` covering the same space."""
    if src == dst or len(cells) == 0:
        return cells.astype(np.int32)
    if src > dst:
        return np.unique(cells // (src // dst), axis=0).astype(np.int32)
    return SparseVoxels(cells, src).upsample_cells(dst // src).coords


def _cells_near_surface(sdf: SparseVoxels, cell_resolution: int) -> np.ndarray:
    """Latent cells at ``cell_resolution`` holding the previous stage's surface (voxels with |sdf| < 1)."""
    near = sdf.coords[np.abs(sdf.feats[:, 0]) < 1.0]
    scale = cell_resolution / sdf.resolution
    cells = np.floor((near + 0.5) * scale).astype(np.int64)
    # dilate by one cell so the finer stage can move the surface
    off = np.stack(np.meshgrid(*[np.arange(-1, 2)] * 3, indexing="ij"), -1).reshape(-1, 3)
    cells = (cells[:, None] + off[None]).reshape(-1, 3)
    cells = cells[((cells >= 0) & (cells < cell_resolution)).all(1)]
    return np.unique(cells, axis=0).astype(np.int32)


def fuse_seen_shell(sdf: SparseVoxels, fg: Foreground) -> SparseVoxels:
    """Spatial fusion: where the seen shell has a camera-side voxel, its value replaces the decoded one.

    The latents of a partial and a full shape can differ where they overlap, so guidance alone may leave the
    decoded surface off the seen one; this pins it. Voxels of the shell missing from the decoded set are added.
    """
    shell = fg.sdf.select(np.flatnonzero(fg.shell.front_side))
    if sdf.resolution != shell.resolution:
        raise InputError(f"fusion needs the shell at the decoded resolution {sdf.resolution}")
    merged = shell.union(sdf)  # shell values win where both exist
    return merged


def _in_free_space(cells: np.ndarray, resolution: int, fg: Foreground) -> np.ndarray:
    """(N,) bool: cells whose centre projects outside the object mask or lies in front of the seen surface."""
    from .geometry.voxels import voxel_centers

    return _free_space_points(voxel_centers(cells, resolution), fg, margin=2.0 / resolution)


def _clear_free_space(sdf: SparseVoxels, fg: Foreground) -> SparseVoxels:
    """Decoded voxels in free space become empty (+1)."""
    free = _free_space_points(sdf.centers(), fg, margin=2.0 * fg.band * 2.0 / sdf.resolution)
    feats = sdf.feats.copy()
    feats[free] = 1.0
    return SparseVoxels(sdf.coords, sdf.resolution, feats)


def _free_space_points(points_canonical: np.ndarray, fg: Foreground, margin: float) -> np.ndarray:
    """Points seen to be empty: projecting outside the object mask, or nearer to the camera than the seen
    surface by more than ``margin`` (canonical units)."""
    pm = fg.pointmap
    if pm.intrinsics is None:
        return np.zeros(len(points_canonical), bool)
    cam = canonical_to_camera(points_canonical.astype(np.float64), fg.frame)
    z = cam[:, 2]
    k = pm.intrinsics
    h, w = pm.shape
    with np.errstate(divide="ignore", invalid="ignore"):
        u = np.rint(k[0, 0] * cam[:, 0] / z + k[0, 2]).astype(np.int64)
        v = np.rint(k[1, 1] * cam[:, 1] / z + k[1, 2]).astype(np.int64)
    inside = (z > 0) & (u >= 0) & (u < w) & (v >= 0) & (v < h)
    free = np.zeros(len(cam), bool)
    ui, vi = u[inside], v[inside]
    seen = pm.mask[vi, ui]
    depth = np.where(seen, pm.points[vi, ui, 2], np.inf)
    margin_cam = margin / fg.frame.scale
    free_inside = ~seen | (z[inside] < depth - margin_cam)
    # pixels next to the silhouette are uncertain: keep them (dilate the mask by one pixel)
    free[np.flatnonzero(inside)] = free_inside
    return free
