"""The package's one place for model weights: find them, read them, put them into a model.

* :func:`resolve_source`: a local file, a local folder or a Hugging Face hub id (``owner/name``, downloaded and
  cached by ``huggingface_hub``) → local paths of the files a model needs. With ``HF_HUB_OFFLINE`` set, or once
  the hub cannot be reached, only the local cache is searched; a miss is one :class:`WeightsNotFoundError` line
  naming what was tried.
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
import warnings
import zipfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import InputError, WeightsNotFoundError

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


def _one_line(text: Any, limit: int = 200) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


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
) -> dict[FileEntry, Path]:
    """Local paths of the files a model needs, from a local file, a local folder or a hub id.

    ``filenames`` (required) and ``optional`` hold file names or tuples of alternatives (the first one present
    is taken); the result maps each entry, as given, to its path (optional entries only when found).

    * a local **file** stands for the single required entry (more required entries is an error); optional
      entries are looked up beside it;
    * a local **folder**: the files directly inside it, or inside ``<folder>/<subfolder>`` when that exists;
    * a **hub id** ``owner/name``: ``huggingface_hub.hf_hub_download`` of ``<subfolder>/<name>`` (cached).
      ``local_files_only=None`` means: only the local cache when ``HF_HUB_OFFLINE`` is set, and from the first
      file the hub could not be reached for on (then ``huggingface_hub`` falls back to its cache by itself).

    ``what`` names the model in errors, e.g. ``"VGGT weights"``.
    """
    required = list(filenames)
    extra = list(optional)
    located = local_or_hub_id(source, what)
    if isinstance(located, str):
        return _from_hub(located, required, extra, subfolder, cache_dir, revision, local_files_only, what)
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
) -> dict[FileEntry, Path]:
    try:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import LocalEntryNotFoundError
    except ImportError:  # pragma: no cover - a declared dependency
        raise WeightsNotFoundError(f"{what}: huggingface_hub is not installed; cannot fetch {repo_id}") from None
    offline_env = hub_offline()
    cache_only = offline_env if local_files_only is None else bool(local_files_only)
    prefix = f"{repo_id}/{subfolder}/" if subfolder else f"{repo_id}/"

    def fetch(entry: FileEntry) -> tuple[Path | None, list[str]]:
        nonlocal cache_only
        errors = []
        for name in _names(entry):
            try:
                path = hf_hub_download(
                    repo_id=repo_id,
                    filename=name,
                    subfolder=subfolder or None,
                    repo_type="model",
                    revision=revision,
                    cache_dir=cache_dir,
                    local_files_only=cache_only,
                )
                return Path(path), errors
            except Exception as e:  # noqa: BLE001 - offline, missing file, gated repo, bad id: all one message
                errors.append(f"{name}: {type(e).__name__}")
                if isinstance(e, LocalEntryNotFoundError) and not cache_only and local_files_only is None:
                    cache_only = True  # the hub could not be reached: do not wait for it again
        return None, errors

    out: dict[FileEntry, Path] = {}
    for entry in required:
        path, errors = fetch(entry)
        if path is None:
            if offline_env and local_files_only is None:
                where = "in the local hub cache (HF_HUB_OFFLINE is set)"
            elif cache_only:
                where = "in the local hub cache (the hub was not reachable or local_files_only=True)"
            else:
                where = "on the hub"
            raise WeightsNotFoundError(
                f"{what} not found {where}: {prefix}{' or '.join(_names(entry))} ({', '.join(errors)}); "
                "download them or pass a local file or folder"
            )
        out[entry] = path
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
    return InputError(f"cannot read checkpoint {p}: corrupt or not a safetensors file ({_one_line(e)})")


def _read_safetensors(p: Path, device: str | torch.device) -> dict[str, torch.Tensor]:
    from safetensors import safe_open

    try:
        with safe_open(str(p), framework="pt", device=str(torch.device(device))) as f:
            return {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open is not a Mapping
    except Exception as e:  # noqa: BLE001 - SafetensorError, OSError, ...: one line
        raise _safetensors_error(p, e) from None


_GLOBAL = re.compile(r"Unsupported global: GLOBAL ([\w.]+)")


def _torch_load_error(p: Path, e: Exception) -> InputError:
    text = str(e)
    if isinstance(e, pickle.UnpicklingError) and "Weights only load failed" in text:
        found = _GLOBAL.search(text)
        if found:
            what = f"a Python object ({found.group(1)})"
        elif "Unsupported operand" in text:
            with open(p, "rb") as f:
                pickled = f.read(1) == b"\x80"  # the PROTO opcode that starts every pickle of protocol >= 2
            if not pickled:
                return InputError(f"cannot read checkpoint {p}: corrupt or not a PyTorch checkpoint")
            what = "a plain Python pickle, not a torch.save'd state dict"
        else:
            what = "Python objects besides tensors"
        return InputError(
            f"checkpoint {p} holds {what}; it is not unpickled because that could run code: "
            "re-save it as a state dict of tensors (torch.save(model.state_dict())) or as .safetensors"
        )
    if isinstance(e, EOFError):
        return InputError(f"cannot read checkpoint {p}: the file is empty or truncated")
    first = re.split(r"(?<=\.)\s", _one_line(text, 1000), maxsplit=1)[0]  # torch's first sentence only
    return InputError(
        f"cannot read checkpoint {p}: corrupt or not a PyTorch checkpoint ({type(e).__name__}: {_one_line(first, 160)})"
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
