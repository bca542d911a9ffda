"""VGGT as a :class:`Reconstructor`: one or several RGB(A) images of an object → one PointMap per view.

Each view's points are in its own camera frame (its intrinsics project them) and its ``cam_to_world`` is VGGT's
predicted pose relative to the first camera (the identity for the first view), in one pass over all images.

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
from ...io.images import read_mask, split_alpha
from ...pointmap import PointMap
from ...pointmap import transform as apply_transform
from ..base import Reconstructor
from ..segment import SEGMENT_THRESHOLD, BackgroundSegmenter, Segmenter, background_mask, check_alpha, get_segmenter
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
# Confidence filter by default as the official VGGT demo (``visual_util.predictions_to_glb``, demo_gradio's
# slider): drop the pixels below the 50th percentile of the confidences of all pixels of all views.
DEFAULT_CONF_PERCENTILE = 50.0
MIN_CONF = 1e-5  # the demo's floor (conf > 1e-5)


def object_mask(rgb: np.ndarray, alpha: np.ndarray | None, mode: str = "auto") -> np.ndarray:
    """Object mask of an input view from its own pixels: alpha > 0, or not-background (white / black), or all.

    ``auto``: alpha when the image has a non-trivial alpha channel; otherwise a white or black background when
    more than half of the border pixels have that colour; otherwise an :class:`InputError` (an image whose
    object cannot be told from its background needs a mask or a segmenter, never the whole frame silently).
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
    return BackgroundSegmenter(None if mode == "auto" else mode)(rgb) > 0


def reference_from_camera(extrinsics: np.ndarray, ref: int = 0) -> np.ndarray:
    """(S, 3, 4) world→camera [R|t] → (S, 4, 4) transforms camera_i → camera_ref."""
    s = extrinsics.shape[0]
    w2c = np.tile(np.eye(4), (s, 1, 1))
    w2c[:, :3, :4] = extrinsics
    return w2c[ref] @ np.linalg.inv(w2c)


def transform_points(points: np.ndarray, transform: np.ndarray) -> np.ndarray:
    """Apply a 4x4 rigid transform to (..., 3) points (float64 math)."""
    with np.errstate(over="ignore"):  # beyond float32: inf, which the callers mask out as non-finite
        return apply_transform(points, transform).astype(np.float32)


