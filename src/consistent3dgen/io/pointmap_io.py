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

Sizes (:mod:`consistent3dgen.limits`): every reader takes the size from the file's header first and refuses more
than ``max_input_pixels`` pixels before decoding anything; a map above ``max_pixels`` is read at every s-th pixel
(:func:`~consistent3dgen.pointmap.pixel_stride`; ``.npy`` through a memory map and ``.npz`` row by row, so only the
kept rows are held) with its intrinsics adjusted, and ``meta["downscale"]`` records it.
"""

from __future__ import annotations

import os
import struct
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import InputError, one_line
from ..limits import DEFAULT_MAX_INPUT_PIXELS, DEFAULT_MAX_PIXELS, check_input_pixels
from ..pointmap import PointMap, downscale_intrinsics, downscale_record, pixel_stride, stride_offset, stride_pixels
from .atomic import atomic_path, atomic_write_npz
from .images import read_depth_png, read_image

DEPTH_SUFFIXES = (".png", ".npy", ".exr")


def _fail(msg: str) -> InputError:
    """One-line InputError (newlines in wrapped messages would break the CLI's one-line contract)."""
    return InputError(one_line(msg))


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
    with np.errstate(over="ignore"):  # depths beyond float32 become inf: PointMap names them in one line
        return np.stack([x, y, z], axis=-1).astype(np.float32)


def _read_depth(path: str | os.PathLike, max_pixels: int | None = DEFAULT_MAX_PIXELS,
                max_input_pixels: int = DEFAULT_MAX_INPUT_PIXELS) -> tuple[np.ndarray, tuple[int, int], int]:
    """(depth in metres (float64, NaN kept) at the kept pixels, the file's (H, W), the stride) from PNG (16-bit mm),
    .npy (m) or .exr (m). The size comes from the header first: above ``max_input_pixels`` nothing is decoded."""
    p = Path(path)
    suffix = p.suffix.lower()
    if not p.is_file():
        raise _fail(f"depth file not found: {p}")
    if suffix not in DEPTH_SUFFIXES:
        raise _fail(f"unsupported depth format {suffix!r}; use .png (16-bit mm), .npy (m) or .exr (m)")
    shape = depth_file_shape(p)
    if shape is not None:
        _check_depth_shape(shape)
        check_input_pixels(f"depth map {p}", shape[0], shape[1], max_input_pixels)
    stride = 1 if shape is None or max_pixels is None else pixel_stride(shape[0], shape[1], max_pixels)
    if suffix == ".png":
        depth = stride_pixels(read_depth_png(p), stride).astype(np.float64) / 1000.0
    elif suffix == ".npy":
        try:
            # a memory map: only the kept rows are read when the map is downscaled
            depth = np.load(p, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as e:
            raise _fail(f"cannot read depth {p}: {e}") from None
        if depth.ndim == 3 and depth.shape[-1] == 1:
            depth = depth[..., 0]
        if not np.issubdtype(depth.dtype, np.number) or np.iscomplexobj(depth):
            raise _fail(f"depth {p} must hold real numbers, got {depth.dtype}")
        depth = np.array(stride_pixels(depth, stride), np.float64)
    else:
        depth = _read_exr(p)
    if shape is None:  # a header we could not read: the decoded array tells
        _check_depth_shape(depth.shape)
        check_input_pixels(f"depth map {p}", depth.shape[0], depth.shape[1], max_input_pixels)
        shape = depth.shape
        stride = 1 if max_pixels is None else pixel_stride(shape[0], shape[1], max_pixels)
        depth = np.array(stride_pixels(depth, stride), np.float64)
    return depth, (int(shape[0]), int(shape[1])), stride


def _check_depth_shape(shape: tuple[int, ...]) -> None:
    if len(shape) != 2:
        raise _fail(f"depth map must be 2-D (H, W), got shape {tuple(shape)}")
    if shape[0] < 2 or shape[1] < 2:
        raise _fail(f"depth map is too small ({shape[0]}x{shape[1]}); need at least 2x2 pixels")


# --------------------------------------------------------------------------- sizes from headers


def depth_file_shape(path: str | os.PathLike) -> tuple[int, ...] | None:
    """The depth map's shape from the file's header only ((H, W) for PNG/EXR; the array's shape, with a trailing
    1 dropped, for .npy), or None when the header cannot be read (the decoder then reports the problem)."""
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix == ".png":
        size = png_size(p)
        return None if size is None else (size[1], size[0])
    if suffix == ".npy":
        try:
            with open(p, "rb") as f:
                shape, _, _ = _npy_header(f)
        except (OSError, ValueError, EOFError):
            return None
        return shape[:2] if len(shape) == 3 and shape[2] == 1 else shape
    if suffix == ".exr":
        size = exr_size(p)
        return None if size is None else (size[1], size[0])
    return None


def png_size(path: str | os.PathLike) -> tuple[int, int] | None:
    """(width, height) from a PNG's IHDR chunk (the first 24 bytes), or None when it is not a PNG."""
    try:
        with open(path, "rb") as f:
            head = f.read(24)
    except OSError:
        return None
    if len(head) < 24 or head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
        return None
    return struct.unpack(">II", head[16:24])


def image_size(path: str | os.PathLike) -> tuple[int, int] | None:
    """(width, height) of an image file from its header (PNG directly, other formats through PIL's lazy open)."""
    size = png_size(path)
    if size is not None:
        return size
    import warnings

    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as im:
                return im.size
    except Exception:  # noqa: BLE001 - unreadable or beyond PIL's own bomb guard: the reader reports it
        return None


def exr_size(path: str | os.PathLike) -> tuple[int, int] | None:
    """(width, height) from an OpenEXR header's ``dataWindow`` (first part), or None when it cannot be read."""
    try:
        with open(path, "rb") as f:
            data = f.read(1 << 16)
    except OSError:
        return None
    if data[:4] != b"\x76\x2f\x31\x01":
        return None
    pos = 8
    try:
        while pos < len(data) and data[pos] != 0:
            name_end = data.index(b"\0", pos)
            type_end = data.index(b"\0", name_end + 1)
            name, kind = data[pos:name_end], data[name_end + 1:type_end]
            (size,) = struct.unpack("<i", data[type_end + 1:type_end + 5])
            value = data[type_end + 5:type_end + 5 + size]
            if name == b"dataWindow" and kind == b"box2i" and len(value) == 16:
                x0, y0, x1, y1 = struct.unpack("<4i", value)
                return x1 - x0 + 1, y1 - y0 + 1
            pos = type_end + 5 + size
    except (ValueError, struct.error):
        return None
    return None


def _npy_header(f) -> tuple[tuple[int, ...], bool, np.dtype]:  # noqa: ANN001 - a binary file object
    """(shape, fortran_order, dtype) of the .npy stream at ``f`` (left just after the header); nothing decoded."""
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
    elif version == (2, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
    else:
        raise ValueError(f"unsupported .npy format version {version}")
    return tuple(int(n) for n in shape), bool(fortran), dtype


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
    *,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> PointMap:
    """Depth (metres; 0/NaN invalid) + pinhole intrinsics → PointMap. RGBA alpha > 0 and ``mask`` narrow the mask.

    A map above ``max_pixels`` (None: no limit) is unprojected at every s-th pixel only, with K adjusted
    (:func:`~consistent3dgen.pointmap.downscale_intrinsics`): the points are the full map's at those pixels.
    """
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
    stride = 1 if max_pixels is None else pixel_stride(h, w, max_pixels)
    meta: dict = {"source": "depth"}
    if stride > 1:
        d, valid, rgb, conf = (stride_pixels(a, stride) for a in (d, valid, rgb, conf))
        k = downscale_intrinsics(k, stride)
        meta["downscale"] = downscale_record(h, w, stride)
        if not valid.any():
            raise _fail(f"no valid pixel left after downscaling the {w}x{h} depth map by {stride} (max_pixels "
                        f"{max_pixels:,}); raise --max-pixels")
    z = np.where(valid, d, 0.0)
    points = depth_to_points(z, k)
    points[~valid] = np.nan
    return PointMap(points, conf=conf, mask=valid, image=rgb, intrinsics=k, meta=meta)


def load_depth(
    path: str | os.PathLike,
    intrinsics: np.ndarray | Sequence[float] | str | os.PathLike | None = None,
    fov_deg: float | None = None,
    image: str | os.PathLike | np.ndarray | None = None,
    mask: str | os.PathLike | np.ndarray | None = None,
    *,
    cam_to_world: str | os.PathLike | np.ndarray | None = None,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    max_input_pixels: int = DEFAULT_MAX_INPUT_PIXELS,
) -> PointMap:
    """Read a depth map (PNG mm / npy m / exr m) plus optional image and mask files into a PointMap.

    ``intrinsics`` may also be a path to a text/.npy file holding a 3x3 matrix or ``fx fy cx cy``;
    ``cam_to_world`` a 4x4 pose or a text/.npy file holding one (:func:`read_pose`). Sizes: see the module
    docstring (files above ``max_input_pixels`` are refused unread, maps above ``max_pixels`` downscaled).
    """
    pose = read_pose(cam_to_world) if cam_to_world is not None else None
    depth, (h, w), stride = _read_depth(path, max_pixels, max_input_pixels)
    if isinstance(intrinsics, (str, os.PathLike)):
        intrinsics = _read_intrinsics_file(intrinsics)
    k = intrinsics_matrix(intrinsics, w, h, fov_deg)  # the file's size: a field of view means the full image
    img = _read_beside(image, "image", (h, w), path)
    if img is not None and np.asarray(img).ndim == 2:
        img = np.repeat(np.asarray(img)[..., None], 3, axis=2)
    msk = _read_beside(mask, "mask", (h, w), path)
    if stride > 1:
        img, msk = _stride_beside(img, "image", (h, w), stride), _stride_beside(msk, "mask", (h, w), stride)
    pm = depth_to_pointmap(depth, downscale_intrinsics(k, stride) if stride > 1 else k, None, image=img, mask=msk,
                           max_pixels=None)
    if stride > 1:
        pm.meta["downscale"] = downscale_record(h, w, stride)
    pm.meta["path"] = str(path)
    pm.cam_to_world = pose
    return pm


def read_pose(source: str | os.PathLike | np.ndarray | Sequence[float]) -> np.ndarray:
    """A camera pose (``cam_to_world``, OpenCV camera → shared frame): a 4x4 / 3x4 matrix, 16 / 12 numbers, or a
    text / ``.npy`` file holding them; checked rigid (:func:`~consistent3dgen.pointmap.check_pose`)."""
    from ..pointmap import check_pose

    what = "cam_to_world"
    arr = source
    if isinstance(source, (str, os.PathLike)):
        what = f"pose file {source}"
        arr = _read_numbers_file(source, "pose")
    try:
        arr = np.asarray(arr, np.float64)
    except (TypeError, ValueError):
        raise _fail(f"{what} must be numbers") from None
    if arr.size not in (12, 16):
        raise _fail(f"{what} must hold a 4x4 (16 numbers) or 3x4 (12) camera-to-world matrix, got {arr.size}")
    return check_pose(arr.reshape(-1, 4), what)


def _read_beside(source: str | os.PathLike | np.ndarray | None, what: str, shape: tuple[int, int],
                 depth_path: str | os.PathLike) -> np.ndarray | None:
    """An image / mask file beside a depth map, its size checked from the header before it is decoded."""
    if not isinstance(source, (str, os.PathLike)):
        return source
    size = image_size(source) if os.path.isfile(source) else None
    if size is not None and (size[1], size[0]) != shape:
        raise _fail(f"{what} {source} is {size[0]}x{size[1]} pixels but the depth map {depth_path} is "
                    f"{shape[1]}x{shape[0]}: they must match")
    return read_image(source)


def _stride_beside(array: np.ndarray | None, what: str, shape: tuple[int, int], stride: int) -> np.ndarray | None:
    """The kept pixels of an image / mask array of the depth map's full size (the size checked first)."""
    if array is None:
        return None
    a = np.asarray(array)
    if a.shape[:2] != shape:
        raise _fail(f"{what} must have shape ({shape[0]}, {shape[1]}) to match the depth, got {a.shape}")
    return stride_pixels(a, stride)


def _read_numbers_file(path: str | os.PathLike, what: str) -> np.ndarray:
    """The numbers of a text (``numpy.savetxt``) or ``.npy`` file holding a small matrix, as float64; a missing or
    unreadable file is one line naming ``what`` (intrinsics, pose)."""
    p = Path(path)
    try:
        arr = np.load(p, allow_pickle=False) if p.suffix.lower() == ".npy" else np.loadtxt(p, ndmin=1)
    except FileNotFoundError:
        raise _fail(f"{what} file not found: {p}") from None
    except (OSError, ValueError) as e:
        raise _fail(f"cannot read {what} {p}: {one_line(e)}") from None
    return np.asarray(arr, np.float64)


def _read_intrinsics_file(path: str | os.PathLike) -> np.ndarray:
    p = Path(path)
    arr = _read_numbers_file(p, "intrinsics")
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


# the members read; any other is left undecoded
NPZ_KEYS = ("points", "conf", "mask", "image", "intrinsics", "cam_to_world")
_PER_PIXEL_KEYS = ("points", "conf", "mask", "image")
_ROW_BLOCK_BYTES = 16 * 2**20  # rows skipped while streaming a downscaled member are read in blocks of this size


def load_npz(path: str | os.PathLike, *, max_pixels: int | None = DEFAULT_MAX_PIXELS,
             max_input_pixels: int = DEFAULT_MAX_INPUT_PIXELS) -> PointMap:
    """Read a ``.npz`` point map (keys: points, optional conf, mask, image, intrinsics).

    The members' shapes come from their headers first: more than ``max_input_pixels`` pixels is refused before
    anything is decoded; above ``max_pixels`` the per-pixel members are streamed row by row, keeping every s-th
    pixel (:func:`~consistent3dgen.pointmap.pixel_stride`), so only the kept rows are ever held.
    """
    p = Path(path)
    if not p.is_file():
        raise _fail(f"point map file not found: {p}")
    if not zipfile.is_zipfile(p):
        raise _fail(f"cannot read point map {p}: not a valid .npz archive ({_what_it_is(p)}); write point maps "
                    "with numpy.savez(path, points=..., mask=...)")
    try:
        with zipfile.ZipFile(p) as zf:
            members = {n[:-4]: n for n in zf.namelist() if n.endswith(".npy")}
            if "points" not in members:
                raise _fail(f"{p} has no 'points' array (keys: {sorted(members)})")
            headers = {}
            for key in NPZ_KEYS:
                if key in members:
                    with zf.open(members[key]) as f:
                        headers[key] = _npy_header(f)
            if any(dtype.hasobject for _, _, dtype in headers.values()):
                raise _fail(f"cannot read point map {p}: it holds object (pickled) arrays, which are never loaded; "
                            "save plain numeric arrays")
            stride = _npz_stride(p, headers, max_pixels, max_input_pixels)
            arrays = {key: _read_member(zf, members[key], stride if key in _PER_PIXEL_KEYS else 1, p)
                      for key in headers}
    except InputError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise _fail(f"cannot read point map {p}: not a valid .npz archive ({e})") from None
    pts = np.asarray(arrays["points"])
    if not np.issubdtype(pts.dtype, np.number):
        raise _fail(f"'points' in {p} must be numeric, got {pts.dtype}")
    image = arrays.get("image")
    if image is not None and image.ndim == 3 and image.shape[2] == 4 and "mask" not in arrays:
        arrays["mask"] = (image[..., 3] > 0) & np.isfinite(pts).all(axis=-1)
    intrinsics = arrays.get("intrinsics")
    meta: dict = {"path": str(p)}
    if stride > 1:
        h, w = headers["points"][0][:2]
        meta["downscale"] = downscale_record(h, w, stride)
        if intrinsics is not None and np.shape(intrinsics) == (3, 3):
            intrinsics = downscale_intrinsics(intrinsics, stride)
    pm = PointMap(
        pts,
        conf=arrays.get("conf"),
        mask=arrays.get("mask"),
        image=image,
        intrinsics=intrinsics,
        meta=meta,
        cam_to_world=arrays.get("cam_to_world"),
    )
    return pm


def _npz_stride(p: Path, headers: dict, max_pixels: int | None, max_input_pixels: int) -> int:
    """The stride the per-pixel members are read at, from their headers (size refused, shapes matched, first)."""
    shape = headers["points"][0]
    if len(shape) < 2:
        return 1  # PointMap reports the shape
    h, w = shape[:2]
    check_input_pixels(f"point map {p}", h, w, max_input_pixels)
    if "intrinsics" in headers and int(np.prod(headers["intrinsics"][0])) > 16:
        raise _fail(f"intrinsics in {p} must be a 3x3 matrix, got shape {headers['intrinsics'][0]}")
    if "cam_to_world" in headers and int(np.prod(headers["cam_to_world"][0])) > 16:
        raise _fail(f"cam_to_world in {p} must be a 4x4 matrix, got shape {headers['cam_to_world'][0]}")
    stride = 1 if max_pixels is None else pixel_stride(h, w, max_pixels)
    if stride > 1:  # PointMap would name the downscaled shapes: name the file's instead
        for key in _PER_PIXEL_KEYS[1:]:
            if key in headers and tuple(headers[key][0][:2]) != (h, w):
                raise _fail(f"{key} in {p} has shape {headers[key][0]} but points {shape}: the first two "
                            "dimensions must match")
    return stride


def _read_member(zf: zipfile.ZipFile, name: str, stride: int, p: Path) -> np.ndarray:
    """One .npy member of the archive, at every ``stride``-th pixel of its first two axes (streamed by rows)."""
    with zf.open(name) as f:
        shape, fortran, dtype = _npy_header(f)
        if stride > 1 and not fortran and len(shape) >= 2:
            return _stream_rows(f, shape, dtype, stride, f"cannot read point map {p}: member {name} is truncated")
    with zf.open(name) as f:  # whole (a Fortran-order member, too, which cannot be streamed by rows)
        return stride_pixels(np.lib.format.read_array(f, allow_pickle=False), stride)


def _stream_rows(f, shape: tuple[int, ...], dtype: np.dtype, stride: int, truncated: str) -> np.ndarray:  # noqa: ANN001
    """The kept rows and columns of a C-order array whose data ``f`` is positioned at; one row held at a time."""
    h, w, rest = shape[0], shape[1], shape[2:]
    row_bytes = int(w * int(np.prod(rest, dtype=np.int64)) * dtype.itemsize)
    o = stride_offset(stride)
    rows = range(o, h, stride)
    out = np.empty((len(rows), len(range(o, w, stride)), *rest), dtype)
    at = 0  # the next row in the stream
    for i, r in enumerate(rows):
        skip = (r - at) * row_bytes
        while skip > 0:
            got = len(f.read(min(skip, _ROW_BLOCK_BYTES)))
            if got == 0:
                raise _fail(truncated)
            skip -= got
        buf = _read_exact(f, row_bytes)
        if buf is None:
            raise _fail(truncated)
        out[i] = np.frombuffer(buf, dtype).reshape(w, *rest)[o::stride]
        at = r + 1
    return out


def _read_exact(f, n: int) -> bytes | None:  # noqa: ANN001 - a binary file object
    parts, left = [], n
    while left > 0:
        chunk = f.read(left)
        if not chunk:
            return None
        parts.append(chunk)
        left -= len(chunk)
    return b"".join(parts)


def load_pointmap(path: str | os.PathLike, **kw) -> PointMap:
    """Dispatch on the extension: ``.npz`` point map, or a depth map (``.png``/``.npy``/``.exr``) with ``kw``.

    ``max_pixels`` and ``max_input_pixels`` apply to both; the other keywords to depth maps only.
    """
    suffix = Path(path).suffix.lower()
    if suffix == ".npz":
        limits = {k: kw.pop(k) for k in ("max_pixels", "max_input_pixels") if k in kw}
        if kw:
            raise _fail(f"options {sorted(kw)} only apply to depth maps, not .npz point maps")
        return load_npz(path, **limits)
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
    if pm.cam_to_world is not None:
        arrays["cam_to_world"] = pm.cam_to_world
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
