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
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .cascade import Similarity
from .errors import InputError
from .foreground import Foreground, build_foreground
from .generators.base import Generator, SparseLatent
from .geometry.frames import CanonicalFrame, canonical_to_camera
from .geometry.voxels import SparseVoxels
from .pointmap import PointMap
from .sampling import FlowMatchSchedule


@dataclass
class GenerationOptions:
    """Everything a call can change; the defaults are the measured choices (see README, "Ablations")."""

    guidance: float = 8.0  # λ; 0 = the unguided prior (the baseline)
    guidance_variant: str = "paper"  # paper | noised | x0 | replace (sampling.guidance)
    front_cut: bool = True  # keep only the camera-side half of the shell's latent cells as target
    dense_start: str = "sdedit"  # sdedit: start from the encoded foreground occupancy; noise: plain sampling
    dense_start_sigma: float = 0.8  # SDEdit strength (sigma the foreground latent is noised to)
    dense_guidance: float = 0.0  # optional guidance of the dense latent towards the foreground occupancy latent
    occupancy_threshold: float = 0.5  # sigmoid(logit) threshold of the dense decoder
    fusion: bool = True  # write the seen shell's SDF into the decoded SDF where the seen surface exists
    free_space: bool = True  # drop tokens / clear SDF in front of the seen surface and outside its silhouette
    cfg_scale: float = 7.0
    dense_steps: int | None = None
    sparse_steps: int | None = None
    seed: int = 0
    band: float | None = None  # narrow band (voxels) of the seen shell; None = the generator's convention
    shell: float | None = None  # half thickness (voxels) of the seen shell; None = the generator's convention
    conf_threshold: float = 0.0
    drop_percent: float = 0.0
    mc_level: float | None = None  # marching-cubes level; None = the generator's convention
    max_faces: int | None = 200_000
    # drop loose pieces with fewer faces than this fraction of the largest piece (0 keeps all). Off by default:
    # at 0.01 the mini prior's specks went, but Chamfer rose on all four eval meshes (suzanne 0.0284 → 0.0339)
    # and teapot's IoU fell below 0.95, so those specks are mostly real surface cut loose at 128³
    min_component: float = 0.0
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
    latents: list[SparseLatent] = field(default_factory=list)  # final tokens of each sparse stage
    targets: list[SparseLatent] = field(default_factory=list)  # the guidance target x_fg of each sparse stage

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
        keep = fg.front_cells().lookup(latent.coords.numpy()) >= 0
        idx = torch.as_tensor(np.flatnonzero(keep))
        return SparseLatent(latent.coords[idx], latent.feats[idx], latent.resolution)

    # ------------------------------------------------------------------------------------------- call

    @torch.no_grad()
    def __call__(self, inputs: PointMap | Any, options: GenerationOptions | None = None, **overrides: Any
                 ) -> PipelineResult:
        """Generate a mesh for ``inputs`` (a PointMap, or anything a reconstructor reads)."""
        from .cascade import SparseStageConfig, StageCallbacks, occupancy_to_cells, run_dense_stage, run_sparse_stages
        from .geometry.extract import remove_small_components, simplify_mesh, sparse_marching_cubes
        from .geometry.freespace import free_space_mask
        from .geometry.voxels import voxel_centers

        opts = replace(options) if options else GenerationOptions()  # a copy: the caller's object stays as given
        for k, v in overrides.items():
            if not hasattr(opts, k):
                raise InputError(f"unknown generation option {k!r}")
            setattr(opts, k, v)
        if opts.dense_start not in ("sdedit", "noise"):
            raise InputError(f"dense_start must be sdedit or noise, got {opts.dense_start!r}")
        for key in ("band", "shell", "mc_level"):  # unset: the SDF convention the prior was trained on
            if getattr(opts, key) is None:
                setattr(opts, key, self.generator.field_setting(key))
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        pm = inputs if isinstance(inputs, PointMap) else self._reconstruct(inputs)
        timings["reconstruct"] = time.perf_counter() - t0
        gen = torch.Generator().manual_seed(int(opts.seed))
        dense, sparse = self.generator.dense, self.generator.sparse
        fg_kw = dict(band=opts.band, shell=opts.shell, conf_threshold=opts.conf_threshold,
                     drop_percent=opts.drop_percent)

        t = time.perf_counter()
        fg0 = build_foreground(pm, sparse[0].resolution, factor=sparse[0].latent_factor, **fg_kw)
        foregrounds: dict[int, Foreground] = {0: fg0}

        def stage_foreground(stage: Any, sim: Similarity) -> Foreground:
            i = sparse.index(stage)
            if i not in foregrounds:
                foregrounds[i] = build_foreground(pm, stage.resolution, factor=stage.latent_factor,
                                                  frame=compose_frame(fg0.frame, sim), **fg_kw)
            return foregrounds[i]

        # free space needs the camera to project into; without intrinsics nothing is known to be empty
        use_free = opts.free_space and pm.intrinsics is not None

        cond, uncond = self.condition(pm)
        cfg = opts.cfg_scale if uncond is not None else 1.0
        timings["foreground"] = time.perf_counter() - t

        # dense stage, started from the foreground occupancy; its cells ∪ the foreground cells → tokens
        t = time.perf_counter()
        r = dense.occupancy_resolution
        occ_fg = fg0.occupancy(r, front_only=opts.front_cut)
        occ_free = None
        if use_free:
            centres = voxel_centers(np.argwhere(np.ones((r,) * 3, bool)), r)
            occ_free = free_space_mask(centres, pm, fg0.frame, 2.0 / r).reshape((r,) * 3)
        dense_out = run_dense_stage(
            dense, cond, self._schedule("dense", 0, opts.dense_steps), foreground=occ_fg,
            sdedit_strength=opts.dense_start_sigma if opts.dense_start == "sdedit" else 1.0,
            guidance_strength=opts.dense_guidance, guidance_variant=opts.guidance_variant,
            free_space=occ_free, cfg_scale=cfg, generator=gen, progress=opts.progress)
        cell_res = sparse[0].resolution // sparse[0].latent_factor
        seen_cells = fg0.front_cells() if opts.front_cut else SparseVoxels(fg0.cells.coords, cell_res)
        free_cells = None
        if use_free:
            all_cells = np.argwhere(np.ones((cell_res,) * 3, bool))
            is_free = free_space_mask(voxel_centers(all_cells, cell_res), pm, fg0.frame, 2.0 * np.sqrt(3) / cell_res)
            free_cells = SparseVoxels(all_cells[is_free], cell_res)
        cells = occupancy_to_cells(dense_out.probability, opts.occupancy_threshold, cell_res, seen_cells, free_cells)
        stages: list[dict] = [{"stage": "dense", "occupied": int((dense_out.probability >= opts.occupancy_threshold)
                                                                 .sum()), "tokens": len(cells)}]
        timings["dense"] = time.perf_counter() - t

        t = time.perf_counter()
        targets: list[SparseLatent] = []

        def target_of(stage: Any, sim: Similarity) -> SparseLatent:
            targets.append(self.foreground_target(stage_foreground(stage, sim), sparse.index(stage), opts.front_cut))
            return targets[-1]

        callbacks = StageCallbacks(
            foreground=target_of,
            extract=lambda sdf: sparse_marching_cubes(sdf, level=opts.mc_level),
            seen_sdf=lambda stage, sim: _camera_side_shell(stage_foreground(stage, sim)),
            free_voxels=(lambda points, sim: free_space_mask(points, pm, compose_frame(fg0.frame, sim),
                                                  2.0 * opts.band / sparse[0].resolution)) if use_free else None,
        )
        configs = [SparseStageConfig(self._schedule("sparse", i, opts.sparse_steps), opts.guidance,
                                     opts.guidance_variant, fuse_weight=1.0 if opts.fusion else 0.0)
                   for i in range(len(sparse))]
        out = run_sparse_stages(sparse, configs, cells, cond, callbacks, cfg_scale=cfg, generator=gen,
                                progress=opts.progress)
        for i, latent in enumerate(out.latents):
            stages.append({"stage": f"sparse{sparse[i].resolution}", "tokens": len(latent)})
        timings["sparse"] = time.perf_counter() - t

        t = time.perf_counter()
        verts, faces = sparse_marching_cubes(out.sdf, level=opts.mc_level)
        verts, faces = remove_small_components(verts, faces, opts.min_component)
        if opts.max_faces and len(faces) > opts.max_faces:
            verts, faces = simplify_mesh(verts, faces, opts.max_faces)
        timings["extract"] = time.perf_counter() - t
        timings["total"] = time.perf_counter() - t0
        frame = compose_frame(fg0.frame, out.frame)
        return PipelineResult(verts, faces, frame, pm, opts, timings, stages, fg0, out.latents, targets)

    def _reconstruct(self, inputs: Any) -> PointMap:
        from .reconstruct.base import get_reconstructor

        return get_reconstructor(None, inputs)(inputs)[0]


# ----------------------------------------------------------------------------------------------- helpers


def compose_frame(frame: CanonicalFrame, sim: Similarity) -> CanonicalFrame:
    """The camera → canonical frame followed by a between-stage similarity ``p' = s·p + o``."""
    scale = frame.scale * sim.scale
    center = np.asarray(frame.center) - frame.R.T @ np.asarray(sim.offset) / scale
    return CanonicalFrame(center=tuple(float(c) for c in center), scale=float(scale), rotation=frame.rotation)


def _camera_side_shell(fg: Foreground) -> SparseVoxels:
    """The thin-shell voxels on the camera side of the seen surface: trustworthy values for fusion."""
    return fg.sdf.select(np.flatnonzero(fg.shell.front_side))
