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
    for add in (_add_demo, _add_generate, _add_foreground, _add_eval, _add_train):
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


def _add_input_arguments(p: argparse.ArgumentParser) -> None:
    """INPUT + how to read it (shared by foreground / generate)."""
    p.add_argument("input", nargs="+", help="image(s), a depth map (16-bit PNG mm, .npy m, .exr) or a point map .npz")
    p.add_argument("--reconstructor", choices=["auto", "vggt", "depth", "pointmap"], default="auto",
                   help="how to get the point map (default: inferred from the input)")
    p.add_argument("--intrinsics", help="depth maps: 'fx,fy,cx,cy' or a file with a 3x3 matrix")
    p.add_argument("--fov", type=float, help="depth maps: horizontal field of view in degrees (instead of intrinsics)")
    p.add_argument("--image", help="depth maps: the RGB(A) image (alpha = object mask)")
    p.add_argument("--mask", help="depth maps: an object mask image")
    p.add_argument("--vggt-weights", help="VGGT: local folder/file or hub id (default facebook/VGGT-1B)")
    p.add_argument("--conf-threshold", type=float, default=0.0, help="drop pixels with confidence at or below this")
    p.add_argument("--drop-percent", type=float, default=0.0, help="drop the lowest-confidence x %% of pixels")
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


def read_pointmap(args: argparse.Namespace):  # noqa: ANN201 - a PointMap (imported lazily)
    """The point map of ``args.input`` through the reconstructor the arguments name (or infer)."""
    from .reconstruct.base import get_reconstructor, infer_reconstructor

    name = args.reconstructor if args.reconstructor != "auto" else infer_reconstructor(args.input)
    options: dict = {}
    if name == "depth":
        intr = args.intrinsics
        if intr and "," in intr:
            try:
                intr = [float(v) for v in intr.split(",")]
            except ValueError:
                raise InputError(f"--intrinsics must be 'fx,fy,cx,cy' numbers or a file, got {args.intrinsics!r}"
                                 ) from None
        options = dict(intrinsics=intr, fov_deg=args.fov, image=args.image, mask=args.mask)
    elif name == "vggt" and args.vggt_weights:
        options = dict(weights=args.vggt_weights)
    if name in ("depth", "pointmap"):  # the pixel limits (VGGT's own preprocessing sizes its input)
        options.update({k: v for k, v in limit_overrides(args).items() if k != "max_memory_gb"})
    return get_reconstructor(name, args.input, **options)(args.input)[0]


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
                               drop_percent=args.drop_percent, **limit_overrides(args)
                               ).validate()  # checked before anything is read
    from .seen_side import build_seen_shell, seen_shell_paths, shell_fidelity, write_seen_shell

    check_output_folder(args.out, [p.name for p in seen_shell_paths(args.out, args.resolution).values()])
    pm = read_pointmap(args)
    fg = build_seen_shell(pm, resolution=args.resolution, band=args.band, shell=args.shell,
                          conf_threshold=args.conf_threshold, drop_percent=args.drop_percent,
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
    p.add_argument("--guidance", type=float, default=None,
                   help="front-partial guidance strength λ; 0 = the baseline, the prior alone (fusion off too, "
                        "unless --fusion is given)")
    p.add_argument("--variant", choices=GUIDANCE_VARIANTS, default=None, help="guidance variant")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fusion", action=argparse.BooleanOptionalAction, default=None,
                   help="pin the decoded SDF to the seen shell (default: on when guided)")
    p.add_argument("--free-space", action=argparse.BooleanOptionalAction, default=None,
                   help="clear what the view shows to be empty")
    p.add_argument("--front-cut", action=argparse.BooleanOptionalAction, default=None,
                   help="keep only the camera-side half of the shell's latent cells as the target (the paper)")
    p.add_argument("--max-faces", type=int, default=None, help="simplify to about this many faces")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


# argument name → GenerationOptions field
_OPTION_ARGUMENTS = {"guidance": "guidance", "variant": "guidance_variant", "fusion": "fusion",
                     "free_space": "free_space", "front_cut": "front_cut", "max_faces": "max_faces"}


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
    p.add_argument("--preview", help="write a preview PNG (input | output from the input view | two other views)")
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
    options = GenerationOptions(conf_threshold=args.conf_threshold, drop_percent=args.drop_percent
                                ).with_changes(**generation_overrides(args))  # checked before anything is read
    from .pipeline import ConsistentPipeline

    pm = read_pointmap(args)
    pipe = ConsistentPipeline.from_pretrained(args.generator)
    res = pipe(pm, options)
    metrics = res.metrics() if pm.intrinsics is not None else {}
    panel = None
    if args.preview:
        from .preview import preview_panel

        panel = preview_panel(*res.arrays("camera"), pm)
    with output_set():  # the mesh, the preview and the report appear together, or none of them
        path = res.export(args.out, frame=args.frame)
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
    for extra in (args.preview, args.report):
        if extra:
            print(f"wrote {extra}")
    return 0


