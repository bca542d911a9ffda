"""``consistent3dgen app``: the pipeline as a local web page (Gradio; ``pip install ".[app]"``).

One page: an input (an image with alpha or an RGB image + mask, an RGB-D pair with intrinsics or a field of view,
or a point-map ``.npz``), the generation options, live progress per sampling step, the seen-side point cloud and
the generated mesh in 3D viewers, the input-view preview, the consistency metrics and the mesh as GLB / OBJ / PLY.

What is ours here, and where it is:

* :func:`read_view`: the page's fields → a :class:`~consistent3dgen.pointmap.PointMap`, through the same readers
  as ``generate`` (``load_depth``, ``load_pointmap``, VGGT for images);
* :class:`PipelineCache`: one pipeline per generator, loaded once (and VGGT once per weights);
* :class:`WorkFolders`: a temporary folder per request, removed once Gradio has copied its files into its cache
  (and all of them at exit);
* :func:`point_set_mesh` / :func:`to_viewer`: the seen points as small coloured octahedra, and both viewers' frame
  (OpenCV camera → y up, the camera on +z, centred on the seen points);
* :func:`build_app` / :func:`serve`: the Gradio page and its queue (one run at a time: one worker per device).

Errors reach the page as one line (``gr.Error``): bad input, bad options and missing weights as their own
message (uploads named by file name, not by their server path), anything else as ``internal error (Type): ...``
with the traceback in the server's log only. Importing this module needs no Gradio; building the page does.
"""

from __future__ import annotations

import atexit
import logging
import re
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import InputError, UserError, one_line

if TYPE_CHECKING:
    from .pipeline import Pipeline, PipelineResult
    from .pointmap import PointMap

log = logging.getLogger(__name__)

INPUT_KINDS = ("RGB-D", "Image", "Point map")
DEFAULT_GENERATORS = ("mini", "direct3d-s2")
GUIDANCE_VARIANTS = ("paper", "noised", "x0", "replace")  # sampling.guidance registers the same names
FUSION_CHOICES = ("auto", "on", "off")  # auto: on when guided (GenerationOptions.fusion = None)
DEFAULT_MAX_FILE_SIZE = "50mb"  # per upload (Gradio refuses larger ones before they reach us)
VIEWER_MAX_POINTS = 40_000  # the seen-side cloud shown: at most this many points (8 triangles each)
MESH_COLOR = (120, 140, 175)  # the generated mesh in the viewer (the preview's blue-grey, darker: the viewer is lit)
VIEW_CAMERA = (90.0, 90.0, None)  # the viewers' camera (azimuth, elevation from the pole, distance): the input's
PREVIEW_MAX_PIXELS = 512 * 512  # the preview panel is rendered at most at this input resolution
DEPTH_TYPES = [".png", ".npy", ".exr"]
IMAGE_TYPES = [".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"]
INTRINSICS_TYPES = [".txt", ".npy", ".csv"]


def _require_gradio() -> Any:
    try:
        import gradio as gr
    except ImportError:
        raise UserError('the web app needs Gradio: pip install "consistent3dgen[app]" (or pip install gradio)'
                        ) from None
    return gr


# ----------------------------------------------------------------------------------------------- inputs


def parse_intrinsics(text: str | None) -> list[float] | None:
    """``"fx, fy, cx, cy"`` or the nine numbers of a 3x3 matrix (commas, spaces, semicolons or brackets between)
    → a flat list; empty → None."""
    if text is None or not text.strip():
        return None
    parts = [p for p in re.split(r"[\s,;\[\]()]+", text.strip()) if p]
    try:
        values = [float(p) for p in parts]
    except ValueError:
        raise InputError(f"intrinsics must be numbers 'fx, fy, cx, cy' (or a 3x3 matrix), got {text.strip()!r}"
                         ) from None
    if len(values) not in (4, 9):
        raise InputError(f"intrinsics must be 4 numbers (fx, fy, cx, cy) or 9 (a 3x3 matrix), got {len(values)}")
    return values


