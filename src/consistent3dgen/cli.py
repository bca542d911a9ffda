"""Command line: argparse only, one small function per subcommand calling the package's API.

Building the parser imports nothing heavy (no torch), so ``consistent3dgen --help`` is instant; each subcommand
imports what it needs when it runs.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

from .errors import InputError, UserError

GUIDANCE_VARIANTS = ("paper", "noised", "x0", "replace")  # sampling.guidance registers the same names
TRAIN_STAGES = ("dense_vae", "sparse_vae", "dense_dit", "sparse_dit")  # train.config.STAGES
EVAL_SIZES = (32, 1024)  # eval --size: the input view's side in pixels, smallest and largest


class _OneLineParser(argparse.ArgumentParser):
    """argparse, with a usage error as one line (the usage itself is one ``--help`` away)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = _OneLineParser(
        prog="consistent3dgen",
        description="One image / RGB-D / point map of an object → a 3D mesh whose seen side matches the input.",
    )
    p.add_argument("--version", action="store_true", help="print the version and exit")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_OneLineParser)
    for add in (_add_demo, _add_generate, _add_foreground, _add_eval, _add_train, _add_info, _add_app, _add_batch):
        add(sub)
    return p


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where SIGINT raises ``KeyboardInterrupt``: the same clean-up (temporary files removed by
    the writers' ``except BaseException``), then exit code 143."""


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated()


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """While a subcommand runs, SIGTERM raises :class:`Terminated` (only the main thread can set handlers)."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "SIGTERM"):
        yield
        return
    old = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old if old is not None else signal.SIG_DFL)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        from . import __version__

        print(__version__)
        return 0
    run: Callable[[argparse.Namespace], int] | None = getattr(args, "run", None)
    if run is None:
        parser.print_help()
        return 2
    try:
        with _sigterm_as_interrupt():
            return int(run(args) or 0)
    except (InputError, FileNotFoundError) as e:  # bad input, missing weights or files: one line, exit 2
        print(f"error: {e}", file=sys.stderr)
        return 2
    except UserError as e:  # e.g. no surface, an output that could not be written: one line, a failed run
        print(f"error: {e}", file=sys.stderr)
        return 1
    except Terminated:
        print("terminated", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


# ----------------------------------------------------------------------------------------------- inputs


def _add_input_arguments(p: argparse.ArgumentParser, nargs: str = "+", help_input: str | None = None,
                         multi_view: bool = True) -> None:
    """INPUT + how to read it (shared by foreground / generate / batch). ``multi_view``: the inputs are views of one
    object (the per-view options may be repeated, once per view); else (batch) each input is an object of its own."""
    p.add_argument("input", nargs=nargs, help=help_input or "the views of one object: image(s) (VGGT), depth map(s) "
                                                            "(16-bit PNG mm, .npy m, .exr) and/or point map(s) .npz; "
                                                            "several views need poses (docs/formats.md)")
    p.add_argument("--reconstructor", choices=["auto", "vggt", "depth", "pointmap"], default="auto",
                   help="how to get the point map (default: inferred from the input)")
    per_view = dict(action="append") if multi_view else {}
    again = " (once per depth map, or once for all)" if multi_view else ""
    p.add_argument("--intrinsics", **per_view, help=f"depth maps: 'fx,fy,cx,cy' or a file with a 3x3 matrix{again}")
    p.add_argument("--fov", type=float, help="depth maps: horizontal field of view in degrees (instead of intrinsics)")
    p.add_argument("--image", **per_view, help="depth maps: the RGB(A) image (alpha = object mask)"
                                               + (", once per depth map in their order" if multi_view else ""))
    if multi_view:
        p.add_argument("--cam-to-world", action="append", metavar="FILE",
                       help="several views: the camera pose of each input (a text/.npy file with a 4x4 OpenCV "
                            "camera-to-world matrix), once per input in their order; a .npz may hold its own")
    p.add_argument("--mask", action="append", metavar="FILE",
                   help="an object mask image, non-zero = object: for a photo without alpha (once per input image, "
                        "in their order) or for a depth map")
    p.add_argument("--segmenter", default="auto",
                   help="images without alpha or --mask: auto (BiRefNet when its weights are found, else rembg when "
                        "installed with its model, else a uniform white/black background, else an error), birefnet, "
                        "rembg, background, none (the whole frame is the object)")
    p.add_argument("--birefnet-weights", metavar="DIR",
                   help="BiRefNet: local folder or hub id (default ZhengPeng7/BiRefNet, downloaded when the hub is "
                        "reachable); its model code comes with the weights and is run (trust_remote_code)")
    p.add_argument("--vggt-weights", help="VGGT: local folder/file or hub id (default facebook/VGGT-1B)")
    p.add_argument("--conf-threshold", type=float, default=0.0, help="drop pixels with confidence at or below this")
    p.add_argument("--conf-percentile", "--drop-percent", dest="conf_percentile", type=float, default=None,
                   metavar="P",
                   help="drop the pixels below the P-th confidence percentile; 0 keeps all. Images (VGGT): of all "
                        "pixels of all views, as the official VGGT demo, default 50; depth maps / .npz: of the "
                        "object's pixels, default 0")
    p.add_argument("--max-pixels", type=int, default=None,
                   help="point maps above this many pixels are downscaled by an integer stride (default 2048x2048)")
    p.add_argument("--max-input-pixels", type=int, default=None,
                   help="refuse files whose header says more pixels than this, unread (default 8192x8192)")
    p.add_argument("--max-memory-gb", type=float, default=None,
                   help="refuse a step whose memory estimate is above this (default: 80%% of the memory available)")


# limit arguments → GenerationOptions fields (and the readers' keywords); unset = the package's defaults
_LIMIT_ARGUMENTS = ("max_pixels", "max_input_pixels", "max_memory_gb")


def limit_overrides(args: argparse.Namespace) -> dict:
    """The limits the arguments set (``max_pixels``, ``max_input_pixels``, ``max_memory_gb``)."""
    return {k: getattr(args, k) for k in _LIMIT_ARGUMENTS if getattr(args, k, None) is not None}


def input_kind(args: argparse.Namespace) -> str:
    """The reconstructor the arguments name, or the one the input's extension / header implies."""
    from .reconstruct.base import infer_reconstructor

    return args.reconstructor if args.reconstructor != "auto" else infer_reconstructor(args.input)


def surface_drop_percent(args: argparse.Namespace) -> float:
    """``--conf-percentile`` as ``GenerationOptions.drop_percent`` (depth maps / .npz; VGGT filters in its
    reconstructor instead, see :func:`read_views`). Checked first: one line naming both spellings."""
    p = getattr(args, "conf_percentile", None)
    if p is None:
        return 0.0
    if not 0.0 <= p < 100.0:  # NaN fails too
        raise InputError(f"option --conf-percentile (drop_percent) must be in [0, 100), got {p:g}")
    return 0.0 if input_kind(args) == "vggt" else float(p)


def _listed(value: str | list[str] | None) -> list[str] | None:
    return [value] if isinstance(value, str) else value


def _intrinsics_argument(text: str) -> str | list[float]:
    """``fx,fy,cx,cy`` → numbers; anything else is a file path."""
    if "," not in text:
        return text
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise InputError(f"--intrinsics must be 'fx,fy,cx,cy' numbers or a file, got {text!r}") from None


def _per_depth_map(values: list | None, n: int, what: str) -> Any:
    """A repeated per-view option for ``n`` depth maps: None, one for all (intrinsics only), or one each."""
    if not values:
        return None
    if len(values) == 1 and (n == 1 or what == "--intrinsics"):
        return values[0]
    if len(values) != n:
        raise InputError(f"{len(values)} {what} for {n} depth maps: give one per depth map, in their order")
    return list(values)


def read_views(args: argparse.Namespace) -> list:
    """The point maps of ``args.input`` (the views of one object) through the reconstructor the arguments name (or
    infer), poses relative to the first view."""
    from .pointmap import relative_to_first
    from .reconstruct.base import get_reconstructor, infer_reconstructor

    name = input_kind(args)
    masks = _listed(getattr(args, "mask", None))
    poses = _listed(getattr(args, "cam_to_world", None))
    options: dict = {}
    if poses:
        if name == "vggt":
            raise InputError("--cam-to-world applies to depth and point maps; VGGT estimates the images' poses")
        if len(poses) != len(args.input):
            raise InputError(f"{len(poses)} --cam-to-world for {len(args.input)} inputs: give one per input, in "
                             "their order")
        options["cam_to_world"] = poses
    if name in ("depth", "mixed"):
        n = len(args.input) if name == "depth" else sum(infer_reconstructor([i]) == "depth" for i in args.input)
        intr = _listed(args.intrinsics)
        intr = [_intrinsics_argument(t) for t in intr] if intr else None
        options.update(intrinsics=_per_depth_map(intr, n, "--intrinsics"), fov_deg=args.fov,
                       image=_per_depth_map(_listed(args.image), n, "--image"),
                       mask=_per_depth_map(masks, n, "--mask"))
    elif name == "vggt":
        options = dict(segmenter=getattr(args, "segmenter", "auto"),
                       segmenter_weights=getattr(args, "birefnet_weights", None))
        if masks:
            options["masks"] = masks
        if args.vggt_weights:
            options["weights"] = args.vggt_weights
        if getattr(args, "conf_percentile", None) is not None:
            options["conf_percentile"] = args.conf_percentile  # else the demo's default
    elif masks:
        raise InputError("--mask applies to images and depth maps, not to a point map .npz (it has its own mask)")
    if name in ("depth", "pointmap", "mixed"):  # the pixel limits (VGGT's own preprocessing sizes its input)
        options.update({k: v for k, v in limit_overrides(args).items() if k != "max_memory_gb"})
    return relative_to_first(get_reconstructor(name, args.input, **options)(args.input))


# ----------------------------------------------------------------------------------------------- foreground


def _add_foreground(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("foreground", help="point map → seen mesh → thin-shell SDF; writes them, checks the shell")
    _add_input_arguments(p)
    p.add_argument("--resolution", type=int, choices=[128, 256, 512, 1024], default=512)
    p.add_argument("--band", type=float, default=2.0, help="narrow band half-width in voxels")
    p.add_argument("--shell", type=float, default=1.0, help="shell offset (half thickness) in voxels")
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(run=run_foreground)


def run_foreground(args: argparse.Namespace) -> int:
    from .io.atomic import check_output_folder
    from .options import GenerationOptions

    check_output_folder(args.out)  # the output folder first: at once, before torch loads
    limits = GenerationOptions(band=args.band, shell=args.shell, conf_threshold=args.conf_threshold,
                               drop_percent=surface_drop_percent(args), **limit_overrides(args)
                               ).validate()  # checked before anything is read
    from .seen_side import build_seen_shell, seen_shell_paths, shell_fidelity, write_seen_shell

    check_output_folder(args.out, [p.name for p in seen_shell_paths(args.out, args.resolution).values()])
    views = read_views(args)
    fg = build_seen_shell(views, resolution=args.resolution, band=args.band, shell=args.shell,
                          conf_threshold=args.conf_threshold, drop_percent=limits.drop_percent,
                          max_pixels=limits.max_pixels, max_memory_gb=limits.max_memory_gb)
    fid = shell_fidelity(fg)
    paths = write_seen_shell(fg, args.out, fid)
    print(f"seen surface: {len(fg.seen.vertices)} vertices, {len(fg.seen.faces)} triangles")
    print(f"thin shell at {fg.resolution}^3: {fid['shell_voxels']} voxels, {fid['latent_cells']} latent cells "
          f"({fid['front_cells']} on the camera side)")
    print(f"extracted shell vs seen surface (voxels; ideal {fg.shell_offset:g}): "
          f"offset mean {fid['offset_mean']:.3f} p90 {fid['offset_p90']:.3f} max {fid['offset_max']:.3f}; "
          f"coverage mean {fid['coverage_mean']:.3f} max {fid['coverage_max']:.3f}")
    for name, path in paths.items():
        print(f"wrote {name}: {path}")
    return 0


# ----------------------------------------------------------------------------------------------- generate


def add_generation_arguments(p: argparse.ArgumentParser) -> None:
    """Generation options; a value left out is the generator's default (GenerationOptions resolves it)."""
    p.add_argument("--generator", default="mini",
                   help="mini (bundled), a mini-prior folder, direct3d-s2[-v1.0], a hub id or a local folder")
    p.add_argument("--dinov2-weights", metavar="DIR",
                   help="Direct3D-S2's DINOv2 conditioner: a transformers folder or hub id (default: "
                        "DIR/dinov2-with-registers-large beside --generator DIR, else "
                        "facebook/dinov2-with-registers-large, downloaded when the hub is reachable)")
    p.add_argument("--guidance", type=float, default=None,
                   help="front-partial guidance strength λ; 0 = the baseline, the prior alone (fusion off too, "
                        "unless --fusion is given)")
    p.add_argument("--variant", choices=GUIDANCE_VARIANTS, default=None, help="guidance variant")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fusion", action=argparse.BooleanOptionalAction, default=None,
                   help="pin the decoded SDF to the seen shell (default: on when guided)")
    p.add_argument("--fusion-at", choices=["shell", "surface"], default=None,
                   help="where fusion puts the output's seen side: surface (default: on the reconstruction itself) or "
                        "shell (the seen shell's outer wall, about a voxel in front of it)")
    p.add_argument("--free-space", action=argparse.BooleanOptionalAction, default=None,
                   help="clear what the view shows to be empty")
    p.add_argument("--free-space-dilation", type=int, default=None, metavar="PX",
                   help="pixels of slack around the object mask before outside the silhouette counts as empty "
                        "(default: the generator's, else 1; raise it for a rough mask)")
    p.add_argument("--token-dilation", type=int, default=None, metavar="CELLS",
                   help="grow the dense stage's occupancy by this many cells before it becomes the first sparse "
                        "stage's tokens (default: the generator's, else 0)")
    p.add_argument("--dense-candidates", type=int, default=None, metavar="K",
                   help="draw K dense samples and keep the one that agrees best with the view (covers most of the "
                        "seen occupancy, puts least in its free space; default: the generator's, else 1)")
    p.add_argument("--first-stage-passes", type=int, default=None, metavar="N",
                   help="run the first sparse stage N times, each later pass on the cells of the previous pass's "
                        "mesh (default: the generator's, else 1)")
    p.add_argument("--sparse-start-sigma", type=float, default=None, metavar="SIGMA",
                   help="start each later sparse stage from the previous stage's shape noised to SIGMA (below 1; "
                        "a signed-distance generator) instead of pure noise (1; default: the generator's, else 1)")
    p.add_argument("--front-cut", action=argparse.BooleanOptionalAction, default=None,
                   help="keep only the camera-side half of the shell's latent cells as the target (the paper)")
    p.add_argument("--refine", action=argparse.BooleanOptionalAction, default=None,
                   help="run the generator's refiners on its sparse stages (Direct3D-S2: interior removal at 512, "
                        "sign refiner at 1024; default: on when the generator has them)")
    p.add_argument("--max-faces", type=int, default=None, help="simplify to about this many faces")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_device_arguments(p)


def _device_name(text: str) -> str:
    from .devices import check_device_name  # (no torch: the syntax only)

    try:
        return check_device_name(text)
    except InputError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def add_device_arguments(p: argparse.ArgumentParser) -> None:
    """``--device``, ``--dtype``, ``--low-memory`` (:meth:`Pipeline.from_pretrained` takes them)."""
    from .devices import DEVICE_NAMES, DTYPE_CHOICES

    p.add_argument("--device", type=_device_name, default="auto",
                   help=f"where the models run: {DEVICE_NAMES} (default auto: CUDA when present, else MPS, else CPU)")
    p.add_argument("--dtype", choices=DTYPE_CHOICES, default="auto",
                   help="model precision: auto (the weights' own: Direct3D-S2 fp16 with float32 norms, the mini prior "
                        "fp32), fp32, fp16, bf16 (float32 weights then run under autocast)")
    p.add_argument("--low-memory", action="store_true",
                   help="keep only the running stage's models on the GPU (the others on the CPU), fp16 unless --dtype "
                        "is given, decode the sparse stages in chunks; slower, lower peak memory")


def device_settings(args: argparse.Namespace) -> dict:
    """The device arguments as ``from_pretrained`` keywords, the device checked to exist (one line if not)."""
    from .devices import resolve_device

    return {"device": resolve_device(getattr(args, "device", "auto")), "dtype": getattr(args, "dtype", "auto"),
            "low_memory": bool(getattr(args, "low_memory", False))}


def generator_weights(args: argparse.Namespace) -> dict:
    """Weights of the generator's parts the arguments name (``--dinov2-weights``), as ``load_generator`` keywords."""
    dino = getattr(args, "dinov2_weights", None)
    return {"dino_weights": dino} if dino else {}


# argument name → GenerationOptions field
_OPTION_ARGUMENTS = {"guidance": "guidance", "variant": "guidance_variant", "fusion": "fusion",
                     "fusion_at": "fusion_at", "free_space": "free_space", "free_space_dilation": "free_space_dilation",
                     "token_dilation": "token_dilation", "dense_candidates": "dense_candidates",
                     "first_stage_passes": "first_stage_passes",
                     "sparse_start_sigma": "sparse_start_sigma",
                     "front_cut": "front_cut",
                     "max_faces": "max_faces", "refine": "refine"}


def generation_overrides(args: argparse.Namespace) -> dict:
    """The GenerationOptions the arguments set (the rest stay unset: the generator's defaults)."""
    over = {"seed": args.seed, "progress": not args.quiet}
    for name, key in _OPTION_ARGUMENTS.items():
        value = getattr(args, name)
        if value is not None:
            over[key] = value
    over.update(limit_overrides(args))  # --max-pixels, --max-input-pixels, --max-memory-gb (input arguments)
    return over


def _add_generate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="input (image, RGB-D, point map) → mesh whose seen side matches it")
    _add_input_arguments(p)
    add_generation_arguments(p)
    p.add_argument("--out", required=True, help="mesh file; the format follows the extension (.glb .obj .ply .stl)")
    p.add_argument("--frame", choices=["camera", "canonical"], default="camera",
                   help="camera: the input camera's frame and scale (overlays the image); "
                        "canonical: the generator's cube")
    p.add_argument("--report", help="write parameters, timings and metrics to this JSON file")
    p.add_argument("--preview", help="write a preview PNG (input | output from the input view | turned 90°, "
                                             "180° (the back), 270°)")
    p.add_argument("--colour", choices=["none", "vertex", "texture"], default=None,
                   help="colour from the input image: vertex colours, or a UV texture (.glb only); "
                        "default vertex when the input has an image, else none")
    p.add_argument("--turntable", metavar="FILE",
                   help="write a 360° turn of the output (.gif; .mp4 with imageio-ffmpeg), 36 frames at 256²")
    p.set_defaults(run=run_generate)


