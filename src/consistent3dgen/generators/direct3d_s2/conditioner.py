"""Image conditioning of Direct3D-S2: official preprocessing + DINOv2 ViT-L/14 with registers (transformers).

Preprocessing (official ``preprocess_image`` + ``DinoEncoder``):
1. RGBA image; crop to the bounding box of alpha > 0 (whole image if under 0.1 % of the pixels);
2. composite on white (``rgb·a + (1 − a)``), back to uint8 by truncation;
3. pad to a square (rgb white, mask 0; extra row/column at the bottom/right), PIL bilinear resize to 518
   (mask nearest), pad 16 pixels on every side, resize to 518 again;
4. [0, 1] tensor, ImageNet mean/std normalisation.
The tokens are the last transformer layer's output *before* DINOv2's final norm (the hub model's
``x_prenorm``: cls, 4 registers, 37×37 patches), passed through a LayerNorm without affine (eps 1e-5).

An image without alpha needs a foreground mask: pass a segmenter (e.g. :class:`BiRefNetSegmenter`; the choice
of segmenters is :mod:`consistent3dgen.reconstruct.segment`); without one it is an :class:`InputError`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ...errors import InputError, WeightsNotFoundError, one_line
from ...io.images import read_image
from ...io.weights import local_or_hub_id, resolve_source

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_DINO = "facebook/dinov2-with-registers-large"  # transformers port of dinov2_vitl14_reg
DEFAULT_BIREFNET = "ZhengPeng7/BiRefNet"
EXTRA_PAD = 16

# image (RGB uint8 H×W×3) → alpha mask uint8 H×W
Segmenter = Callable[[np.ndarray], np.ndarray]


def to_rgba(image: Any, segmenter: Segmenter | None = None) -> np.ndarray:
    """uint8 H×W×4 (path / PIL / uint8 array, read by :func:`read_image`); an image without alpha is masked by
    ``segmenter`` (required then)."""
    arr = read_image(image)
    if arr.shape[2] == 4:
        return arr
    if segmenter is None:
        raise InputError(
            "image has no alpha channel: give an RGBA image (foreground mask in alpha) or a background-removal "
            "model (e.g. BiRefNet weights)"
        )
    alpha = np.asarray(segmenter(arr))
    if alpha.shape != arr.shape[:2]:
        raise ValueError(f"segmenter returned a {alpha.shape} mask for a {arr.shape[:2]} image")
    return np.concatenate([arr, alpha.astype(np.uint8)[..., None]], axis=-1)


def _crop_to_alpha(rgba: np.ndarray) -> np.ndarray:
    fg = rgba[..., 3] > 0
    h, w = fg.shape
    if fg.sum() < h * w * 0.001:
        return rgba
    rows, cols = np.nonzero(fg)
    return rgba[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]


def _pad(arr: np.ndarray, top: int, bottom: int, left: int, right: int, fill: int) -> np.ndarray:
    widths = ((top, bottom), (left, right)) + ((0, 0),) * (arr.ndim - 2)
    return np.pad(arr, widths, mode="constant", constant_values=fill)


def preprocess_image(image: Any, size: int = 518, segmenter: Segmenter | None = None) -> torch.Tensor:
    """Official preprocessing → float32 (4, size, size): RGB on white in [0, 1], then the mask."""
    from PIL import Image

    rgba = _crop_to_alpha(to_rgba(image, segmenter)).astype(np.float64) / 255.0
    alpha = rgba[..., 3:]
    rgb = ((rgba[..., :3] * alpha + (1 - alpha)) * 255).astype(np.uint8)
    mask = (alpha[..., 0] * 255).astype(np.uint8)
    h, w = mask.shape
    side = max(h, w)
    top, left = (side - h) // 2, (side - w) // 2
    rgb = _pad(rgb, top, side - h - top, left, side - w - left, 255)
    mask = _pad(mask, top, side - h - top, left, side - w - left, 0)
    rgb_img = Image.fromarray(rgb).resize((size, size), Image.BILINEAR)
    mask_img = Image.fromarray(mask).resize((size, size), Image.NEAREST)
    rgb = _pad(np.asarray(rgb_img), EXTRA_PAD, EXTRA_PAD, EXTRA_PAD, EXTRA_PAD, 255)
    mask = _pad(np.asarray(mask_img), EXTRA_PAD, EXTRA_PAD, EXTRA_PAD, EXTRA_PAD, 0)
    rgb = np.asarray(Image.fromarray(rgb).resize((size, size), Image.BILINEAR))
    mask = np.asarray(Image.fromarray(mask).resize((size, size), Image.NEAREST))
    out = np.concatenate([rgb, mask[..., None]], axis=-1).astype(np.float32) / 255.0
    return torch.from_numpy(out).permute(2, 0, 1).contiguous()


def patch_mask(mask: torch.Tensor, patch_size: int = 14) -> torch.Tensor:
    """(B, 1, H, W) mask → (B, H/p, W/p) bool: patches containing any foreground (v1.0 sparse conditions)."""
    return F.max_pool2d(mask, kernel_size=patch_size, stride=patch_size).squeeze(1) > 0


# A transformers model folder: its config and its weights (safetensors preferred).
MODEL_FILES = ("config.json", ("model.safetensors", "pytorch_model.bin"))
DINO_WHAT = "DINOv2 (ViT-L/14 with registers) weights"
# Where load_direct3d_s2 looks for DINOv2 inside a local Direct3D-S2 folder (``--generator DIR``).
DINO_SUBFOLDER = "dinov2-with-registers-large"
DINO_HINT = (
    f"a transformers Dinov2WithRegistersModel folder as DIR/{DINO_SUBFOLDER} beside the Direct3D-S2 files "
    "with --generator DIR; in Python dino_weights=DIR"
)


def resolve_model_folder(
    source: str | os.PathLike,
    what: str,
    hint: str | None = None,
    local_files_only: bool | None = None,
    files: tuple = MODEL_FILES,
) -> Path:
    """A transformers model (local folder or hub id) → the local folder holding its files.

    Through :func:`~consistent3dgen.io.weights.resolve_source`: a hub id is looked up in the hub cache (and
    downloaded when the hub is reachable, unless ``local_files_only``); offline, a miss is one line naming the
    repository, the cache and ``hint``, before transformers is even imported.
    """
    located = local_or_hub_id(source, what)
    if isinstance(located, Path) and not located.is_dir():
        raise WeightsNotFoundError(f"{what} folder not found: {source} is a file; give the model's folder")
    found = resolve_source(located, files, what=what, hint=hint, local_files_only=local_files_only)
    return found["config.json"].parent


@contextmanager
def _quiet_transformers() -> Iterator[None]:
    """No progress bar and no log lines from transformers while it loads a model (the caller checks the result)."""
    from transformers.utils import logging as tlog

    bar, verbosity = tlog.is_progress_bar_enabled(), tlog.get_verbosity()
    tlog.disable_progress_bar()
    tlog.set_verbosity_error()
    try:
        yield
    finally:
        tlog.set_verbosity(verbosity)
        if bar:
            tlog.enable_progress_bar()


def _load_pretrained(loader: Callable[..., Any], folder: Path, what: str, strict: bool = False, **kwargs: Any) -> Any:
    """transformers ``from_pretrained`` on a local folder (never the network), quietly; ``strict``: weights the
    model expects but the folder lacks (or holds in another shape) are an error, not a log line."""
    try:
        with _quiet_transformers():
            model, info = loader(str(folder), local_files_only=True, output_loading_info=True, **kwargs)
    except (OSError, ValueError) as e:
        raise WeightsNotFoundError(f"{what} cannot be loaded from {folder}: {one_line(e, 200)}") from None
    bad = [*(info.get("missing_keys") or []), *(info.get("mismatched_keys") or [])] if strict else []
    if bad:
        names = [k if isinstance(k, str) else str(k[0]) for k in bad]
        raise InputError(
            f"{what} in {folder} do not match the model: {len(names)} missing or mismatched tensors {sorted(names)[:3]}"
        )
    return model


class DinoConditioner(nn.Module):
    """Image → (B, 5 + (size/14)², 1024) DINOv2-reg tokens, as the official ``DinoEncoder``.

    ``weights``: a local folder or a hub id of a transformers ``Dinov2WithRegistersModel`` (default
    ``facebook/dinov2-with-registers-large``; from the hub cache, downloaded when the hub is reachable), loaded
    strict; or pass a built ``encoder``. ``model``/``version`` are the official config's torch.hub names,
    accepted for config compatibility (only ViT-L/14-reg is supported).
    """

    def __init__(
        self,
        model: str = "facebookresearch/dinov2",
        version: str = "dinov2_vitl14_reg",
        size: int = 518,
        weights: str | os.PathLike | None = None,
        encoder: nn.Module | None = None,
        segmenter: Segmenter | None = None,
    ):
        super().__init__()
        if version != "dinov2_vitl14_reg":
            raise ValueError(f"unsupported DINOv2 version {version!r}; Direct3D-S2 uses dinov2_vitl14_reg")
        self.size = size
        self.segmenter = segmenter
        if encoder is None:
            folder = resolve_model_folder(weights or DEFAULT_DINO, DINO_WHAT, DINO_HINT)  # fails fast, offline too
            try:
                from transformers import Dinov2WithRegistersModel
            except ImportError as e:
                raise ImportError("the DINOv2 conditioner needs transformers (pip install 'transformers>=4.40')") from e
            encoder = _load_pretrained(Dinov2WithRegistersModel.from_pretrained, folder, DINO_WHAT, strict=True)
        self.encoder = encoder.eval()
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    @property
    def device(self) -> torch.device:
        return next(self.encoder.parameters()).device

    def prepare(self, images: Any) -> torch.Tensor:
        """One image or a list (paths, PIL, uint8 arrays) → (B, 4, size, size) preprocessed RGB + mask."""
        if not isinstance(images, (list, tuple)):
            images = [images]
        return torch.stack([preprocess_image(im, self.size, self.segmenter) for im in images])

    @torch.no_grad()
    def encode(self, rgb: torch.Tensor) -> torch.Tensor:
        """(B, 3, size, size) RGB in [0, 1] → normalised pre-norm tokens (B, L, C) float32."""
        if rgb.ndim != 4 or rgb.shape[1] != 3:
            raise ValueError(f"expected (B, 3, H, W) RGB in [0, 1], got {tuple(rgb.shape)}")
        if tuple(rgb.shape[-2:]) != (self.size, self.size):
            # the official Resize + CenterCrop; a no-op for preprocessed images
            scale = self.size / min(rgb.shape[-2:])
            hw = [max(self.size, round(s * scale)) for s in rgb.shape[-2:]]
            rgb = F.interpolate(rgb.float(), size=hw, mode="bilinear", antialias=True, align_corners=False)
            top, left = (hw[0] - self.size) // 2, (hw[1] - self.size) // 2
            rgb = rgb[..., top : top + self.size, left : left + self.size]
        param = next(self.encoder.parameters())
        x = ((rgb.to(self.mean.device).float() - self.mean) / self.std).to(device=param.device, dtype=param.dtype)
        hidden = self.encoder(pixel_values=x, output_hidden_states=True).hidden_states[-1]
        return F.layer_norm(hidden.float(), hidden.shape[-1:])

    def forward(self, image: Any) -> torch.Tensor:
        """Conditioner protocol: image(s) (path / PIL / array, or a preprocessed (B, 3|4, S, S) tensor) → tokens."""
        if torch.is_tensor(image):
            x = image if image.ndim == 4 else image.unsqueeze(0)
            return self.encode(x[:, :3])
        return self.encode(self.prepare(image)[:, :3])

    def tokens_and_mask(self, image: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokens plus the per-patch foreground mask (v1.0 sparse conditions)."""
        x = self.prepare(image) if not torch.is_tensor(image) else image
        return self.encode(x[:, :3]), patch_mask(x[:, 3:].float())


