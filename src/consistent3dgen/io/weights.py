"""The package's one place for model weights: find them, read them, put them into a model.

* :func:`resolve_source`: a local file, a local folder or a Hugging Face hub id (``owner/name``, downloaded and
  cached by ``huggingface_hub``) → local paths of the files a model needs. With ``HF_HUB_OFFLINE`` set, or when
  one short connection probe per process (:func:`hub_reachable`) finds no hub, only the local cache is searched,
  silently and at once; a miss is one :class:`WeightsNotFoundError` line naming the repository and files, the
  cache searched, and how to provide them (the caller's local-folder option, or a download elsewhere).
* :func:`read_state_dict`: ``.safetensors`` through the ``safetensors`` library (tensors are views of a private
  memory map of the file: nothing is read before it is used, and the file is never written), anything else
  (``.pt``/``.pth``/``.ckpt``/``.bin``) through ``torch.load(weights_only=True)``, memory-mapped for the zip
  format. Corrupt files, non-checkpoints and pickles holding Python objects (which ``weights_only`` refuses to
  unpickle) are one :class:`InputError` line.
* :func:`load_into`: a model built on the ``meta`` device (no random init, no memory) gets the checkpoint tensors
  assigned, each cast to the dtype the model declares for it, with one-line errors for missing / unexpected keys
  and shape mismatches. Given a ``.safetensors`` path it reads one tensor at a time: a tensor whose dtype and
  device already match is used in place (zero copy), one that needs converting is read into fresh memory,
  converted and released, so the checkpoint is never held twice.
* :func:`parse_dtype`: the package's one table of dtype names.
"""

from __future__ import annotations

import os
import pickle
import re
import threading
import warnings
import zipfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import InputError, WeightsNotFoundError, one_line

DTYPES = {
    "fp32": torch.float32,
    "float32": torch.float32,
    "fp16": torch.float16,
    "float16": torch.float16,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
}
SAFETENSORS_SUFFIX = ".safetensors"
TORCH_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin")

# A file name, or alternatives of which the first one present is taken (e.g. ("model.safetensors", "model.pt")).
FileEntry = str | tuple[str, ...]


# --------------------------------------------------------------------------- dtypes


def parse_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    """'fp32'/'float32', 'fp16'/'float16', 'bf16'/'bfloat16' (any case), one of those torch dtypes, or None
    (= whatever the model declares) → torch dtype or None."""
    if dtype is None or isinstance(dtype, torch.dtype):
        if dtype not in (None, torch.float32, torch.float16, torch.bfloat16):
            raise InputError(f"unsupported dtype {dtype}; use fp32, fp16 or bf16")
        return dtype
    try:
        return DTYPES[str(dtype).lower()]
    except KeyError:
        raise InputError(f"unsupported dtype {dtype!r}; use fp32, fp16 or bf16") from None


# --------------------------------------------------------------------------- finding the files


def is_hub_id(text: str) -> bool:
    """``owner/name`` (exactly one slash, no leading ``.``, ``/`` or ``~``, no backslash)."""
    parts = text.split("/")
    return len(parts) == 2 and all(parts) and not text.startswith((".", "~")) and "\\" not in text


def local_or_hub_id(source: str | os.PathLike, what: str = "weights") -> Path | str:
    """An existing local file or folder → its Path; otherwise an ``owner/name`` text → the hub id itself.

    Anything else is a :class:`WeightsNotFoundError` naming ``source``.
    """
    path = Path(source)
    try:
        path = path.expanduser()
    except RuntimeError:  # "~user" of an unknown user
        pass
    if path.is_file() or path.is_dir():
        return path
    text = os.fspath(source)
    if not path.exists() and is_hub_id(text):
        return text
    raise WeightsNotFoundError(f"{what} not found: {text} is neither a file, a folder nor a hub id (owner/name)")


