"""The whole method as named steps: inputs → point map → seen side → dense stage → tokens → sparse stages → mesh.

``Pipeline.from_pretrained("mini")`` runs offline with the bundled prior; ``"direct3d-s2"`` (or a
local folder) uses the paper's base model. A call returns a :class:`PipelineResult` (mesh in the canonical
frame, the frame to give it back in the camera's frame, timings, and what each stage did). Each step is a method
a reader can open alone:

1. :meth:`~Pipeline.prepare_views`: the point map of each view (given, or from a reconstructor: VGGT / depth /
   .npz), camera poses relative to the first view;
2. :meth:`~Pipeline.build_seen_side`: seen mesh in the canonical cube, thin shell per sparse stage,
   its latent cells and their camera-side half (:mod:`consistent3dgen.seen_side`);
3. :meth:`~Pipeline.encode_condition`: image tokens (+ a negative for CFG), or the prior's null input;
4. :meth:`~Pipeline.run_dense_stage`: the seen occupancy, encoded by the dense VAE, starts the dense
   sampler SDEdit-style; :meth:`~Pipeline.first_tokens`: its occupancy ∪ the seen cells;
5. :meth:`~Pipeline.run_sparse_stages`: guided flow-matching sampling towards ``x_fg`` (the shell
   encoded by each stage's own VAE, back half cut), decode, fusion with the seen shell, free space, hand-off;
6. :meth:`~Pipeline.extract`: marching cubes, loose pieces, simplification.
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
from .devices import StageMeter, module_dtypes, resolve_device, resolve_dtype
from .errors import InputError
from .generators.base import Generator, SparseLatent, SparseStage, stage_modules
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
    frame: CanonicalFrame  # the first view's camera → canonical
    pointmap: PointMap  # the first view (as used: downscaled when it was larger than max_pixels)
    options: GenerationOptions  # as resolved for this call
    timings: dict[str, float] = field(default_factory=dict)
    stages: list[dict] = field(default_factory=list)
    seen: SeenSide | None = None
    latents: list[SparseLatent] = field(default_factory=list)  # final tokens of each sparse stage
    targets: list[SparseLatent | None] = field(default_factory=list)  # the guidance target x_fg of each stage
    runtime: dict[str, Any] = field(default_factory=dict)  # device, dtype, autocast, low_memory of the run
    colours: np.ndarray | None = None  # (V, 3) uint8 vertex colours from the input image (:meth:`colourize`)
    views: list[PointMap] = field(default_factory=list)  # every view (poses relative to the first); [pointmap]

    def __post_init__(self) -> None:
        if not self.views:
            self.views = [self.pointmap]

    def arrays(self, frame: str = "camera") -> tuple[np.ndarray, np.ndarray]:
        """``(vertices, faces)`` in ``camera`` (the first input view's camera, its units) or ``canonical``
        (generator cube) frame."""
        if frame == "canonical":
            return self.vertices, self.faces
        if frame == "camera":
            return canonical_to_camera(self.vertices.astype(np.float64), self.frame).astype(np.float32), self.faces
        raise InputError(f"unknown frame {frame!r}; use camera or canonical")

    def to_trimesh(self, frame: str = "camera") -> trimesh.Trimesh:
        """The mesh as a :class:`trimesh.Trimesh` in ``frame`` (vertices kept as they are: no merging)."""
        import trimesh

        v, f = self.arrays(frame)
        return trimesh.Trimesh(v, f, vertex_colors=self.colours, process=False)  # colours once computed

    @property
    def mesh(self) -> trimesh.Trimesh:
        """The mesh in the input camera's frame (OpenCV: x right, y down, z forward; the input's units), with
        vertex colours from the input image when it has one."""
        self.colourize()
        return self.to_trimesh("camera")

    def colourize(self) -> np.ndarray | None:
        """Vertex colours from the input images (:mod:`consistent3dgen.colour`: each seen vertex from the nearest
        view that sees it), computed once and kept in :attr:`colours`; None (at no cost) when no view has an
        image and intrinsics."""
        from .colour import can_colour_views, vertex_colours

        if self.colours is None and len(self.faces) and can_colour_views(self.views):
            self.colours, _ = vertex_colours(*self.arrays("camera"), self.views)
        return self.colours

    def default_colour(self, path: str | Path) -> str:
        """``vertex`` when the input has an image (and the format holds colours), else ``none``."""
        from .colour import can_colour_views

        return "vertex" if can_colour_views(self.views) and Path(path).suffix.lower() != ".stl" else "none"

    def export(self, path: str | Path, frame: str = "camera", colour: str | None = None) -> Path:
        """Write the mesh; the format follows the extension (.glb .obj .ply .stl).

        ``colour``: ``none``, ``vertex`` (vertex colours from the input image) or ``texture`` (a UV texture
        baked from it, .glb only); default :meth:`default_colour`.
        """
        from .colour import bake_texture, can_colour_views, check_colour_mode
        from .io.meshes import export_mesh

        mode = self.default_colour(path) if colour is None else colour
        check_colour_mode(mode, path)
        if mode != "none" and not can_colour_views(self.views):
            raise InputError(f"colour {mode}: the input has no colour image (or no intrinsics)")
        v, f = self.arrays(frame)
        if mode == "none":
            return export_mesh(v, f, path)
        colours = self.colourize()
        if mode == "vertex":
            return export_mesh(v, f, path, vertex_colors=colours)
        tex = bake_texture(*self.arrays("camera"), colours, self.views)
        return export_mesh(v[tex.source], tex.faces, path, uv=tex.uv, texture=tex.image)

    def metrics(self) -> dict:
        """Input-view consistency of the camera-frame mesh against the (first) input point map; with several
        views, ``views`` holds each view's, the mesh seen from that view's camera."""
        from .metrics import input_view_consistency

        v, f = self.arrays("camera")
        first = input_view_consistency(v, f, self.pointmap).to_dict()
        if len(self.views) > 1:
            first["views"] = [input_view_consistency(pm.from_shared(v).astype(np.float32), f, pm).to_dict()
                              if pm.intrinsics is not None else None for pm in self.views]
        return first

    def report(self) -> dict:
        return {
            "options": self.options.to_dict(),
            "frame": self.frame.to_dict(),
            "timings": self.timings,
            "stages": self.stages,
            "runtime": self.runtime,
            "vertices": len(self.vertices),
            "faces": len(self.faces),
            "input_downscale": self.pointmap.meta.get("downscale"),
            "views": len(self.views),
        }


class Pipeline:
    """Reconstruction at the seen side + generation at the unseen side, with a given generator.

    Devices: the models run on :attr:`device` (``auto``: CUDA, else MPS, else CPU; :meth:`to` moves them), every
    tensor of a run is made there, and the run's random numbers are drawn from one seeded CPU generator and moved,
    so a seed gives the same noise on every device. ``dtype`` fp16/bf16: a generator loaded in that dtype
    (Direct3D-S2's weight layout, norms kept in float32) runs as loaded; one whose weights hold no such tensors
    (the mini prior's float32) runs its models under ``torch.autocast`` to it. ``low_memory``: only the running
    stage's models are on the device (the others wait on the CPU), half-precision weights on a GPU unless a dtype
    is given, and sparse stages decode in spatial chunks (:data:`LOW_MEMORY_CHUNK_CELLS`).
    """

    def __init__(self, generator: Generator, device: str | torch.device = "cpu", *,
                 dtype: str | torch.dtype | None = None, low_memory: bool = False):
        self.generator = generator
        self.dtype = resolve_dtype(dtype)
        self.low_memory = bool(low_memory)
        self._progress_bar: dict = {}  # tqdm keyword arguments for the sampler's bars
        self.to(device)

    def to(self, device: str | torch.device) -> Pipeline:
        """Run on ``device`` (``auto``, ``cpu``, ``cuda[:N]``, ``mps``): every model of the generator and of its
        conditioner moves there (in low-memory mode they wait on the CPU, each stage's going to the device while it
        runs). Returns self."""
        self.device = resolve_device(device)
        self.generator.to("cpu" if self._offloads else self.device)
        return self

    @property
    def _offloads(self) -> bool:
        return self.low_memory and self.device.type != "cpu"

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        """The dtype the models run under autocast in: a half ``dtype`` the generator's weights do not hold."""
        if self.dtype in (None, torch.float32) or self.dtype in module_dtypes(self.generator.modules()):
            return None
        return self.dtype

    def set_progress_bar_config(self, **kwargs: Any) -> None:
        """tqdm keyword arguments for the sampling bars (as diffusers), e.g. ``disable=True`` or ``position=1``."""
        self._progress_bar = dict(kwargs)

    @classmethod
    def from_pretrained(cls, name: str | Path = "mini", device: str | torch.device = "cpu", *,
                        dtype: str | torch.dtype | None = None, low_memory: bool = False, **kwargs: Any
                        ) -> Pipeline:
        """Load a generator (:func:`~consistent3dgen.generators.registry.load_generator`) onto ``device``.

        ``dtype``: ``auto``/None (the weights' own layout; fp16 on a GPU in low-memory mode), fp32, fp16, bf16.
        """
        from .generators.registry import load_generator

        dev, dt = resolve_device(device), resolve_dtype(dtype)
        offload = low_memory and dev.type != "cpu"
        if offload and dt is None:
            dt = torch.float16  # low memory on a GPU: half-precision weights (or autocast) unless told otherwise
        generator = load_generator(name, device="cpu" if offload else dev, dtype=dt, **kwargs)
        return cls(generator, dev, dtype=dt, low_memory=low_memory)

    @torch.no_grad()
    def __call__(self, inputs: PointMap | Any, options: GenerationOptions | None = None, *,
                 callback: Callable[[StepInfo], None] | None = None, **overrides: Any) -> PipelineResult:
        """Generate a mesh for ``inputs``: a :class:`PointMap` (or a list of them, one per view, each with a
        ``cam_to_world`` pose), or what a reconstructor reads (an image path, PIL image or uint8 array; a depth map
        or point-map ``.npz`` path; a list of those: several views of one object). The mesh is in the first view's
        camera frame.

        ``overrides`` are :class:`GenerationOptions` fields (``seed=1, guidance=0``). ``callback`` is called after
        every sampling step with a :class:`~consistent3dgen.sampling.StepInfo` (``stage`` "dense", "sparse128",
        ...; ``index`` of ``total``; the latent before and after the step; clone tensors to keep them).
        """
        opts = self.resolve_options(options, **overrides)
        timings: dict[str, float] = {}
        rng = torch.Generator().manual_seed(opts.seed)  # on the CPU for every device: the same noise everywhere
        self.generator.to("cpu" if self._offloads else self.device)  # (a no-op when the models are placed)
        meter = StageMeter(self.device, low_memory=self.low_memory, autocast_dtype=self.autocast_dtype)
        gen = self.generator
        with _timed(timings, "reconstruct"):
            views = self.prepare_views(inputs)
        with _timed(timings, "foreground"):
            seen = self.build_seen_side(views, opts)
            with meter.stage("condition", stage_modules(gen.conditioner)):
                condition = self.encode_condition(seen.pointmap, opts)
        with _timed(timings, "dense"):
            with meter.stage("dense", stage_modules(gen.dense)):
                dense = self.run_dense_stage(seen, condition, opts, rng, callback)
            cells = self.first_tokens(dense, seen, opts)
        names = self.sparse_stage_names(opts)
        with _timed(timings, "sparse"):
            sparse = self.run_sparse_stages(cells, seen, condition, opts, rng, callback,
                                            stage_scope=lambda k, s: meter.stage(names[k], stage_modules(s)))
        with _timed(timings, "extract"):
            vertices, faces = self.extract(sparse.sdf, opts, mesh=sparse.mesh)
        timings["total"] = sum(timings.values())
        stages = [{"stage": "condition"}] if gen.conditioner is not None else []
        stages += [{"stage": "dense", "occupied": int((dense.probability >= opts.occupancy_threshold).sum()),
                    "tokens": len(cells)}]
        stages += [{"stage": name, "tokens": len(z), **(refined or {})}  # + refiner, level
                   for name, z, refined in zip(names, sparse.latents, sparse.refined, strict=True)]
        stages = [{**s, **meter.records.get(s["stage"], {})} for s in stages]  # + seconds, peak memory
        autocast = self.autocast_dtype
        runtime = {"device": str(self.device), "dtype": None if self.dtype is None else str(self.dtype),
                   "autocast": None if autocast is None else str(autocast), "low_memory": self.low_memory}
        # the point maps as used (downscaled when larger than max_pixels)
        return PipelineResult(vertices, faces, compose_frame(seen.frame, sparse.frame), seen.pointmap, opts,
                              timings, stages, seen, sparse.latents, sparse.targets, runtime, views=seen.views)

    # ------------------------------------------------------------------------------------------- steps

    def resolve_options(self, options: GenerationOptions | None = None, **overrides: Any) -> GenerationOptions:
        """The caller's options (untouched) with ``overrides`` applied, validated, unset values from the generator."""
        if options is not None and not isinstance(options, GenerationOptions):
            raise InputError(f"options must be a GenerationOptions, got {type(options).__name__}")
        base = options if options is not None else GenerationOptions()
        opts = base.with_changes(**overrides).resolve(self.generator.option_defaults(), len(self.generator.sparse))
        if opts.refine and not self.generator.has_refiners():
            raise InputError(f"option refine: generator {self.generator.name} has no refiners")
        return opts

    def prepare_views(self, inputs: PointMap | Any) -> list[PointMap]:
        """The views' point maps: as given (a :class:`PointMap` or a list of them), or what a reconstructor infers
        from the inputs; with several, their poses re-expressed relative to the first view
        (:func:`~consistent3dgen.pointmap.relative_to_first`), whose camera frame the output comes back in."""
        from .pointmap import relative_to_first

        if isinstance(inputs, PointMap):
            return relative_to_first([inputs])
        if isinstance(inputs, (list, tuple)) and inputs and all(isinstance(v, PointMap) for v in inputs):
            return relative_to_first(list(inputs))
        from .reconstruct.base import get_reconstructor

        return relative_to_first(get_reconstructor(None, inputs)(inputs))

    def sparse_plan(self, opts: GenerationOptions) -> list[int]:
        """The generator's sparse stages in the order they run: the first ``first_stage_passes`` times, then the
        rest (indices into ``generator.sparse``)."""
        return [0] * opts.first_stage_passes + list(range(1, len(self.generator.sparse)))

    def sparse_stage_names(self, opts: GenerationOptions) -> list[str]:
        """``sparse128``, ``sparse256``, ...; a repeated first stage's later passes ``sparse128.2``, ..."""
        plan = self.sparse_plan(opts)
        return [f"sparse{self.generator.sparse[i].resolution}" + (f".{k + 1}" if i == 0 and k else "")
                for k, i in enumerate(plan)]

    def build_seen_side(self, views: PointMap | list[PointMap], opts: GenerationOptions) -> SeenSide:
        stages = [self.generator.sparse[i] for i in self.sparse_plan(opts)]
        return SeenSide(views, stages, band=opts.band, shell=opts.shell,
                        conf_threshold=opts.conf_threshold, drop_percent=opts.drop_percent,
                        front_cut=opts.front_cut, free_space=opts.free_space,
                        free_space_dilation=opts.free_space_dilation, max_pixels=opts.max_pixels,
                        max_memory_gb=opts.max_memory_gb, field=opts.seen_field)

    def encode_condition(self, pointmap: PointMap, opts: GenerationOptions) -> Condition:
        """Image tokens with a zero negative for CFG, or the prior's null condition and no negative branch."""
        gen = self.generator
        if gen.conditioner is not None:
            # the image with its soft object alpha when the reconstructor kept it (VGGT: the input's alpha, the
            # mask or the segmenter's matte, as the official preprocessing composites), else the point map's mask
            rgba = pointmap.meta.get("condition_rgba")
            if rgba is None and pointmap.image is None:
                raise InputError("this generator is image-conditioned but the input has no colour image")
            if rgba is None:
                rgba = np.dstack([pointmap.image, np.where(pointmap.mask, 255, 0).astype(np.uint8)])
            # with the per-patch foreground mask when the conditioner gives one (stages may build on it)
            encode = getattr(gen.conditioner, "tokens_and_mask", None)
            tokens, mask = encode(rgba) if encode is not None else (gen.conditioner(rgba), None)
            tokens = tokens.to(self.device)
            return Condition(tokens, torch.zeros_like(tokens), opts.cfg_scale, mask=mask)
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
            candidates=opts.dense_candidates, callback=callback)

    def first_tokens(self, dense: DenseResult, seen: SeenSide, opts: GenerationOptions) -> SparseVoxels:
        """The first sparse stage's cells: dense occupancy ∪ the seen cells, minus free cells."""
        from .cascade import occupancy_to_cells

        first = self.generator.sparse[0]
        return occupancy_to_cells(dense.probability, opts.occupancy_threshold,
                                  first.resolution // first.latent_factor, seen.seen_cells(), seen.free_cells(),
                                  dilation=opts.token_dilation)

    def run_sparse_stages(self, cells: SparseVoxels, seen: SeenSide, condition: Condition, opts: GenerationOptions,
                          rng: torch.Generator, callback: Callable[[StepInfo], None] | None = None,
                          stage_scope: Callable[[int, SparseStage], Any] | None = None) -> StagesResult:
        """``stage_scope``: see :func:`consistent3dgen.cascade.run_sparse_stages` (``__call__`` places and measures
        each stage there)."""
        from .cascade import run_sparse_stages

        gen = self.generator
        plan = self.sparse_plan(opts)
        stages = [gen.sparse[i] for i in plan]
        configs = [SparseStageConfig(FlowMatchSchedule.shifted(steps, sampler.shift), opts.guidance,
                                     opts.guidance_variant, fusion=opts.fusion, fusion_at=opts.fusion_at,
                                     mc_level=opts.mc_level,
                                     refine=bool(opts.refine), start_sigma=opts.sparse_start_sigma,
                                     fill_interior=opts.seen_field == "signed",
                                     decode_chunks=low_memory_chunks(stage) if self.low_memory else None)
                   for steps, sampler, stage in ((opts.sparse_steps[i], gen.sparse_samplers[i], gen.sparse[i])
                                                 for i in plan)]
        return run_sparse_stages(stages, configs, cells, condition, seen, generator=rng,
                                 progress=self._progress(opts), max_memory_gb=opts.max_memory_gb,
                                 callback=callback, stage_scope=stage_scope)

    def _progress(self, opts: GenerationOptions) -> bool | dict:
        """False when ``opts.progress`` is off, else the bar settings of :meth:`set_progress_bar_config`."""
        return (self._progress_bar or True) if opts.progress else False

    def extract(self, sdf: SparseVoxels, opts: GenerationOptions, mesh: tuple[np.ndarray, np.ndarray] | None = None
                ) -> tuple[np.ndarray, np.ndarray]:
        """Marching cubes at the generator's level (or the last stage's refined ``mesh``), loose pieces below
        ``min_component`` dropped, simplified."""
        from .geometry.marching_cubes import sparse_marching_cubes
        from .geometry.mesh_ops import remove_small_components, simplify_mesh

        vertices, faces = mesh if mesh is not None else sparse_marching_cubes(sdf, level=opts.mc_level)
        vertices, faces = remove_small_components(vertices, faces, opts.min_component)
        if opts.max_faces is not None and len(faces) > opts.max_faces:
            vertices, faces = simplify_mesh(vertices, faces, opts.max_faces)
        return vertices, faces


# low memory: sparse decoders work on spatial chunks of at most this many latent cells a side (Direct3D-S2's 1024
# stage: 8³ chunks of its 128³ grid, against the config's 4³; the 512 stage 4³ against none). A chunk's decoded
# voxels grow with the surface inside it, so the peak of decoding falls about with the square of the chunks per axis.
LOW_MEMORY_CHUNK_CELLS = 16


def low_memory_chunks(stage: Any) -> int | None:
    """Chunks per axis for a low-memory decode of ``stage`` (None: one piece); at least the decoder's own."""
    latent = int(stage.resolution) // int(stage.latent_factor)
    own = int(getattr(getattr(getattr(stage, "vae", None), "decoder", None), "chunk_size", 1) or 1)
    chunks = max(own, latent // LOW_MEMORY_CHUNK_CELLS)
    while chunks > 1 and latent % chunks:
        chunks -= 1
    return chunks if chunks > 1 else None


@contextmanager
def _timed(timings: dict[str, float], key: str):  # noqa: ANN202
    start = time.perf_counter()
    yield
    timings[key] = time.perf_counter() - start
