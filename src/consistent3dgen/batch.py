"""``consistent3dgen batch``: many inputs → one mesh and one report each, plus a manifest; resumable and kill-safe.

**Inputs.** Each input is one *item* with a NAME (its outputs are ``NAME.FORMAT`` and ``NAME.json``):

* a depth map ``NAME_depth.png`` (16-bit, mm) / ``.npy`` (m) / ``.exr`` (or ``NAME.npy``...), with the files beside
  it that exist: ``NAME_intrinsics.txt`` (or ``.npy``), ``NAME_rgba.png`` (or ``NAME_rgb.png`` / ``.jpg``) and
  ``NAME_mask.png``: the layout of the bundled examples. A depth map without an intrinsics file takes
  ``--intrinsics`` / ``--fov`` (one camera for all such maps);
* a point map ``NAME.npz``; an image ``NAME.png|.jpg|...`` (VGGT), with ``NAME_mask.png`` beside it when present;
* a folder: its ``*_depth.png|.npy|.exr`` and ``*.npz`` files, sorted;
* ``--list FILE``: one item a line, either a path (as above) or a JSON object ``{"input": PATH, "name": ...,
  "intrinsics": PATH | "fx,fy,cx,cy" | [fx, fy, cx, cy] | 3x3, "fov": DEG, "image": PATH, "mask": PATH}``; the keys
  given win over the files beside; relative paths are relative to the list file; blank and ``#`` lines skipped.

Every input is checked before the first item runs (the file exists and is readable, its kind is known from its
extension and header, a depth map has a camera, the names are unique), after the output folder.

**Outputs** in ``--out DIR``: per item the mesh (with vertex colours from the input image, as ``generate`` writes
it: by default when the input has an image and the format holds colours, not .stl; ``--colour none|vertex``) and
the report (what ``generate --report`` writes, plus ``colour``), written by the
driver as one output set (:func:`consistent3dgen.io.atomic.output_set`: both or neither) and synced, then one line
appended to ``DIR/manifest.jsonl`` with flush + fsync (one ``write`` of a whole line): ``name``, ``input``,
``status`` (``ok`` / ``failed``), ``outputs`` (file names in DIR), ``faces``, ``metrics``, ``error`` (the one-line
error of a failure), ``timings``, ``finished``, ``worker``. The manifest is the record of what is done, by item
NAME: a rerun skips the items whose last line is ``ok`` with this run's outputs present, retries the ``failed``
ones only with ``--retry-failed``, and runs the rest (a changed option does not make an item new: use another
DIR). One batch at a time writes into a folder (the manifest is locked).

**A SIGKILL at any moment** loses nothing that has a manifest line and leaves no half-written file: an item killed
before its line is simply run again; a torn last line (killed inside the append) is cut off by the next run; the
temporary files of a killed writer are swept by the next run (io/atomic's stale sweep); worker processes whose
driver is gone exit on their own (they write nothing into DIR).

**Execution**: in this process (``--workers 1``, the default), in N local worker processes (``--workers N``,
spawned, each loading the pipeline once), or as Ray actors (``--ray [ADDRESS]``: one per GPU, or per CPU slot
without GPUs; the inputs travel as bytes, so the nodes need the package but not the files). The driver alone
writes DIR, as results arrive.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import socket
import sys
import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .errors import InputError, UserError, WeightsNotFoundError, one_line

MANIFEST = "manifest.jsonl"
MESH_FORMATS = ("glb", "obj", "ply", "stl")  # io.meshes.EXPORT_FORMATS without the dot (no numpy at parse time)
DEPTH_SUFFIXES = (".png", ".npy", ".exr")
INTRINSICS_BESIDE = ("_intrinsics.txt", "_intrinsics.npy")
IMAGE_BESIDE = ("_rgba.png", "_rgb.png", "_rgb.jpg")
MASK_BESIDE = ("_mask.png",)
LIST_KEYS = ("input", "name", "intrinsics", "fov", "image", "mask")
_MAX_LISTED_PROBLEMS = 3


# ------------------------------------------------------------------------------------------------ items


@dataclass(frozen=True)
class BatchItem:
    """One input of a batch: where to read it, its companions, and the output name."""

    name: str
    input: str
    kind: str  # the reconstructor: depth | pointmap | vggt
    intrinsics: str | list | None = None  # depth maps: a file, "fx,fy,cx,cy", or numbers
    fov: float | None = None
    image: str | None = None
    mask: str | None = None
    drop_percent: float = 0.0  # GenerationOptions.drop_percent for this kind (cli.surface_drop_percent)

    def outputs(self, fmt: str) -> dict[str, str]:
        """The file names this item writes in the output folder."""
        return {"mesh": f"{self.name}.{fmt}", "report": f"{self.name}.json"}

    def files(self) -> dict[str, str]:
        """The files the item reads, by field (the intrinsics only when it is a file)."""
        out = {"input": self.input, "image": self.image, "mask": self.mask}
        if isinstance(self.intrinsics, str) and "," not in self.intrinsics:
            out["intrinsics"] = self.intrinsics
        return {k: v for k, v in out.items() if v}


def item_name(path: str | os.PathLike) -> str:
    """The output name of an input file: its stem without a trailing ``_depth`` (``spot_depth.png`` → ``spot``)."""
    stem = Path(path).stem
    return stem[: -len("_depth")] if stem.endswith("_depth") and len(stem) > len("_depth") else stem


def _beside(path: Path, endings: Sequence[str]) -> str | None:
    """The first ``NAME<ending>`` file beside ``path`` (NAME as :func:`item_name`), or None."""
    for end in endings:
        p = path.with_name(item_name(path) + end)
        if p.is_file():
            return str(p)
    return None


def _readable(path: str | os.PathLike, what: str) -> Path:
    p = Path(path)
    if not p.exists():
        raise InputError(f"{what} not found: {p}")
    if not p.is_file():
        raise InputError(f"{what} {p} is not a file")
    if not os.access(p, os.R_OK):
        raise InputError(f"{what} {p}: permission denied")
    return p


def _check_kind(p: Path, kind: str) -> None:
    """The file's header agrees with its kind (read from the header only: nothing is decoded)."""
    suffix = p.suffix.lower()
    if kind == "pointmap":
        import zipfile

        if not zipfile.is_zipfile(p):
            raise InputError(f"{p} is not a point-map .npz (not a zip archive)")
    elif kind == "depth" and suffix == ".npy":
        with open(p, "rb") as f:
            if f.read(6) != b"\x93NUMPY":
                raise InputError(f"{p} is not a .npy file (no NumPy header)")
    elif kind == "depth" and suffix == ".exr":
        from .io.pointmap_io import exr_supported

        with open(p, "rb") as f:
            if f.read(4) != b"\x76\x2f\x31\x01":
                raise InputError(f"{p} is not an OpenEXR file")
        if not exr_supported():
            raise InputError(f"{p}: reading .exr depth needs the OpenEXR package (pip install OpenEXR)")
    elif suffix in (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"):
        from .io.images import image_mode

        if image_mode(p) is None:
            raise InputError(f"{p} is not a readable image")


def _entry_item(entry: dict, where: str, reconstructor: str, intrinsics: Any, fov: float | None) -> BatchItem:
    """One list entry / input path → a checked :class:`BatchItem` (``where`` names it in errors)."""
    from .reconstruct.base import infer_reconstructor

    p = _readable(entry["input"], "input")
    kind = reconstructor if reconstructor != "auto" else infer_reconstructor(p)
    if kind == "vggt" and item_name(p) != p.stem and p.suffix.lower() == ".png" and reconstructor == "auto":
        raise InputError(f"{p} is named as a depth map but is not a 16-bit PNG (depth in millimetres)")
    _check_kind(p, kind)
    name = entry.get("name") or item_name(p)
    if not isinstance(name, str) or not name.strip() or any(c in name for c in "/\\\0") or name in (".", ".."):
        raise InputError(f"{where}: name {name!r} is not a plain file name")
    given = {k: entry[k] for k in ("intrinsics", "fov", "image", "mask") if entry.get(k) is not None}
    image = given.get("image", _beside(p, IMAGE_BESIDE) if kind == "depth" else None)
    mask = given.get("mask", _beside(p, MASK_BESIDE) if kind in ("depth", "vggt") else None)
    intr, field_of_view = None, None
    if kind == "depth":
        if "intrinsics" in given or "fov" in given:
            intr, field_of_view = given.get("intrinsics"), given.get("fov")
        else:
            intr = _beside(p, INTRINSICS_BESIDE)
            if intr is None:
                intr, field_of_view = intrinsics, fov
        if intr is None and field_of_view is None:
            raise InputError(f"{p}: a depth map needs a camera: put {item_name(p)}_intrinsics.txt beside it, give "
                             f"--intrinsics or --fov, or \"intrinsics\" / \"fov\" in a --list line")
    elif given.keys() & {"intrinsics", "fov", "image"}:
        raise InputError(f"{where}: {', '.join(sorted(given.keys() & {'intrinsics', 'fov', 'image'}))} apply to "
                         f"depth maps, and {p} is read as {kind}")
    if kind == "pointmap" and "mask" in given:
        raise InputError(f"{where}: a point map .npz has its own mask")
    for what, f in (("image", image), ("mask", mask)):
        if f is not None:
            _readable(f, what)
    if isinstance(intr, str) and "," not in intr:
        _readable(intr, "intrinsics file")
    if field_of_view is not None and not isinstance(field_of_view, (int, float)):
        raise InputError(f"{where}: fov must be a number of degrees, got {field_of_view!r}")
    return BatchItem(name, str(p), kind, intr, field_of_view, image, mask)


def _list_entries(list_file: str | os.PathLike) -> list[tuple[dict, str]]:
    """The entries of a ``--list`` file: ``({"input": ..., ...}, "FILE:LINE")``, paths resolved against its folder."""
    lf = _readable(list_file, "--list file")
    try:
        lines = lf.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"--list {lf}: cannot read it: {one_line(e)}") from None
    base = lf.parent
    entries = []
    for number, raw in enumerate(lines, 1):
        line = raw.strip()
        where = f"{lf}:{number}"
        if not line or line.startswith("#"):
            continue
        if line.startswith("{"):
            try:
                entry = json.loads(line)
            except json.JSONDecodeError as e:
                raise InputError(f"{where}: not a JSON object: {e.msg}") from None
            if not isinstance(entry, dict) or not isinstance(entry.get("input"), str):
                raise InputError(f"{where}: a JSON line needs \"input\": a path")
            unknown = sorted(set(entry) - set(LIST_KEYS))
            if unknown:
                raise InputError(f"{where}: unknown key(s) {', '.join(unknown)}; use {', '.join(LIST_KEYS)}")
        else:
            entry = {"input": line}
        for key in ("input", "image", "mask", "intrinsics"):
            value = entry.get(key)
            if isinstance(value, str) and not (key == "intrinsics" and "," in value):
                entry[key] = str(base / value)  # an absolute value stays as it is
        entries.append((entry, where))
    return entries