# BiRefNet's hub layout: config.json (its ``auto_map`` names the model code files), the code, the weights.
BIREFNET_WHAT = "BiRefNet (background removal) weights"
BIREFNET_HINT = "--birefnet-weights DIR; in Python BiRefNetSegmenter(DIR)"
BIREFNET_WEIGHTS = ("model.safetensors", "pytorch_model.bin")
BIREFNET_SIZE = 1024  # official utils/rembg.py: Resize((1024, 1024))


def _birefnet_code(config_path: Path) -> dict[str, str]:
    """``auto_map`` of BiRefNet's config.json → {"model": "module.Class", "config": "module.Class"}."""
    import json

    try:
        auto_map = json.loads(config_path.read_text()).get("auto_map") or {}
    except (OSError, ValueError, AttributeError) as e:
        raise InputError(f"cannot read BiRefNet config {config_path}: {one_line(e, 200)}") from None
    refs = {"model": auto_map.get("AutoModelForImageSegmentation"), "config": auto_map.get("AutoConfig")}
    for key, ref in refs.items():
        if not isinstance(ref, str) or "--" in ref or ref.count(".") != 1:
            raise InputError(f"BiRefNet config {config_path}: auto_map must name its {key} class as 'module.Class' "
                             f"in the same folder, got {ref!r}")
    return refs