def run_generate(args: argparse.Namespace) -> int:
    import json

    from .io.atomic import atomic_write_text, check_output_file, output_set
    from .io.meshes import EXPORT_FORMATS
    from .options import GenerationOptions
    from .preview import IMAGE_FORMATS

    check_output_file(args.out, EXPORT_FORMATS, "--out")  # outputs first: at once, before torch loads
    if args.report:
        check_output_file(args.report, (".json",), "--report")
    if args.preview:
        check_output_file(args.preview, IMAGE_FORMATS, "--preview")
    check_colour_option(args)
    options = GenerationOptions(conf_threshold=args.conf_threshold, drop_percent=surface_drop_percent(args)
                                ).with_changes(**generation_overrides(args))  # checked before anything is read
    devices = device_settings(args)  # CUDA / MPS asked for and missing: one line, before the input is read
    from .pipeline import Pipeline

    views = read_views(args)
    pm = views[0]
    if args.colour in ("vertex", "texture"):
        from .colour import can_colour_views

        if not can_colour_views(views):  # before the models load
            raise InputError(f"--colour {args.colour}: the input has no colour image (or no intrinsics)")
    pipe = Pipeline.from_pretrained(args.generator, **devices, **generator_weights(args))
    res = pipe(views, options)
    metrics = res.metrics() if pm.intrinsics is not None else {}
    panel = None
    colour = res.default_colour(args.out) if args.colour is None else args.colour
    if args.preview:
        from .preview import preview_panel

        # the preview in the written mesh's colours (grey when it has none)
        panel = preview_panel(*res.arrays("camera"), pm, colours=res.colourize() if colour != "none" else None)
    frames = turntable(res, colour) if args.turntable else None
    with output_set():  # the mesh, the preview and the report appear together, or none of them
        path = res.export(args.out, frame=args.frame, colour=colour)
        if frames is not None:
            from .turntable import write_turntable

            write_turntable(frames, args.turntable)
        if panel is not None:
            from .preview import save_image

            save_image(panel, args.preview)
        if args.report:
            rep = {"input": args.input, "generator": pipe.generator.name, "metrics": metrics, **res.report()}
            atomic_write_text(args.report, json.dumps(rep, indent=2, default=float))
    print(f"wrote {path} ({len(res.faces)} faces, {args.frame} frame) in {res.timings['total']:.1f} s")
    if metrics:
        print(f"input view: depth error mean {metrics['depth_error_mean']:.4f} p90 {metrics['depth_error_p90']:.4f} "
              f"(x object size), normal error {metrics['normal_error_deg_mean']:.1f} deg, "
              f"silhouette IoU {metrics['silhouette_iou']:.3f}")
    for extra in (args.preview, args.report, args.turntable):
        if extra:
            print(f"wrote {extra}")
    return 0


