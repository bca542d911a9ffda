"""Devices and dtypes of a run: which device (``auto``: CUDA, else MPS, else CPU), autocast, where each stage's models
sit in low-memory mode, and each stage's time and peak memory for the report.

Reproducibility: every random draw of a run comes from one CPU ``torch.Generator`` and is moved to the models'
device afterwards (:func:`consistent3dgen.sampling.noise.draw_noise`), so a seed gives the same noise on any device
and the CPU results are those of a CPU-only run.

Peak memory per stage (:class:`StageMeter`), with its ``kind`` named in the report:

* ``cuda_max_allocated``: ``torch.cuda.max_memory_allocated`` of the stage's device, reset when the stage starts
  (so it includes the weights resident on the GPU then);
* ``cpu_rss_hwm_delta``: how much the stage raised the process's resident-set high-water mark (``ru_maxrss``):
  0 when the stage stayed below a peak the process had reached before, so it is a lower bound of the stage's own
  peak above what was resident when it started;
* ``None`` elsewhere (MPS and other devices: no peak counter).
"""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, nullcontext
from typing import TYPE_CHECKING, Any

from .errors import InputError

if TYPE_CHECKING:
    import torch
    from torch import nn

DEVICE_NAMES = "auto, cpu, cuda, cuda:N or mps"
DTYPE_CHOICES = ("auto", "fp32", "fp16", "bf16")
_DEVICE_RE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


def check_device_name(name: str) -> str:
    """``name`` when it is a device the command line accepts (syntax only: imports no torch), else an InputError."""
    text = str(name).strip().lower()
    if not _DEVICE_RE.match(text):
        raise InputError(f"unknown device {name!r}; use {DEVICE_NAMES}")
    return text


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``auto`` (or None) → CUDA when present, else MPS when present, else the CPU; ``cpu``, ``cuda[:N]``, ``mps``
    checked to exist (one InputError line otherwise). A ``torch.device`` of another type is taken as it is."""
    import torch

    if isinstance(device, torch.device) and device.type not in ("cuda", "mps", "cpu"):
        return device  # e.g. a test's stand-in device
    name = "auto" if device is None else check_device_name(str(device))
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    dev = torch.device(name)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"device {name!r}: CUDA is not available here (this torch build or machine has no "
                             f"usable GPU); use --device cpu or auto")
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise InputError(f"device {name!r}: there {'is' if count == 1 else 'are'} {count} CUDA device"
                             f"{'' if count == 1 else 's'} (cuda:0 to cuda:{count - 1})")
    if dev.type == "mps" and not _mps_available():
        raise InputError(f"device {name!r}: MPS is not available here; use --device cpu or auto")
    return dev


def _mps_available() -> bool:
    import torch

    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    """``auto``/None → None (what the generator's weights declare); fp32/fp16/bf16 through the one dtype table,
    :func:`consistent3dgen.io.weights.parse_dtype`."""
    if dtype is None or (isinstance(dtype, str) and dtype.strip().lower() == "auto"):
        return None
    from .io.weights import parse_dtype

    return parse_dtype(dtype)


def autocast(device: torch.device, dtype: torch.dtype | None):  # noqa: ANN201 - a context manager
    """``torch.autocast`` to ``dtype`` (fp16/bf16) on ``device`` where torch has it, else a no-op context."""
    import torch

    if dtype is None or dtype == torch.float32 or not torch.amp.is_autocast_available(device.type):
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def module_device(module: nn.Module) -> torch.device:
    """The device a module's parameters are on (where its inputs go)."""
    return next(module.parameters()).device


def module_dtypes(modules: Iterable[nn.Module]) -> set[torch.dtype]:
    """The floating-point dtypes of the modules' parameters."""
    return {p.dtype for m in modules for p in m.parameters() if p.is_floating_point()}


def move_modules(modules: Iterable[nn.Module], device: torch.device | str) -> None:
    for m in modules:
        m.to(device)


def empty_cache(device: torch.device) -> None:
    """Give freed cached blocks of ``device`` back to the driver (CUDA, MPS); nothing elsewhere."""
    import torch

    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "mps" and hasattr(torch, "mps"):
        torch.mps.empty_cache()


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (so a stage's time and peak are its own)."""
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps" and hasattr(torch, "mps"):
        torch.mps.synchronize()


def rss_high_water_bytes() -> int | None:
    """The process's resident-set high-water mark (``ru_maxrss``), or None where there is no ``resource``."""
    try:
        import resource
    except ImportError:  # not on POSIX
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)  # bytes on macOS, KiB on Linux


class StageMeter:
    """Runs a pipeline's model stages: each one timed, its peak memory taken (see the module docstring), under
    autocast when asked, and, in low-memory mode, with only that stage's models on the device (the others on the
    CPU). ``records`` maps a stage name to ``{"seconds", "memory": {"kind", "peak_bytes"}}``."""

    def __init__(self, device: torch.device, *, low_memory: bool = False, autocast_dtype: torch.dtype | None = None):
        self.device = device
        self.offload = low_memory and device.type != "cpu"
        self.autocast_dtype = autocast_dtype
        self.records: dict[str, dict[str, Any]] = {}

    @contextmanager
    def stage(self, name: str, modules: Iterable[nn.Module] = ()) -> Iterator[None]:
        modules = list(modules)
        if self.offload:
            move_modules(modules, self.device)
        try:
            with self._measured(name), autocast(self.device, self.autocast_dtype):
                yield
        finally:
            if self.offload:
                move_modules(modules, "cpu")
                empty_cache(self.device)

    @contextmanager
    def _measured(self, name: str) -> Iterator[None]:
        import torch

        dev = self.device
        synchronize(dev)
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        rss = rss_high_water_bytes() if dev.type == "cpu" else None
        start = time.perf_counter()
        yield
        synchronize(dev)
        seconds = time.perf_counter() - start
        if dev.type == "cuda":
            memory = {"kind": "cuda_max_allocated", "peak_bytes": int(torch.cuda.max_memory_allocated(dev))}
        elif rss is not None:
            after = rss_high_water_bytes()
            memory = {"kind": "cpu_rss_hwm_delta", "peak_bytes": None if after is None else after - rss}
        else:
            memory = {"kind": None, "peak_bytes": None}
        self.records[name] = {"seconds": seconds, "memory": memory}
