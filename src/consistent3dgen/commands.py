"""Subcommands. Each is a thin adapter from arguments to a package function."""

from __future__ import annotations

import argparse

from .cli import subcommand
from .pointmap import PointMap


def add_input_arguments(p: argparse.ArgumentParser) -> None:
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


def read_pointmap(args: argparse.Namespace) -> PointMap:
    from .reconstruct.base import get_reconstructor, infer_reconstructor

    name = args.reconstructor if args.reconstructor != "auto" else infer_reconstructor(args.input)
    options: dict = {}
    if name == "depth":
        intr = args.intrinsics
        if intr and "," in intr:
            intr = [float(v) for v in intr.split(",")]
        options = dict(intrinsics=intr, fov_deg=args.fov, image=args.image, mask=args.mask)
    elif name == "vggt" and args.vggt_weights:
        options = dict(weights=args.vggt_weights)
    return get_reconstructor(name, args.input, **options)(args.input)[0]


@subcommand
def _foreground(sub) -> None:  # noqa: ANN001
    p = sub.add_parser("foreground", help="point map → seen mesh → thin-shell SDF; writes them, checks the shell")
    add_input_arguments(p)
    p.add_argument("--resolution", type=int, choices=[128, 256, 512, 1024], default=512)
    p.add_argument("--band", type=float, default=2.0, help="narrow band half-width in voxels")
    p.add_argument("--shell", type=float, default=1.0, help="shell offset (half thickness) in voxels")
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(func=run_foreground)


def run_foreground(args: argparse.Namespace) -> int:
    from .foreground import build_foreground, shell_fidelity, write_foreground

    pm = read_pointmap(args)
    fg = build_foreground(pm, resolution=args.resolution, band=args.band, shell=args.shell,
                          conf_threshold=args.conf_threshold, drop_percent=args.drop_percent)
    fid = shell_fidelity(fg)
    paths = write_foreground(fg, args.out, fid)
    print(f"seen surface: {len(fg.seen.vertices)} vertices, {len(fg.seen.faces)} triangles")
    print(f"thin shell at {fg.resolution}^3: {fid['shell_voxels']} voxels, {fid['latent_cells']} latent cells "
          f"({fid['front_cells']} on the camera side)")
    print(f"extracted shell vs seen surface (voxels; ideal {fg.shell_offset:g}): "
          f"offset mean {fid['offset_mean']:.3f} p90 {fid['offset_p90']:.3f} max {fid['offset_max']:.3f}; "
          f"coverage mean {fid['coverage_mean']:.3f} max {fid['coverage_max']:.3f}")
    for name, path in paths.items():
        print(f"wrote {name}: {path}")
    return 0


def add_generation_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--generator", default="mini",
                   help="mini (bundled), a mini-prior folder, direct3d-s2[-v1.0], a hub id or a local folder")
    p.add_argument("--guidance", type=float, default=None,
                   help="front-partial guidance strength λ; 0 = the baseline, the prior alone (fusion off too, "
                        "unless --fusion is given)")
    p.add_argument("--variant", choices=["paper", "noised", "x0", "replace"], default=None, help="guidance variant")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fusion", action=argparse.BooleanOptionalAction, default=None,
                   help="pin the decoded SDF to the seen shell")
    p.add_argument("--free-space", action=argparse.BooleanOptionalAction, default=None,
                   help="clear what the view shows to be empty")
    p.add_argument("--front-cut", action=argparse.BooleanOptionalAction, default=None,
                   help="keep only the camera-side half of the shell's latent cells as the target (the paper)")
    p.add_argument("--max-faces", type=int, default=None, help="simplify to about this many faces")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def generation_overrides(args: argparse.Namespace) -> dict:
    over = {"seed": args.seed, "progress": not args.quiet}
    for name, key in (("guidance", "guidance"), ("variant", "guidance_variant"), ("fusion", "fusion"),
                      ("free_space", "free_space"), ("front_cut", "front_cut"), ("max_faces", "max_faces")):
        value = getattr(args, name)
        if value is not None:
            over[key] = value
    if over.get("guidance") == 0.0 and "fusion" not in over:
        over["fusion"] = False  # the baseline: nothing of the seen shell is written into the prior's output
    return over