def plan_items(inputs: Sequence[str | os.PathLike] = (), list_file: str | os.PathLike | None = None, *,
               reconstructor: str = "auto", intrinsics: Any = None, fov: float | None = None) -> list[BatchItem]:
    """The items of a batch, every one checked (see the module doc); an :class:`InputError` names the problems."""
    entries: list[tuple[dict, str]] = []
    for given in inputs:
        p = Path(given)
        if p.is_dir():
            found = sorted(q for q in p.iterdir() if q.is_file() and (
                q.suffix.lower() == ".npz" or (q.suffix.lower() in DEPTH_SUFFIXES and q.stem.endswith("_depth"))))
            if not found:
                raise InputError(f"input folder {p} holds no *_depth.png|.npy|.exr or *.npz files")
            entries += [({"input": str(q)}, str(q)) for q in found]
        else:
            entries.append(({"input": str(p)}, str(p)))
    if list_file is not None:
        entries += _list_entries(list_file)
    if not entries:
        raise InputError("no inputs: give INPUT files or folders, or --list FILE")
    items, problems = [], []
    for entry, where in entries:
        try:
            items.append(_entry_item(entry, where, reconstructor, intrinsics, fov))
        except InputError as e:
            problems.append(str(e))
    by_name: dict[str, list[str]] = {}
    for it in items:
        by_name.setdefault(it.name, []).append(it.input)
    for name, paths in by_name.items():
        if len(paths) > 1:
            problems.append(f"{len(paths)} inputs give the output name {name!r} ({', '.join(paths)}); rename one "
                            f"or give \"name\" in a --list line")
    if problems:
        more = len(problems) - _MAX_LISTED_PROBLEMS
        text = "; ".join(problems[:_MAX_LISTED_PROBLEMS]) + (f"; and {more} more" if more > 0 else "")
        raise InputError(text if len(problems) == 1 else f"{len(problems)} inputs cannot be used: {text}")
    return items