def hub_offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) is set: only the local hub cache is used."""
    from huggingface_hub import constants

    env = (os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or "").strip().upper()
    return bool(constants.HF_HUB_OFFLINE) or env in ("1", "ON", "YES", "TRUE")


# Seconds the one probe of the hub may take: DNS + TCP + TLS + one HEAD, about 4 round trips (well under a second
# on any working link). A machine without network fails it at once (no route, no DNS, a proxy or TLS
# interception refusing it) or after this long (packets dropped); then only the local cache is used, instead of
# huggingface_hub's retries with back-off (~25 s and a dozen log lines per file).
HUB_PROBE_TIMEOUT = 1.0
_probed: dict[str, bool] = {}  # endpoint -> reachable: one probe per endpoint and process


def _hub_endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT


def _hub_host() -> str:
    import urllib.parse

    return urllib.parse.urlsplit(_hub_endpoint()).hostname or _hub_endpoint()


def _answers(url: str, timeout: float) -> bool:
    """True when one HEAD request to ``url``, through huggingface_hub's own HTTP session (its proxies, TLS
    settings and headers), gets any HTTP answer within ``timeout`` seconds (the name lookup included: the request
    runs in a daemon thread that is abandoned when it takes longer)."""
    result: list[bool] = []

    def attempt() -> None:
        try:
            from huggingface_hub.utils import get_session

            get_session().head(url, timeout=timeout)
            result.append(True)
        except Exception:  # noqa: BLE001 - no route, no DNS, TLS or proxy failure, timeout: not reachable
            result.append(False)

    thread = threading.Thread(target=attempt, name="hub-probe", daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(result and result[0])


def hub_reachable() -> bool:
    """False when ``HF_HUB_OFFLINE`` is set or the hub (``huggingface_hub.constants.ENDPOINT``) gives no HTTP
    answer within :data:`HUB_PROBE_TIMEOUT` seconds.

    The probe runs once per process (per endpoint); a hub request that later fails for want of a connection marks
    the hub unreachable too (:func:`_mark_unreachable`), so no later file waits for it again.
    """
    if hub_offline():
        return False
    endpoint = _hub_endpoint()
    if endpoint not in _probed:
        _probed[endpoint] = _answers(endpoint + "/", HUB_PROBE_TIMEOUT)
    return _probed[endpoint]


def _mark_unreachable() -> None:
    _probed[_hub_endpoint()] = False


def _hub_cache_dir(cache_dir: str | os.PathLike | None) -> Path:
    from huggingface_hub import constants

    return Path(cache_dir if cache_dir is not None else constants.HF_HUB_CACHE).expanduser()


def _download_command(repo_id: str, subfolder: str | None) -> str:
    try:
        from huggingface_hub import __version__ as version

        modern = int(version.split(".")[0]) >= 1
    except (ImportError, ValueError):  # pragma: no cover
        modern = True
    cli = "hf download" if modern else "huggingface-cli download"
    return f"{cli} {repo_id}" + (f" --include '{subfolder}/*'" if subfolder else "")


@contextmanager
def _quiet_hub() -> Iterator[None]:
    """Silence huggingface_hub's own log lines and warnings (retries, cache notes) for one cache-only lookup:
    what is missing is reported once, in the caller's error line."""
    import logging

    hub_logger = logging.getLogger("huggingface_hub")
    level = hub_logger.level
    hub_logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        hub_logger.setLevel(level)


def _names(entry: FileEntry) -> tuple[str, ...]:
    return (entry,) if isinstance(entry, str) else tuple(entry)


def _first_local(folder: Path, entry: FileEntry) -> Path | None:
    return next((folder / n for n in _names(entry) if (folder / n).is_file()), None)