def check_colour_option(args: argparse.Namespace) -> None:
    """--colour / --turntable against the output paths, before any work."""
    if args.colour is not None:
        from .colour import check_colour_mode

        check_colour_mode(args.colour, args.out, "--colour")
    if args.turntable:
        from .turntable import check_turntable_path

        check_turntable_path(args.turntable)


def turntable(res, colour: str) -> list:  # noqa: ANN001 - a PipelineResult (imported lazily)
    """36 frames at 256² of the camera-frame output turning, in its colours when it has them."""
    from .turntable import turntable_frames

    v, f = res.arrays("camera")
    return turntable_frames(v, f, res.colourize() if colour != "none" else None)


# ----------------------------------------------------------------------------------------------- demo


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="the whole pipeline on the bundled examples with the bundled mini prior")
    p.add_argument("--out", default="out/demo", help="output folder (default out/demo)")
    p.add_argument("--generator", default="mini")
    p.add_argument("--examples", nargs="*", help="which bundled examples (default all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--compare", action="store_true", help="also run unguided (the baseline) for comparison")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_device_arguments(p)
    p.set_defaults(run=run_demo)


def run_demo(args: argparse.Namespace) -> int:
    from .demo import check_examples, demo_outputs
    from .demo import run_demo as demo
    from .io.atomic import check_output_folder

    check_output_folder(args.out, demo_outputs(check_examples(args.examples), args.compare))
    demo(args.out, args.generator, args.examples, seed=args.seed, compare=args.compare, progress=not args.quiet,
         **device_settings(args))
    return 0