def find_birefnet(weights: str | os.PathLike = DEFAULT_BIREFNET, local_files_only: bool | None = None) -> Path:
    """The local folder holding BiRefNet's config.json, model code and weights (a local folder, or a hub id:
    downloaded when the hub is reachable, the hub cache only when offline or ``local_files_only``).

    config.json is found first: its ``auto_map`` names the code files to fetch with the weights.
    """
    located = local_or_hub_id(weights, BIREFNET_WHAT)
    if isinstance(located, Path) and not located.is_dir():
        raise WeightsNotFoundError(f"{BIREFNET_WHAT} folder not found: {weights} is a file; give the model's folder")
    config = resolve_source(located, ["config.json"], what=BIREFNET_WHAT, hint=BIREFNET_HINT,
                            local_files_only=local_files_only)["config.json"]
    modules = sorted({ref.split(".")[0] + ".py" for ref in _birefnet_code(config).values()})
    found = resolve_source(located, [*modules, BIREFNET_WEIGHTS], what=BIREFNET_WHAT, hint=BIREFNET_HINT,
                           local_files_only=local_files_only)
    if any(p.parent != config.parent for p in found.values()):
        raise WeightsNotFoundError(f"{BIREFNET_WHAT}: the model code and weights are not beside {config}")
    return config.parent