@subcommand
def _generate(sub) -> None:  # noqa: ANN001
    p = sub.add_parser("generate", help="input (image, RGB-D, point map) → mesh whose seen side matches it")
    add_input_arguments(p)
    add_generation_arguments(p)
    p.add_argument("--out", required=True, help="mesh file; the format follows the extension (.glb .obj .ply .stl)")
    p.add_argument("--frame", choices=["camera", "canonical"], default="camera",
                   help="camera: the input camera's frame and scale (overlays the image); "
                        "canonical: the generator's cube")
    p.add_argument("--report", help="write parameters, timings and metrics to this JSON file")
    p.add_argument("--preview", help="write a preview PNG (input | output from the input view | two other views)")
    p.set_defaults(func=run_generate)


def run_generate(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from .geometry.extract import EXPORT_FORMATS
    from .pipeline import ConsistentPipeline

    if Path(args.out).suffix.lower() not in EXPORT_FORMATS:
        from .errors import InputError

        raise InputError(f"unknown mesh format for {args.out}; use one of {', '.join(EXPORT_FORMATS)}")
    pm = read_pointmap(args)
    pipe = ConsistentPipeline.from_pretrained(args.generator)
    res = pipe(pm, conf_threshold=args.conf_threshold, drop_percent=args.drop_percent, **generation_overrides(args))
    path = res.export(args.out, frame=args.frame)
    metrics = res.metrics() if pm.intrinsics is not None else {}
    print(f"wrote {path} ({len(res.faces)} faces, {args.frame} frame) in {res.timings['total']:.1f} s")
    if metrics:
        print(f"input view: depth error mean {metrics['depth_error_mean']:.4f} p90 {metrics['depth_error_p90']:.4f} "
              f"(x object size), normal error {metrics['normal_error_deg_mean']:.1f} deg, "
              f"silhouette IoU {metrics['silhouette_iou']:.3f}")
    if args.preview:
        from .preview import preview_panel, save_png

        v, f = res.mesh("camera")
        save_png(preview_panel(v, f, pm), args.preview)
    if args.report:
        from .io.atomic import atomic_write_text

        rep = {"input": args.input, "generator": pipe.generator.name, "metrics": metrics, **res.report()}
        atomic_write_text(args.report, json.dumps(rep, indent=2, default=float))
    return 0


@subcommand
def _demo(sub) -> None:  # noqa: ANN001
    p = sub.add_parser("demo", help="the whole pipeline on the bundled examples with the bundled mini prior")
    p.add_argument("--out", default="out/demo", help="output folder (default out/demo)")
    p.add_argument("--generator", default="mini")
    p.add_argument("--examples", nargs="*", help="which bundled examples (default all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--compare", action="store_true", help="also run unguided (the baseline) for comparison")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run_demo_command)


def run_demo_command(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(args.out, args.generator, args.examples, seed=args.seed, compare=args.compare, progress=not args.quiet)
    return 0


@subcommand
def _train(sub) -> None:  # noqa: ANN001
    from .train.main import add_train_arguments

    p = sub.add_parser("train", help="train the mini prior from procedural shapes (+ cow, fandisk, beetle)")
    add_train_arguments(p)
    p.set_defaults(func=run_train)


def run_train(args: argparse.Namespace) -> int:
    from .train.main import train_main

    return train_main(args)


@subcommand
def _eval(sub) -> None:  # noqa: ANN001
    p = sub.add_parser("eval", help="guided vs unguided over seeds on meshes unseen in training, plus ablations")
    p.add_argument("meshes", nargs="*", help="mesh files (default: spot, stanford-bunny, teapot, suzanne from "
                                             "../shared/data/meshes)")
    p.add_argument("--meshes-dir", default=None, help="folder of the default evaluation meshes")
    p.add_argument("--out", default="out/eval", help="output folder (report.json, report.md, PNG plots)")
    p.add_argument("--generator", default="mini")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--no-ablations", action="store_true")
    p.add_argument("--ablation-seeds", type=int, default=1)
    p.add_argument("--size", type=int, default=160, help="input view size in pixels")
    p.set_defaults(func=run_eval)


def run_eval(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .errors import InputError
    from .evaluate import EVAL_MESHES, evaluate

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
