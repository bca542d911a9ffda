"""Preview images: the input beside the generated mesh rendered from the input camera and from three turned views
(the sides and the back)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .geometry.render import look_at, raycast
from .pointmap import PointMap


def shade(vertices: np.ndarray, faces: np.ndarray, k: np.ndarray, width: int, height: int,
          cam_from_world: np.ndarray | None = None, color=(0.62, 0.68, 0.78)) -> np.ndarray:
    """(H, W, 3) uint8 Lambert-shaded render on white (a light near the camera)."""
    hit = raycast(vertices, faces, k, width, height, cam_from_world=cam_from_world)
    light = np.array([-0.3, -0.5, -1.0])
    light /= np.linalg.norm(light)
    lam = np.clip(np.nan_to_num(hit.normals) @ light, 0.0, 1.0)
    img = (0.3 + 0.7 * lam)[..., None] * np.asarray(color)[None, None] * 255.0
    return np.where(hit.mask[..., None], img, 255.0).astype(np.uint8)


def orbit_views(vertices_cam: np.ndarray, angles_deg: tuple[float, ...] = (90.0, 180.0)) -> list[np.ndarray]:
    """cam_from_world poses looking at the mesh centre from the input camera rotated about the image's up axis."""
    center = (vertices_cam.min(0) + vertices_cam.max(0)) / 2
    dist = max(np.linalg.norm(center), 1e-6)
    poses = []
    for a in angles_deg:
        t = np.radians(a)
        # rotate the camera position (origin) about the vertical axis (camera -y) through the centre
        rel = -center
        rot = np.array([[np.cos(t), 0, np.sin(t)], [0, 1, 0], [-np.sin(t), 0, np.cos(t)]])
        eye = center + rot @ rel * (dist / max(np.linalg.norm(rel), 1e-9))
        poses.append(look_at(eye, center, up=(0.0, -1.0, 0.0)))
    return poses


PREVIEW_ANGLES = (90.0, 180.0, 270.0)  # the other views: the input camera turned about the object's vertical axis
PREVIEW_TILE = 256  # smallest side of a preview tile in pixels


def _fit_tile(image: np.ndarray, size: int) -> np.ndarray:
    """Nearest-neighbour resize of an (H, W, 3) uint8 image to (size, round(W·size/H), 3)."""
    h, w = image.shape[:2]
    out_w = max(1, int(round(w * size / h)))
    rows = np.minimum((np.arange(size) * h / size).astype(int), h - 1)
    cols = np.minimum((np.arange(out_w) * w / out_w).astype(int), w - 1)
    return image[rows][:, cols]


def preview_panel(vertices_cam: np.ndarray, faces: np.ndarray, pointmap: PointMap,
                  angles_deg: tuple[float, ...] = PREVIEW_ANGLES, tile: int = PREVIEW_TILE) -> np.ndarray:
    """[input | output from the input view | the views turned by ``angles_deg``] as one uint8 image.

    The other views look at the mesh's bounding-box centre from the input camera's distance, turned about the
    vertical axis (the input image's up) through that centre: 90° and 270° show the sides, 180° the back. Every
    tile is at least ``tile`` pixels high: the mesh is rendered with the input intrinsics scaled to that size, the
    input image is enlarged (nearest neighbour).
    """
    h, w = pointmap.shape
    scale = max(1.0, tile / h)
    th, tw = int(round(h * scale)), int(round(w * scale))
    k = np.asarray(pointmap.intrinsics, np.float64).copy()
    k[:2] *= scale  # pixel centres on integers: (c + 0.5) * s - 0.5
    k[0, 2] += 0.5 * (scale - 1.0)
    k[1, 2] += 0.5 * (scale - 1.0)
    if pointmap.image is not None:
        inp = np.where(pointmap.mask[..., None], pointmap.image, 255).astype(np.uint8)
    else:
        z = np.where(pointmap.mask, pointmap.points[..., 2], np.nan)
        zn = (z - np.nanmin(z)) / max(np.nanmax(z) - np.nanmin(z), 1e-9)
        inp = np.where(pointmap.mask[..., None], (255 * (1 - 0.8 * zn))[..., None], 255).astype(np.uint8)
        inp = np.repeat(inp, 3, axis=2) if inp.shape[2] == 1 else inp
    tiles = [_fit_tile(inp[..., :3], th)[:, :tw], shade(vertices_cam, faces, k, tw, th)]
    for pose in orbit_views(vertices_cam, angles_deg):
        tiles.append(shade(vertices_cam, faces, k, tw, th, cam_from_world=pose))
    return np.concatenate(tiles, axis=1)


# extension -> PIL format of the images we write (previews, plots)
IMAGE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG"}


def save_image(image: np.ndarray, path: str | os.PathLike) -> Path:
    """Write a uint8 image atomically in the format its extension names (.png, .jpg/.jpeg); others refused."""
    from PIL import Image

    from .errors import InputError
    from .io.atomic import atomic_path

    target = Path(path)
    fmt = IMAGE_FORMATS.get(target.suffix.lower())
    if fmt is None:
        raise InputError(f"unknown image format {target.suffix!r} for {target}; use {' '.join(IMAGE_FORMATS)}")
    img = Image.fromarray(image)
    if fmt == "JPEG" and img.mode not in ("RGB", "L"):
        img = img.convert("RGB")
    with atomic_path(target) as tmp:
        img.save(tmp, format=fmt, **({"quality": 92} if fmt == "JPEG" else {}))
    return target


save_png = save_image  # the former name (it wrote PNG whatever the extension)


def line_plot(steps, values, path: str | os.PathLike, title: str = "", x_label: str = "step",  # noqa: ANN001
              size: tuple[int, int] = (640, 400)) -> None:
    """A minimal log-scale line plot (raw and smoothed) with PIL, no plotting library needed."""
    from PIL import Image, ImageDraw

    w, h = size
    img = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(img)
    x = np.asarray(steps, np.float64)
    y = np.log10(np.maximum(np.asarray(values, np.float64), 1e-12))
    left, right, top, bottom = 60, w - 20, 30, h - 40
    x0, x1 = float(x.min()), float(max(x.max(), x.min() + 1))
    y0, y1 = float(y.min()), float(max(y.max(), y.min() + 1e-6))

    def to_px(xv, yv):
        return left + (xv - x0) / (x1 - x0) * (right - left), bottom - (yv - y0) / (y1 - y0) * (bottom - top)

    draw.rectangle([left, top, right, bottom], outline="black")
    for frac in (0.0, 0.5, 1.0):
        yv = y0 + frac * (y1 - y0)
        _, py = to_px(x0, yv)
        draw.text((5, py - 6), f"{10**yv:.3g}", fill="black")
        xv = x0 + frac * (x1 - x0)
        px, _ = to_px(xv, y0)
        draw.text((px - 10, bottom + 8), f"{xv:.4g}", fill="black")
    draw.line([to_px(a, b) for a, b in zip(x, y, strict=True)], fill=(150, 180, 230), width=1)
    k = max(1, len(y) // 50)
    smooth = np.convolve(y, np.ones(k) / k, mode="valid")
    draw.line([to_px(a, b) for a, b in zip(x[k - 1 :], smooth, strict=True)], fill=(20, 60, 160), width=2)
    draw.text((left, 8), f"{title} (log10 scale) vs {x_label}", fill="black")
    from .io.atomic import atomic_path

    with atomic_path(path, suffix=".png") as tmp:
        img.save(tmp, format="PNG")


# --------------------------------------------------------------------------------------------- batching
