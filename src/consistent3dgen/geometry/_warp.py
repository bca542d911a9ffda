"""Warp (NVIDIA's kernel compiler) set up once, quietly, for the CPU kernels of the geometry modules."""

from __future__ import annotations

import threading

_LOCK = threading.Lock()


def init_warp():  # noqa: ANN201 - returns the warp module
    """Import and initialise Warp once (no start-up banner); raises ImportError when it is not installed."""
    with _LOCK:
        import warp as wp

        # newer Warp: log_level; older: quiet
        if hasattr(wp.config, "log_level"):
            wp.config.log_level = 40
        else:
            wp.config.quiet = True
        wp.init()
        return wp