def _import_model_code(folder: Path, ref: str) -> Any:
    """``module.Class`` from a model folder, imported as a package of its own so the code's relative imports
    (``from .BiRefNet_config import ...``) resolve inside the folder. This runs the folder's code."""
    import hashlib
    import importlib
    import importlib.machinery
    import importlib.util
    import sys

    package = "_c3dg_remote_" + hashlib.sha1(str(folder.resolve()).encode()).hexdigest()[:12]
    if package not in sys.modules:
        spec = importlib.machinery.ModuleSpec(package, None, is_package=True)
        spec.submodule_search_locations = [str(folder)]
        sys.modules[package] = importlib.util.module_from_spec(spec)
    module_name, cls = ref.split(".")
    try:
        module = importlib.import_module(f"{package}.{module_name}")
    except ModuleNotFoundError as e:
        missing = e.name or "a module"
        raise InputError(f"BiRefNet's model code {folder / (module_name + '.py')} needs the Python package "
                         f"{missing!r}, which is not installed (pip install {missing.split('.')[0]})") from None
    except Exception as e:  # noqa: BLE001 - foreign code: whatever it raises is one line
        raise InputError(f"BiRefNet's model code {folder / (module_name + '.py')} failed to import: "
                         f"{type(e).__name__}: {one_line(e, 200)}") from None
    if not hasattr(module, cls):
        raise InputError(f"BiRefNet's model code {folder / (module_name + '.py')} has no class {cls}")
    return getattr(module, cls)


