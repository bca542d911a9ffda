"""Bounds on what one run may take: pixels read and used, and memory estimated before each large allocation.

Nothing in the pipeline is unbounded by construction: a point map's cost grows with its pixels, the thin shell's
with the seen surface's area in voxels, a sparse stage's with its tokens. So each of them is bounded here, and a run
that would pass a bound is downscaled (pixels) or refused with one :class:`~consistent3dgen.errors.InputError` line
naming the estimate, the limit and the option that changes it, *before* the allocation.

Pixels (:data:`DEFAULT_MAX_PIXELS`, :data:`DEFAULT_MAX_INPUT_PIXELS`). The seen surface has two triangles per
pixel, but the generator's finest stage is 1024³ voxels and the object spans about half the image, so about
2 k pixels on a side already give more than one pixel per voxel there; more adds time and memory, not detail
(spot at 512³: 1024² pixels → 577 k shell voxels, 1.6–4.6 s, 150 MB; 2048² → 579 k voxels, 16 s, 607 MB). A point
map above ``max_pixels`` (default 2048² ≈ 4.2 MP) is downscaled by an integer stride (nearest pixel, intrinsics
adjusted exactly: :func:`consistent3dgen.pointmap.downscale_pointmap`); a file whose header says it holds more than
``max_input_pixels`` (default 8192² ≈ 67 MP, a stride above 4) is refused before it is decoded.

Memory (``max_memory_gb``; default :data:`DEFAULT_MEMORY_FRACTION` of the memory available when the check runs).
Estimates, all upper bounds on what was measured (see ``tests/test_limits.py`` and the constants' comments):

* seen surface: :data:`SURFACE_BYTES_PER_PIXEL` × pixels (point map → mesh → canonical frame);
* thin shell: its voxels are bounded from the seen mesh by the tube formula
  ``2ρA + (π/2)ρ²L + (4/3)πρ³C`` (area A, boundary length L, pieces C, all in voxel units, ρ = band + ½), capped
  by the band around the mesh's bounding box (:func:`shell_voxel_bound`); × :data:`SHELL_BYTES_PER_VOXEL` (Warp
  backend) or, for the NumPy fallback, the (voxel, triangle) pairs it holds × :data:`SHELL_BYTES_PER_PAIR`;
* a stage's encoding of the shell (:func:`encode_bytes`) and a sparse stage's sampling + decoding of its tokens
  (:func:`sparse_stage_bytes`): per-voxel / per-token costs from the stage's widths, calibrated on the mini prior's
  architecture at widths 96–384 (not measured on the full-size Direct3D-S2, whose weights were not available);
  a stage may bring its own numbers as ``memory_per_token`` / ``memory_per_shell_voxel`` attributes (bytes).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import InputError

DEFAULT_MAX_PIXELS = 2048 * 2048
DEFAULT_MAX_INPUT_PIXELS = 8192 * 8192
DEFAULT_MEMORY_FRACTION = 0.8  # of MemAvailable when no max_memory_gb is given
GB = 1e9

# point map → seen mesh → canonical: measured 133–145 B per pixel (spot 512² … 2048², peak RSS increase)
SURFACE_BYTES_PER_PIXEL = 160
# thin shell with the Warp kernels (column slots + compaction + latent cells): measured 36–42 B per voxel
SHELL_BYTES_PER_VOXEL = 48
# thin shell with the NumPy fallback: every (voxel, triangle) pair within reach is kept, then sorted: 64–68 B each
SHELL_BYTES_PER_PAIR = 72
# sparse stage sampling (DiT, no grad): measured ≤ 46 KB + 70 B per channel per token (widths 96–384)
DIT_BYTES_PER_TOKEN = 48 * 1024
DIT_BYTES_PER_TOKEN_CHANNEL = 80
# decoding: 8³ voxels per token; measured ~245 B per output voxel for the mini decoder (8 channels at the end)
DECODE_BYTES_PER_VOXEL = 96
DECODE_BYTES_PER_VOXEL_CHANNEL = 20
# encoding the shell: measured ≤ 245 B per voxel for the mini encoder (4 channels at full resolution)
ENCODE_BYTES_PER_VOXEL = 64
ENCODE_BYTES_PER_VOXEL_CHANNEL = 48
STAGE_FIXED_BYTES = 256 * 2**20  # attention chunk scratch and allocator slack, once per stage


# --------------------------------------------------------------------------- the memory limit


def available_memory_bytes() -> int | None:
    """Memory the system can give now without swapping (``MemAvailable``), or None when it cannot tell."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, OSError, ValueError):
        return None


