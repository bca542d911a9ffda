"""Readers and writers for :class:`~consistent3dgen.pointmap.PointMap`.

Formats (see ``docs/formats.md``):

* ``.npz``: ``points`` (H, W, 3) camera frame, optional ``conf`` (H, W), ``mask`` (H, W), ``image`` (H, W, 3)
  uint8 and ``intrinsics`` (3, 3).
* depth maps: 16-bit PNG in millimetres, ``.npy`` in metres, ``.exr`` (metres) when the ``OpenEXR`` package is
  importable. Depth 0 or NaN means "no measurement". Unprojected with a pinhole ``K`` given as a 3x3 matrix,
  as ``(fx, fy, cx, cy)``, or as a horizontal field of view in degrees (principal point at the image centre).
  An optional RGB(A) image gives colours (its alpha > 0 is the object mask) and an optional mask image
  (non-zero = object) narrows the mask further; both are read by :func:`~consistent3dgen.io.images.read_image`.
* coloured point clouds: ``.ply`` writer (trimesh).

Every writer is atomic (no partial file on failure) and every bad input raises a one-line ``InputError``.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..pointmap import PointMap
from .atomic import atomic_path, atomic_write_npz
from .images import read_depth_png, read_image

DEPTH_SUFFIXES = (".png", ".npy", ".exr")


def _fail(msg: str) -> InputError:
    """One-line InputError (newlines in wrapped messages would break the CLI's one-line contract)."""
    return InputError(" ".join(str(msg).split()))


# --------------------------------------------------------------------------- intrinsics


def intrinsics_matrix(
    intrinsics: np.ndarray | Sequence[float] | None, width: int, height: int, fov_deg: float | None = None
) -> np.ndarray:
    """3x3 pinhole K from a 3x3 matrix, ``(fx, fy, cx, cy)``, or a horizontal field of view in degrees."""
    if intrinsics is not None and fov_deg is not None:
        raise _fail("give either intrinsics or a field of view, not both")
    if intrinsics is None:
        if fov_deg is None:
            raise _fail("depth maps need intrinsics (3x3 or fx fy cx cy) or a field of view in degrees")
        from ..geometry.render import intrinsics_from_fov

        try:
            fov = float(fov_deg)
        except (TypeError, ValueError):
            raise _fail(f"field of view must be a number of degrees, got {fov_deg!r}") from None
        if not 0.0 < fov < 180.0:  # NaN fails too
            raise _fail(f"field of view must be in (0, 180) degrees, got {fov_deg}")
        # one FoV convention in the package: pixel centres on integer coordinates, axis at the image centre
        k = intrinsics_from_fov(fov, width, height)
    else:
        arr = np.asarray(intrinsics, np.float64)
        if arr.shape == (4,):
            fx, fy, cx, cy = arr
            k = np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])
        elif arr.shape == (3, 3):
            k = arr.copy()
        else:
            raise _fail(f"intrinsics must be a 3x3 matrix or (fx, fy, cx, cy), got shape {arr.shape}")
    if not np.isfinite(k).all():
        raise _fail("intrinsics contain NaN or inf")
    if k[0, 0] <= 0 or k[1, 1] <= 0:
        raise _fail(f"focal lengths must be positive, got fx={k[0, 0]:g} fy={k[1, 1]:g}")
    if not np.allclose(k[2], [0.0, 0.0, 1.0]) or k[1, 0] != 0.0:
        raise _fail("intrinsics must be an upper-triangular pinhole matrix with last row (0, 0, 1)")
    return k


def depth_to_points(depth: np.ndarray, k: np.ndarray) -> np.ndarray:
    """(H, W) z-depth → (H, W, 3) OpenCV camera points; pixel (u, v) is centred at coordinate (u, v)."""
    h, w = depth.shape
    v, u = np.mgrid[0:h, 0:w].astype(np.float64)
    kinv = np.linalg.inv(k)
    z = depth.astype(np.float64)
    # ray = K^-1 (u, v, 1); the last row of K is (0, 0, 1), so the ray's z is 1 and point = z * ray
    x = (kinv[0, 0] * u + kinv[0, 1] * v + kinv[0, 2]) * z
    y = (kinv[1, 1] * v + kinv[1, 2]) * z
    return np.stack([x, y, z], axis=-1).astype(np.float32)