def build_birefnet(folder: Path) -> nn.Module:
    """BiRefNet's own model class (from the folder's code, named by config.json's ``auto_map``) built from the
    config with ``bb_pretrained`` off (no backbone download), its weights assigned strict through
    :func:`~consistent3dgen.io.weights.load_into`. Returns the model in eval mode."""
    import inspect
    import json

    from ...io.weights import load_into

    config_path = folder / "config.json"
    refs = _birefnet_code(config_path)
    config_cls, model_cls = _import_model_code(folder, refs["config"]), _import_model_code(folder, refs["model"])
    data = json.loads(config_path.read_text())
    data["bb_pretrained"] = False  # BiRefNet reads this from its config: no backbone weights fetched at build
    try:
        config = config_cls.from_dict(data) if hasattr(config_cls, "from_dict") else config_cls(**data)
        if hasattr(config, "bb_pretrained"):
            config.bb_pretrained = False
        takes = inspect.signature(model_cls).parameters
        model = model_cls(bb_pretrained=False, config=config) if "bb_pretrained" in takes else model_cls(config=config)
    except Exception as e:  # noqa: BLE001 - foreign code: one line
        raise InputError(f"cannot build BiRefNet from {folder}: {type(e).__name__}: {one_line(e, 200)}") from None
    weights = next(folder / n for n in BIREFNET_WEIGHTS if (folder / n).is_file())
    return load_into(model.float(), weights, name=f"BiRefNet weights {weights}")


_LOADED: dict[str, Any] = {}  # {"key": (folder, device), "model": the BiRefNet last loaded}


class BiRefNetSegmenter:
    """Soft foreground alpha from BiRefNet, as the official Direct3D-S2 ``utils/rembg.py``: RGB resized to
    1024×1024 (PIL bilinear), ImageNet normalisation, the last prediction's sigmoid, ×255 truncated to uint8,
    resized back to the image (PIL's default filter).

    ``weights``: a local folder or a hub id (default ``ZhengPeng7/BiRefNet``; downloaded when the hub is
    reachable, the hub cache only offline). Note: BiRefNet's model code comes with its weights (as
    ``trust_remote_code``): loading runs that code, so only use weights you trust. The weights themselves go
    through :mod:`consistent3dgen.io.weights`.
    """

    name = "birefnet"

    def __init__(self, weights: str | os.PathLike = DEFAULT_BIREFNET, device: str | torch.device = "cpu",
                 local_files_only: bool | None = None):
        self.folder = find_birefnet(weights, local_files_only)  # fails fast: one line, before any code runs
        self.device = torch.device(device)
        key = (str(self.folder.resolve()), str(self.device))
        if _LOADED.get("key") != key:  # the last one loaded is kept: a batch of photos loads it once
            _LOADED.clear()
            _LOADED.update(key=key, model=build_birefnet(self.folder).to(self.device))
        self.model = _LOADED["model"]

    @torch.no_grad()
    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        from PIL import Image

        h, w = rgb.shape[:2]
        size = (BIREFNET_SIZE, BIREFNET_SIZE)
        x = np.asarray(Image.fromarray(rgb).resize(size, Image.BILINEAR), dtype=np.float32) / 255.0
        x = (torch.from_numpy(x).permute(2, 0, 1)[None] - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(
            IMAGENET_STD
        ).view(1, 3, 1, 1)
        param = next(self.model.parameters())
        pred = self.model(x.to(device=param.device, dtype=param.dtype))[-1].sigmoid()[0, 0].float().cpu()
        mask = Image.fromarray((pred.numpy() * 255).astype(np.uint8)).resize((w, h))
        return np.asarray(mask)