@dataclass(frozen=True)
class MemoryLimit:
    bytes: float | None  # None: unknown (no check)
    source: str  # how it was set, for the error line


def memory_limit(max_memory_gb: float | None = None, device: Any = None) -> MemoryLimit:
    """``max_memory_gb`` when given, else :data:`DEFAULT_MEMORY_FRACTION` of the memory available now (of the
    GPU's free memory when ``device`` is a CUDA device)."""
    if max_memory_gb is not None:
        return MemoryLimit(float(max_memory_gb) * GB, "max_memory_gb")
    free, where = None, ""
    if device is not None and getattr(device, "type", str(device).split(":")[0]) == "cuda":
        try:
            import torch

            free, where = int(torch.cuda.mem_get_info(device)[0]), " on the GPU"
        except Exception:  # noqa: BLE001 - no usable CUDA runtime: fall back to host memory
            free = None
    if free is None:
        free = available_memory_bytes()
    if free is None:
        return MemoryLimit(None, "unknown")
    return MemoryLimit(DEFAULT_MEMORY_FRACTION * free,
                       f"{DEFAULT_MEMORY_FRACTION:.0%} of the {free / GB:.1f} GB available now{where}")


def check_memory(what: str, need_bytes: float, max_memory_gb: float | None = None, *, detail: str = "",
                 hint: str = "", device: Any = None) -> None:
    """Raise one :class:`InputError` line when ``need_bytes`` (an estimate) is above the memory limit."""
    limit = memory_limit(max_memory_gb, device)
    if limit.bytes is None or need_bytes <= limit.bytes:
        return
    detail = f" ({detail})" if detail else ""
    hint = f", or {hint}" if hint else ""
    raise InputError(f"{what} needs about {_gb(need_bytes)}{detail}, above the memory limit of "
                     f"{_gb(limit.bytes)} ({limit.source}); raise it with --max-memory-gb (max_memory_gb){hint}")


def _gb(n: float) -> str:
    return f"{n / GB:.3g} GB" if n < 10 * GB else f"{n / GB:.0f} GB"


# --------------------------------------------------------------------------- pixels


def check_input_pixels(what: str, height: int, width: int, max_input_pixels: int = DEFAULT_MAX_INPUT_PIXELS) -> None:
    """Refuse (one line) a file whose header says it holds more than ``max_input_pixels`` pixels."""
    n = int(height) * int(width)
    if n > max_input_pixels:
        raise InputError(f"{what} is {width}x{height} = {n:,} pixels, above the {max_input_pixels:,} pixels a file "
                         f"may hold (max_input_pixels; raise it with --max-input-pixels, or downscale the file: "
                         f"inputs above --max-pixels are downscaled after reading anyway)")


def surface_bytes(height: int, width: int) -> float:
    """Estimated memory of point map → seen mesh → canonical frame."""
    return SURFACE_BYTES_PER_PIXEL * float(height) * float(width)


# --------------------------------------------------------------------------- the thin shell


@dataclass(frozen=True)
class ShellEstimate:
    voxels: int  # upper bound on the shell's voxels
    pairs: int  # upper bound on the (voxel, triangle) pairs within reach (the NumPy backend keeps them all)
    area: float  # seen surface, voxel units
    boundary: float
    pieces: int

    def bytes(self, backend: str = "warp") -> float:
        if backend == "numpy":
            return SHELL_BYTES_PER_PAIR * float(self.pairs) + SHELL_BYTES_PER_VOXEL * float(self.voxels)
        return SHELL_BYTES_PER_VOXEL * float(self.voxels)