def _read_depth(path: str | os.PathLike) -> np.ndarray:
    """Depth in metres (float64, NaN kept) from PNG (16-bit mm), .npy (m) or .exr (m)."""
    p = Path(path)
    suffix = p.suffix.lower()
    if not p.is_file():
        raise _fail(f"depth file not found: {p}")
    if suffix == ".png":
        depth = read_depth_png(p).astype(np.float64) / 1000.0
    elif suffix == ".npy":
        try:
            depth = np.load(p, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise _fail(f"cannot read depth {p}: {e}") from None
        depth = np.asarray(depth)
        if depth.ndim == 3 and depth.shape[-1] == 1:
            depth = depth[..., 0]
        if not np.issubdtype(depth.dtype, np.number):
            raise _fail(f"depth {p} must be numeric, got {depth.dtype}")
        depth = depth.astype(np.float64)
    elif suffix == ".exr":
        depth = _read_exr(p)
    else:
        raise _fail(f"unsupported depth format {suffix!r}; use .png (16-bit mm), .npy (m) or .exr (m)")
    if depth.ndim != 2:
        raise _fail(f"depth map must be 2-D (H, W), got shape {depth.shape}")
    if depth.shape[0] < 2 or depth.shape[1] < 2:
        raise _fail(f"depth map is too small ({depth.shape[0]}x{depth.shape[1]}); need at least 2x2 pixels")
    return depth


def exr_supported() -> bool:
    """True when the OpenEXR reader is importable (the only EXR reader used: well kept, no plugins)."""
    try:
        import OpenEXR  # noqa: F401
    except ImportError:
        return False
    return True


def _read_exr(p: Path) -> np.ndarray:
    try:
        import OpenEXR
    except ImportError:
        raise _fail(f"reading {p.name} needs the OpenEXR package (pip install OpenEXR); or use .npy/.png") from None
    try:
        with OpenEXR.File(str(p)) as f:
            channels = f.channels()
            name = next((c for c in ("Z", "Y", "R", "depth", "D") if c in channels), None)
            if name is None:
                if len(channels) == 1:
                    name = next(iter(channels))
                else:
                    raise _fail(f"EXR {p} has no depth channel (Z, Y, R or depth): {sorted(channels)}")
            arr = np.asarray(channels[name].pixels, np.float64)
    except InputError:
        raise
    except Exception as e:  # OpenEXR raises plain Exception/RuntimeError on corrupt files
        raise _fail(f"cannot read EXR {p}: {e}") from None
    if arr.ndim == 3:
        arr = arr[..., 0]
    return arr


# --------------------------------------------------------------------------- readers


def depth_to_pointmap(
    depth: np.ndarray,
    intrinsics: np.ndarray | Sequence[float] | None = None,
    fov_deg: float | None = None,
    image: np.ndarray | None = None,
    mask: np.ndarray | None = None,
    conf: np.ndarray | None = None,
) -> PointMap:
    """Depth (metres; 0/NaN invalid) + pinhole intrinsics → PointMap. RGBA alpha > 0 and ``mask`` narrow the mask."""
    d = np.asarray(depth, np.float64)
    if d.ndim != 2 or d.shape[0] < 2 or d.shape[1] < 2:
        raise _fail(f"depth map must be (H, W) with H, W >= 2, got shape {d.shape}")
    h, w = d.shape
    k = intrinsics_matrix(intrinsics, w, h, fov_deg)
    if np.any(np.isinf(d)) or np.any(d < 0):
        raise _fail("depth map has negative or infinite values (use 0 or NaN for 'no depth')")
    valid = np.isfinite(d) & (d > 0)
    rgb = None
    if image is not None:
        img = np.asarray(image)
        if img.ndim != 3 or img.shape[:2] != (h, w) or img.shape[2] not in (3, 4):
            raise _fail(f"image must be (H, W, 3|4) = ({h}, {w}, 3|4) to match the depth, got {img.shape}")
        if img.shape[2] == 4:
            valid &= img[..., 3] > 0
        rgb = img[..., :3]
    if mask is not None:
        m = np.asarray(mask)
        if m.ndim == 3:
            m = m[..., -1] if m.shape[2] in (2, 4) else m.max(axis=2)
        if m.shape != (h, w):
            raise _fail(f"mask must have shape ({h}, {w}) to match the depth, got {m.shape}")
        valid &= m > 0
    if not valid.any():
        raise _fail("no valid pixel: depth is 0/NaN everywhere inside the mask")
    z = np.where(valid, d, 0.0)
    points = depth_to_points(z, k)
    points[~valid] = np.nan
    return PointMap(points, conf=conf, mask=valid, image=rgb, intrinsics=k, meta={"source": "depth"})


def load_depth(
    path: str | os.PathLike,
    intrinsics: np.ndarray | Sequence[float] | str | os.PathLike | None = None,
    fov_deg: float | None = None,
    image: str | os.PathLike | np.ndarray | None = None,
    mask: str | os.PathLike | np.ndarray | None = None,
) -> PointMap:
    """Read a depth map (PNG mm / npy m / exr m) plus optional image and mask files into a PointMap.

    ``intrinsics`` may also be a path to a text/.npy file holding a 3x3 matrix or ``fx fy cx cy``.
    """
    depth = _read_depth(path)
    if isinstance(intrinsics, (str, os.PathLike)):
        intrinsics = _read_intrinsics_file(intrinsics)
    img = read_image(image) if isinstance(image, (str, os.PathLike)) else image
    if img is not None and np.asarray(img).ndim == 2:
        img = np.repeat(np.asarray(img)[..., None], 3, axis=2)
    msk = read_image(mask) if isinstance(mask, (str, os.PathLike)) else mask
    pm = depth_to_pointmap(depth, intrinsics, fov_deg, image=img, mask=msk)
    pm.meta["path"] = str(path)
    return pm


def _read_intrinsics_file(path: str | os.PathLike) -> np.ndarray:
    p = Path(path)
    try:
        arr = np.load(p, allow_pickle=False) if p.suffix.lower() == ".npy" else np.loadtxt(p, ndmin=1)
    except FileNotFoundError:
        raise _fail(f"intrinsics file not found: {p}") from None
    except (OSError, ValueError) as e:
        raise _fail(f"cannot read intrinsics {p}: {e}") from None
    arr = np.asarray(arr, np.float64)
    if arr.size == 9:
        return arr.reshape(3, 3)
    if arr.size == 4:
        return arr.reshape(4)
    raise _fail(f"intrinsics file {p} must hold 9 (3x3) or 4 (fx fy cx cy) numbers, got {arr.size}")


def _what_it_is(p: Path) -> str:
    """A few words on what a file that is not a zip archive looks like, for the error line."""
    try:
        with open(p, "rb") as f:
            head = f.read(512)
    except OSError as e:
        return f"unreadable: {e}"
    if not head:
        return "the file is empty"
    if head.startswith(b"\x93NUMPY"):
        return "it is a single .npy array"
    if head.startswith(b"PK"):
        return "a truncated or corrupt zip archive"
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return "not a zip archive"
    return "it is a text file"


def load_npz(path: str | os.PathLike) -> PointMap:
    """Read a ``.npz`` point map (keys: points, optional conf, mask, image, intrinsics)."""
    p = Path(path)
    if not p.is_file():
        raise _fail(f"point map file not found: {p}")
    if not zipfile.is_zipfile(p):
        raise _fail(f"cannot read point map {p}: not a valid .npz archive ({_what_it_is(p)}); write point maps "
                    "with numpy.savez(path, points=..., mask=...)")
    try:
        with np.load(p, allow_pickle=False) as z:
            arrays = {key: z[key] for key in z.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        if "allow_pickle" in str(e):
            raise _fail(f"cannot read point map {p}: it holds object (pickled) arrays, which are never loaded; "
                        "save plain numeric arrays") from None
        raise _fail(f"cannot read point map {p}: not a valid .npz archive ({e})") from None
    if "points" not in arrays:
        raise _fail(f"{p} has no 'points' array (keys: {sorted(arrays)})")
    pts = np.asarray(arrays["points"])
    if not np.issubdtype(pts.dtype, np.number):
        raise _fail(f"'points' in {p} must be numeric, got {pts.dtype}")
    image = arrays.get("image")
    if image is not None and image.ndim == 3 and image.shape[2] == 4 and "mask" not in arrays:
        arrays["mask"] = (image[..., 3] > 0) & np.isfinite(pts).all(axis=-1)
    pm = PointMap(
        pts,
        conf=arrays.get("conf"),
        mask=arrays.get("mask"),
        image=image,
        intrinsics=arrays.get("intrinsics"),
        meta={"path": str(p)},
    )
    return pm


def load_pointmap(path: str | os.PathLike, **kw) -> PointMap:
    """Dispatch on the extension: ``.npz`` point map, or a depth map (``.png``/``.npy``/``.exr``) with ``kw``."""
    suffix = Path(path).suffix.lower()
    if suffix == ".npz":
        if kw:
            raise _fail(f"options {sorted(kw)} only apply to depth maps, not .npz point maps")
        return load_npz(path)
    if suffix in DEPTH_SUFFIXES:
        return load_depth(path, **kw)
    raise _fail(f"unsupported point map format {suffix!r}; use .npz or a depth map (.png, .npy, .exr)")


# --------------------------------------------------------------------------- writers


def save_npz(pm: PointMap, path: str | os.PathLike) -> None:
    """Write ``pm`` as ``.npz`` atomically (the same keys :func:`load_npz` reads)."""
    arrays = {"points": pm.points, "conf": pm.conf, "mask": pm.mask}
    if pm.image is not None:
        arrays["image"] = pm.image
    if pm.intrinsics is not None:
        arrays["intrinsics"] = pm.intrinsics
    atomic_write_npz(path, **arrays)


def save_ply(pm: PointMap, path: str | os.PathLike, points: np.ndarray | None = None) -> None:
    """Coloured point cloud of the masked points (camera frame unless ``points`` (H, W, 3) is given), atomically."""
    import trimesh

    src = pm.points if points is None else np.asarray(points)
    if src.shape != pm.points.shape:
        raise ValueError(f"points to write must have shape {pm.points.shape}, got {src.shape}")
    xyz = src[pm.mask].astype(np.float64)
    if pm.image is not None:
        rgb = pm.image[pm.mask]
        colors = np.concatenate([rgb, np.full((len(rgb), 1), 255, np.uint8)], axis=1)
    else:
        colors = None
    cloud = trimesh.PointCloud(xyz, colors=colors)
    data = cloud.export(file_type="ply")
    with atomic_path(path, suffix=".ply") as tmp, open(tmp, "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())
