"""Command line: one small function per subcommand; the logic lives in the package."""

from __future__ import annotations

import argparse
import sys

from .errors import InputError, WeightsNotFoundError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="consistent3dgen",
        description="One image / RGB-D / point map of an object → a 3D mesh whose seen side matches the input.",
    )
    p.add_argument("--version", action="store_true", help="print the version and exit")
    sub = p.add_subparsers(dest="command")
    for register in _SUBCOMMANDS:
        register(sub)
    return p


_SUBCOMMANDS: list = []


def subcommand(fn):
    """Register ``fn(subparsers)`` that adds a subcommand and sets ``func``."""
    _SUBCOMMANDS.append(fn)
    return fn


def main(argv: list[str] | None = None) -> int:
    from . import commands  # noqa: F401  (registers the subcommands)

    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        from . import __version__

        print(__version__)
        return 0
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (InputError, WeightsNotFoundError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