def resolve_source(
    source: str | os.PathLike,
    filenames: Iterable[FileEntry],
    *,
    optional: Iterable[FileEntry] = (),
    subfolder: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    revision: str | None = None,
    local_files_only: bool | None = None,
    what: str = "weights",
    hint: str | None = None,
) -> dict[FileEntry, Path]:
    """Local paths of the files a model needs, from a local file, a local folder or a hub id.

    ``filenames`` (required) and ``optional`` hold file names or tuples of alternatives (the first one present
    is taken); the result maps each entry, as given, to its path (optional entries only when found).

    * a local **file** stands for the single required entry (more required entries is an error); optional
      entries are looked up beside it;
    * a local **folder**: the files directly inside it, or inside ``<folder>/<subfolder>`` when that exists;
    * a **hub id** ``owner/name``: ``huggingface_hub.hf_hub_download`` of ``<subfolder>/<name>`` (cached).
      ``local_files_only=None`` means: only the local cache when ``HF_HUB_OFFLINE`` is set or the hub is not
      reachable (:func:`hub_reachable`: one short connection probe per process), so a machine without network
      gets its answer at once instead of after huggingface_hub's retries.

    ``what`` names the model in errors, e.g. ``"VGGT weights"``; ``hint`` says how to give a local copy instead
    (e.g. ``"--vggt-weights DIR"``); a miss on the hub is one :class:`WeightsNotFoundError` line naming the
    repository and files, the cache searched, and both ways to provide them.
    """
    required = list(filenames)
    extra = list(optional)
    located = local_or_hub_id(source, what)
    if isinstance(located, str):
        return _from_hub(located, required, extra, subfolder, cache_dir, revision, local_files_only, what, hint)
    out: dict[FileEntry, Path] = {}
    if located.is_file():
        if len(required) != 1:
            wanted = ", ".join(" or ".join(_names(e)) for e in required)
            raise WeightsNotFoundError(f"{what}: {located} is a file; give the folder holding {wanted}")
        out[required[0]] = located
        folder = located.parent
    else:
        folder = located / subfolder if subfolder and (located / subfolder).is_dir() else located
        missing = []
        for entry in required:
            found = _first_local(folder, entry)
            if found is None:
                missing.append(" or ".join(_names(entry)))
            else:
                out[entry] = found
        if missing:
            raise WeightsNotFoundError(f"{what} not found in folder {folder}: {', '.join(missing)}")
    for entry in extra:
        found = _first_local(folder, entry)
        if found is not None:
            out[entry] = found
    return out


def _from_hub(
    repo_id: str,
    required: list[FileEntry],
    optional: list[FileEntry],
    subfolder: str | None,
    cache_dir: str | os.PathLike | None,
    revision: str | None,
    local_files_only: bool | None,
    what: str,
    hint: str | None = None,
) -> dict[FileEntry, Path]:
    try:
        from huggingface_hub import hf_hub_download, try_to_load_from_cache
        from huggingface_hub.errors import LocalEntryNotFoundError
    except ImportError:  # pragma: no cover - a declared dependency
        raise WeightsNotFoundError(f"{what}: huggingface_hub is not installed; cannot fetch {repo_id}") from None
    if local_files_only is not None:
        cache_only = bool(local_files_only)
        why = "local_files_only=True" if cache_only else ""
    elif hub_offline():
        cache_only, why = True, "HF_HUB_OFFLINE is set"
    elif not hub_reachable():
        cache_only, why = True, f"the hub ({_hub_host()}) is not reachable (offline)"
    else:
        cache_only, why = False, ""
    prefix = f"{repo_id}/{subfolder}/" if subfolder else f"{repo_id}/"

    def cached(name: str) -> Path | None:
        # a pure look at the cache folder: hf_hub_download(local_files_only=True) may still reach for the network
        # (its user-agent detection fetches a registry from the endpoint), which costs seconds when offline
        try:
            with _quiet_hub():
                found = try_to_load_from_cache(
                    repo_id,
                    f"{subfolder}/{name}" if subfolder else name,
                    cache_dir=cache_dir,
                    revision=revision,
                    repo_type="model",
                )
        except Exception:  # noqa: BLE001 - e.g. a repo id huggingface_hub does not accept: not cached either
            return None
        return Path(found) if isinstance(found, str) else None

    def fetch(entry: FileEntry) -> tuple[Path | None, list[str]]:
        nonlocal cache_only, why
        errors = []
        for name in _names(entry):
            if cache_only:
                path = cached(name)
                if path is not None:
                    return path, errors
                errors.append(f"{name}: not in the cache")
                continue
            try:
                path = hf_hub_download(
                    repo_id=repo_id,
                    filename=name,
                    subfolder=subfolder or None,
                    repo_type="model",
                    revision=revision,
                    cache_dir=cache_dir,
                )
                return Path(path), errors
            except Exception as e:  # noqa: BLE001 - missing file, gated repo, bad id, no connection: one message
                errors.append(f"{name}: {type(e).__name__}")
                if isinstance(e, LocalEntryNotFoundError) and local_files_only is None:
                    # the hub could not be reached after all (and the file is not cached): do not wait for it
                    # again in this process
                    cache_only, why = True, "the hub could not be reached"
                    _mark_unreachable()
        return None, errors

    out: dict[FileEntry, Path] = {}
    missing: list[str] = []
    online_errors: list[str] = []
    for entry in required:
        path, errors = fetch(entry)
        if path is not None:
            out[entry] = path
            continue
        missing.append(" or ".join(_names(entry)))
        if not cache_only:  # the hub answered, and the file is not there (or not for us): report it now
            online_errors = errors
            break
    if missing:
        files = prefix + ", ".join(missing)
        give = f"give a local copy ({hint})" if hint else "pass a local file or folder"
        if online_errors:
            raise WeightsNotFoundError(
                f"{what} not found on the hub: {files} ({', '.join(online_errors)}); check the name and your "
                f"access to {repo_id}, or {give}"
            )
        raise WeightsNotFoundError(
            f"{what} not found: {files} {'is' if len(missing) == 1 else 'are'} not in the local hub cache "
            f"{_hub_cache_dir(cache_dir)} and {why}; "
            f"{give}, or run `{_download_command(repo_id, subfolder)}` on a machine with network and bring the "
            "files here"
        )
    for entry in optional:
        path, _ = fetch(entry)
        if path is not None:
            out[entry] = path
    return out