# ----------------------------------------------------------------------------------------------- eval


def _add_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="guided vs unguided vs naive baselines over seeds on meshes unseen in "
                                     "training (input view, whole surface, unseen side, pieces), plus ablations")
    p.add_argument("meshes", nargs="*", help="mesh files (default: spot, stanford-bunny, teapot, suzanne from "
                                             "../shared/data/meshes)")
    p.add_argument("--meshes-dir", default=None, help="folder of the default evaluation meshes")
    p.add_argument("--out", default="out/eval", help="output folder (report.json, report.md, PNG plots)")
    p.add_argument("--generator", default="mini")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--no-ablations", action="store_true")
    p.add_argument("--ablation-seeds", type=int, default=1)
    p.add_argument("--prior-samples", type=int, default=10, metavar="N",
                   help="samples of the prior alone, with no view (an unconditional prior), for its coherence "
                        "(0: none)")
    p.add_argument("--size", type=int, default=160,
                   help=f"input view size in pixels ({EVAL_SIZES[0]} to {EVAL_SIZES[1]})")
    p.add_argument("--views", type=int, nargs="+", default=None, metavar="N",
                   help="numbers of input views to compare (e.g. 1 2 4: cameras evenly spaced in azimuth); one "
                        "report with a row per count, no ablations")
    p.set_defaults(run=run_eval)