# ------------------------------------------------------------------------------------------------ manifest


def _fsync_path(path: Path, directory: bool = False) -> None:
    with contextlib.suppress(OSError):  # best effort (some file systems refuse to sync a folder)
        fd = os.open(path, os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0))
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class Manifest:
    """``DIR/manifest.jsonl``, opened for appending and locked for one batch; a torn last line is cut off."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.records: list[dict] = []
        self.repaired_bytes = 0  # the torn tail cut off when it was opened
        self.skipped_lines = 0  # complete lines that are not records (ignored)
        self.created = not self.path.exists()
        self._fd: int | None = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o666)
        try:
            self._lock()
            self._load()
        except BaseException:
            self.close()
            raise
        if self.created:
            _fsync_path(self.path.parent, directory=True)

    def _lock(self) -> None:
        try:
            import fcntl
        except ImportError:  # not POSIX: no lock
            return
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise InputError(f"--out {self.path.parent}: another batch is writing into this folder (its "
                             f"{MANIFEST} is locked)") from None

    def _load(self) -> None:
        chunks = []
        os.lseek(self._fd, 0, os.SEEK_SET)  # (appends still go to the end: O_APPEND)
        while chunk := os.read(self._fd, 1 << 20):
            chunks.append(chunk)
        data = b"".join(chunks)
        end = data.rfind(b"\n") + 1  # everything after the last newline is a line a kill cut short
        if end < len(data):
            os.ftruncate(self._fd, end)
            os.fsync(self._fd)
            self.repaired_bytes = len(data) - end
        for line in data[:end].splitlines():
            try:
                rec = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError):
                rec = None
            if isinstance(rec, dict) and isinstance(rec.get("name"), str) and rec.get("status") in ("ok", "failed"):
                self.records.append(rec)
            elif line.strip():
                self.skipped_lines += 1

    def last(self) -> dict[str, dict]:
        """The last record of each item name."""
        return {rec["name"]: rec for rec in self.records}

    def append(self, record: dict) -> None:
        """One whole line, written in one call, then fsync: on disk before the next item is reported."""
        if self._fd is None:
            raise ValueError("the manifest is closed")
        data = (json.dumps(record, default=_json_default, separators=(",", ":")) + "\n").encode("utf-8")
        size = os.fstat(self._fd).st_size
        try:
            written = os.write(self._fd, data)
            while written < len(data):  # a short write (rare: a signal, a full disk) continues the same line
                written += os.write(self._fd, data[written:])
            os.fsync(self._fd)
        except OSError as e:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, size)  # no part of this line stays (the batch stops here)
            raise UserError(f"cannot append to {self.path}: {e.strerror or e}") from e
        self.records.append(record)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # releases the lock
            self._fd = None

    def discard_if_new(self) -> None:
        """Remove the manifest again when this batch created it and wrote nothing (it failed before any item)."""
        if self.created and not self.records:
            with contextlib.suppress(OSError):
                self.path.unlink()
        self.close()


def _json_default(value: Any) -> Any:
    try:
        return float(value)
    except (TypeError, ValueError):
        return str(value)


# ------------------------------------------------------------------------------------------------ workers


@dataclass
class BatchConfig:
    """What every worker needs: the generator, how to read an input, the options and the output frame."""

    generator: str = "mini"
    generator_kwargs: dict = field(default_factory=dict)  # from_pretrained keywords: dtype, low_memory, weights
    reader_args: dict = field(default_factory=dict)  # the command line's input arguments (cli.read_views)
    options: Any = None  # GenerationOptions (validated; progress off)
    frame: str = "camera"
    device: str | None = None  # a device name (cli --device); None: from_pretrained's default
    threads: int | None = None  # torch CPU threads of a worker process
    colour: str | None = None  # none | vertex; None: vertex colours when the input has an image and fmt holds them
    fmt: str = "glb"  # the mesh format (run_batch sets it: the default colour depends on it)


def item_arguments(reader_args: dict, item: BatchItem) -> argparse.Namespace:
    """The arguments :func:`consistent3dgen.cli.read_views` reads one item with: the batch's input arguments,
    with the item's input, kind and depth-map files."""
    ns = argparse.Namespace(**reader_args)
    ns.input, ns.reconstructor = [item.input], item.kind
    ns.intrinsics, ns.fov, ns.image = item.intrinsics, item.fov, item.image
    ns.mask = [item.mask] if item.mask else None
    return ns