# --------------------------------------------------------------------------- reading


def _check_file(path: str | os.PathLike) -> Path:
    p = Path(path)
    if not p.is_file():
        raise WeightsNotFoundError(f"checkpoint not found: {p}")
    return p


def _safetensors_error(p: Path, e: Exception) -> InputError:
    return InputError(f"cannot read checkpoint {p}: corrupt or not a safetensors file ({one_line(e, 200)})")


def _read_safetensors(p: Path, device: str | torch.device) -> dict[str, torch.Tensor]:
    from safetensors import safe_open

    try:
        with safe_open(str(p), framework="pt", device=str(torch.device(device))) as f:
            return {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open is not a Mapping
    except Exception as e:  # noqa: BLE001 - SafetensorError, OSError, ...: one line
        raise _safetensors_error(p, e) from None


_GLOBAL = re.compile(r"Unsupported global: GLOBAL ([\w.]+)")


_TORCH_MAGIC = 0x1950A86A20F9469CFC6C  # the first thing a legacy-format torch.save pickles


def _pickle_kind(p: Path) -> tuple[int | None, bool]:
    """(pickle protocol or None when no pickle starts there, written by torch.save) of a checkpoint file; reads
    a few header bytes only (``pickletools`` parses, it never unpickles)."""
    import io
    import pickletools

    try:
        if zipfile.is_zipfile(p):
            with zipfile.ZipFile(p) as z:
                name = next((n for n in z.namelist() if n.endswith("data.pkl")), None)
                if name is None:
                    return None, False
                with z.open(name) as f:
                    head = f.read(2)
            return (head[1] if len(head) == 2 and head[0] == 0x80 else None), True
        with open(p, "rb") as f:
            head = f.read(64)
    except (OSError, zipfile.BadZipFile):
        return None, False
    if len(head) < 2 or head[0] != 0x80:  # the PROTO opcode that starts every pickle of protocol >= 2
        return None, False
    by_torch = False
    try:
        for op, arg, _ in pickletools.genops(io.BytesIO(head)):
            if op.name not in ("PROTO", "FRAME"):
                by_torch = arg == _TORCH_MAGIC
                break
    except Exception:  # noqa: BLE001 - a header cut short or not a pickle after all
        pass
    return head[1], by_torch


def _torch_load_error(p: Path, e: Exception) -> InputError:
    text = str(e)
    if isinstance(e, pickle.UnpicklingError) and "Weights only load failed" in text:
        found = _GLOBAL.search(text)
        if found:
            what = f"a Python object ({found.group(1)})"
        elif "Unsupported operand" in text:
            protocol, by_torch = _pickle_kind(p)
            if protocol is None:
                return InputError(f"cannot read checkpoint {p}: corrupt or not a PyTorch checkpoint")
            if by_torch and protocol >= 4:  # torch's weights-only unpickler knows no FRAME opcode (protocol 4+)
                return InputError(
                    f"cannot read checkpoint {p}: it was saved with pickle protocol {protocol}, which "
                    "torch.load(weights_only=True) does not read; re-save it with torch.save's default protocol "
                    "or as .safetensors"
                )
            what = "a plain Python pickle, not a torch.save'd state dict"
        else:
            what = "Python objects besides tensors"
        return InputError(
            f"checkpoint {p} holds {what}; it is not unpickled because that could run code: "
            "re-save it as a state dict of tensors (torch.save(model.state_dict())) or as .safetensors"
        )
    if isinstance(e, EOFError):
        return InputError(f"cannot read checkpoint {p}: the file is empty or truncated")
    first = re.split(r"(?<=\.)\s", one_line(text, 1000), maxsplit=1)[0]  # torch's first sentence only
    return InputError(
        f"cannot read checkpoint {p}: corrupt or not a PyTorch checkpoint ({type(e).__name__}: {one_line(first, 160)})"
    )


def _read_torch(p: Path, device: str | torch.device) -> dict[str, Any]:
    zipped = zipfile.is_zipfile(p)  # the legacy (pre-1.6) format cannot be memory-mapped
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            obj = torch.load(p, map_location=torch.device(device), weights_only=True, mmap=zipped)
    except Exception as e:  # noqa: BLE001 - every unreadable file is one line, never torch's multi-line advice
        raise _torch_load_error(p, e) from None
    if not isinstance(obj, Mapping):
        raise InputError(f"checkpoint {p} does not hold a state dict (it holds a {type(obj).__name__})")
    return dict(obj)


def read_state_dict(path: str | os.PathLike, device: str | torch.device = "cpu") -> dict[str, Any]:
    """A checkpoint file → ``{name: tensor}`` on ``device``.

    ``.safetensors``: the ``safetensors`` library; on the CPU every tensor is a view of a private (copy-on-write)
    memory map, so reading costs no memory until a tensor is used and in-place changes never reach the file.
    Other suffixes: ``torch.load(weights_only=True, mmap=True)`` (no mmap for the legacy format); such a
    checkpoint may nest dicts of tensors (e.g. Direct3D-S2's ``{"vae": {...}, "dit": {...}}``): the caller picks
    the part. Errors are one line: :class:`WeightsNotFoundError` for a missing file, :class:`InputError` for a
    corrupt file, a non-checkpoint, or a pickle holding Python objects (never unpickled).
    """
    p = _check_file(path)
    if p.suffix.lower() == SAFETENSORS_SUFFIX:
        return _read_safetensors(p, device)
    return _read_torch(p, device)


Getter = Callable[[str, torch.dtype, torch.device], torch.Tensor]


@contextmanager
def _tensor_source(state: Mapping[str, Any] | str | os.PathLike) -> Iterator[tuple[list[str], Callable, Getter]]:
    """(keys, peek(key) -> tensor as stored, get(key, dtype, device) -> converted tensor)."""
    if isinstance(state, Mapping):
        yield list(state.keys()), state.__getitem__, lambda k, dt, dev: state[k].to(device=dev, dtype=dt)
        return
    p = _check_file(state)
    if p.suffix.lower() != SAFETENSORS_SUFFIX:
        sd = _read_torch(p, "cpu")
        yield list(sd.keys()), sd.__getitem__, lambda k, dt, dev: sd[k].to(device=dev, dtype=dt)
        return
    from safetensors import safe_open

    with ExitStack() as stack:
        try:
            mapped = stack.enter_context(safe_open(str(p), framework="pt", device="cpu"))
            keys = list(mapped.keys())  # noqa: SIM118 - safe_open is not a Mapping
        except Exception as e:  # noqa: BLE001
            raise _safetensors_error(p, e) from None
        try:
            # Tensors that need another dtype/device are read into fresh memory instead of through the map and
            # converted: their mapped pages are never touched, so they do not stay resident next to the copy.
            copying = stack.enter_context(safe_open(str(p), framework="pt", device="cpu", backend="pread"))
        except TypeError:  # safetensors without the pread backend: convert from the map
            copying = mapped

        def get(key: str, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
            view = mapped.get_tensor(key)  # a lazy view: no page is read yet
            if view.dtype == dtype and device.type == "cpu":
                return view
            return copying.get_tensor(key).to(device=device, dtype=dtype)

        yield keys, mapped.get_tensor, get


# --------------------------------------------------------------------------- loading into a model


def load_into(
    module: nn.Module,
    state_dict: Mapping[str, Any] | str | os.PathLike,
    *,
    strict: bool = True,
    dtype: str | torch.dtype | None = None,
    device: str | torch.device | None = None,
    ignore: Iterable[str] = (),
    name: str = "model",
) -> nn.Module:
    """Assign checkpoint tensors to ``module`` (typically built under ``torch.device("meta")``) and return it.

    ``state_dict``: a mapping of tensors, or a checkpoint path (read as :func:`read_state_dict` does; a
    ``.safetensors`` file one tensor at a time, see the module docstring). Each tensor is cast to the dtype the
    module declares for it (build or ``.to()`` the meta model in the layout wanted, e.g. a bf16 trunk with fp32
    heads), or to ``dtype`` for every floating-point tensor when given, and moved to ``device`` (default: the
    module's device, CPU for meta tensors). Tensors are assigned, not copied into: the module's parameters and
    buffers are replaced (their ``requires_grad`` is kept). Checkpoint keys starting with a prefix in ``ignore``
    are skipped. ``strict``: missing and unexpected keys are an error (otherwise unexpected keys are dropped and
    missing ones keep their current value). Every mismatch is one :class:`InputError` line starting with
    ``name``. The module is returned in eval mode.
    """
    override = parse_dtype(dtype)
    target_device = None if device is None else torch.device(device)
    skip = tuple(ignore)
    expected = module.state_dict(keep_vars=True)
    with _tensor_source(state_dict) as (keys, peek, get):
        keys = [k for k in keys if not (skip and k.startswith(skip))]
        present = set(keys)
        missing = [k for k in expected if k not in present]
        unexpected = [k for k in keys if k not in expected]
        if strict and (missing or unexpected):
            raise InputError(
                f"{name}: checkpoint does not match the model: {len(missing)} missing keys {missing[:3]}, "
                f"{len(unexpected)} unexpected keys {unexpected[:3]}"
            )
        out: dict[str, torch.Tensor] = {}
        for key in keys:
            ref = expected.get(key)
            if ref is None:
                continue
            t = peek(key)
            if not isinstance(t, torch.Tensor):
                raise InputError(f"{name}: checkpoint entry {key} is not a tensor (a {type(t).__name__})")
            if t.shape != ref.shape:
                raise InputError(
                    f"{name}: {key} has shape {tuple(t.shape)} in the checkpoint, the model expects {tuple(ref.shape)}"
                )
            del t
            want = override if override is not None and ref.is_floating_point() else ref.dtype
            dev = target_device or (torch.device("cpu") if ref.is_meta else ref.device)
            out[key] = get(key, want, dev)
        module.load_state_dict(out, strict=False, assign=True)
    left = [k for k, t in [*module.named_parameters(), *module.named_buffers()] if t.is_meta]
    if left:
        raise InputError(f"{name}: {len(left)} tensors are not in the checkpoint and stay uninitialised: {left[:3]}")
    return module.eval()
