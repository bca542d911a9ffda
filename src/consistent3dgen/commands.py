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
    p = sub.add_parser("foreground", help="point map → seen mesh → thin-shell SDF; writes them and checks the shell")
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