@dataclass
class ViewFiles:
    """The page's input fields (file paths as Gradio hands them over; None where empty)."""

    kind: str = "RGB-D"
    image: str | None = None  # Image: RGBA, or RGB with ``image_mask``
    image_mask: str | None = None
    depth: str | None = None  # RGB-D
    rgbd_image: str | None = None
    rgbd_mask: str | None = None
    intrinsics: str | None = None  # "fx, fy, cx, cy" or 9 numbers
    intrinsics_file: str | None = None
    fov: float | None = None
    pointmap: str | None = None  # Point map (.npz)

    def uploads(self) -> list[str]:
        return [p for p in (self.image, self.image_mask, self.depth, self.rgbd_image, self.rgbd_mask,
                            self.intrinsics_file, self.pointmap) if p]

    def name(self) -> str:
        """A file stem for the downloads, from the main input's file name."""
        main = {"RGB-D": self.depth, "Image": self.image, "Point map": self.pointmap}.get(self.kind)
        stem = Path(main).stem if main else "mesh"
        stem = re.sub(r"_(depth|rgba|rgb|image)$", "", stem)
        return re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("._") or "mesh"


def _need(path: str | None, what: str, suffixes: Sequence[str]) -> str:
    if not path:
        raise InputError(f"no {what} given: upload one")
    suffix = Path(path).suffix.lower()
    if suffix not in suffixes:
        raise InputError(f"{what} {Path(path).name} has the extension {suffix or '(none)'!r}; use "
                         f"{' '.join(suffixes)}")
    return path


def read_view(files: ViewFiles, *, vggt: Callable[[], Any] | None = None, max_pixels: int | None = None,
              max_input_pixels: int | None = None) -> PointMap:
    """The point map of the page's fields, read the way ``generate`` reads the same files.

    ``vggt`` returns the (cached) VGGT reconstructor for images; the pixel limits default to the package's.
    """
    limits = {k: v for k, v in (("max_pixels", max_pixels), ("max_input_pixels", max_input_pixels))
              if v is not None}
    if files.kind == "Point map":
        from .io.pointmap_io import load_pointmap

        return load_pointmap(_need(files.pointmap, "point map .npz", [".npz"]), **limits)
    if files.kind == "RGB-D":
        from .io.pointmap_io import load_depth

        depth = _need(files.depth, "depth map", DEPTH_TYPES)
        intr: Any = parse_intrinsics(files.intrinsics)
        if intr is not None and len(intr) == 9:  # a 3x3 matrix typed row by row
            intr = np.reshape(intr, (3, 3))
        if files.intrinsics_file:
            if intr is not None:
                raise InputError("give the intrinsics as numbers or as a file, not both")
            intr = _need(files.intrinsics_file, "intrinsics file", INTRINSICS_TYPES)
        fov = None if files.fov in (None, 0) else float(files.fov)
        if intr is not None and fov is not None:
            raise InputError("give either intrinsics or a field of view, not both (clear one of them)")
        image = _need(files.rgbd_image, "colour image", IMAGE_TYPES) if files.rgbd_image else None
        mask = _need(files.rgbd_mask, "mask", IMAGE_TYPES) if files.rgbd_mask else None
        return load_depth(depth, intrinsics=intr, fov_deg=fov, image=image, mask=mask, **limits)
    if files.kind == "Image":
        image = _need(files.image, "image", IMAGE_TYPES)
        source: Any = image
        if files.image_mask:  # RGB + mask → one RGBA array (alpha = the mask's grey value, non-zero = object)
            source = _rgba_with_mask(image, _need(files.image_mask, "mask", IMAGE_TYPES))
        if vggt is None:
            raise InputError("images need a point-map model (VGGT), which this app was started without")
        return vggt()(source)[0]
    raise InputError(f"unknown input kind {files.kind!r}; choose one of {', '.join(INPUT_KINDS)}")