# ----------------------------------------------------------------------------------------------- demo


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="the whole pipeline on the bundled examples with the bundled mini prior")
    p.add_argument("--out", default="out/demo", help="output folder (default out/demo)")
    p.add_argument("--generator", default="mini")
    p.add_argument("--examples", nargs="*", help="which bundled examples (default all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--compare", action="store_true", help="also run unguided (the baseline) for comparison")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(run=run_demo)


def run_demo(args: argparse.Namespace) -> int:
    from .demo import check_examples, demo_outputs
    from .demo import run_demo as demo
    from .io.atomic import check_output_folder

    check_output_folder(args.out, demo_outputs(check_examples(args.examples), args.compare))
    demo(args.out, args.generator, args.examples, seed=args.seed, compare=args.compare, progress=not args.quiet)
    return 0


# ----------------------------------------------------------------------------------------------- eval


def _add_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="guided vs unguided over seeds on meshes unseen in training, plus ablations")
    p.add_argument("meshes", nargs="*", help="mesh files (default: spot, stanford-bunny, teapot, suzanne from "
                                             "../shared/data/meshes)")
    p.add_argument("--meshes-dir", default=None, help="folder of the default evaluation meshes")
    p.add_argument("--out", default="out/eval", help="output folder (report.json, report.md, PNG plots)")
    p.add_argument("--generator", default="mini")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--no-ablations", action="store_true")
    p.add_argument("--ablation-seeds", type=int, default=1)
    p.add_argument("--size", type=int, default=160,
                   help=f"input view size in pixels ({EVAL_SIZES[0]} to {EVAL_SIZES[1]})")
    p.set_defaults(run=run_eval)


def run_eval(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .evaluate import EVAL_MESHES, evaluate, report_files
    from .io.atomic import check_output_folder

    for name in ("seeds", "ablation_seeds"):
        if getattr(args, name) < 1:
            raise InputError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if not EVAL_SIZES[0] <= args.size <= EVAL_SIZES[1]:
        raise InputError(f"--size must be between {EVAL_SIZES[0]} and {EVAL_SIZES[1]} pixels, got {args.size}")
    check_output_folder(args.out, report_files())
    paths = [Path(m) for m in args.meshes]
    if not paths:
        folder = Path(args.meshes_dir) if args.meshes_dir else Path.cwd().parent / "shared" / "data" / "meshes"
        paths = [folder / f"{m}.obj" for m in EVAL_MESHES]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise InputError(f"mesh files not found: {', '.join(missing)} (give paths or --meshes-dir)")
    report = evaluate(paths, args.out, args.generator, seeds=args.seeds, ablations=not args.no_ablations,
                      ablation_seeds=args.ablation_seeds, size=args.size)
    for k, ok in report["summary"]["targets"].items():
        print(f"{'met' if ok else 'NOT met'}: {k}")
    print(f"report: {Path(args.out) / 'report.md'}")
    return 0


# ----------------------------------------------------------------------------------------------- train


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train the mini prior from procedural shapes (+ cow, fandisk, beetle)")
    p.add_argument("--out", required=True, help="run folder: checkpoints, loss curves, latent caches")
    p.add_argument("--data-cache", default=None, help="folder of cached training samples (default: OUT/data)")
    p.add_argument("--stages", default=",".join(TRAIN_STAGES),
                   help=f"comma list out of {','.join(TRAIN_STAGES)} (default all)")
    p.add_argument("--config", default=None, help="training config JSON (default: the built-in tiny config; "
                                                  "a prior's training.json retrains it)")
    p.add_argument("--smoke", action="store_true", help="a few shapes and steps: checks the whole chain quickly")
    p.add_argument("--meshes-dir", default=None, help="folder with cow/fandisk/beetle .obj (default ../shared)")
    p.add_argument("--export", default=None, help="write the mini prior here (default: OUT/mini)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")
    p.add_argument("--data-workers", type=int, default=1, help="processes building the training samples")
    p.set_defaults(run=run_train)


def run_train(args: argparse.Namespace) -> int:
    from .train.main import train_main

    return train_main(args)


if __name__ == "__main__":
    sys.exit(main())
