"""VGGT as a :class:`Reconstructor`: one or several RGB(A) images of an object → PointMaps in the first camera frame.

Points come from the depth head unprojected with the predicted camera (default; the VGGT paper reports this as
the more accurate route), or from the point head (``points_from="point_head"``). Network maps are sampled
back at the input image's pixel centres (nearest, so silhouettes do not smear into the background), and the
intrinsics are re-expressed in input pixels.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ...errors import InputError
from ...io.images import split_alpha
from ...pointmap import PointMap
from ..base import Reconstructor
from .model import VGGT
from .pose_encoding import pose_encoding_to_extri_intri
from .preprocess import (
    FrameGeometry,
    intrinsics_to_original,
    load_image,
    original_pixel_grid,
    preprocess_images,
    sample_to_original,
    to_rgb_on_white,
)

MASK_MODES = ("auto", "alpha", "white", "black", "none")


def background_mask(rgb: np.ndarray, colour: str, tol: int = 8) -> np.ndarray:
    """Pixels of a uniform white/black background connected to the image border (object interiors of the same
    colour are kept). Returns True for background."""
    from scipy import ndimage

    arr = rgb.astype(np.int16)
    near = (arr >= 255 - tol).all(axis=2) if colour == "white" else (arr <= tol).all(axis=2)
    labels, _ = ndimage.label(near)
    border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    border = border[border > 0]
    return np.isin(labels, border)


def object_mask(rgb: np.ndarray, alpha: np.ndarray | None, mode: str = "auto") -> np.ndarray:
    """Object mask of an input view: alpha > 0, or not-background (white / black), or everything.

    ``auto``: alpha when the image has a non-trivial alpha channel; otherwise a white or black background when
    more than half of the border pixels have that colour; otherwise all pixels.
    """
    if mode not in MASK_MODES:
        raise InputError(f"mask mode must be one of {', '.join(MASK_MODES)}, got {mode!r}")
    h, w = rgb.shape[:2]
    if mode == "none":
        return np.ones((h, w), bool)
    if mode == "alpha" or (mode == "auto" and alpha is not None and (alpha < 255).any()):
        if alpha is None:
            raise InputError("mask mode 'alpha' needs RGBA images")
        return alpha > 0
    if mode in ("white", "black"):
        return ~background_mask(rgb, mode)
    border = np.concatenate([rgb[0], rgb[-1], rgb[:, 0], rgb[:, -1]]).astype(np.int16)
    for colour in ("white", "black"):
        near = (border >= 247).all(axis=1) if colour == "white" else (border <= 8).all(axis=1)
        if near.mean() > 0.5:
            return ~background_mask(rgb, colour)
    return np.ones((h, w), bool)


def reference_from_camera(extrinsics: np.ndarray, ref: int = 0) -> np.ndarray:
    """(S, 3, 4) world→camera [R|t] → (S, 4, 4) transforms camera_i → camera_ref."""
    s = extrinsics.shape[0]
    w2c = np.tile(np.eye(4), (s, 1, 1))
    w2c[:, :3, :4] = extrinsics
    return w2c[ref] @ np.linalg.inv(w2c)


def transform_points(points: np.ndarray, transform: np.ndarray) -> np.ndarray:
    """Apply a 4x4 rigid transform to (..., 3) points (float64 math)."""
    p = points.astype(np.float64)
    with np.errstate(over="ignore"):  # beyond float32: inf, which the callers mask out as non-finite
        return (p @ transform[:3, :3].T + transform[:3, 3]).astype(np.float32)


class VGGTReconstructor(Reconstructor):
    """Images → PointMaps with VGGT.

    weights:        local file/folder or hub id (default ``facebook/VGGT-1B``); ignored when ``model`` is given.
    device, dtype:  e.g. ``"cpu"``/``"cuda"``, ``"fp32"``/``"bf16"`` (bf16 aggregator weights, float32 heads).
    mode:           ``pad`` (default, whole object kept) or ``crop`` preprocessing.
    points_from:    ``depth`` (depth head + camera unprojection) or ``point_head``.
    mask:           ``auto``/``alpha``/``white``/``black``/``none`` (see :func:`object_mask`).
    conf_percentile: drop masked pixels whose confidence is below this percentile (per view), e.g. 10.
    """

    name = "vggt"

    def __init__(self, weights: str | os.PathLike | None = None, device: str = "cpu", dtype: str = "fp32",
                 mode: str = "pad", points_from: str = "depth", mask: str = "auto",
                 conf_percentile: float | None = None, model: VGGT | None = None) -> None:
        if points_from not in ("depth", "point_head"):
            raise InputError(f"points_from must be 'depth' or 'point_head', got {points_from!r}")
        if mask not in MASK_MODES:
            raise InputError(f"mask mode must be one of {', '.join(MASK_MODES)}, got {mask!r}")
        if conf_percentile is not None and not 0 <= conf_percentile < 100:
            raise InputError(f"conf_percentile must be in [0, 100), got {conf_percentile}")
        self.weights, self.device, self.dtype = weights, device, dtype
        self.mode, self.points_from, self.mask_mode = mode, points_from, mask
        self.conf_percentile = conf_percentile
        self._model = model

    @property
    def model(self) -> VGGT:
        if self._model is None:
            from .pretrained import load_vggt

            self._model = load_vggt(self.weights, device=self.device, dtype=self.dtype)
        return self._model

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """(S, 3, H, W) preprocessed images → raw VGGT predictions (batch dimension removed)."""
        model = self.model
        device = next(model.parameters()).device
        preds = model(images.to(device))
        return {k: v[0] for k, v in preds.items() if isinstance(v, torch.Tensor)}

    def reconstruct(self, inputs: Sequence[Any]) -> list[PointMap]:
        images = [load_image(src) for src in inputs]
        batch, geoms = preprocess_images(images, mode=self.mode)
        preds = self.predict(batch)
        net_h, net_w = batch.shape[-2:]
        extr, intr = pose_encoding_to_extri_intri(preds["pose_enc"][None].float(), image_size_hw=(net_h, net_w))
        extr_np = extr[0].cpu().double().numpy()
        intr_np = intr[0].cpu().double().numpy()
        focal = intr_np[:, [0, 1], [0, 1]]
        if not (np.isfinite(focal).all() and (focal > 0).all() and np.isfinite(extr_np).all()):
            fov = preds["pose_enc"][:, 7:].cpu().numpy().round(4).tolist()
            raise InputError(f"VGGT predicted a degenerate camera (field of view {fov} rad); check the weights")
        to_ref = reference_from_camera(extr_np, ref=0)
        out = []
        for i, (img, geom) in enumerate(zip(images, geoms, strict=True)):
            out.append(self._view(i, img, geom, preds, intr_np[i], extr_np, to_ref[i]))
        return out

    def _view(self, i: int, img: np.ndarray, geom: FrameGeometry, preds: dict[str, torch.Tensor], k_net: np.ndarray,
              extr: np.ndarray, cam_to_ref: np.ndarray) -> PointMap:
        from ...io.pointmap_io import depth_to_points

        rgb = to_rgb_on_white(img)
        k = intrinsics_to_original(k_net, geom)
        if self.points_from == "depth":
            depth = sample_to_original(preds["depth"][i, ..., 0].float().cpu(), geom).numpy()
            conf = sample_to_original(preds["depth_conf"][i].float().cpu(), geom, mode="bilinear").numpy()
            valid = np.isfinite(depth) & (depth > 0)
            # no inf/NaN enters the arithmetic: those pixels are dropped (``valid``) and their points blanked below
            points = transform_points(depth_to_points(np.where(valid, depth, 0.0), k), cam_to_ref)
        else:
            world = sample_to_original(preds["world_points"][i].float().cpu(), geom).numpy()
            conf = sample_to_original(preds["world_points_conf"][i].float().cpu(), geom, mode="bilinear").numpy()
            w2ref = np.eye(4)
            w2ref[:3, :4] = extr[0]
            valid = np.isfinite(world).all(axis=2)
            points = transform_points(np.where(valid[..., None], world, 0.0), w2ref)
            valid &= np.isfinite(points).all(axis=2)
        # Crop mode cuts rows off: those input pixels were never seen by the network.
        gx, gy = original_pixel_grid(geom)
        in_view = (gx >= -0.5) & (gx <= geom.net_w - 0.5) & (gy >= -0.5) & (gy <= geom.net_h - 0.5)
        mask = object_mask(rgb, split_alpha(img)[1], self.mask_mode) & valid & in_view & np.isfinite(points).all(axis=2)
        if self.conf_percentile and mask.any():
            kept = conf[mask]
            # the lower of the two neighbouring values where interpolating would take inf - inf
            method = "linear" if np.isfinite(kept).all() else "lower"
            mask &= conf >= np.percentile(kept, self.conf_percentile, method=method)
        if not mask.any():
            raise InputError(f"view {i}: no pixel left after masking (mask mode {self.mask_mode!r})")
        points = np.where(mask[..., None], points, np.nan).astype(np.float32)
        meta = {"source": "vggt", "view": i, "points_from": self.points_from, "preprocess": self.mode,
                "camera_to_reference": cam_to_ref.tolist(),
                "network_size_hw": [geom.net_h, geom.net_w]}
        # Intrinsics project this view's own camera-frame points; for views > 0 first map the points back with
        # the inverse of ``camera_to_reference``.
        return PointMap(points, conf=conf.astype(np.float32), mask=mask, image=rgb, intrinsics=k, meta=meta)
