"""The package's one Warp (NVIDIA's kernel compiler) bootstrap: quiet initialisation, and the compiled CPU kernel
modules of the geometry code, each imported and loaded once, in one thread, under one lock.

Kernel modules (``KERNEL_MODULES``; ``geometry/warp_<name>.py``) hold module-level ``@wp.kernel`` definitions and
the host code that launches them. Only this module imports them, and only when a Warp path is actually taken, so
importing :mod:`~consistent3dgen.geometry.marching_cubes`, :mod:`~consistent3dgen.geometry.shell` or
:mod:`~consistent3dgen.geometry.render` does not import Warp. The geometry modules ask :func:`warp_available`
and take their NumPy path when it says no: Warp not installed, not initialising, or a kernel module that does not
compile or load here (the failure is remembered for the process).
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
import tempfile
import threading
from collections.abc import Iterator
from types import ModuleType

KERNEL_MODULES = ("marching_cubes", "shell", "render")

# Reentrant: the kernel modules call init_warp() at import time, and warp_kernels() imports them under the lock.
_LOCK = threading.RLock()
_WARP: list[ModuleType] = []  # the initialised warp module, once
_LOADED: dict[str, ModuleType] = {}  # kernel module name -> loaded module
_FAILED: dict[str, BaseException] = {}  # "" (Warp itself) or a kernel module name -> why it is not available

# Warp's native library prints this on every start without a CUDA driver; CPU-only is the normal case here.
_CUDA_DRIVER_WARNING = b"Could not find or load the NVIDIA CUDA driver"


def init_warp() -> ModuleType:
    """Import and initialise Warp once (no start-up banner, no CUDA-driver warning); returns the ``warp`` module.

    Raises ImportError when Warp is not installed, or whatever its initialisation raised.
    """
    with _LOCK:
        if _WARP:
            return _WARP[0]
        import warp as wp

        # newer Warp: log_level; older: quiet
        if hasattr(wp.config, "log_level"):
            wp.config.log_level = 40
        else:
            wp.config.quiet = True
        with _without_cuda_driver_warning():
            wp.init()
        _WARP.append(wp)
        return wp


def warp_kernels(name: str) -> ModuleType:
    """The kernel module ``geometry/warp_<name>.py``, imported and compiled/loaded for the CPU once per process
    (Warp caches the compiled code on disk: only the first process on a machine compiles, about 10 s for marching
    cubes). Loading happens here, in the calling thread, so that launches can later run on several threads and a
    compile failure shows up before any work. Raises whatever the import, initialisation or compile raised."""
    if name not in KERNEL_MODULES:
        raise ValueError(f"unknown Warp kernel module {name!r}; one of {', '.join(KERNEL_MODULES)}")
    with _LOCK:
        if name in _LOADED:
            return _LOADED[name]
        wp = init_warp()
        module = importlib.import_module(f"{__package__}.warp_{name}")
        wp.load_module(module, device="cpu")
        _LOADED[name] = module
        return module


def warp_available(kernels: str | None = None) -> bool:
    """Whether Warp imports and initialises here and, given ``kernels`` (one of ``KERNEL_MODULES``), whether that
    kernel module compiles and loads. Any failure means "use the NumPy path", and is remembered: later calls answer
    False at once. The first call with ``kernels`` may compile (see :func:`warp_kernels`)."""
    if kernels is not None and kernels not in KERNEL_MODULES:
        raise ValueError(f"unknown Warp kernel module {kernels!r}; one of {', '.join(KERNEL_MODULES)}")
    if "" in _FAILED or (kernels is not None and kernels in _FAILED):
        return False
    try:
        init_warp()
    except Exception as e:  # noqa: BLE001 - any import/initialisation failure means: no Warp path
        _FAILED[""] = e
        return False
    if kernels is None:
        return True
    try:
        warp_kernels(kernels)
    except Exception as e:  # noqa: BLE001 - any import/compile failure means: use the NumPy path
        _FAILED[kernels] = e
        return False
    return True


def mark_unavailable(kernels: str, error: BaseException) -> None:
    """Remember that ``kernels`` failed at run time: :func:`warp_available` answers False from now on."""
    _FAILED[kernels] = error


def warp_error(kernels: str | None = None) -> BaseException | None:
    """Why Warp (``None``) or a kernel module is not available, if a check or run failed; else None."""
    return _FAILED.get("") or (_FAILED.get(kernels) if kernels is not None else None)


def default_threads() -> int:
    """Threads for the Warp CPU launches: the cores this process may use (at least 1)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


@contextlib.contextmanager
def _without_cuda_driver_warning() -> Iterator[None]:
    """Capture file descriptor 2 (Warp's native library writes there directly, below ``sys.stderr``) for the
    duration, then write back everything except the CUDA-driver warning line. Output of other threads in that
    moment is delayed, not lost. Without a usable descriptor 2, nothing is captured."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (AttributeError, OSError, ValueError):
        yield
        return
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            with contextlib.suppress(AttributeError, OSError, ValueError):
                sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            kept = b"".join(line for line in captured.read().splitlines(True) if _CUDA_DRIVER_WARNING not in line)
            if kept:
                with contextlib.suppress(AttributeError, OSError, ValueError):
                    sys.stderr.write(kept.decode("utf-8", "replace"))
                    sys.stderr.flush()