def run_eval(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .evaluate import EVAL_MESHES, evaluate, evaluate_views, report_files, views_report_files
    from .io.atomic import check_output_folder

    for name in ("seeds", "ablation_seeds"):
        if getattr(args, name) < 1:
            raise InputError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if args.prior_samples < 0:
        raise InputError(f"--prior-samples must be at least 0, got {args.prior_samples}")
    if not EVAL_SIZES[0] <= args.size <= EVAL_SIZES[1]:
        raise InputError(f"--size must be between {EVAL_SIZES[0]} and {EVAL_SIZES[1]} pixels, got {args.size}")
    counts = None if args.views is None else list(dict.fromkeys(args.views))  # repeated counts run once
    if counts is not None and min(counts) < 1:
        raise InputError(f"--views: every number of views must be at least 1, got {min(counts)}")
    check_output_folder(args.out, report_files() if counts is None else views_report_files())
    paths = [Path(m) for m in args.meshes]
    if not paths:
        folder = Path(args.meshes_dir) if args.meshes_dir else Path.cwd().parent / "shared" / "data" / "meshes"
        paths = [folder / f"{m}.obj" for m in EVAL_MESHES]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise InputError(f"mesh files not found: {', '.join(missing)} (give paths or --meshes-dir)")
    if counts is not None:  # the comparison by number of views: its own report, without ablations
        if not args.no_ablations:
            print("--views: ablations are not run (one report of the main settings per number of views)")
        evaluate_views(paths, args.out, counts, args.generator, seeds=args.seeds, size=args.size)
        print(f"report: {Path(args.out) / 'report.md'}")
        return 0
    report = evaluate(paths, args.out, args.generator, seeds=args.seeds, ablations=not args.no_ablations,
                      ablation_seeds=args.ablation_seeds, size=args.size, prior_count=args.prior_samples)
    for k, ok in report["summary"]["targets"].items():
        print(f"{'met' if ok else 'NOT met'}: {k}")
    print(f"report: {Path(args.out) / 'report.md'}")
    return 0


# ----------------------------------------------------------------------------------------------- batch


def _add_batch(sub: argparse._SubParsersAction) -> None:
    from .batch import MESH_FORMATS  # the batch module imports no torch (nor numpy) at the top

    p = sub.add_parser("batch", help="many inputs → one mesh + report each and a manifest; resumable, parallel")
    _add_input_arguments(p, nargs="*", multi_view=False,
                         help_input="depth maps (NAME_intrinsics.txt, NAME_rgba.png, NAME_mask.png "
                                                  "read from beside them), point maps .npz, images, or folders of "
                                                  "*_depth.* / *.npz files")
    add_generation_arguments(p)
    p.add_argument("--list", dest="list_file", metavar="FILE",
                   help="more inputs, one a line: a path, or JSON {\"input\", \"name\", \"intrinsics\", \"fov\", "
                        "\"image\", \"mask\"} (paths relative to FILE)")
    p.add_argument("--out", required=True, help="output folder: NAME.FORMAT and NAME.json per input, manifest.jsonl")
    p.add_argument("--format", choices=MESH_FORMATS, default="glb", help="mesh format (default glb)")
    p.add_argument("--frame", choices=["camera", "canonical"], default="camera", help="as for generate")
    p.add_argument("--colour", choices=["none", "vertex"], default=None,
                   help="vertex colours from each input's image, or none (default: vertex when the input has an "
                        "image and the format holds colours, i.e. not stl)")
    p.add_argument("--workers", type=int, default=None,
                   help="local worker processes, each loading the pipeline once (default 1: in this process)")
    p.add_argument("--retry-failed", action="store_true", help="run again the items the manifest records as failed")
    p.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
                   help="run the items on Ray (pip install \"consistent3dgen[ray]\"): a cluster ADDRESS, or local "
                        "(the default) for a Ray instance on this machine with --workers CPUs")
    p.set_defaults(run=run_batch)


