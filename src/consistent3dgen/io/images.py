"""The package's one image reader: a path, a PIL image or a uint8 array → a uint8 (H, W, 3|4) array.

Every image the package takes in (VGGT views, Direct3D-S2 conditions, the colour/mask images beside a depth map)
comes through :func:`read_image`, so all of them get the same treatment:

* the EXIF orientation is applied (a phone photo comes out the way it is displayed);
* images with transparency (RGBA, LA, PA, palette or grey/RGB with a ``tRNS`` colour) become RGBA, everything
  else RGB (grey, palette, CMYK and 16-bit grey are converted by PIL; 16-bit values above 255 clip to 255);
* PIL's decompression-bomb guard (``PIL.Image.MAX_IMAGE_PIXELS``) is one :class:`InputError` line naming the
  limit, not a warning or a traceback; an unreadable file is one line naming the file.

Object masks (non-zero = object; the alpha channel of an RGBA mask) are read by :func:`read_mask` into one soft
alpha (H, W) uint8. 16-bit single-channel PNGs (depth maps in millimetres) are read by :func:`read_depth_png`
instead, which keeps the 16-bit values.
"""

from __future__ import annotations

import os
import warnings

import numpy as np
from PIL import Image, ImageOps

from ..errors import InputError, one_line

SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I")
_ALPHA_MODES = ("RGBA", "LA", "PA", "La", "RGBa")
_ORIENTATION = 0x0112  # EXIF tag

ImageSource = str | os.PathLike | Image.Image | np.ndarray


def _open(path: str | os.PathLike, what: str = "image") -> Image.Image:
    """Open and decode ``path`` with its EXIF orientation applied; every failure is one InputError line."""
    name = os.fspath(path)
    if not os.path.isfile(name):
        raise InputError(f"{what} not found: {name}")
    with warnings.catch_warnings():
        # PIL warns above MAX_IMAGE_PIXELS and raises above twice that: both become the same one-line error.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with Image.open(name) as im:
                im.load()
                ImageOps.exif_transpose(im, in_place=True)
                return im
        except (Image.DecompressionBombWarning, Image.DecompressionBombError):
            raise InputError(
                f"{what} {name} is too large: more than PIL's limit of {Image.MAX_IMAGE_PIXELS:,} pixels "
                "(decompression-bomb guard; raise PIL.Image.MAX_IMAGE_PIXELS if the file is trusted)"
            ) from None
        except Exception as e:  # noqa: BLE001 - PIL raises many unrelated types for truncated / malformed files
            raise InputError(f"cannot read {what} {name}: {one_line(e) or type(e).__name__}") from None


def _oriented(img: Image.Image) -> Image.Image:
    """An in-memory PIL image with its EXIF orientation applied (a transposed copy; the image itself if upright)."""
    if img.getexif().get(_ORIENTATION, 1) in (0, 1):
        return img
    return ImageOps.exif_transpose(img)


def has_alpha(img: Image.Image) -> bool:
    """True for modes with an alpha band and for images with a transparent colour / palette index."""
    return img.mode in _ALPHA_MODES or "transparency" in img.info


def _to_array(img: Image.Image) -> np.ndarray:
    target = "RGBA" if has_alpha(img) else "RGB"
    try:
        arr = np.asarray(img if img.mode == target else img.convert(target))
    except (OSError, ValueError) as e:
        raise InputError(f"cannot convert a {img.mode} image to {target}: {one_line(e)}") from None
    return arr


def read_image(source: ImageSource) -> np.ndarray:
    """Path / PIL image / uint8 array → uint8 (H, W, 3) RGB or (H, W, 4) RGBA (see the module docstring).

    Arrays may be (H, W) or (H, W, 1) grey (returned as RGB), (H, W, 3) or (H, W, 4); a (H, W, 3|4) array is
    returned as is (not copied).
    """
    if isinstance(source, np.ndarray):
        arr = source
        if arr.dtype != np.uint8 or arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (1, 3, 4)):
            raise InputError(f"image array must be uint8 (H, W), (H, W, 3) or (H, W, 4), got {arr.dtype} {arr.shape}")
        if arr.ndim == 2 or arr.shape[2] == 1:
            arr = np.repeat(arr.reshape(arr.shape[0], arr.shape[1], 1), 3, axis=2)
    elif isinstance(source, Image.Image):
        arr = _to_array(_oriented(source))
    elif isinstance(source, (str, os.PathLike)):
        arr = _to_array(_open(source))
    else:
        raise InputError(f"unsupported image type {type(source).__name__}; give a path, a PIL image or an array")
    if arr.shape[0] < 1 or arr.shape[1] < 1:
        raise InputError(f"image is empty: {arr.shape[1]}x{arr.shape[0]} pixels")
    return arr


def split_alpha(image: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """(H, W, 4) → ((H, W, 3) RGB view, (H, W) alpha); (H, W, 3) → (itself, None)."""
    if image.ndim == 3 and image.shape[2] == 4:
        return image[..., :3], image[..., 3]
    return image, None


def mask_alpha(mask: np.ndarray) -> np.ndarray:
    """A mask image as read by :func:`read_image` (or any uint8 (H, W[, C]) array) → (H, W) uint8 soft alpha.

    RGBA and grey+alpha masks give their alpha channel; RGB masks the largest channel; grey masks themselves.
    Non-zero = object (the same rule as alpha > 0 in an RGBA image).
    """
    m = np.asarray(mask)
    if m.ndim == 3:
        m = m[..., -1] if m.shape[2] in (2, 4) else m.max(axis=2)
    if m.ndim != 2:
        raise InputError(f"a mask must be an (H, W) image, got shape {m.shape}")
    if m.dtype != np.uint8:
        if m.dtype == bool:
            return m.astype(np.uint8) * 255
        raise InputError(f"a mask array must be uint8 or bool, got {m.dtype}")
    return m


def read_mask(source: ImageSource, shape: tuple[int, int] | None = None, what: str = "mask") -> np.ndarray:
    """Path / PIL image / array of an object mask → (H, W) uint8 soft alpha (:func:`mask_alpha`).

    ``shape`` (H, W): the image it belongs to; another size is one :class:`InputError` line naming both.
    """
    alpha = mask_alpha(source if isinstance(source, np.ndarray) and source.dtype == bool else read_image(source))
    if shape is not None and alpha.shape != tuple(shape):
        name = f" {os.fspath(source)}" if isinstance(source, (str, os.PathLike)) else ""
        raise InputError(f"{what}{name} is {alpha.shape[1]}x{alpha.shape[0]} pixels but the image is "
                         f"{shape[1]}x{shape[0]}: they must match")
    return alpha


def image_mode(path: str | os.PathLike) -> str | None:
    """PIL mode of an image file read from its header only (no decoding), or None when PIL cannot open it."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                return im.mode
    except Exception:  # noqa: BLE001 - unreadable or too large: the caller's reader reports it
        return None


def read_depth_png(path: str | os.PathLike) -> np.ndarray:
    """Single-channel 16-bit (or 32-bit integer) PNG → (H, W) int64, e.g. depth in millimetres."""
    img = _open(path)
    if img.mode not in SIXTEEN_BIT_MODES:
        raise InputError(f"depth PNG {os.fspath(path)} must be single-channel 16-bit (millimetres), got {img.mode}")
    arr = np.asarray(img, dtype=np.int64)
    if arr.shape[0] < 1 or arr.shape[1] < 1:
        raise InputError(f"image {os.fspath(path)} is empty (zero size)")
    return arr