def shell_voxel_bound(vertices: np.ndarray, faces: np.ndarray, resolution: int, band: float,
                      pixels: np.ndarray | None = None, shape: tuple[int, int] | None = None,
                      chunk: int = 1 << 20) -> ShellEstimate:
    """Upper bound on the voxels within ``band`` of a canonical-frame mesh at ``resolution``³ (see the module doc).

    ``pixels``/``shape`` (a :class:`~consistent3dgen.geometry.surface.SeenMesh`'s) let the boundary and the pieces be
    found on the pixel grid (linear time); otherwise they come from the mesh's edges. Cost: a few passes over the
    faces, in chunks (no (F, 3, 3) float64 array).
    """
    f = np.asarray(faces)
    res = int(resolution)
    vox = ((np.asarray(vertices, np.float64) + 1.0) * (res / 2.0) - 0.5).astype(np.float32)
    rho = float(band) + 0.5
    area = perimeter = 0.0
    for s in range(0, len(f), chunk):
        t = vox[f[s:s + chunk]]
        e0, e1, e2 = t[:, 1] - t[:, 0], t[:, 2] - t[:, 1], t[:, 0] - t[:, 2]
        area += 0.5 * float(np.linalg.norm(np.cross(e0, -e2), axis=1).astype(np.float64).sum())
        perimeter += float(sum(np.linalg.norm(e, axis=1).astype(np.float64).sum() for e in (e0, e1, e2)))
    grid = _grid_boundary(vox, f, pixels, shape) if pixels is not None and shape is not None else None
    boundary, pieces = grid if grid is not None else _mesh_boundary(vox, f)
    tube = 2 * rho * area + 0.5 * math.pi * rho**2 * boundary + 4 / 3 * math.pi * rho**3 * pieces
    lo = np.clip(np.ceil(vox.min(axis=0) - band), 0, res - 1)
    hi = np.clip(np.floor(vox.max(axis=0) + band), 0, res - 1)
    box = float(np.prod(hi - lo + 1))
    # each triangle's own reach (Steiner formula of a flat convex set), summed: what the NumPy backend enumerates
    pairs = 2 * rho * area + 0.5 * math.pi * rho**2 * perimeter + 4 / 3 * math.pi * rho**3 * len(f)
    return ShellEstimate(int(math.ceil(min(box, tube))), int(math.ceil(pairs)), area, boundary, pieces)


def _grid_boundary(vox: np.ndarray, faces: np.ndarray, pixels: np.ndarray, shape: tuple[int, int]
                   ) -> tuple[float, int] | None:
    """Boundary length and pieces of a pixel-grid mesh (two triangles per 2×2 block, as ``pointmap_to_mesh``
    makes them: faces 2k, 2k+1 = (a, c, b), (b, c, d) of block k); None when the mesh is not laid out so."""
    from scipy import ndimage

    h, w = int(shape[0]), int(shape[1])
    if len(faces) % 2 or h < 2 or w < 2:
        return None
    pix = np.asarray(pixels, np.int64)
    first, second = faces[0::2], faces[1::2]
    tl = pix[first[:, 0]]
    right, down = np.array([0, 1]), np.array([1, 0])
    layout_ok = (np.array_equal(pix[first[:, 1]], tl + down) and np.array_equal(pix[first[:, 2]], tl + right)
                 and np.array_equal(first[:, 2], second[:, 0]) and np.array_equal(first[:, 1], second[:, 1])
                 and np.array_equal(pix[second[:, 2]], tl + down + right))
    if not layout_ok:
        return None
    blocks = np.zeros((h - 1, w - 1), bool)
    blocks[tl[:, 0], tl[:, 1]] = True
    pos = np.zeros((h, w, 3), np.float32)
    pos[pix[:, 0], pix[:, 1]] = vox
    # an edge is on the boundary when exactly one of the two blocks beside it exists
    horiz = np.pad(blocks, ((1, 1), (0, 0)))  # edge (r, c)-(r, c+1) between blocks (r-1, c) and (r, c)
    r, c = np.nonzero(horiz[:-1] != horiz[1:])
    length = float(np.linalg.norm(pos[r, c + 1] - pos[r, c], axis=1).astype(np.float64).sum())
    vert = np.pad(blocks, ((0, 0), (1, 1)))  # edge (r, c)-(r+1, c) between blocks (r, c-1) and (r, c)
    r, c = np.nonzero(vert[:, :-1] != vert[:, 1:])
    length += float(np.linalg.norm(pos[r + 1, c] - pos[r, c], axis=1).astype(np.float64).sum())
    pieces = int(ndimage.label(blocks, structure=np.ones((3, 3), bool))[1])  # corner-sharing blocks share a vertex
    return length, pieces