def run_batch(args: argparse.Namespace) -> int:
    from .batch import run_batch_command

    return run_batch_command(args)


# ----------------------------------------------------------------------------------------------- train


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train the mini prior from procedural shapes (+ cow, fandisk, beetle)")
    p.add_argument("--out", required=True, help="run folder: checkpoints, loss curves, latent caches")
    p.add_argument("--data-cache", default=None, help="folder of cached training samples (default: OUT/data)")
    p.add_argument("--stages", default=None,
                   help=f"comma list out of {','.join(TRAIN_STAGES)} (and sparse_vae_2,sparse_dit_2 with a second "
                        "sparse stage, data.second_resolution); default: every stage of the config")
    p.add_argument("--config", default=None, help="training config JSON (default: the built-in tiny config; "
                                                  "a prior's training.json retrains it)")
    p.add_argument("--smoke", action="store_true", help="a few shapes and steps: checks the whole chain quickly")
    p.add_argument("--meshes-dir", default=None, help="folder with cow/fandisk/beetle .obj (default ../shared)")
    p.add_argument("--export", default=None, help="write the mini prior here (default: OUT/mini)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")
    p.add_argument("--data-workers", type=int, default=1, help="processes building the training samples")
    p.add_argument("--device", type=_device_name, default="auto",
                   help="device the models train on: auto (CUDA when present, else MPS, else CPU), cpu, cuda, cuda:N, "
                        "mps; the batches and noise are drawn on the CPU, so they are the same on any device")
    p.set_defaults(run=run_train)