def _worker_device(device: str | None, index: int | None) -> str | None:
    """Local worker ``index`` on a machine with several GPUs takes ``cuda:index % count`` for ``cuda`` / ``auto``."""
    if device not in ("cuda", "auto") or index is None:
        return device
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return f"cuda:{index % count}" if count > 1 else device


class ItemWorker:
    """Loads the pipeline once; :meth:`run` turns one item into a result (the mesh arrays, the report) or a failure."""

    def __init__(self, config: BatchConfig, index: int | None = None) -> None:
        from .pipeline import Pipeline

        if config.threads:
            import torch

            torch.set_num_threads(config.threads)
        self.config = config
        kwargs = dict(config.generator_kwargs)
        self.device = _worker_device(config.device, index)
        if self.device:
            kwargs["device"] = self.device
        self.pipe = Pipeline.from_pretrained(config.generator, **kwargs)
        self.pipe.set_progress_bar_config(disable=True)

    def run(self, item: BatchItem) -> dict:
        from .cli import read_views
        from .colour import can_colour_views

        start = time.perf_counter()
        worker = {"host": socket.gethostname(), "pid": os.getpid(), "device": str(self.pipe.device)}
        try:
            (pointmap,) = read_views(item_arguments(self.config.reader_args, item))  # one view per item
            read = time.perf_counter() - start
            res = self.pipe(pointmap, self.config.options.with_changes(drop_percent=item.drop_percent))
            metrics = res.metrics() if pointmap.intrinsics is not None else {}
            vertices, faces = res.arrays(self.config.frame)
            colour = self.config.colour or res.default_colour(item.outputs(self.config.fmt)["mesh"])
            if colour != "none" and not can_colour_views(pointmap):  # --colour vertex asked for, as generate says
                raise InputError(f"--colour {colour}: the input has no colour image (or no intrinsics)")
            # vertex colours do not depend on the frame: one per vertex, computed in the camera frame
            colours = res.colourize() if colour != "none" else None
            report = {"input": item.input, "generator": self.pipe.generator.name, "metrics": metrics,
                      **res.report(), "colour": colour}
        except Exception as e:  # noqa: BLE001 - one item's failure is recorded; the batch goes on
            error = one_line(e) if isinstance(e, UserError) else one_line(f"{type(e).__name__}: {e}")
            return {"status": "failed", "error": error or type(e).__name__, "error_type": type(e).__name__,
                    "timings": {"attempt": time.perf_counter() - start}, "worker": worker}
        timings = {"read": read, **res.timings, "attempt": time.perf_counter() - start}
        return {"status": "ok", "vertices": vertices, "faces": faces, "colours": colours, "report": report,
                "metrics": metrics, "timings": timings, "worker": worker}


