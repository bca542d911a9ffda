"""``consistent3dgen info``: versions, the compute device, and where each model's weights are (never downloads).

Every lookup is cache-only: a hub id is looked up in the local hub cache (``huggingface_hub``'s
``try_to_load_from_cache`` through :func:`consistent3dgen.io.weights.resolve_source` with
``local_files_only=True``), a local folder is looked into. Nothing reaches the network.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .errors import InputError, WeightsNotFoundError

# distribution names shown (the import name differs for some: warp-lang → warp)
PACKAGES = ("torch", "numpy", "huggingface_hub", "safetensors", "trimesh", "warp-lang", "transformers", "gradio",
            "rembg", "OpenEXR")


def package_versions(names: Iterable[str] = PACKAGES) -> dict[str, str | None]:
    """Installed version of each distribution (None: not installed), from its metadata (nothing imported)."""
    out: dict[str, str | None] = {}
    for name in names:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def device_info() -> dict[str, Any]:
    """The accelerator torch sees: CUDA (names, count, CUDA version), else MPS, else the CPU (threads)."""
    import torch

    from .devices import resolve_device

    info: dict[str, Any] = {"cpu_threads": torch.get_num_threads()}
    kind = resolve_device("auto").type  # the one detection, as --device auto picks
    if kind == "cuda":
        n = torch.cuda.device_count()
        info.update(kind="cuda", count=n, cuda=torch.version.cuda,
                    names=[torch.cuda.get_device_name(i) for i in range(n)])
    elif kind == "mps":
        info.update(kind="mps", count=1, names=["Apple MPS"])
    else:
        info.update(kind="cpu", count=0, names=[])
    return info


def _entry_text(entry: str | tuple[str, ...]) -> str:
    return entry if isinstance(entry, str) else " or ".join(entry)


def check_files(source: str | os.PathLike, files: Iterable[str | tuple[str, ...]], subfolder: str | None = None,
                optional: Iterable[str | tuple[str, ...]] = ()) -> dict[str, Any]:
    """Which of ``files`` a local folder / file or a hub id (in the local hub cache only) has.

    Returns ``{"source", "found" (all required present), "where" (their folder), "files" {name: path},
    "missing" [names], "error" (why the source itself is unusable, or None)}``.
    """
    from .io.weights import local_or_hub_id, resolve_source

    report: dict[str, Any] = {"source": os.fspath(source), "subfolder": subfolder, "found": False, "where": None,
                              "files": {}, "missing": [], "error": None}
    try:
        located = local_or_hub_id(source)
    except WeightsNotFoundError as e:
        report["error"] = str(e)
        return report
    if isinstance(located, Path):  # a local folder: the subfolder is used when it is there (as resolve_source)
        if subfolder and located.is_dir() and (located / subfolder).is_dir():
            located = located / subfolder
        report.update(source=str(located), subfolder=None)
        subfolder = None
    required, extra = list(files), list(optional)
    for entry, needed in [(e, True) for e in required] + [(e, False) for e in extra]:
        try:
            path = resolve_source(located, [entry], subfolder=subfolder, local_files_only=True)[entry]
            report["files"][_entry_text(entry)] = str(path)
        except (WeightsNotFoundError, InputError):
            if needed:
                report["missing"].append(_entry_text(entry))
    report["found"] = not report["missing"]
    paths = [Path(p) for p in report["files"].values()]
    if paths:
        report["where"] = str(paths[0].parent)
    return report


def _birefnet(source: str | os.PathLike) -> dict[str, Any]:
    """BiRefNet: config.json first, then the code files its ``auto_map`` names and the weights."""
    from .generators.direct3d_s2.conditioner import BIREFNET_WEIGHTS, _birefnet_code

    report = check_files(source, ["config.json"])
    if not report["found"]:
        if not report["error"]:
            report["missing"] += ["its model code", " or ".join(BIREFNET_WEIGHTS)]
        return report
    try:
        modules = sorted({ref.split(".")[0] + ".py" for ref in _birefnet_code(Path(report["files"]["config.json"]))
                          .values()})
    except InputError as e:
        report.update(found=False, error=str(e))
        return report
    rest = check_files(source, [*modules, BIREFNET_WEIGHTS])
    report["files"].update(rest["files"])
    report["missing"] = rest["missing"]
    report["found"] = not rest["missing"]
    return report


def model_reports(vggt: str | os.PathLike | None = None, generator: str | os.PathLike | None = None,
                  dinov2: str | os.PathLike | None = None, birefnet: str | os.PathLike | None = None
                  ) -> list[dict[str, Any]]:
    """One report per model (see :func:`check_files`), each with ``name`` and the ``option`` that takes a folder."""
    from .generators.direct3d_s2 import checkpoints, targets
    from .generators.direct3d_s2.conditioner import DEFAULT_BIREFNET, DEFAULT_DINO, DINO_SUBFOLDER, MODEL_FILES
    from .generators.mini import BUNDLED_DIR
    from .reconstruct.vggt.pretrained import CONFIG_FILE, DEFAULT_HUB_ID, WEIGHT_FILES

    out: list[dict[str, Any]] = []

    def add(name: str, option: str, report: dict[str, Any]) -> None:
        out.append({"name": name, "option": option, **report})

    add("VGGT", "--vggt-weights DIR", check_files(vggt or DEFAULT_HUB_ID, [WEIGHT_FILES], optional=[CONFIG_FILE]))
    # the parts load_direct3d_s2 reads (dense stage + 512 and 1024 sparse stages); the refiners are optional
    parts = ["dense_vae", "dense_dit", "sparse_vae_512", "sparse_dit_512", "sparse_vae_1024", "sparse_dit_1024"]
    needed = [checkpoints.CONFIG_FILE, *sorted({targets.PARTS[p][0] for p in parts})]
    refiners = sorted({targets.PARTS[p][0] for p in ("refiner", "refiner_1024")})
    from .generators.registry import D3D_SUBFOLDERS

    name = str(generator).lower() if generator else ""
    folder = Path(generator).expanduser() if generator and name not in (*D3D_SUBFOLDERS, "mini") else None
    if name in D3D_SUBFOLDERS:  # a registry name: the hub id, that version
        add(f"Direct3D-S2 ({name})", "--generator DIR", check_files(checkpoints.HUB_ID, needed, D3D_SUBFOLDERS[name],
                                                                     refiners))
    elif folder is not None and (folder / "pipeline.json").is_file():
        add("mini prior", "--generator DIR", check_files(folder, ["pipeline.json"]))
    elif folder is not None:
        add("Direct3D-S2", "--generator DIR", check_files(folder, needed, checkpoints.DEFAULT_SUBFOLDER, refiners))
    elif name != "mini" or not generator:
        for version, sub in checkpoints.SUBFOLDERS.items():
            add(f"Direct3D-S2 {version}", "--generator DIR",
                check_files(checkpoints.HUB_ID, needed, sub, refiners))
    if dinov2 is None and folder is not None and (folder / DINO_SUBFOLDER).is_dir():
        dinov2 = folder / DINO_SUBFOLDER  # where load_direct3d_s2 looks first
    add("DINOv2 (Direct3D-S2 condition)", "--dinov2-weights DIR", check_files(dinov2 or DEFAULT_DINO, MODEL_FILES))
    add("BiRefNet (background removal)", "--birefnet-weights DIR", _birefnet(birefnet or DEFAULT_BIREFNET))
    add("mini prior (bundled)", "--generator mini", check_files(BUNDLED_DIR, ["pipeline.json"]))
    return out


def gather_info(vggt: str | os.PathLike | None = None, generator: str | os.PathLike | None = None,
                dinov2: str | os.PathLike | None = None, birefnet: str | os.PathLike | None = None) -> dict[str, Any]:
    """Everything ``info`` prints, as a JSON-able dict."""
    from huggingface_hub import constants

    from . import __version__
    from .io.weights import hub_offline
    from .reconstruct.segment import rembg_status

    rembg_ok, rembg_where = rembg_status()
    return {
        "consistent3dgen": __version__,
        "python": platform.python_version(),
        "packages": package_versions(),
        "device": device_info(),
        "hub": {"cache": str(Path(constants.HF_HUB_CACHE).expanduser()), "offline": hub_offline()},
        "models": model_reports(vggt, generator, dinov2, birefnet),
        "rembg": {"usable": rembg_ok, "detail": rembg_where},
    }


def format_info(report: dict[str, Any]) -> str:
    """The report as lines of text."""
    lines = [f"consistent3dgen {report['consistent3dgen']} (python {report['python']})"]
    lines.append("packages: " + ", ".join(f"{k} {v or 'not installed'}" for k, v in report["packages"].items()))
    dev = report["device"]
    if dev["kind"] == "cuda":
        lines.append(f"device: cuda, {dev['count']} device(s): {', '.join(dev['names'])} (CUDA {dev['cuda']})")
    elif dev["kind"] == "mps":
        lines.append("device: mps (Apple GPU)")
    else:
        lines.append(f"device: cpu ({dev['cpu_threads']} threads; no CUDA or MPS device found)")
    hub = report["hub"]
    lines.append(f"hub cache: {hub['cache']}{' (HF_HUB_OFFLINE is set)' if hub['offline'] else ''}")
    lines.append("weights (local folders and the hub cache only; nothing is downloaded):")
    width = max(len(m["name"]) for m in report["models"])
    for m in report["models"]:
        src = m["source"] + (f"/{m['subfolder']}" if m.get("subfolder") else "")
        if m["found"]:
            state = f"found     {m['where']}"
        elif m["error"]:
            state = f"missing   {m['error']}"
        else:
            state = f"missing   {src}: {', '.join(m['missing'])} (give a local copy with {m['option']})"
        lines.append(f"  {m['name']:<{width}}  {state}")
    rembg = report["rembg"]
    lines.append(f"rembg: {'usable, ' if rembg['usable'] else ''}{rembg['detail']}")
    return "\n".join(lines)
