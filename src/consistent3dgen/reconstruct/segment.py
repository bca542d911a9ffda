"""Object masks for images without alpha: background removal behind one small interface.

A **segmenter** is any callable ``(H, W, 3) uint8 RGB → (H, W) uint8 soft alpha`` (255 = object). Names
(``--segmenter``, :func:`get_segmenter`):

* ``birefnet``: BiRefNet (``ZhengPeng7/BiRefNet``, what the official Direct3D-S2 pipeline runs on images without
  alpha), from a local folder or the hub (downloaded when reachable, the hub cache only when offline) through
  :mod:`consistent3dgen.io.weights`. Its model code comes with its weights and is run
  (:class:`~consistent3dgen.generators.direct3d_s2.conditioner.BiRefNetSegmenter`);
* ``rembg``: the ``rembg`` package, when installed and its model file is already in ``$U2NET_HOME``
  (``~/.u2net``; never downloaded from here);
* ``background``: a uniform white or black background connected to the image border;
* ``none``: the whole frame is the object (only when asked for);
* ``auto``: BiRefNet when its weights are found, else rembg when usable, else a uniform white/black background
  when the border has one, else one :class:`InputError` line asking for an RGBA image, ``--mask`` or weights.
  Never the whole frame.

``register_segmenter(name)`` adds a factory ``(weights, device) → segmenter``. A segmenter's soft alpha goes to
the image conditioner as it is (the official Direct3D-S2 ``preprocess_image`` composites with it); the point map
keeps the pixels with alpha ≥ :data:`SEGMENT_THRESHOLD` (a predicted matte's faint values are uncertainty, not
object). A mask the user gives (RGBA alpha, ``--mask``) keeps every non-zero pixel, the package's convention.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from ..errors import InputError, WeightsNotFoundError, one_line

SEGMENT_THRESHOLD = 128  # predicted alpha ≥ 0.5 is object for the point map
BORDER_FRACTION = 0.5  # a background colour is "uniform" when more than this share of the border pixels has it
BORDER_TOLERANCE = 8  # grey levels from pure white / black that still count as that background


@runtime_checkable
class Segmenter(Protocol):
    """RGB image → soft alpha of the object."""

    def __call__(self, rgb: np.ndarray) -> np.ndarray:  # (H, W, 3) uint8 → (H, W) uint8
        ...


SegmenterFactory = Callable[[str | os.PathLike | None, str], Segmenter]  # (weights, device) → segmenter
_REGISTRY: dict[str, SegmenterFactory] = {}


def register_segmenter(name: str) -> Callable[[SegmenterFactory], SegmenterFactory]:
    """Decorator: ``@register_segmenter("mine")`` on a factory ``(weights, device) → segmenter``."""

    def add(factory: SegmenterFactory) -> SegmenterFactory:
        _REGISTRY[name.lower()] = factory
        return factory

    return add


def segmenter_names() -> tuple[str, ...]:
    """``auto`` and the registered names."""
    return ("auto", *_REGISTRY)


def get_segmenter(spec: str | Segmenter | None, weights: str | os.PathLike | None = None,
                  device: str = "cpu") -> Segmenter | None:
    """A name (``auto`` or registered), a segmenter (returned as is), or None (None: no segmenter)."""
    if spec is None or not isinstance(spec, str):
        if spec is not None and not callable(spec):
            raise InputError(f"a segmenter must be a name or a callable, got {type(spec).__name__}")
        return spec
    name = spec.lower()
    if name == "auto":
        return AutoSegmenter(weights, device)
    if name not in _REGISTRY:
        raise InputError(f"unknown segmenter {spec!r}; choose one of {', '.join(segmenter_names())}")
    return _REGISTRY[name](weights, device)


def check_alpha(alpha: np.ndarray, shape: tuple[int, int], who: str = "segmenter") -> np.ndarray:
    """A segmenter's answer as (H, W) uint8, or one line saying what is wrong with it."""
    a = np.asarray(alpha)
    if a.dtype == bool:
        a = a.astype(np.uint8) * 255
    elif np.issubdtype(a.dtype, np.floating):  # [0, 1] mattes
        a = np.clip(np.nan_to_num(a) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    if a.shape != tuple(shape) or a.dtype != np.uint8:
        raise InputError(f"{who} returned a {a.dtype} {a.shape} mask for a {shape[1]}x{shape[0]} image; "
                         f"expected uint8 {tuple(shape)}")
    return a


# ------------------------------------------------------------------------------------------- uniform background


def background_mask(rgb: np.ndarray, colour: str, tol: int = BORDER_TOLERANCE) -> np.ndarray:
    """Pixels of a uniform white/black background connected to the image border (object interiors of the same
    colour are kept). Returns True for background."""
    from scipy import ndimage

    arr = rgb.astype(np.int16)
    near = (arr >= 255 - tol).all(axis=2) if colour == "white" else (arr <= tol).all(axis=2)
    labels, _ = ndimage.label(near)
    border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    border = border[border > 0]
    return np.isin(labels, border)


def uniform_background(rgb: np.ndarray) -> str | None:
    """``white`` or ``black`` when more than half of the border pixels have that colour, else None."""
    border = np.concatenate([rgb[0], rgb[-1], rgb[:, 0], rgb[:, -1]]).astype(np.int16)
    for colour in ("white", "black"):
        near = (border >= 255 - BORDER_TOLERANCE).all(axis=1) if colour == "white" else (
            border <= BORDER_TOLERANCE).all(axis=1)
        if near.mean() > BORDER_FRACTION:
            return colour
    return None


class BackgroundSegmenter:
    """The object = everything but a uniform white or black background touching the border (``colour`` None:
    whichever the border shows; neither is one :class:`InputError` line)."""

    name = "background"

    def __init__(self, colour: str | None = None) -> None:
        if colour not in (None, "white", "black"):
            raise InputError(f"background colour must be white or black, got {colour!r}")
        self.colour = colour

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        colour = self.colour or uniform_background(rgb)
        if colour is None:
            raise InputError("the image border is not a uniform white or black background; give an RGBA image "
                             "(alpha = the object), --mask FILE or a background-removal model (--segmenter birefnet)")
        return np.where(background_mask(rgb, colour), 0, 255).astype(np.uint8)


class WholeFrame:
    """Every pixel is the object (explicit only: ``--segmenter none``)."""

    name = "none"

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        return np.full(rgb.shape[:2], 255, np.uint8)


# ------------------------------------------------------------------------------------------- rembg


REMBG_MODEL = "u2net"


def rembg_model_file(model: str = REMBG_MODEL) -> Path:
    """Where ``rembg`` keeps ``<model>.onnx``: ``$U2NET_HOME``, else ``$XDG_DATA_HOME/.u2net``, else ``~/.u2net``."""
    home = os.getenv("U2NET_HOME", os.path.join(os.getenv("XDG_DATA_HOME", "~"), ".u2net"))
    return Path(home).expanduser() / f"{model}.onnx"


def rembg_status(model: str = REMBG_MODEL) -> tuple[bool, str]:
    """(usable, a few words: the model file, or why not) without importing rembg."""
    import importlib.util

    if importlib.util.find_spec("rembg") is None:
        return False, "rembg is not installed"
    path = rembg_model_file(model)
    if not path.is_file():
        return False, f"rembg's model {path} is not there"
    return True, str(path)


class RembgSegmenter:
    """``rembg.remove(..., only_mask=True)`` with a model file already on disk (rembg would download a missing
    one from its own server: here a missing file is a :class:`WeightsNotFoundError` line instead)."""

    name = "rembg"

    def __init__(self, model: str = REMBG_MODEL) -> None:
        ok, why = rembg_status(model)
        if not ok:
            raise WeightsNotFoundError(f"rembg background removal unavailable: {why} (pip install rembg, and put "
                                       f"{model}.onnx in $U2NET_HOME or ~/.u2net)")
        import rembg

        try:
            self.session = rembg.new_session(model)
        except Exception as e:  # noqa: BLE001 - onnxruntime / rembg failures: one line
            raise InputError(f"rembg cannot load its model {model}: {one_line(e, 200)}") from None
        self._remove = rembg.remove

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        from PIL import Image

        out = self._remove(Image.fromarray(rgb), session=self.session, only_mask=True)
        return np.asarray(out.convert("L") if isinstance(out, Image.Image) else out)


# ------------------------------------------------------------------------------------------- auto


class AutoSegmenter:
    """BiRefNet when its weights are found, else rembg when usable, else a uniform background, else one line.

    Finding BiRefNet's files happens here (downloaded when the hub is reachable, the cache only offline); the
    model is loaded at the first image that needs it.
    """

    name = "auto"

    def __init__(self, weights: str | os.PathLike | None = None, device: str = "cpu") -> None:
        from ..generators.direct3d_s2.conditioner import DEFAULT_BIREFNET, find_birefnet

        self.device = device
        self._folder: Path | None = None
        self._model: Segmenter | None = None
        self.why_not: list[str] = []
        try:
            self._folder = find_birefnet(weights if weights is not None else DEFAULT_BIREFNET)
            self.chosen = "birefnet"
        except WeightsNotFoundError as e:
            if weights is not None:  # a folder the user named: its absence is the answer
                raise
            self.why_not.append(str(e))
            ok, why = rembg_status()
            self.chosen = "rembg" if ok else "background"
            if not ok:
                self.why_not.append(why)

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        if self.chosen == "background":
            if uniform_background(rgb) is None:
                raise InputError(
                    "the image has no alpha channel and its background is not a uniform white or black, and no "
                    "background-removal model was found: give an RGBA image (alpha = the object), --mask FILE, or "
                    f"BiRefNet weights with --birefnet-weights DIR ({'; '.join(self.why_not)})")
            return BackgroundSegmenter()(rgb)
        if self._model is None:
            if self.chosen == "birefnet":
                from ..generators.direct3d_s2.conditioner import BiRefNetSegmenter

                self._model = BiRefNetSegmenter(self._folder, device=self.device)
            else:
                self._model = RembgSegmenter()
        return self._model(rgb)


@register_segmenter("birefnet")
def _birefnet(weights: str | os.PathLike | None, device: str) -> Segmenter:
    from ..generators.direct3d_s2.conditioner import DEFAULT_BIREFNET, BiRefNetSegmenter

    return BiRefNetSegmenter(weights if weights is not None else DEFAULT_BIREFNET, device=device)


@register_segmenter("rembg")
def _rembg(weights: str | os.PathLike | None, device: str) -> Segmenter:
    return RembgSegmenter()


@register_segmenter("background")
def _background(weights: str | os.PathLike | None, device: str) -> Segmenter:
    return BackgroundSegmenter()


@register_segmenter("none")
def _whole_frame(weights: str | os.PathLike | None, device: str) -> Segmenter:
    return WholeFrame()