class VGGTReconstructor(Reconstructor):
    """Images → PointMaps with VGGT.

    weights:        local file/folder or hub id (default ``facebook/VGGT-1B``); ignored when ``model`` is given.
    device, dtype:  e.g. ``"cpu"``/``"cuda"``, ``"fp32"``/``"bf16"`` (bf16 aggregator weights, float32 heads).
    mode:           ``pad`` (default, whole object kept) or ``crop`` preprocessing.
    points_from:    ``depth`` (depth head + camera unprojection) or ``point_head``.
    mask:           ``auto`` (``masks``, else the image's alpha, else ``segmenter``), ``alpha``, ``white``/``black``
                    (a uniform background), ``none`` (the whole frame).
    masks:          one object mask per view (path / PIL / array, non-zero = object; None for a view with alpha).
    segmenter:      for images without alpha or mask: a name of :mod:`consistent3dgen.reconstruct.segment`
                    (default ``auto``), a callable, or None (such an image is then an error).
    segmenter_weights: the segmenter's weights (``birefnet``/``auto``: a BiRefNet folder or hub id).
    conf_percentile: drop the pixels whose confidence is below this percentile of the confidences of all pixels
                    of all views (as the official VGGT demo; default 50; 0 keeps all).

    Each view's point map keeps the object's pixels; ``meta["condition_rgba"]`` holds the image with its soft
    alpha (the input's alpha, the mask, or the segmenter's matte), what an image conditioner gets.
    """

    name = "vggt"

    def __init__(self, weights: str | os.PathLike | None = None, device: str = "cpu", dtype: str = "fp32",
                 mode: str = "pad", points_from: str = "depth", mask: str = "auto",
                 conf_percentile: float | None = DEFAULT_CONF_PERCENTILE, model: VGGT | None = None,
                 masks: Sequence[Any] | None = None, segmenter: str | Segmenter | None = "auto",
                 segmenter_weights: str | os.PathLike | None = None) -> None:
        if points_from not in ("depth", "point_head"):
            raise InputError(f"points_from must be 'depth' or 'point_head', got {points_from!r}")
        if mask not in MASK_MODES:
            raise InputError(f"mask mode must be one of {', '.join(MASK_MODES)}, got {mask!r}")
        if conf_percentile is not None and not 0 <= conf_percentile < 100:
            raise InputError(f"conf_percentile must be in [0, 100), got {conf_percentile}")
        if isinstance(segmenter, str):
            from ..segment import segmenter_names

            if segmenter.lower() not in segmenter_names():
                raise InputError(f"unknown segmenter {segmenter!r}; choose one of {', '.join(segmenter_names())}")
        self.weights, self.device, self.dtype = weights, device, dtype
        self.mode, self.points_from, self.mask_mode = mode, points_from, mask
        self.conf_percentile = conf_percentile
        self.masks = None if masks is None else list(masks)
        self.segmenter, self.segmenter_weights = segmenter, segmenter_weights
        self._segmenter: Segmenter | None = None
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
        names = [_describe(src, i) for i, src in enumerate(inputs)]
        given = self._given_masks(images, names)
        # the object of each view (a segmenter, when one runs, before VGGT loads)
        alphas = [self._alpha(img, m, name) for img, m, name in zip(images, given, names, strict=True)]
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
        views = [self._view(i, img, geom, preds, intr_np[i], extr_np, to_ref[i])
                 for i, (img, geom) in enumerate(zip(images, geoms, strict=True))]
        keep = self._confident(views)
        return [self._pointmap(i, v, alpha, k, to_ref[i], geom)
                for i, (v, alpha, k, geom) in enumerate(zip(views, alphas, keep, geoms, strict=True))]

    # ------------------------------------------------------------------------------------------- masks

    def _given_masks(self, images: list[np.ndarray], names: list[str]) -> list[np.ndarray | None]:
        """The ``masks`` as (H, W) uint8 alphas, one per view (None where none was given), sizes checked."""
        if self.masks is None:
            return [None] * len(images)
        if len(self.masks) != len(images):
            raise InputError(f"{len(self.masks)} masks for {len(images)} images: give one mask per image")
        return [None if m is None else read_mask(m, img.shape[:2], f"mask of {name}")
                for m, img, name in zip(self.masks, images, names, strict=True)]

    def _alpha(self, img: np.ndarray, given: np.ndarray | None, name: str) -> tuple[np.ndarray, np.ndarray]:
        """(soft alpha uint8, object mask bool) of one view: the given mask, the image's alpha, or a segmenter."""
        rgb, alpha = split_alpha(img)
        if given is not None:
            return given, given > 0
        has_alpha = alpha is not None and bool((alpha < 255).any())
        if self.mask_mode == "alpha" or (self.mask_mode == "auto" and has_alpha):
            if alpha is None:
                raise InputError(f"{name}: mask mode 'alpha' needs an RGBA image")
            return alpha, alpha > 0
        if self.mask_mode != "auto":  # white / black background, or none (the whole frame)
            try:
                mask = object_mask(rgb, None, self.mask_mode)
            except InputError as e:
                raise InputError(f"{name}: {e}") from None
            return np.where(mask, 255, 0).astype(np.uint8), mask
        if self._segmenter is None:
            if self.segmenter is None:
                raise InputError(f"{name} has no alpha channel and no mask: give an RGBA image (alpha = the "
                                 "object), a mask, or a segmenter")
            if self._model is None:  # missing VGGT weights are one line before a segmenter is fetched or run
                from .pretrained import resolve_weights

                resolve_weights(self.weights)
            self._segmenter = get_segmenter(self.segmenter, self.segmenter_weights, self.device)
        who = f"segmenter {getattr(self._segmenter, 'name', type(self._segmenter).__name__)}"
        try:
            soft = check_alpha(self._segmenter(np.ascontiguousarray(rgb)), rgb.shape[:2], who)
        except InputError as e:
            raise InputError(f"{name}: {e}") from None
        return soft, soft >= SEGMENT_THRESHOLD

    # ------------------------------------------------------------------------------------------- views

    def _view(self, i: int, img: np.ndarray, geom: FrameGeometry, preds: dict[str, torch.Tensor], k_net: np.ndarray,
              extr: np.ndarray, cam_to_ref: np.ndarray) -> dict[str, np.ndarray]:
        """One view's points (its own camera frame), confidence and valid pixels, at the input image's pixels."""
        from ...io.pointmap_io import depth_to_points

        k = intrinsics_to_original(k_net, geom)
        if self.points_from == "depth":
            depth = sample_to_original(preds["depth"][i, ..., 0].float().cpu(), geom).numpy()
            conf = sample_to_original(preds["depth_conf"][i].float().cpu(), geom, mode="bilinear").numpy()
            valid = np.isfinite(depth) & (depth > 0)
            # no inf/NaN enters the arithmetic: those pixels are dropped (``valid``) and their points blanked below
            points = depth_to_points(np.where(valid, depth, 0.0), k).astype(np.float32)
        else:
            world = sample_to_original(preds["world_points"][i].float().cpu(), geom).numpy()
            conf = sample_to_original(preds["world_points_conf"][i].float().cpu(), geom, mode="bilinear").numpy()
            w2cam = np.eye(4)
            w2cam[:3, :4] = extr[i]  # VGGT's world frame → this view's camera
            valid = np.isfinite(world).all(axis=2)
            points = transform_points(np.where(valid[..., None], world, 0.0), w2cam)
            valid &= np.isfinite(points).all(axis=2)
        # Crop mode cuts rows off: those input pixels were never seen by the network.
        gx, gy = original_pixel_grid(geom)
        in_view = (gx >= -0.5) & (gx <= geom.net_w - 0.5) & (gy >= -0.5) & (gy <= geom.net_h - 0.5)
        valid &= in_view & np.isfinite(points).all(axis=2)
        return {"points": points, "conf": conf, "valid": valid, "k": k, "rgb": to_rgb_on_white(img), "image": img}

    def _confident(self, views: list[dict[str, np.ndarray]]) -> list[np.ndarray]:
        """Per view: conf ≥ the ``conf_percentile`` percentile of every valid pixel of every view (the official
        demo's filter; the whole frames, before the object mask) and conf > 1e-5."""
        keep = [v["valid"] & (v["conf"] > MIN_CONF) for v in views]
        if not self.conf_percentile:
            return keep
        pooled = np.concatenate([v["conf"][v["valid"] & ~np.isnan(v["conf"])] for v in views])
        if pooled.size == 0:
            return keep
        # the lower of the two neighbouring values where interpolating would take inf - inf
        method = "linear" if np.isfinite(pooled).all() else "lower"
        threshold = np.percentile(pooled, self.conf_percentile, method=method)
        return [k & (v["conf"] >= threshold) for k, v in zip(keep, views, strict=True)]

    def _pointmap(self, i: int, view: dict[str, np.ndarray], alpha: tuple[np.ndarray, np.ndarray],
                  keep: np.ndarray, cam_to_ref: np.ndarray, geom: FrameGeometry) -> PointMap:
        soft, obj = alpha
        mask = obj & keep
        if not mask.any():
            why = "no object pixel" if not obj.any() else f"none of its {int(obj.sum())} object pixels"
            raise InputError(f"view {i}: {why} left after masking (mask mode {self.mask_mode!r}, confidence "
                             f"percentile {self.conf_percentile or 0:g})")
        points = np.where(mask[..., None], view["points"], np.nan).astype(np.float32)
        meta = {"source": "vggt", "view": i, "points_from": self.points_from, "preprocess": self.mode,
                "network_size_hw": [geom.net_h, geom.net_w],
                "conf_percentile": float(self.conf_percentile or 0.0),
                # the image with its soft object alpha, for an image conditioner (official preprocessing)
                "condition_rgba": np.dstack([split_alpha(view["image"])[0], soft]).astype(np.uint8)}
        # points in this view's own camera frame (its intrinsics project them); cam_to_world: → the first camera
        return PointMap(points, conf=view["conf"].astype(np.float32), mask=mask, image=view["rgb"],
                        intrinsics=view["k"], meta=meta, cam_to_world=cam_to_ref)


def _describe(src: Any, i: int) -> str:
    """``image <path>`` or ``image <i>`` (an in-memory image), for error lines."""
    return f"image {os.fspath(src)}" if isinstance(src, (str, os.PathLike)) else f"image {i}"


__all__ = ["DEFAULT_CONF_PERCENTILE", "MASK_MODES", "VGGTReconstructor", "background_mask", "object_mask",
           "reference_from_camera", "transform_points"]
