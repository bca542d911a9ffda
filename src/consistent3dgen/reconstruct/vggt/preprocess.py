"""Image preprocessing for VGGT (as the official ``load_and_preprocess_images``) and the map back to the input pixels.

Images are read by :func:`consistent3dgen.io.images.read_image` (EXIF orientation applied). RGBA is
composited on opaque white, converted to RGB, resized with PIL bicubic so the long side (``pad``) or the width
(``crop``) is 518 and the other side a multiple of 14, scaled to [0, 1], then padded with 1.0 (white) to
518x518 (``pad``) or centre-cropped to 518 rows (``crop``). A batch of different shapes is padded
with 1.0 to the largest shape, as upstream does.

:class:`FrameGeometry` records where the input pixels landed, so network maps and intrinsics can be taken
back to the input image (:func:`sample_to_original`, :func:`intrinsics_to_original`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ...errors import InputError
from ...io.images import read_image

TARGET_SIZE = 518
PATCH = 14


@dataclass(frozen=True)
class FrameGeometry:
    """Input image (width, height) → resized (width, height), then placed at (left, top) in the network image.

    ``left``/``top`` are negative when the resized image was cropped (crop mode).
    """

    orig_w: int
    orig_h: int
    resized_w: int
    resized_h: int
    left: int
    top: int
    net_w: int
    net_h: int

    @property
    def scale_xy(self) -> tuple[float, float]:
        return self.resized_w / self.orig_w, self.resized_h / self.orig_h


def load_image(source: str | os.PathLike | Image.Image | np.ndarray) -> np.ndarray:
    """Path / PIL image / uint8 or [0, 1] float (H, W, 3|4) array → uint8 (H, W, 3|4) (:func:`read_image`)."""
    if isinstance(source, np.ndarray) and np.issubdtype(source.dtype, np.floating):
        if source.ndim != 3 or source.shape[2] not in (3, 4):
            raise InputError(f"image array must have shape (H, W, 3) or (H, W, 4), got {source.shape}")
        source = np.clip(np.asarray(source, np.float64) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return read_image(source)


def to_rgb_on_white(image: np.ndarray) -> np.ndarray:
    """Composite RGBA on opaque white (the background VGGT expects for objects) → uint8 (H, W, 3) RGB."""
    if image.shape[2] == 3:
        return image
    h, w = image.shape[:2]
    white = Image.new("RGBA", (w, h), (255, 255, 255, 255))
    return np.asarray(Image.alpha_composite(white, Image.fromarray(image)).convert("RGB"))


def _resized_size(width: int, height: int, mode: str) -> tuple[int, int]:
    if mode == "pad" and width < height:
        return round(width * (TARGET_SIZE / height) / PATCH) * PATCH, TARGET_SIZE
    # pad with a landscape/square image, or crop mode: the width becomes 518.
    return TARGET_SIZE, round(height * (TARGET_SIZE / width) / PATCH) * PATCH


def _pad_to(img: torch.Tensor, height: int, width: int) -> tuple[torch.Tensor, int, int]:
    dh, dw = height - img.shape[1], width - img.shape[2]
    if dh <= 0 and dw <= 0:
        return img, 0, 0
    top, left = dh // 2, dw // 2
    return F.pad(img, (left, dw - left, top, dh - top), mode="constant", value=1.0), left, top


def preprocess_images(sources: list, mode: str = "pad") -> tuple[torch.Tensor, list[FrameGeometry]]:
    """Images → (N, 3, H, W) float32 in [0, 1] (H = W = 518 in pad mode) and where each input landed."""
    if not sources:
        raise InputError("at least one image is required")
    if mode not in ("pad", "crop"):
        raise InputError(f"preprocessing mode must be 'pad' or 'crop', got {mode!r}")
    tensors, placements = [], []
    for src in sources:
        rgb = to_rgb_on_white(load_image(src))
        h, w = rgb.shape[:2]
        new_w, new_h = _resized_size(w, h, mode)
        if new_w < PATCH or new_h < PATCH:
            raise InputError(f"image {w}x{h} is too elongated: it would be resized to {new_w}x{new_h}")
        img = Image.fromarray(rgb).resize((new_w, new_h), Image.Resampling.BICUBIC)
        # ToTensor: uint8 / 255 in float32.
        t = torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1).float().div(255)
        left = top = 0
        if mode == "crop" and new_h > TARGET_SIZE:
            top = -((new_h - TARGET_SIZE) // 2)
            t = t[:, -top:-top + TARGET_SIZE]
        if mode == "pad":
            t, left, top = _pad_to(t, TARGET_SIZE, TARGET_SIZE)
        tensors.append(t)
        placements.append((w, h, new_w, new_h, left, top))
    max_h = max(t.shape[1] for t in tensors)
    max_w = max(t.shape[2] for t in tensors)
    out, geoms = [], []
    for t, (w, h, new_w, new_h, left, top) in zip(tensors, placements, strict=True):
        t, extra_left, extra_top = _pad_to(t, max_h, max_w)
        out.append(t)
        geoms.append(FrameGeometry(w, h, new_w, new_h, left + extra_left, top + extra_top, max_w, max_h))
    return torch.stack(out), geoms


def original_pixel_grid(geom: FrameGeometry) -> tuple[np.ndarray, np.ndarray]:
    """Network-image pixel coordinates (pixel centres at integers) of every input pixel centre: (H, W) x, y."""
    sx, sy = geom.scale_xy
    xs = (np.arange(geom.orig_w) + 0.5) * sx - 0.5 + geom.left
    ys = (np.arange(geom.orig_h) + 0.5) * sy - 0.5 + geom.top
    return np.meshgrid(xs, ys, indexing="xy")


def sample_to_original(values: torch.Tensor, geom: FrameGeometry, mode: str = "nearest") -> torch.Tensor:
    """Sample a network-resolution map (h, w) or (h, w, C) at the input image's pixel centres → (H, W[, C]).

    ``nearest`` keeps depth edges sharp (no points floating between foreground and background); ``bilinear``
    suits smooth quantities. Input pixels cropped away (crop mode) take the nearest border value.
    """
    squeeze = values.ndim == 2
    v = values[..., None] if squeeze else values
    h, w = v.shape[:2]
    gx, gy = original_pixel_grid(geom)
    grid = torch.from_numpy(np.stack([(gx + 0.5) / w * 2 - 1, (gy + 0.5) / h * 2 - 1], axis=-1)).to(v.device)
    src = v.permute(2, 0, 1)[None].float()
    out = F.grid_sample(src, grid[None].float(), mode=mode, padding_mode="border", align_corners=False)
    out = out[0].permute(1, 2, 0).to(values.dtype)
    return out[..., 0] if squeeze else out


def intrinsics_to_original(k_net: np.ndarray, geom: FrameGeometry) -> np.ndarray:
    """Pinhole K of the network image → K of the input image (both with pixel centres at integers)."""
    sx, sy = geom.scale_xy
    k = np.array(k_net, np.float64, copy=True)
    k[0, 0] /= sx
    k[1, 1] /= sy
    k[0, 1] /= sy
    k[0, 2] = (k_net[0, 2] - geom.left + 0.5) / sx - 0.5
    k[1, 2] = (k_net[1, 2] - geom.top + 0.5) / sy - 0.5
    return k
