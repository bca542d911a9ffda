"""Subcommands. Each is a thin adapter from arguments to a package function."""

from __future__ import annotations
