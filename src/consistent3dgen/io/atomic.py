"""Atomic writes, output sets and output-path checks.

* :func:`atomic_path`: write to a temporary file beside the target, then rename it onto the target, so no
  partial file is ever left under the target's name.
* :func:`output_set`: the outputs of one command appear together. Inside ``with output_set():`` every
  :func:`atomic_path` (so every writer of this package: meshes, ``.npz``, PNG, JSON) *stages* its temporary file
  instead of renaming it; when the block ends they are all renamed at once (SIGINT/SIGTERM held off for those few
  renames). If anything in the block fails, every staged file is removed (and any folder the set created, if
  left empty): none of the outputs appear; if a rename itself fails, the ones already renamed are removed
  again. A write that fails raises :class:`OutputError` (a ``UserError``: one line, exit 1) naming the target.
* :func:`check_output_file` / :func:`check_output_folder`: the CLI checks every output path *before* the work
  starts (the path is not a folder, its folder exists or can be created and is writable, the extension is one
  that is written), so a bad ``--out`` is a one-line error at once, not a traceback after the whole run.

Temporary files are named ``.NAME.c3dg-tmp-<pid>-<host>-<random>.EXT`` (``<host>``: 6 hex digits of a hash of
the host name). A process killed without a chance to clean up (SIGKILL, power loss) leaves its temporary file;
the first write of a later process into that folder removes such files when their process is gone (the same host,
and the pid is not alive — or is our own pid but the file is older than this process). Files that do not
match the pattern, or that come from another host (a shared network folder), are never touched.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import os
import re
import signal
import socket
import stat
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from ..errors import InputError, UserError

TMP_TAG = "c3dg-tmp"
_HOST = hashlib.sha1(socket.gethostname().encode("utf-8", "replace")).hexdigest()[:6]
_TMP_RE = re.compile(rf"^\..*\.{TMP_TAG}-(?P<pid>\d+)-(?P<host>[0-9a-f]{{6}})-[a-z0-9_]{{8}}")
_STARTED = time.time()  # files with our pid but older than this are from an earlier process with that pid
_cleaned: set[str] = set()  # folders already swept by this process
_cleaned_lock = threading.Lock()
_active_set: contextvars.ContextVar[OutputSet | None] = contextvars.ContextVar("c3dg_output_set", default=None)


class OutputError(UserError, OSError):
    """An output could not be written (disk full, permissions changed during the run...); one line, exit 1."""


# --------------------------------------------------------------------------------------------- stale temps


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: alive, someone else's
        return True
    return True


def is_stale_temp(path: str | os.PathLike) -> bool:
    """True for a temporary file of ours (by name) whose writing process is gone, on this host."""
    p = Path(path)
    m = _TMP_RE.match(p.name)
    if m is None or m["host"] != _HOST or os.name != "posix":
        return False
    pid = int(m["pid"])
    if pid <= 0:
        return False
    try:
        st = p.lstat()
    except OSError:
        return False
    if not stat.S_ISREG(st.st_mode):  # never a folder or a link
        return False
    if pid == os.getpid():
        return st.st_mtime < _STARTED - 1.0
    return not _pid_alive(pid)


def remove_stale_temps(folder: str | os.PathLike) -> list[Path]:
    """Remove the stale temporary files of ours in ``folder`` (see the module doc); returns what was removed."""
    removed = []
    try:
        names = [e.name for e in os.scandir(folder) if e.name.startswith(".") and TMP_TAG in e.name]
    except OSError:
        return removed
    for name in names:
        path = Path(folder) / name
        if is_stale_temp(path):
            with contextlib.suppress(OSError):
                path.unlink()
                removed.append(path)
    return removed


def _sweep_once(folder: Path) -> None:
    key = os.path.abspath(folder)
    with _cleaned_lock:
        if key in _cleaned:
            return
        _cleaned.add(key)
    remove_stale_temps(folder)


# --------------------------------------------------------------------------------------------- atomic writes


def _missing_parents(folder: Path) -> list[Path]:
    out = []
    p = folder
    while not p.exists() and p != p.parent:
        out.append(p)
        p = p.parent
    return out


def _new_temp(target: Path, suffix: str | None) -> str:
    prefix = f".{target.name[:120]}.{TMP_TAG}-{os.getpid()}-{_HOST}-"
    fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=suffix or target.suffix, dir=target.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; give outputs the usual permissions
    return tmp


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[str]:
    """Yield a temporary path in the target's folder; rename it onto ``path`` only if the block succeeds.

    Inside :func:`output_set` the rename waits for the end of the set (the file is staged).
    """
    target = Path(path)
    outputs = _active_set.get()
    created = _missing_parents(target.parent)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        _sweep_once(target.parent)
        tmp = _new_temp(target, suffix)
    except OSError as e:
        if outputs is not None:
            outputs._created.extend(created)
            raise OutputError(f"cannot write {target}: {e.strerror or e}") from e
        raise
    if outputs is not None:
        outputs._created.extend(created)
    try:
        yield tmp
        if outputs is not None:
            outputs._stage(tmp, target)
        else:
            os.replace(tmp, target)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if outputs is not None and isinstance(e, OSError) and not isinstance(e, OutputError):
            raise OutputError(f"cannot write {target}: {e.strerror or e}") from e
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_npz(path: str | os.PathLike, **arrays: np.ndarray) -> None:
    with atomic_path(path, suffix=".npz") as tmp:
        np.savez_compressed(tmp, **arrays)


# --------------------------------------------------------------------------------------------- output sets


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """SIGINT/SIGTERM wait while the block runs (a handful of renames, never interrupted half-way); a signal
    that came meanwhile is raised again right after, to the handler that was in place."""
    if threading.current_thread() is not threading.main_thread():
        yield  # handlers can only be changed in the main thread (and only it runs them)
        return
    pending: list[int] = []
    sigs = [signal.SIGINT] + ([signal.SIGTERM] if hasattr(signal, "SIGTERM") else [])
    old = {s: signal.getsignal(s) for s in sigs}
    old = {s: h for s, h in old.items() if h is not None}  # None: set outside Python, left alone
    for s in old:
        signal.signal(s, lambda signum, frame: pending.append(signum))
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
        for s in dict.fromkeys(pending):
            signal.raise_signal(s)


class OutputSet:
    """The staged outputs of one :func:`output_set` block: ``targets`` in the order they were written."""

    def __init__(self) -> None:
        self._staged: dict[Path, str] = {}  # target -> staged temp file
        self._created: list[Path] = []  # folders this set created (removed on failure if left empty)

    @property
    def targets(self) -> list[Path]:
        return list(self._staged)

    def _stage(self, tmp: str, target: Path) -> None:
        old = self._staged.pop(target, None)
        if old is not None and old != tmp:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(old)
        self._staged[target] = tmp

    def _commit(self) -> list[Path]:
        done: list[Path] = []
        current = None
        with _signals_held():
            try:
                for current in self._staged:
                    if current.is_dir() and not current.is_symlink():
                        raise IsADirectoryError(21, "Is a directory", str(current))
                for current, tmp in self._staged.items():
                    os.replace(tmp, current)
                    done.append(current)
            except OSError as e:
                for target in done:  # all or none: take back what this set had already renamed
                    with contextlib.suppress(OSError):
                        target.unlink()
                names = ", ".join(str(t) for t in self._staged)
                raise OutputError(f"cannot write {current}: {e.strerror or e}; none of the outputs were written "
                                  f"({names})") from e
            self._staged.clear()
        return done

    def _discard(self) -> None:
        with _signals_held():  # a second Ctrl-C / SIGTERM does not stop the clean-up half-way
            for tmp in self._staged.values():
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
            self._staged.clear()
            for folder in sorted(set(self._created), key=lambda p: len(p.parts), reverse=True):
                with contextlib.suppress(OSError):
                    folder.rmdir()  # only when empty


@contextlib.contextmanager
def output_set() -> Iterator[OutputSet]:
    """Every atomic write in the block is staged; all are renamed together at the end, or none on failure.

    Nested sets join the outermost one. Staged files live beside their targets (same file system: the
    renames are atomic); an interrupted block removes them (``except BaseException``).
    """
    outer = _active_set.get()
    if outer is not None:
        yield outer
        return
    outputs = OutputSet()
    token = _active_set.set(outputs)
    try:
        yield outputs
    except BaseException:
        _active_set.reset(token)
        outputs._discard()
        raise
    _active_set.reset(token)
    try:
        outputs._commit()
    except BaseException:
        outputs._discard()
        raise


# --------------------------------------------------------------------------------------------- path checks


def _writable_folder(folder: Path, what: str) -> None:
    """``folder`` exists and is writable, or can be created (its nearest existing ancestor is a writable folder)."""
    p = folder
    while not p.exists() and p != p.parent:
        if p.is_symlink():  # a dangling link
            raise InputError(f"{what}: cannot create folder {folder}: {p} is a broken link")
        p = p.parent
    if not p.is_dir():
        if p == folder:
            raise InputError(f"{what}: cannot write into {folder}: it is a file, not a folder")
        raise InputError(f"{what}: cannot create folder {folder}: {p} is a file, not a folder")
    if not os.access(p, os.W_OK | os.X_OK):
        verb = "cannot write into" if p == folder else f"cannot create folder {folder} in"
        raise InputError(f"{what}: {verb} {p}: permission denied")


def check_output_file(path: str | os.PathLike, extensions: Iterable[str], what: str = "--out") -> Path:
    """One output file: a known extension, not an existing folder, its folder writable or creatable.

    Raises :class:`InputError` naming ``what`` (the option); checks only, creates nothing.
    """
    target = Path(path)
    if target.is_dir():
        raise InputError(f"{what}: {target} is a folder, not a file")
    exts = tuple(e.lower() for e in extensions)
    if target.suffix.lower() not in exts:
        kind = repr(target.suffix) if target.suffix else "(no extension)"
        raise InputError(f"{what}: unknown file type {kind} for {target}; use {' '.join(exts)}")
    if target.exists() and not target.is_file():
        raise InputError(f"{what}: {target} exists and is not a regular file")
    _writable_folder(target.parent, what)
    return target


def check_output_folder(path: str | os.PathLike, names: Iterable[str] = (), what: str = "--out") -> Path:
    """An output folder: a folder or nothing yet, writable or creatable; ``names`` inside are not folders."""
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise InputError(f"{what}: {folder} is a file, not a folder")
    _writable_folder(folder, what)
    for name in names:
        p = folder / name
        if p.is_dir():
            raise InputError(f"{what}: {p} is a folder, not a file")
    return folder
