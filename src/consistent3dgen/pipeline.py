"""The whole method as named steps: inputs → point map → seen side → dense stage → tokens → sparse stages → mesh.

``ConsistentPipeline.from_pretrained("mini")`` runs offline with the bundled prior; ``"direct3d-s2"`` (or a
local folder) uses the paper's base model. A call returns a :class:`PipelineResult` (mesh in the canonical
frame, the frame to give it back in the camera's frame, timings, and what each stage did). Each step is a method
a reader can open alone:

1. :meth:`~ConsistentPipeline.prepare_pointmap`: the point map (given, or from a reconstructor: VGGT / depth / .npz);
2. :meth:`~ConsistentPipeline.build_seen_side`: seen mesh in the canonical cube, thin shell per sparse stage,
   its latent cells and their camera-side half (:mod:`consistent3dgen.seen_side`);
3. :meth:`~ConsistentPipeline.encode_condition`: image tokens (+ a negative for CFG), or the prior's null input;
4. :meth:`~ConsistentPipeline.run_dense_stage`: the seen occupancy, encoded by the dense VAE, starts the dense
   sampler SDEdit-style; :meth:`~ConsistentPipeline.first_tokens`: its occupancy ∪ the seen cells;
5. :meth:`~ConsistentPipeline.run_sparse_stages`: guided flow-matching sampling towards ``x_fg`` (the shell
   encoded by each stage's own VAE, back half cut), decode, fusion with the seen shell, free space, hand-off;
6. :meth:`~ConsistentPipeline.extract`: marching cubes, loose pieces, simplification.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .cascade import Condition, DenseResult, SparseStageConfig, StagesResult
from .errors import InputError
from .generators.base import Generator, SparseLatent
from .geometry.frames import CanonicalFrame, canonical_to_camera, compose_frame
from .geometry.voxels import SparseVoxels
from .options import GenerationOptions
from .pointmap import PointMap
from .sampling import FlowMatchSchedule
from .seen_side import SeenSide

if TYPE_CHECKING:
    import trimesh

    from .sampling import StepInfo


@dataclass
class PipelineResult:
    """A generated mesh in the canonical frame, plus how to put it back into the input camera's frame."""

    vertices: np.ndarray  # (V, 3) canonical
    faces: np.ndarray  # (F, 3)
    frame: CanonicalFrame
    pointmap: PointMap
    options: GenerationOptions  # as resolved for this call
    timings: dict[str, float] = field(default_factory=dict)
    stages: list[dict] = field(default_factory=list)
    seen: SeenSide | None = None
    latents: list[SparseLatent] = field(default_factory=list)  # final tokens of each sparse stage
    targets: list[SparseLatent | None] = field(default_factory=list)  # the guidance target x_fg of each stage

    def arrays(self, frame: str = "camera") -> tuple[np.ndarray, np.ndarray]:
        """``(vertices, faces)`` in ``camera`` (input camera, its units) or ``canonical`` (generator cube) frame."""
        if frame == "canonical":
            return self.vertices, self.faces
        if frame == "camera":
            return canonical_to_camera(self.vertices.astype(np.float64), self.frame).astype(np.float32), self.faces
        raise InputError(f"unknown frame {frame!r}; use camera or canonical")

    def to_trimesh(self, frame: str = "camera") -> trimesh.Trimesh:
        """The mesh as a :class:`trimesh.Trimesh` in ``frame`` (vertices kept as they are: no merging)."""
        import trimesh

        v, f = self.arrays(frame)
        return trimesh.Trimesh(v, f, process=False)

    @property
    def mesh(self) -> trimesh.Trimesh:
        """The mesh in the input camera's frame (OpenCV: x right, y down, z forward; the input's units)."""
        return self.to_trimesh("camera")

    def export(self, path: str | Path, frame: str = "camera") -> Path:
        """Write the mesh; the format follows the extension (.glb .obj .ply .stl)."""
        from .io.meshes import export_mesh

        v, f = self.arrays(frame)
        return export_mesh(v, f, path)

    def metrics(self) -> dict:
        """Input-view consistency of the camera-frame mesh against the input point map."""
        from .metrics import input_view_consistency

        v, f = self.arrays("camera")
        return input_view_consistency(v, f, self.pointmap).to_dict()

    def report(self) -> dict:
        return {
            "options": self.options.to_dict(),
            "frame": self.frame.to_dict(),
            "timings": self.timings,
            "stages": self.stages,
            "vertices": len(self.vertices),
            "faces": len(self.faces),
            "input_downscale": self.pointmap.meta.get("downscale"),
        }