def _mesh_boundary(vox: np.ndarray, faces: np.ndarray) -> tuple[float, int]:
    """Boundary length (edges used by one face) and connected pieces of any triangle mesh."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n = len(vox)
    f = faces.astype(np.int64)
    edges = np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]])
    edges.sort(axis=1)
    keys, counts = np.unique(edges[:, 0] * n + edges[:, 1], return_counts=True)
    once = keys[counts == 1]
    length = float(np.linalg.norm(vox[once // n] - vox[once % n], axis=1).astype(np.float64).sum())
    del edges
    graph = coo_matrix((np.ones(2 * len(f), np.int8), (np.r_[f[:, 0], f[:, 0]], np.r_[f[:, 1], f[:, 2]])),
                       shape=(n, n))
    used = np.zeros(n, bool)
    used[f.ravel()] = True
    _, labels = connected_components(graph, directed=False)
    pieces = len(np.unique(labels[used]))
    return length, pieces


# --------------------------------------------------------------------------- model stages


def _width(obj: Any, *path: str) -> int | None:
    for name in path:
        obj = getattr(obj, name, None)
        if obj is None:
            return None
    try:
        return int(obj)
    except (TypeError, ValueError):
        return None


def encode_bytes(stage: Any, n_voxels: int) -> float:
    """Estimated memory of ``stage.encode_sdf`` on ``n_voxels`` shell voxels."""
    own = getattr(stage, "memory_per_shell_voxel", None)
    if own is not None:
        return float(own) * n_voxels
    width = _width(stage, "vae", "encoder", "model_channels") or 512
    return STAGE_FIXED_BYTES + n_voxels * (ENCODE_BYTES_PER_VOXEL + ENCODE_BYTES_PER_VOXEL_CHANNEL * width / 16)


def sparse_stage_bytes(stage: Any, n_tokens: int) -> float:
    """Estimated memory of one sparse stage's sampling and decoding of ``n_tokens`` tokens (they run one after the
    other, so the larger of the two; the decoded voxels, 8³ per token, dominate the decoding)."""
    own = getattr(stage, "memory_per_token", None)
    if own is not None:
        return float(own) * n_tokens
    factor = int(getattr(stage, "latent_factor", 8) or 8)
    dit = DIT_BYTES_PER_TOKEN + DIT_BYTES_PER_TOKEN_CHANNEL * (_width(stage, "dit", "model_channels") or 1024)
    last = (_width(stage, "vae", "decoder", "model_channels") or 512) / 16
    chunk = _width(stage, "vae", "decoder", "chunk_size") or 1
    per_voxel = DECODE_BYTES_PER_VOXEL + DECODE_BYTES_PER_VOXEL_CHANNEL * last / (chunk**3 if chunk > 1 else 1)
    return STAGE_FIXED_BYTES + n_tokens * max(dit, factor**3 * per_voxel)
