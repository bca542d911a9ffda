"""Preview images: the input beside the generated mesh rendered from the input camera and from three turned views
(the sides and the back), shaded grey or in the mesh's vertex colours."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .geometry.render import look_at, raycast
from .pointmap import PointMap
from .turntable import render_coloured


def shade(vertices: np.ndarray, faces: np.ndarray, k: np.ndarray, width: int, height: int,
          cam_from_world: np.ndarray | None = None, color=(0.62, 0.68, 0.78)) -> np.ndarray:
    """(H, W, 3) uint8 Lambert-shaded render on white (a light near the camera)."""
    hit = raycast(vertices, faces, k, width, height, cam_from_world=cam_from_world)
    light = np.array([-0.3, -0.5, -1.0])
    light /= np.linalg.norm(light)
    lam = np.clip(np.nan_to_num(hit.normals) @ light, 0.0, 1.0)
    img = (0.3 + 0.7 * lam)[..., None] * np.asarray(color)[None, None] * 255.0
    return np.where(hit.mask[..., None], img, 255.0).astype(np.uint8)


def orbit_views(vertices_cam: np.ndarray, angles_deg: tuple[float, ...] = (90.0, 180.0),
                distance: float | None = None) -> list[np.ndarray]:
    """cam_from_world poses looking at the mesh's bounding-box centre from the input camera rotated about the
    image's up axis through it (the input's elevation kept), ``distance`` from the centre (default: the input
    camera's distance)."""
    center = (vertices_cam.min(0) + vertices_cam.max(0)) / 2
    dist = max(np.linalg.norm(center), 1e-6) if distance is None else float(distance)
    poses = []
    for a in angles_deg:
        t = np.radians(a)
        # rotate the camera position (origin) about the vertical axis (camera -y) through the centre
        rel = -center
        rot = np.array([[np.cos(t), 0, np.sin(t)], [0, 1, 0], [-np.sin(t), 0, np.cos(t)]])
        eye = center + rot @ rel * (dist / max(np.linalg.norm(rel), 1e-9))
        poses.append(look_at(eye, center, up=(0.0, -1.0, 0.0)))
    return poses


def fit_distance(vertices_cam: np.ndarray, k: np.ndarray, width: int, height: int, fill: float = 0.85) -> float:
    """The distance from the bounding-box centre at which a camera with intrinsics ``k`` looking at it sees the
    mesh's bounding sphere (about that centre) ``fill`` of the tile across, in its narrower direction.

    The sphere's image is the cone of half-angle asin(r / d): it spans ``fill`` of the room beside the principal
    point when tan(asin(r / d)) = fill · room / f, i.e. d = r / sin(atan(fill · room / f)); everything inside the
    sphere, so the whole mesh, is then inside the tile whatever way it turns."""
    v = np.asarray(vertices_cam, np.float64)
    center = (v.min(0) + v.max(0)) / 2
    radius = max(float(np.linalg.norm(v - center, axis=1).max()), 1e-9)
    k = np.asarray(k, np.float64)
    # room from the principal point to the nearer edge, pixel centres on integers (edges at -0.5, size - 0.5)
    room_x = min(k[0, 2] + 0.5, width - 0.5 - k[0, 2])
    room_y = min(k[1, 2] + 0.5, height - 0.5 - k[1, 2])
    tan_half = max(min(fill * room_x / k[0, 0], fill * room_y / k[1, 1]), 1e-9)
    return radius / np.sin(np.arctan(tan_half))


PREVIEW_ANGLES = (90.0, 180.0, 270.0)  # the other views: the input camera turned about the object's vertical axis
PREVIEW_TILE = 256  # smallest side of a preview tile in pixels
PREVIEW_FILL = 0.85  # the turned views: the bounding sphere's share of the tile's narrower side


def _fit_tile(image: np.ndarray, size: int) -> np.ndarray:
    """Nearest-neighbour resize of an (H, W, 3) uint8 image to (size, round(W·size/H), 3)."""
    h, w = image.shape[:2]
    out_w = max(1, int(round(w * size / h)))
    rows = np.minimum((np.arange(size) * h / size).astype(int), h - 1)
    cols = np.minimum((np.arange(out_w) * w / out_w).astype(int), w - 1)
    return image[rows][:, cols]


def preview_panel(vertices_cam: np.ndarray, faces: np.ndarray, pointmap: PointMap,
                  angles_deg: tuple[float, ...] = PREVIEW_ANGLES, tile: int = PREVIEW_TILE,
                  colours: np.ndarray | None = None, fill: float = PREVIEW_FILL) -> np.ndarray:
    """[input | output from the input view | the views turned by ``angles_deg``] as one uint8 image.

    The output tiles are Lambert-shaded: in the mesh's vertex ``colours`` ((V, 3) uint8) when given, else in one
    blue-grey. The input-view tile is the input camera itself; the other views look at the mesh's bounding-box
    centre turned about the vertical axis (the input image's up) through that centre, at the input's elevation
    (90° and 270° show the sides, 180° the back), from as far as makes the mesh's bounding sphere ``fill`` the
    tile (:func:`fit_distance`: the whole object in view, not small nor cut off). Every tile is at least ``tile``
    pixels high: the mesh is rendered with the input intrinsics scaled to that size, the input image is enlarged
    (nearest neighbour).
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

    def render(pose: np.ndarray | None) -> np.ndarray:
        if colours is None:
            return shade(vertices_cam, faces, k, tw, th, cam_from_world=pose)
        # the turntable's renderer: one way to draw a coloured mesh
        return render_coloured(vertices_cam, faces, k, tw, th, cam_from_world=pose, colours=colours)

    tiles = [_fit_tile(inp[..., :3], th)[:, :tw], render(None)]
    if len(vertices_cam) and len(faces):
        dist = fit_distance(vertices_cam, k, tw, th, fill)
        tiles += [render(pose) for pose in orbit_views(vertices_cam, angles_deg, distance=dist)]
    else:  # nothing to turn about: blank tiles keep the panel's layout
        tiles += [np.full((th, tw, 3), 255, np.uint8) for _ in angles_deg]
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