def _failure(error: str, error_type: str = "WorkerDied") -> dict:
    return {"status": "failed", "error": error, "error_type": error_type, "timings": {}, "worker": None}


def _init_error(kind: str, message: str) -> Exception:
    """A worker's pipeline-loading error, raised in the driver as the class the CLI maps to its exit code."""
    if kind == "WeightsNotFoundError" or kind == "FileNotFoundError":
        return WeightsNotFoundError(message)
    if kind == "InputError":
        return InputError(message)
    return UserError(f"a worker could not load the pipeline: {kind}: {message}")


def _exit_with_parent(parent_pid: int) -> None:
    """A worker whose driver is gone (SIGKILL) exits: it holds nothing in the output folder."""
    import threading

    def watch() -> None:
        while True:
            time.sleep(0.5)
            if os.getppid() != parent_pid:
                os._exit(1)

    threading.Thread(target=watch, name="c3dg-batch-parent", daemon=True).start()


def _worker_main(conn: Any, config: BatchConfig, parent_pid: int, index: int) -> None:
    """A local worker process: load the pipeline, then run the items the driver sends until it sends None."""
    import signal

    _exit_with_parent(parent_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the driver's; it terminates the workers
    try:
        worker = ItemWorker(config, index)
    except Exception as e:  # noqa: BLE001 - reported to the driver, which raises it as one line
        conn.send(("init_error", type(e).__name__, one_line(e)))
        return
    conn.send(("ready", os.getpid(), None))
    while True:
        try:
            item = conn.recv()
        except EOFError:
            return
        if item is None:
            return
        conn.send(worker.run(item))


class _Slot:
    """One local worker process and its pipe."""

    def __init__(self, ctx: Any, config: BatchConfig, index: int) -> None:
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker_main, args=(child, config, os.getpid(), index),
                                name=f"c3dg-batch-worker-{index}", daemon=True)
        self.proc.start()
        child.close()

    def wait_ready(self) -> None:
        try:
            msg = self.conn.recv()
        except EOFError:
            self.proc.join(5)
            raise UserError(f"a worker process died while loading the pipeline (exit code {self.proc.exitcode})"
                            ) from None
        if msg[0] == "init_error":
            raise _init_error(msg[1], msg[2])

    def stop(self) -> None:
        with contextlib.suppress(OSError, BrokenPipeError):
            self.conn.send(None)
        self.proc.join(2)
        if self.proc.is_alive():
            self.proc.terminate()
            self.proc.join(5)
        self.conn.close()


# The runners below yield None once their workers are loaded, then ``(item, result)`` as results arrive.


def _local_results(items: Sequence[BatchItem], config: BatchConfig) -> Iterator[tuple[BatchItem, dict] | None]:
    worker = ItemWorker(config)
    yield None
    for item in items:
        yield item, worker.run(item)