def _rgba_with_mask(image: str, mask: str) -> np.ndarray:
    from .io.images import read_image

    rgb = read_image(image)[..., :3]
    m = read_image(mask)
    alpha = m[..., 3] if m.shape[2] == 4 else m.max(axis=2)
    if alpha.shape != rgb.shape[:2]:
        raise InputError(f"the mask is {alpha.shape[1]}x{alpha.shape[0]} but the image is "
                         f"{rgb.shape[1]}x{rgb.shape[0]}: they must have the same size")
    if not alpha.any():
        raise InputError("the mask is empty (all black): white = the object")
    return np.dstack([rgb, alpha.astype(np.uint8)])


@dataclass
class PageOptions:
    """The page's generation fields (None / "default" = the generator's default)."""

    generator: str = "mini"
    seed: int | float | None = 0
    guidance: float | str | None = None  # a number, or text from the page ("" = default)
    variant: str | None = None
    dense_steps: int | float | None = None
    sparse_steps: int | float | None = None
    fusion: str = "auto"
    free_space: bool = True

    def overrides(self) -> dict:
        """GenerationOptions keywords; validated by ``GenerationOptions.with_changes`` (InputError on bad values)."""
        over: dict[str, Any] = {"seed": _whole(self.seed, "seed", 0), "free_space": bool(self.free_space),
                                "progress": False}
        guidance = self.guidance.strip() if isinstance(self.guidance, str) else self.guidance
        if guidance not in (None, ""):
            try:
                over["guidance"] = float(guidance)
            except (TypeError, ValueError):
                raise InputError(f"λ guidance must be a number (or empty for the default), got {guidance!r}"
                                 ) from None
        if self.variant and self.variant != "default":
            over["guidance_variant"] = self.variant
        for name in ("dense_steps", "sparse_steps"):
            value = getattr(self, name)
            if value not in (None, 0):
                over[name] = _whole(value, name.replace("_", " "))
        if self.fusion not in FUSION_CHOICES:
            raise InputError(f"fusion must be one of {', '.join(FUSION_CHOICES)}, got {self.fusion!r}")
        if self.fusion != "auto":
            over["fusion"] = self.fusion == "on"
        return over


def _whole(value: Any, what: str, default: int | None = None) -> int:
    if value is None:
        if default is None:
            raise InputError(f"{what} is empty")
        return default
    f = float(value)
    if not np.isfinite(f) or f != int(f):
        raise InputError(f"{what} must be a whole number, got {value!r}")
    return int(f)


# ----------------------------------------------------------------------------------------------- caches


class PipelineCache:
    """One :class:`Pipeline` per generator name, loaded on first use and kept; thread-safe."""

    def __init__(self, device: str | None = None, vggt_weights: str | None = None):
        self.device = device
        self.vggt_weights = vggt_weights
        self._pipes: dict[str, Pipeline] = {}
        self._vggt: Any = None
        self._lock = threading.Lock()

    def get(self, name: str) -> Pipeline:
        with self._lock:
            if name not in self._pipes:
                from .pipeline import Pipeline

                kw = {"device": self.device} if self.device else {}
                pipe = Pipeline.from_pretrained(name, **kw)
                pipe.set_progress_bar_config(disable=True)
                self._pipes[name] = pipe
            return self._pipes[name]

    def loaded(self, name: str) -> bool:
        return name in self._pipes

    def vggt(self) -> Any:
        """The VGGT reconstructor (its model loads on first use and stays with it)."""
        with self._lock:
            if self._vggt is None:
                from .reconstruct.base import get_reconstructor

                kw: dict[str, Any] = {"weights": self.vggt_weights} if self.vggt_weights else {}
                if self.device:
                    kw["device"] = self.device
                self._vggt = get_reconstructor("vggt", **kw)
            return self._vggt