def run_train(args: argparse.Namespace) -> int:
    from .train.main import train_main

    return train_main(args)


# ----------------------------------------------------------------------------------------------- info


def _add_info(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="versions, the device, and where each model's weights are found (no download)")
    p.add_argument("--vggt-weights", metavar="DIR", help="check this VGGT folder/file instead of the hub cache")
    p.add_argument("--generator", metavar="DIR", help="check this Direct3D-S2 (or mini-prior) folder")
    p.add_argument("--dinov2-weights", metavar="DIR", help="check this DINOv2 folder")
    p.add_argument("--birefnet-weights", metavar="DIR", help="check this BiRefNet folder")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(run=run_info)


def run_info(args: argparse.Namespace) -> int:
    from .info import format_info, gather_info

    report = gather_info(vggt=args.vggt_weights, generator=args.generator, dinov2=args.dinov2_weights,
                         birefnet=args.birefnet_weights)
    if args.json:
        import json

        print(json.dumps(report, indent=2))
    else:
        print(format_info(report))
    return 0



# ----------------------------------------------------------------------------------------------- app


def _add_app(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("app", help="the web page (Gradio; pip install \".[app]\"): upload, generate, view, download")
    p.add_argument("--host", default="127.0.0.1", help="address to serve on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    p.add_argument("--generator", action="append", default=None, metavar="NAME",
                   help="a generator the page offers (repeatable; the first is the default): mini, a mini-prior "
                        "folder, direct3d-s2[-v1.0], a hub id or a local folder (default: mini and direct3d-s2)")
    p.add_argument("--device", default=None, help="device the models run on (default: the pipeline's)")
    p.add_argument("--vggt-weights", help="VGGT for image inputs: local folder/file or hub id")
    p.add_argument("--max-file-size", default="50mb", help="largest upload, e.g. 50mb (default 50mb)")
    p.add_argument("--queue-size", type=int, default=16, help="requests that may wait in the queue (default 16)")
    p.set_defaults(run=run_app)


def run_app(args: argparse.Namespace) -> int:
    from .app import DEFAULT_GENERATORS, serve

    serve(args.host, args.port, args.generator or DEFAULT_GENERATORS, device=args.device,
          vggt_weights=args.vggt_weights, max_file_size=args.max_file_size, queue_size=args.queue_size)
    return 0


if __name__ == "__main__":
    sys.exit(main())