def _process_results(items: Sequence[BatchItem], config: BatchConfig, workers: int
                     ) -> Iterator[tuple[BatchItem, dict] | None]:
    """Items on ``workers`` spawned processes, one item per process at a time; a process that dies fails its item
    and is replaced."""
    import multiprocessing
    from multiprocessing.connection import wait

    ctx = multiprocessing.get_context("spawn")  # no fork of a process that may hold torch threads
    config = dataclasses.replace(config, threads=config.threads or max(1, (os.cpu_count() or 1) // workers))
    slots: list[_Slot] = []
    try:
        for i in range(min(workers, len(items))):
            slots.append(_Slot(ctx, config, i))
        for s in slots:
            s.wait_ready()
        yield None
        queue = deque(items)
        busy: dict[_Slot, BatchItem] = {}

        def dispatch(slot: _Slot) -> None:
            if queue:
                busy[slot] = queue.popleft()
                slot.conn.send(busy[slot])

        for s in slots:
            dispatch(s)
        while busy:
            ready = set(wait([s.conn for s in busy] + [s.proc.sentinel for s in busy]))
            for s in [s for s in busy if s.conn in ready or s.proc.sentinel in ready]:
                item = busy.pop(s)
                try:
                    result = s.conn.recv() if s.conn.poll() else None
                except (EOFError, OSError):
                    result = None
                if result is None:  # the process died (killed, out of memory, a crash in native code)
                    s.proc.join(5)
                    result = _failure(f"the worker process died (exit code {s.proc.exitcode}) while running it")
                    s.conn.close()
                    index = slots.index(s)
                    s = slots[index] = _Slot(ctx, config, index)
                    s.wait_ready()
                yield item, result
                dispatch(s)
    finally:
        for s in slots:
            s.stop()


class RayItemWorker:
    """A Ray actor holding one :class:`ItemWorker`; the item's files come as bytes (the nodes need not share DIR)."""

    def __init__(self, config: BatchConfig) -> None:
        self.error: tuple[str, str] | None = None  # (a GPU actor sees its one GPU: device auto takes it)
        try:
            self.worker = ItemWorker(config)
        except Exception as e:  # noqa: BLE001 - returned by ready(), raised by the driver as one line
            self.error = (type(e).__name__, one_line(e))

    def ready(self) -> tuple:
        return ("init_error", *self.error) if self.error else ("ready", os.getpid(), None)

    def run(self, item: BatchItem, payload: dict[str, tuple[str, bytes]]) -> dict:
        import tempfile

        with tempfile.TemporaryDirectory(prefix="c3dg-batch-") as tmp:
            local = {}
            for key, (name, data) in payload.items():
                p = Path(tmp) / key / name  # the original file name (its extension tells the kind)
                p.parent.mkdir()
                p.write_bytes(data)
                local[key] = str(p)
            result = self.worker.run(dataclasses.replace(item, **local))
        if result.get("error"):
            for key, p in local.items():  # the error names the driver's files, not the node's copies
                result["error"] = result["error"].replace(p, getattr(item, key))
        return result


def _payload(item: BatchItem) -> dict[str, tuple[str, bytes]]:
    return {key: (Path(p).name, Path(p).read_bytes()) for key, p in item.files().items()}


def _ray_results(items: Sequence[BatchItem], config: BatchConfig, address: str | None, workers: int | None
                 ) -> Iterator[tuple[BatchItem, dict] | None]:
    """Items as calls on Ray actors, one actor per GPU (``num_gpus=1``) or per CPU slot; a dead actor fails its
    item and is replaced. ``address`` None / ``local``: a local Ray instance with ``workers`` CPUs."""
    import logging

    import ray
    from ray.exceptions import RayActorError, RayTaskError

    local = address in (None, "local")
    init = dict(include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    try:
        if local:  # a new local instance, never a cluster found on this machine
            ray.init(address="local", num_cpus=workers or os.cpu_count() or 1, **init)
        else:
            ray.init(address=address, **init)
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise InputError(f"--ray {address or 'local'}: cannot start or reach Ray: {one_line(e, 300)}") from None
    try:
        resources = ray.cluster_resources()
        gpus, cpus = int(resources.get("GPU", 0)), max(1, int(resources.get("CPU", 1)))
        # never more actors than the cluster can place (one waiting for a GPU would never be ready)
        n = max(1, min(workers or gpus or cpus, gpus or cpus, len(items)))
        if gpus:
            actor_cls = ray.remote(num_gpus=1, num_cpus=1)(RayItemWorker)
        else:  # CPU slots: locally the CPUs shared out; on a cluster one CPU each (it fits on any node)
            per = max(1, cpus // n) if local else 1
            actor_cls = ray.remote(num_cpus=per)(RayItemWorker)
            config = dataclasses.replace(config, threads=config.threads or per)
        actors = [actor_cls.remote(config) for _ in range(n)]
        for msg in ray.get([a.ready.remote() for a in actors]):
            if msg[0] == "init_error":
                raise _init_error(msg[1], msg[2])
        yield None
        queue = deque(items)
        pending: dict[Any, tuple[Any, BatchItem]] = {}

        def dispatch(actor: Any) -> None:
            if queue:
                item = queue.popleft()
                pending[actor.run.remote(item, _payload(item))] = (actor, item)

        for a in actors:
            dispatch(a)
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            actor, item = pending.pop(done[0])
            try:
                result = ray.get(done[0])
            except RayActorError as e:  # the actor's process or node is gone
                result = _failure(one_line(f"the Ray worker died while running it: {e}", 300))
                actor = actor_cls.remote(config)
                msg = ray.get(actor.ready.remote())
                if msg[0] == "init_error":
                    raise _init_error(msg[1], msg[2]) from None
            except RayTaskError as e:
                cause = getattr(e, "cause", None) or e
                result = _failure(one_line(f"{type(cause).__name__}: {cause}", 300), type(cause).__name__)
            yield item, result
            dispatch(actor)
    finally:
        if local:
            ray.shutdown()


# ------------------------------------------------------------------------------------------------ driver


@dataclass
class BatchSummary:
    """How a batch ended: item names by outcome (``skipped``: done by an earlier run)."""

    ok: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    not_retried: list[str] = field(default_factory=list)  # failed earlier, left without --retry-failed
    manifest: Path | None = None


def _write_outputs(out: Path, item: BatchItem, result: dict, fmt: str) -> dict[str, str]:
    """The item's mesh and report as one output set, synced to disk before its manifest line."""
    from .io.atomic import atomic_write_text, output_set
    from .io.meshes import export_mesh

    names = item.outputs(fmt)
    report = {**result["report"], "input": item.input, "name": item.name}
    with output_set():
        export_mesh(result["vertices"], result["faces"], out / names["mesh"], vertex_colors=result.get("colours"))
        atomic_write_text(out / names["report"], json.dumps(report, indent=2, default=_json_default))
    for name in names.values():
        _fsync_path(out / name)
    _fsync_path(out, directory=True)
    return names


def _record(item: BatchItem, result: dict, outputs: dict[str, str]) -> dict:
    rec = {"name": item.name, "input": item.input, "status": result["status"], "outputs": outputs,
           "faces": len(result["faces"]) if result["status"] == "ok" else None,
           "metrics": result.get("metrics") or {}, "error": result.get("error"),
           "timings": result.get("timings") or {},
           "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"), "worker": result.get("worker")}
    if result["status"] == "failed":
        rec["error_type"] = result.get("error_type")
    return rec


def _is_done(rec: dict | None, item: BatchItem, out: Path, fmt: str) -> bool:
    """The item's last record is ``ok`` for this run's outputs, and they are there."""
    return (rec is not None and rec["status"] == "ok" and rec.get("outputs") == item.outputs(fmt)
            and all((out / n).is_file() for n in item.outputs(fmt).values()))


def run_batch(items: Sequence[BatchItem], out: str | os.PathLike, config: BatchConfig, *, fmt: str = "glb",
              workers: int | None = None, retry_failed: bool = False, ray_address: str | None = None,
              use_ray: bool = False, progress: bool = True) -> BatchSummary:
    """Run the items not done yet (see the module doc) and return what happened; writes only into ``out``."""
    from tqdm.auto import tqdm

    from .io.atomic import remove_stale_temps

    out = Path(out)
    config = dataclasses.replace(config, fmt=fmt)  # the workers' default colour follows the format written
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    try:
        manifest = Manifest(out / MANIFEST)
    except BaseException:
        if created:
            with contextlib.suppress(OSError):
                out.rmdir()
        raise
    summary = BatchSummary(manifest=manifest.path)
    try:
        remove_stale_temps(out)  # what a killed run left (io/atomic sweeps too, on the first write)
        if manifest.repaired_bytes:
            print(f"note: cut off a torn last line ({manifest.repaired_bytes} bytes) of {manifest.path} left by a "
                  f"killed run", file=sys.stderr)
        if manifest.skipped_lines:
            print(f"note: ignored {manifest.skipped_lines} line(s) of {manifest.path} that are not records",
                  file=sys.stderr)
        last = manifest.last()
        todo = []
        for item in items:
            rec = last.get(item.name)
            if _is_done(rec, item, out, fmt):
                summary.skipped.append(item.name)
            elif rec is not None and rec["status"] == "failed" and not retry_failed:
                summary.not_retried.append(item.name)
            else:
                todo.append(item)
        retry = "; --retry-failed retries them" if summary.not_retried else ""
        print(f"batch: {len(items)} item(s) in {out}: {len(summary.skipped)} done earlier, "
              f"{len(summary.not_retried)} failed earlier (skipped{retry}), {len(todo)} to run")
        if not todo:
            return summary
        if use_ray:
            results = _ray_results(todo, config, ray_address, workers)
        elif (workers or 1) > 1:
            results = _process_results(todo, config, workers or 1)
        else:
            results = _local_results(todo, config)
        try:
            next(results)  # the workers load the pipeline: their errors come here, before any item
        except BaseException:
            results.close()
            raise
        with contextlib.closing(results), tqdm(total=len(todo), desc="batch", unit="item", disable=not progress,
                                               file=sys.stderr) as bar:
            for item, result in results:  # type: ignore[misc] - (the None came first)
                outputs: dict[str, str] = {}
                if result["status"] == "ok":
                    try:
                        outputs = _write_outputs(out, item, result, fmt)
                    except Exception as e:  # noqa: BLE001 - e.g. the disk is full: this item failed
                        error = one_line(e) if isinstance(e, UserError) else one_line(f"{type(e).__name__}: {e}")
                        result = {**result, "status": "failed", "error": error, "error_type": type(e).__name__}
                manifest.append(_record(item, result, outputs))
                if result["status"] == "ok":
                    summary.ok.append(item.name)
                    line = (f"ok {item.name}: {out / outputs['mesh']} ({len(result['faces'])} faces, "
                            f"{result['timings'].get('attempt', 0.0):.1f} s)")
                else:
                    summary.failed.append(item.name)
                    line = f"failed {item.name}: {result['error']}"
                bar.set_postfix(ok=len(summary.ok), failed=len(summary.failed), refresh=False)
                bar.update(1)
                tqdm.write(line, file=sys.stdout)
    except BaseException:
        manifest.discard_if_new()
        if created:
            with contextlib.suppress(OSError):
                out.rmdir()  # only when it is empty: the batch failed before any item
        raise
    finally:
        manifest.close()  # (releases the lock)
    return summary


# ------------------------------------------------------------------------------------------------ command line


def _gpu_count() -> int:
    """CUDA devices here (at least 1: the count of local workers by default)."""
    import torch

    return max(1, torch.cuda.device_count() if torch.cuda.is_available() else 0)


def run_batch_command(args: argparse.Namespace) -> int:
    """``consistent3dgen batch`` (see the module doc): checks everything before any work, then :func:`run_batch`."""
    from . import cli
    from .io.atomic import check_output_folder

    out = check_output_folder(args.out, [MANIFEST])  # the output folder first
    if args.workers is not None and args.workers < 1:
        raise InputError(f"--workers must be at least 1, got {args.workers}")
    if getattr(args, "image", None) or getattr(args, "mask", None):
        raise InputError("batch: --image and --mask name one file; put NAME_rgba.png / NAME_mask.png beside each "
                         "depth map, or give \"image\" / \"mask\" in a --list line")
    colour = getattr(args, "colour", None)
    if colour is not None:
        from .colour import check_colour_mode

        check_colour_mode(colour, f"mesh.{args.format}", "--colour")  # STL holds no colours: before any work
    use_ray = args.ray is not None
    if use_ray:
        if args.ray != "local" and os.path.exists(args.ray):
            raise InputError(f"--ray took {args.ray!r} as the cluster address; put --ray after the inputs or write "
                             f"--ray local")
        try:
            import ray  # noqa: F401
        except ImportError:
            raise InputError("--ray needs the ray package: pip install \"consistent3dgen[ray]\"") from None
    from .options import GenerationOptions

    base = GenerationOptions(conf_threshold=args.conf_threshold).with_changes(
        **{**cli.generation_overrides(args), "progress": False})  # every option checked before any input is read
    device = getattr(args, "device", None)
    workers = args.workers
    if not use_ray and device not in (None, "auto", "cpu"):
        cli.device_settings(args)  # CUDA / MPS asked for and missing: one line, before any input is read
    if not use_ray and workers is None:
        workers = _gpu_count() if device in ("auto", "cuda") else 1  # one worker per GPU; on the CPU one
    items = plan_items(args.input, args.list_file, reconstructor=args.reconstructor, intrinsics=args.intrinsics,
                       fov=args.fov)
    reader_args = {k: v for k, v in vars(args).items() if not callable(v)}
    checked = []
    for item in items:
        drop = cli.surface_drop_percent(item_arguments(reader_args, item))  # --conf-percentile for this kind
        base.with_changes(drop_percent=drop)  # checked for every item before the first runs
        checked.append(dataclasses.replace(item, drop_percent=drop))
    if colour == "vertex":  # a depth map without an image beside it cannot be coloured: said before any work
        bare = [it.input for it in checked if it.kind == "depth" and not it.image]
        if bare:
            raise InputError(f"--colour vertex: {len(bare)} depth map(s) have no image ({', '.join(bare[:3])}"
                             f"{', ...' if len(bare) > 3 else ''}); put NAME_rgba.png beside them or use --colour "
                             f"none")
    check_output_folder(out, [n for it in checked for n in it.outputs(args.format).values()])
    kwargs = {k: getattr(args, k) for k in ("dtype", "low_memory") if hasattr(args, k)}
    config = BatchConfig(generator=args.generator, reader_args=reader_args, options=base, frame=args.frame,
                         generator_kwargs={**kwargs, **cli.generator_weights(args)}, device=device, colour=colour)
    summary = run_batch(checked, out, config, fmt=args.format, workers=workers, retry_failed=args.retry_failed,
                        ray_address=None if args.ray in (None, "local") else args.ray, use_ray=use_ray,
                        progress=not args.quiet)
    failed = summary.failed + summary.not_retried
    print(f"batch: {len(summary.ok) + len(summary.skipped)} of {len(checked)} done ({len(summary.ok)} now), "
          f"{len(failed)} failed; manifest {summary.manifest}")
    if failed:
        raise UserError(f"{len(failed)} of {len(checked)} item(s) failed ({', '.join(failed[:5])}"
                        f"{', ...' if len(failed) > 5 else ''}); the errors are in {summary.manifest}; rerun with "
                        f"--retry-failed to retry them")
    return 0