class ConsistentPipeline:
    """Reconstruction at the seen side + generation at the unseen side, with a given generator."""

    def __init__(self, generator: Generator, device: str | torch.device = "cpu"):
        self.generator = generator
        self.device = torch.device(device)
        self._progress_bar: dict = {}  # tqdm keyword arguments for the sampler's bars

    def set_progress_bar_config(self, **kwargs: Any) -> None:
        """tqdm keyword arguments for the sampling bars (as diffusers), e.g. ``disable=True`` or ``position=1``."""
        self._progress_bar = dict(kwargs)

    @classmethod
    def from_pretrained(cls, name: str | Path = "mini", device: str | torch.device = "cpu", **kwargs: Any
                        ) -> ConsistentPipeline:
        from .generators.registry import load_generator

        return cls(load_generator(name, device=device, **kwargs), device=device)

    @torch.no_grad()
    def __call__(self, inputs: PointMap | Any, options: GenerationOptions | None = None, *,
                 callback: Callable[[StepInfo], None] | None = None, **overrides: Any) -> PipelineResult:
        """Generate a mesh for ``inputs``: a :class:`PointMap`, or what a reconstructor reads (an image path,
        PIL image or uint8 array; a depth map or point-map ``.npz`` path; a list of those).

        ``overrides`` are :class:`GenerationOptions` fields (``seed=1, guidance=0``). ``callback`` is called after
        every sampling step with a :class:`~consistent3dgen.sampling.StepInfo` (``stage`` "dense", "sparse128",
        ...; ``index`` of ``total``; the latent before and after the step; clone tensors to keep them).
        """
        opts = self.resolve_options(options, **overrides)
        timings: dict[str, float] = {}
        rng = torch.Generator().manual_seed(opts.seed)
        with _timed(timings, "reconstruct"):
            pointmap = self.prepare_pointmap(inputs)
        with _timed(timings, "foreground"):
            seen = self.build_seen_side(pointmap, opts)
            condition = self.encode_condition(pointmap, opts)
        with _timed(timings, "dense"):
            dense = self.run_dense_stage(seen, condition, opts, rng, callback)
            cells = self.first_tokens(dense, seen, opts)
        with _timed(timings, "sparse"):
            sparse = self.run_sparse_stages(cells, seen, condition, opts, rng, callback)
        with _timed(timings, "extract"):
            vertices, faces = self.extract(sparse.sdf, opts)
        timings["total"] = sum(timings.values())
        stages = [{"stage": "dense", "occupied": int((dense.probability >= opts.occupancy_threshold).sum()),
                   "tokens": len(cells)}]
        stages += [{"stage": f"sparse{s.resolution}", "tokens": len(z)}
                   for s, z in zip(self.generator.sparse, sparse.latents, strict=True)]
        # the point map as used (downscaled when it was larger than max_pixels)
        return PipelineResult(vertices, faces, compose_frame(seen.frame, sparse.frame), seen.pointmap, opts,
                              timings, stages, seen, sparse.latents, sparse.targets)

    # ------------------------------------------------------------------------------------------- steps

    def resolve_options(self, options: GenerationOptions | None = None, **overrides: Any) -> GenerationOptions:
        """The caller's options (untouched) with ``overrides`` applied, validated, unset values from the generator."""
        if options is not None and not isinstance(options, GenerationOptions):
            raise InputError(f"options must be a GenerationOptions, got {type(options).__name__}")
        base = options if options is not None else GenerationOptions()
        return base.with_changes(**overrides).resolve(self.generator.option_defaults(), len(self.generator.sparse))

    def prepare_pointmap(self, inputs: PointMap | Any) -> PointMap:
        """A :class:`PointMap` as given, or the first view a reconstructor infers from the inputs."""
        if isinstance(inputs, PointMap):
            return inputs
        from .reconstruct.base import get_reconstructor

        return get_reconstructor(None, inputs)(inputs)[0]

    def build_seen_side(self, pointmap: PointMap, opts: GenerationOptions) -> SeenSide:
        return SeenSide(pointmap, self.generator.sparse, band=opts.band, shell=opts.shell,
                        conf_threshold=opts.conf_threshold, drop_percent=opts.drop_percent,
                        front_cut=opts.front_cut, free_space=opts.free_space, max_pixels=opts.max_pixels,
                        max_memory_gb=opts.max_memory_gb)

    def encode_condition(self, pointmap: PointMap, opts: GenerationOptions) -> Condition:
        """Image tokens with a zero negative for CFG, or the prior's null condition and no negative branch."""
        gen = self.generator
        if gen.conditioner is not None:
            if pointmap.image is None:
                raise InputError("this generator is image-conditioned but the input has no colour image")
            rgba = np.dstack([pointmap.image, np.where(pointmap.mask, 255, 0).astype(np.uint8)])
            tokens = gen.conditioner(rgba).to(self.device)
            return Condition(tokens, torch.zeros_like(tokens), opts.cfg_scale)
        if gen.null_condition is None:
            raise ValueError(f"generator {gen.name} has neither an image conditioner nor a null condition")
        return Condition(gen.null_condition.to(self.device))

    def run_dense_stage(self, seen: SeenSide, condition: Condition, opts: GenerationOptions,
                        rng: torch.Generator, callback: Callable[[StepInfo], None] | None = None) -> DenseResult:
        from .cascade import run_dense_stage

        stage = self.generator.dense
        r = stage.occupancy_resolution
        schedule = FlowMatchSchedule.shifted(opts.dense_steps, self.generator.dense_sampler.shift)
        return run_dense_stage(
            stage, condition, schedule, start=seen.dense_start(r),
            sdedit_strength=opts.dense_start_sigma if opts.dense_start == "sdedit" else 1.0,
            guidance_strength=opts.dense_guidance, guidance_variant=opts.guidance_variant,
            free_space=seen.dense_free_space(r), generator=rng, progress=self._progress(opts),
            callback=callback)

    def first_tokens(self, dense: DenseResult, seen: SeenSide, opts: GenerationOptions) -> SparseVoxels:
        """The first sparse stage's cells: dense occupancy ∪ the seen cells, minus free cells."""
        from .cascade import occupancy_to_cells

        first = self.generator.sparse[0]
        return occupancy_to_cells(dense.probability, opts.occupancy_threshold,
                                  first.resolution // first.latent_factor, seen.seen_cells(), seen.free_cells())

    def run_sparse_stages(self, cells: SparseVoxels, seen: SeenSide, condition: Condition, opts: GenerationOptions,
                          rng: torch.Generator, callback: Callable[[StepInfo], None] | None = None
                          ) -> StagesResult:
        from .cascade import run_sparse_stages

        configs = [SparseStageConfig(FlowMatchSchedule.shifted(steps, sampler.shift), opts.guidance,
                                     opts.guidance_variant, fusion=opts.fusion, mc_level=opts.mc_level)
                   for steps, sampler in zip(opts.sparse_steps, self.generator.sparse_samplers, strict=True)]
        return run_sparse_stages(self.generator.sparse, configs, cells, condition, seen, generator=rng,
                                 progress=self._progress(opts), max_memory_gb=opts.max_memory_gb,
                                 callback=callback)

    def _progress(self, opts: GenerationOptions) -> bool | dict:
        """False when ``opts.progress`` is off, else the bar settings of :meth:`set_progress_bar_config`."""
        return (self._progress_bar or True) if opts.progress else False

    def extract(self, sdf: SparseVoxels, opts: GenerationOptions) -> tuple[np.ndarray, np.ndarray]:
        """Marching cubes at the generator's level, loose pieces below ``min_component`` dropped, simplified."""
        from .geometry.marching_cubes import sparse_marching_cubes
        from .geometry.mesh_ops import remove_small_components, simplify_mesh

        vertices, faces = sparse_marching_cubes(sdf, level=opts.mc_level)
        vertices, faces = remove_small_components(vertices, faces, opts.min_component)
        if opts.max_faces is not None and len(faces) > opts.max_faces:
            vertices, faces = simplify_mesh(vertices, faces, opts.max_faces)
        return vertices, faces


@contextmanager
def _timed(timings: dict[str, float], key: str):  # noqa: ANN202
    start = time.perf_counter()
    yield
    timings[key] = time.perf_counter() - start