class WorkFolders:
    """A temporary folder per request under one root (``consistent3dgen-app-*`` in the system's temp folder).

    A request's folder goes once Gradio has copied its files into its own cache (the page's follow-up event),
    or when the request fails; folders older than ``max_age_s`` (a page closed mid-request) go with the next
    request, and the root at exit.
    """

    def __init__(self, root: str | Path | None = None, max_age_s: float = 3600.0):
        self.root = Path(root) if root else Path(tempfile.mkdtemp(prefix="consistent3dgen-app-"))
        self.root.mkdir(parents=True, exist_ok=True)
        self.max_age_s = max_age_s
        atexit.register(self.close)

    def new(self) -> Path:
        now = time.time()
        for old in self.root.iterdir():
            try:
                if now - old.stat().st_mtime > self.max_age_s:
                    self.remove(old)
            except OSError:
                pass
        folder = self.root / uuid.uuid4().hex[:12]
        folder.mkdir()
        return folder

    def remove(self, folder: str | Path) -> None:
        path = Path(folder)
        if path.parent == self.root:  # only our own request folders
            shutil.rmtree(path, ignore_errors=True)

    def close(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


# ----------------------------------------------------------------------------------------------- outputs


def to_viewer(points: np.ndarray, center: np.ndarray) -> np.ndarray:
    """Camera frame (OpenCV: y down, z forward) → the viewers' frame: centred, y up, the camera on +z."""
    return ((np.asarray(points, np.float64) - center) * np.array([1.0, -1.0, -1.0])).astype(np.float32)


def seen_center(pm: PointMap) -> np.ndarray:
    pts = pm.points[pm.mask].astype(np.float64)
    return (pts.min(0) + pts.max(0)) / 2


_OCTA = np.array([[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]], np.float32)
_OCTA_FACES = np.array([[0, 2, 4], [2, 1, 4], [1, 3, 4], [3, 0, 4], [2, 0, 5], [1, 2, 5], [3, 1, 5], [0, 3, 5]])


def point_set_mesh(points: np.ndarray, colors: np.ndarray | None, radius: float
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Each point as a small octahedron of ``radius``: (vertices, faces, vertex colours or None), for a GLB."""
    p = np.asarray(points, np.float32)
    n = len(p)
    vertices = (p[:, None, :] + radius * _OCTA[None]).reshape(-1, 3)
    faces = (_OCTA_FACES[None] + 6 * np.arange(n)[:, None, None]).reshape(-1, 3)
    vcol = None if colors is None else np.repeat(np.asarray(colors, np.uint8)[:, :3], 6, axis=0)
    return vertices, faces, vcol


def write_seen_points(pm: PointMap, center: np.ndarray, path: Path, max_points: int = VIEWER_MAX_POINTS) -> Path:
    """The seen points (every k-th, at most ``max_points``) as coloured octahedra in a GLB, in the viewers' frame."""
    from .io.meshes import export_mesh

    pts = pm.points[pm.mask]
    cols = None if pm.image is None else pm.image[pm.mask]
    step = max(1, int(np.ceil(len(pts) / max_points)))
    pts = pts[::step]
    cols = None if cols is None else cols[::step]
    size = float(np.linalg.norm(pts.max(0) - pts.min(0))) if len(pts) > 1 else 1.0
    # about half the spacing of the points shown (spread over the object's area)
    radius = 0.5 * size / max(np.sqrt(len(pts)), 1.0)
    v, f, c = point_set_mesh(to_viewer(pts, center), cols, radius)
    return export_mesh(v, f, path, vertex_colors=c)


def metrics_text(metrics: dict | None, result: PipelineResult, generator: str) -> str:
    """The page's summary: the consistency metrics (one line), then faces, generator and timings."""
    t = result.timings
    steps = ", ".join(f"{k} {t[k]:.1f} s" for k in ("foreground", "dense", "sparse", "extract") if k in t)
    tail = (f"{len(result.faces):,} faces · generator {generator} · seed {result.options.seed} · "
            f"λ {result.options.guidance:g} ({result.options.guidance_variant}) · "
            f"{t.get('total', 0.0):.1f} s ({steps})")
    if not metrics:
        return ("**Input-view consistency:** not measured (the input has no camera intrinsics)\n\n" + tail)
    return ("**Input-view consistency:** "
            f"depth error mean {metrics['depth_error_mean']:.4f}, p90 {metrics['depth_error_p90']:.4f} "
            f"(× object size) · normal error {metrics['normal_error_deg_mean']:.1f}° · "
            f"silhouette IoU {metrics['silhouette_iou']:.3f}\n\n" + tail)


@dataclass
class RunOutputs:
    seen: str
    mesh: str
    preview: str | None
    text: str
    downloads: list[str] = field(default_factory=list)

    def values(self) -> tuple:
        return self.seen, self.mesh, self.preview, self.text, self.downloads


def generate(files: ViewFiles, page: PageOptions, cache: PipelineCache, folder: Path,
             progress: Callable[[float, str], None] = lambda frac, desc: None) -> RunOutputs:
    """One request: options and input checked, the pipeline run, every file written into ``folder``."""
    from .options import GenerationOptions
    from .pointmap import limit_pixels
    from .preview import preview_panel, save_image

    options = GenerationOptions().with_changes(**page.overrides())  # every option first, then the input
    progress(0.0, "reading the input")
    pm = read_view(files, vggt=cache.vggt, max_pixels=options.max_pixels,
                   max_input_pixels=options.max_input_pixels)
    progress(0.0, f"loading the generator {page.generator}" if not cache.loaded(page.generator)
             else "building the seen side")
    pipe = cache.get(page.generator)
    progress(0.0, "building the seen side")

    def on_step(step: Any) -> None:
        progress((step.index + 1) / max(step.total, 1), f"{step.stage}: step {step.index + 1} of {step.total}")

    result = pipe(pm, options, callback=on_step)
    progress(1.0, "writing the mesh, the point cloud and the preview")
    view_pm = result.pointmap
    center = seen_center(view_pm)
    v_cam, faces = result.arrays("camera")
    stem = files.name()
    from .io.meshes import export_mesh
    from .io.pointmap_io import save_ply

    v_view = to_viewer(v_cam, center)
    mesh_view = export_mesh(v_view, faces, folder / f"{stem}_mesh_view.glb",
                            vertex_colors=np.broadcast_to(np.asarray(MESH_COLOR, np.uint8), (len(v_view), 3)))
    seen_view = write_seen_points(view_pm, center, folder / f"{stem}_seen_view.glb")
    downloads = [result.export(folder / f"{stem}.{ext}") for ext in ("glb", "obj", "ply")]
    seen_ply = folder / f"{stem}_seen_points.ply"
    save_ply(view_pm, seen_ply)
    downloads.append(seen_ply)
    metrics, preview = None, None
    if view_pm.intrinsics is not None:
        metrics = result.metrics()
        small = limit_pixels(view_pm, PREVIEW_MAX_PIXELS)
        preview = str(save_image(preview_panel(*result.arrays("camera"), small), folder / f"{stem}_preview.png"))
    return RunOutputs(str(seen_view), str(mesh_view), preview, metrics_text(metrics, result, page.generator),
                      [str(p) for p in downloads])


def page_error(error: BaseException, uploads: Sequence[str] = ()) -> str:
    """The one line the page shows for ``error``: our message (uploads named by file name), or a bug's type."""
    if isinstance(error, (UserError, FileNotFoundError)):
        text = str(error)
        for path in sorted(uploads, key=len, reverse=True):
            text = text.replace(str(path), Path(path).name)
        return one_line(text, 600)
    return one_line(f"internal error ({type(error).__name__}): {error}", 600)


# ----------------------------------------------------------------------------------------------- page


def example_rows() -> list[tuple[str, list]]:
    """The bundled RGB-D examples as (label, [kind, depth, colour image, intrinsics text])."""
    from .demo import EXAMPLES_DIR, list_examples

    rows = []
    for name in list_examples():
        k = np.loadtxt(EXAMPLES_DIR / f"{name}_intrinsics.txt")
        intr = ", ".join(f"{x:.6g}" for x in (k[0, 0], k[1, 1], k[0, 2], k[1, 2]))
        rows.append((name, ["RGB-D", str(EXAMPLES_DIR / f"{name}_depth.png"), str(EXAMPLES_DIR / f"{name}_rgba.png"),
                            intr]))
    return rows


_FILE_HEIGHT = 116  # px: compact upload boxes

_CSS = """
#c3dg-metrics p { margin: 0.2em 0; }
"""


def build_app(generators: Sequence[str] = DEFAULT_GENERATORS, cache: PipelineCache | None = None,
              folders: WorkFolders | None = None) -> Any:
    """The Gradio page (a ``gr.Blocks``); :func:`serve` queues and launches it."""
    gr = _require_gradio()
    generators = list(dict.fromkeys(generators)) or list(DEFAULT_GENERATORS)
    cache = cache or PipelineCache()
    folders = folders or WorkFolders()

    with gr.Blocks(title="consistent3dgen", analytics_enabled=False, delete_cache=(900, 3600)) as demo:
        gr.Markdown("## consistent3dgen: one view → a 3D mesh whose seen side matches it\n"
                    "Reconstruction at the seen side + generation at the unseen side. Pick a bundled example "
                    "below (it runs offline with the bundled mini prior) or upload your own input, then "
                    "**Generate**.")
        with gr.Row():
            with gr.Column(scale=4, min_width=320):
                kind = gr.Radio(list(INPUT_KINDS), value="RGB-D", label="input", elem_id="c3dg-kind")
                with gr.Group(visible=True) as rgbd_group:
                    depth = gr.File(label="depth map (16-bit PNG in mm, .npy in m, .exr)", file_types=DEPTH_TYPES,
                                    height=_FILE_HEIGHT, elem_id="c3dg-depth")
                    rgbd_image = gr.File(label="colour image (RGB, or RGBA: alpha = the object), optional",
                                         file_types=IMAGE_TYPES, height=_FILE_HEIGHT, elem_id="c3dg-rgbd-image")
                    with gr.Row():
                        intrinsics = gr.Textbox(label="intrinsics fx, fy, cx, cy (pixels)",
                                                placeholder="e.g. 220, 220, 79.5, 79.5", elem_id="c3dg-intrinsics")
                        fov = gr.Number(label="or horizontal FOV ° (0: none)", value=0, minimum=0, maximum=179.9,
                                        elem_id="c3dg-fov")
                    with gr.Row():
                        intrinsics_file = gr.File(label="or an intrinsics file (3x3 or fx fy cx cy)",
                                                  file_types=INTRINSICS_TYPES, height=_FILE_HEIGHT)
                        rgbd_mask = gr.File(label="object mask (non-zero = object), optional",
                                            file_types=IMAGE_TYPES, height=_FILE_HEIGHT)
                with gr.Group(visible=False) as image_group:
                    with gr.Row():
                        image = gr.File(label="image: RGBA (alpha = object), or RGB + mask; needs VGGT weights",
                                        file_types=IMAGE_TYPES, height=_FILE_HEIGHT, elem_id="c3dg-image")
                        image_mask = gr.File(label="object mask (white = object), optional", file_types=IMAGE_TYPES,
                                             height=_FILE_HEIGHT)
                with gr.Group(visible=False) as npz_group:
                    npz = gr.File(label="point map .npz (points; optional conf, mask, image, intrinsics)",
                                  file_types=[".npz"], height=_FILE_HEIGHT, elem_id="c3dg-npz")
                rows = example_rows()
                gr.Examples([r for _, r in rows], inputs=[kind, depth, rgbd_image, intrinsics],
                            example_labels=[n for n, _ in rows], label="bundled examples (RGB-D; run offline)",
                            elem_id="c3dg-examples")
                with gr.Accordion("parameters", open=True):
                    with gr.Row():
                        generator = gr.Dropdown(generators, value=generators[0], label="generator",
                                                elem_id="c3dg-generator")
                        seed = gr.Number(value=0, precision=0, minimum=0, label="seed", elem_id="c3dg-seed")
                    with gr.Row():
                        guidance = gr.Textbox(value="", label="λ guidance (empty: default; 0: unguided)",
                                              placeholder="default", elem_id="c3dg-guidance")
                        variant = gr.Dropdown(["default", *GUIDANCE_VARIANTS], value="default",
                                              label="guidance variant")
                    with gr.Row():
                        dense_steps = gr.Number(value=0, precision=0, minimum=0, label="dense steps (0: default)",
                                                elem_id="c3dg-dense-steps")
                        sparse_steps = gr.Number(value=0, precision=0, minimum=0, label="sparse steps (0: default)",
                                                 elem_id="c3dg-sparse-steps")
                    with gr.Row():
                        fusion = gr.Dropdown(list(FUSION_CHOICES), value="auto", label="fusion (auto: on when guided)")
                        free_space = gr.Checkbox(value=True, label="free space (clear what the view shows empty)")
                run = gr.Button("Generate", variant="primary", elem_id="c3dg-run")
            with gr.Column(scale=6, min_width=420):
                with gr.Row():
                    seen_view = gr.Model3D(label="seen side (the input's points)", height=340,
                                           clear_color=(1.0, 1.0, 1.0, 1.0), camera_position=VIEW_CAMERA,
                                           elem_id="c3dg-seen")
                    mesh_view = gr.Model3D(label="generated mesh", height=340, clear_color=(1.0, 1.0, 1.0, 1.0),
                                           camera_position=VIEW_CAMERA, elem_id="c3dg-mesh")
                preview = gr.Image(label="input | mesh from the input view | turned 90°, 180° (the back), 270°",
                                   type="filepath",
                                   interactive=False, elem_id="c3dg-preview")
                summary = gr.Markdown("", elem_id="c3dg-metrics")
                downloads = gr.File(label="downloads: mesh (camera frame, the input's units) GLB · OBJ · PLY, and "
                                          "the seen points PLY", file_count="multiple", interactive=False,
                                    elem_id="c3dg-downloads")

        def show_kind(k: str) -> tuple:
            return tuple(gr.update(visible=k == name) for name in INPUT_KINDS)

        kind.change(show_kind, kind, [rgbd_group, image_group, npz_group], queue=False)

        def on_run(kind_v: str, depth_v: str | None, rgbd_image_v: str | None, intrinsics_v: str | None,
                   fov_v: float | None, intrinsics_file_v: str | None, rgbd_mask_v: str | None,
                   image_v: str | None, image_mask_v: str | None, npz_v: str | None, generator_v: str,
                   seed_v: float | None, guidance_v: str | None, variant_v: str, dense_v: float | None,
                   sparse_v: float | None, fusion_v: str, free_v: bool,
                   progress: Any = gr.Progress()) -> tuple:  # noqa: B008 - Gradio's progress idiom
            files = ViewFiles(kind_v, image_v, image_mask_v, depth_v, rgbd_image_v, rgbd_mask_v, intrinsics_v,
                              intrinsics_file_v, fov_v, npz_v)
            if generator_v not in generators:  # only the generators this server was started with
                raise gr.Error(f"unknown generator {generator_v!r}; this server offers {', '.join(generators)}",
                               print_exception=False)
            page = PageOptions(generator_v, seed_v, guidance_v, variant_v, dense_v, sparse_v, fusion_v, free_v)
            folder = folders.new()
            try:
                out = generate(files, page, cache, folder, lambda frac, desc: progress(frac, desc=desc))
            except Exception as e:  # noqa: BLE001 - every failure is one line in the page
                folders.remove(folder)
                if not isinstance(e, (UserError, FileNotFoundError)):
                    log.exception("generation failed")
                raise gr.Error(page_error(e, files.uploads()), duration=None, print_exception=False) from None
            return (*out.values(), str(folder))

        def on_done(folder: str | None) -> None:
            if folder:  # the outputs are in Gradio's cache by now: the request's own folder goes
                folders.remove(folder)

        request_folder = gr.State(None)
        run.click(on_run, [kind, depth, rgbd_image, intrinsics, fov, intrinsics_file, rgbd_mask, image, image_mask,
                           npz, generator, seed, guidance, variant, dense_steps, sparse_steps, fusion, free_space],
                  [seen_view, mesh_view, preview, summary, downloads, request_folder], concurrency_limit=1,
                  concurrency_id="device").then(on_done, request_folder, None, queue=False)
    demo.c3dg_cache = cache  # type: ignore[attr-defined]
    demo.c3dg_folders = folders  # type: ignore[attr-defined]
    return demo


_SIZE_UNITS = {"b": 1, "kb": 1024, "mb": 1024**2, "gb": 1024**3, "tb": 1024**4}


def parse_file_size(size: str | int) -> int:
    """``50mb``, ``2gb``, ``1000`` (bytes) → bytes; anything else an InputError."""
    m = re.fullmatch(r"\s*(\d+)\s*([kmgt]?b)?\s*", str(size).lower())
    if not m or int(m.group(1)) <= 0:
        raise InputError(f"--max-file-size must be a positive size like 50mb or 2gb, got {size!r}")
    return int(m.group(1)) * _SIZE_UNITS[m.group(2) or "b"]


def _theme(gr: Any) -> Any:
    # system fonts: no font download (the page also works offline)
    return gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                             font_mono=["ui-monospace", "SFMono-Regular", "monospace"])


def serve(host: str = "127.0.0.1", port: int = 7860, generators: Sequence[str] = DEFAULT_GENERATORS,
          device: str | None = None, vggt_weights: str | None = None, max_file_size: str | int = DEFAULT_MAX_FILE_SIZE,
          queue_size: int = 16, preload: bool = True, block: bool = True) -> Any:
    """Build, queue (one run at a time: one worker for the one device) and launch the page.

    ``block``: serve until interrupted (Ctrl-C / SIGTERM reach the caller as ``KeyboardInterrupt``), then close.
    """
    if not 0 < int(port) < 65536:  # the arguments first: one line before Gradio loads
        raise InputError(f"--port must be between 1 and 65535, got {port}")
    if queue_size < 1:
        raise InputError(f"--queue-size must be at least 1, got {queue_size}")
    max_bytes = parse_file_size(max_file_size)
    gr = _require_gradio()
    cache = PipelineCache(device=device, vggt_weights=vggt_weights)
    folders = WorkFolders()
    demo = build_app(generators, cache, folders)
    demo.queue(default_concurrency_limit=1, max_size=queue_size)
    try:
        demo.launch(server_name=host, server_port=int(port), max_file_size=max_bytes, prevent_thread_lock=True,
                    show_error=False, ssr_mode=False, quiet=False, theme=_theme(gr), css=_CSS,
                    footer_links=[])
    except OSError as e:  # the port is taken, the host cannot be bound
        folders.close()
        log.debug("launch failed: %s", one_line(e))
        raise InputError(f"cannot serve on {host}:{port}: the port is in use or the address cannot be bound; "
                         "choose another --port or --host") from None
    if preload:  # the first generator loads while the page opens (a request waits for it)
        threading.Thread(target=_preload, args=(cache, list(generators)[0]), daemon=True).start()
    if not block:
        return demo
    try:
        while True:
            time.sleep(0.5)
    finally:
        demo.close()
        folders.close()


def _preload(cache: PipelineCache, name: str) -> None:
    try:
        cache.get(name)
        log.info("generator %s loaded", name)
    except Exception as e:  # noqa: BLE001 - a request will report it as one line
        log.warning("generator %s not preloaded: %s", name, one_line(e))
