"""Nothing unbounded: pixel limits (downscale / refuse from the header), memory estimates refused before the
allocation, the options that change them; the thin-shell voxel estimate is an upper bound."""

from __future__ import annotations

import io
import json
import os
import resource
import struct
import subprocess
import sys
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from consistent3dgen import limits
from consistent3dgen.errors import InputError
from consistent3dgen.geometry.render import intrinsics_from_fov
from consistent3dgen.io import pointmap_io as pio
from consistent3dgen.options import GenerationOptions
from consistent3dgen.pointmap import (
    PointMap,
    downscale_intrinsics,
    downscale_pointmap,
    downscaled_size,
    limit_pixels,
    pixel_stride,
    stride_offset,
)

BIG = 10_000  # the 10000 x 10000 depth map
MEMORY_CAP = 3 * 2**30  # address-space cap of the CLI probes (RLIMIT_AS)
K_BIG = f"{BIG / 2},{BIG / 2},{(BIG - 1) / 2},{(BIG - 1) / 2}"


# --------------------------------------------------------------------------- helpers


def _one_line(e) -> str:  # noqa: ANN001
    msg = str(e.value if hasattr(e, "value") else e)
    assert "\n" not in msg
    return msg


def _png_header_only(path: Path, width: int, height: int) -> Path:
    """A 16-bit grey PNG that has a header (IHDR) and no pixel data: decoding it would fail."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 16, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))
    return path


def _npy_header_bytes(shape: tuple[int, ...], dtype=np.float32) -> bytes:  # noqa: ANN001
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)),
                                               "fortran_order": False, "shape": shape})
    return buf.getvalue()  # magic string + header, no data


def _exr_header_only(path: Path, width: int, height: int) -> Path:
    box = struct.pack("<4i", 0, 0, width - 1, height - 1)
    attr = b"dataWindow\0box2i\0" + struct.pack("<i", 16) + box
    path.write_bytes(b"\x76\x2f\x31\x01" + struct.pack("<I", 2) + attr + b"\0")
    return path


def _sphere_depth(h: int, w: int, k: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
    """Depth of a sphere (radius 0.6 at z = 3) seen by K, 0 elsewhere; optional multiplicative noise."""
    v, u = np.mgrid[0:h, 0:w].astype(np.float64)
    x, y = (u - k[0, 2]) / k[0, 0], (v - k[1, 2]) / k[1, 1]
    a = x * x + y * y + 1.0
    disc = 9.0 - a * (9.0 - 0.36)
    z = np.where(disc > 0, (3.0 - np.sqrt(np.maximum(disc, 0))) / a, 0.0)
    if rng is not None:
        z = z * (1 + 0.01 * rng.standard_normal(z.shape))
    return z


def _cli(*argv: str, cwd: Path, cap: int = MEMORY_CAP, timeout: float = 240) -> subprocess.CompletedProcess:
    """``consistent3dgen ARGV`` in a subprocess whose address space is capped at ``cap`` bytes."""

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "consistent3dgen", *argv], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd, preexec_fn=limit, env=env)


# --------------------------------------------------------------------------- options


@pytest.mark.parametrize(("name", "value"), [("max_pixels", 0), ("max_pixels", 3), ("max_pixels", 2.5),
                                             ("max_pixels", True), ("max_input_pixels", 1),
                                             ("max_memory_gb", 0.0), ("max_memory_gb", -1.0),
                                             ("max_memory_gb", float("nan")), ("max_memory_gb", "8")])
def test_bad_limit_options_name_the_option(name, value):
    with pytest.raises(InputError, match=f"option {name}") as e:
        GenerationOptions().with_changes(**{name: value})
    _one_line(e)


def test_limit_options_defaults_and_cli(tmp_path, capsys):
    from consistent3dgen.cli import main

    opts = GenerationOptions().validate()
    assert opts.max_pixels == 2048 * 2048 and opts.max_input_pixels == 8192 * 8192 and opts.max_memory_gb is None
    assert GenerationOptions().with_changes(max_memory_gb=2, max_pixels=10_000).max_memory_gb == 2
    for argv in (["--max-pixels", "0"], ["--max-memory-gb", "-1"], ["--max-input-pixels", "2"]):
        for cmd in (["foreground", str(tmp_path / "never_read.npz"), "--out", str(tmp_path / "fg")],
                    ["generate", str(tmp_path / "never_read.npz"), "--out", str(tmp_path / "x.glb")]):
            assert main([*cmd, *argv]) == 2
            err = capsys.readouterr().err.strip()
            assert err.startswith("error: option max_") and "\n" not in err


# --------------------------------------------------------------------------- downscaling keeps the geometry


@pytest.mark.parametrize("stride", [2, 3, 4, 5])
def test_downscaled_depth_keeps_points_and_projects_them_to_their_pixels(stride):
    h, w = 61, 83
    k = np.array([[70.0, 0.0, 37.3], [0.0, 65.0, 29.8], [0.0, 0.0, 1.0]])
    depth = _sphere_depth(h, w, k)
    full = pio.depth_to_pointmap(depth, k, max_pixels=None)
    hs, ws = downscaled_size(h, w, stride)
    small = pio.depth_to_pointmap(depth, k, max_pixels=hs * ws)
    assert pixel_stride(h, w, hs * ws) == stride and small.shape == (hs, ws)
    o = stride_offset(stride)
    assert small.meta["downscale"] == {"stride": stride, "offset": o, "from": [h, w], "to": [hs, ws]}
    kept = full.points[o::stride, o::stride]
    np.testing.assert_array_equal(small.mask, full.mask[o::stride, o::stride])
    np.testing.assert_allclose(small.points[small.mask], kept[small.mask], rtol=1e-6, atol=1e-7)
    # the new intrinsics project every kept point onto its new pixel centre (pixel centres on integers)
    p = small.points[small.mask].astype(np.float64)
    uvw = p @ small.intrinsics.T
    rows, cols = np.nonzero(small.mask)
    np.testing.assert_allclose(uvw[:, 0] / uvw[:, 2], cols, atol=1e-4)
    np.testing.assert_allclose(uvw[:, 1] / uvw[:, 2], rows, atol=1e-4)
    # and the same K' = S K for the old pixel → new pixel map
    np.testing.assert_allclose(downscale_intrinsics(k, stride)[:2, 2], (k[:2, 2] - o) / stride)


def test_downscale_pointmap_is_exact_and_composes():
    rng = np.random.default_rng(0)
    pts = rng.normal(size=(50, 70, 3)).astype(np.float32)
    pts[..., 2] = np.abs(pts[..., 2]) + 1
    k = intrinsics_from_fov(50, 70, 50)
    pm = PointMap(pts, conf=rng.random((50, 70)).astype(np.float32),
                  image=rng.integers(0, 255, (50, 70, 3), dtype=np.uint8), intrinsics=k)
    assert limit_pixels(pm, 50 * 70) is pm
    once = limit_pixels(pm, 600)
    s = once.meta["downscale"]["stride"]
    o = stride_offset(s)
    for a, b in ((once.points, pm.points), (once.conf, pm.conf), (once.image, pm.image), (once.mask, pm.mask)):
        np.testing.assert_array_equal(a, b[o::s, o::s])
    twice = downscale_pointmap(downscale_pointmap(pm, 2), 3)
    rec = twice.meta["downscale"]
    assert rec["stride"] == 6 and rec["from"] == [50, 70]
    np.testing.assert_array_equal(twice.points, pm.points[rec["offset"]::6, rec["offset"]::6])
    np.testing.assert_allclose(twice.intrinsics, downscale_intrinsics(downscale_intrinsics(k, 2), 3))
    # the composed record maps to the same K as one stride from the original pixels
    s6 = np.array([[1 / 6, 0, -rec["offset"] / 6], [0, 1 / 6, -rec["offset"] / 6], [0, 0, 1]])
    np.testing.assert_allclose(twice.intrinsics, s6 @ k)
    with pytest.raises(InputError, match="max-pixels") as e:
        limit_pixels(PointMap(pts[:2]), 4)
    _one_line(e)


@pytest.mark.parametrize("compressed", [False, True])
def test_npz_streamed_at_a_stride_equals_the_full_file_downscaled(tmp_path, compressed):
    rng = np.random.default_rng(1)
    h, w = 123, 97
    pts = rng.normal(size=(h, w, 3)).astype(np.float32)
    pts[..., 2] = np.abs(pts[..., 2]) + 1
    arrays = dict(points=pts, conf=rng.random((h, w)).astype(np.float32), mask=rng.random((h, w)) > 0.2,
                  image=rng.integers(0, 255, (h, w, 3), dtype=np.uint8), intrinsics=intrinsics_from_fov(40, w, h),
                  extra=np.zeros(5))
    path = tmp_path / "pm.npz"
    (np.savez_compressed if compressed else np.savez)(path, **arrays)
    full = pio.load_npz(path, max_pixels=None)
    assert "downscale" not in full.meta
    small = pio.load_npz(path, max_pixels=1500)
    s = small.meta["downscale"]["stride"]
    ref = downscale_pointmap(full, s)
    assert small.shape == ref.shape and small.shape[0] * small.shape[1] <= 1500
    for key in ("points", "conf", "mask", "image", "intrinsics"):
        np.testing.assert_array_equal(getattr(small, key), getattr(ref, key))
    # a Fortran-order member is read whole, then strided: the same pixels
    fortran = tmp_path / "fortran.npz"
    np.savez(fortran, points=np.asfortranarray(pts))
    np.testing.assert_array_equal(pio.load_npz(fortran, max_pixels=1500).points, ref.points)
    # a per-pixel member of another shape is named with the file's shapes, before decoding
    np.savez(tmp_path / "bad.npz", points=pts, conf=np.ones((h, w + 1), np.float32))
    with pytest.raises(InputError, match=r"conf in .*bad\.npz has shape \(123, 98\) but points \(123, 97, 3\)"):
        pio.load_npz(tmp_path / "bad.npz", max_pixels=1500)


@pytest.mark.parametrize("suffix", [".npy", ".png"])
def test_depth_files_read_at_a_stride(tmp_path, suffix):
    h, w = 90, 120
    k = np.array([[100.0, 0, 59.5], [0, 100.0, 44.5], [0, 0, 1]])
    depth = np.round(_sphere_depth(h, w, k) * 1000) / 1000  # millimetres: the PNG holds the same values
    path = tmp_path / f"d{suffix}"
    if suffix == ".npy":
        np.save(path, depth)
    else:
        Image.fromarray(np.round(depth * 1000).astype(np.uint16)).save(path)
    rgba = np.zeros((h, w, 4), np.uint8)
    rgba[..., 3] = 255
    rgba[:, :10, 3] = 0
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    kw = dict(intrinsics=list(k[[0, 1, 0, 1], [0, 1, 2, 2]]), image=tmp_path / "rgba.png")
    full = pio.load_depth(path, max_pixels=None, **kw)
    small = pio.load_depth(path, max_pixels=1000, **kw)
    s = small.meta["downscale"]["stride"]
    ref = downscale_pointmap(full, s)
    np.testing.assert_array_equal(small.mask, ref.mask)
    np.testing.assert_allclose(small.points[small.mask], ref.points[ref.mask], rtol=1e-6)
    np.testing.assert_allclose(small.intrinsics, ref.intrinsics)
    assert small.meta["path"] == str(path)
    # an image of another size is refused from its header, before it is decoded
    Image.fromarray(rgba[:50]).save(tmp_path / "other.png")
    with pytest.raises(InputError, match="is 120x50 pixels but the depth map .* is 120x90: they must match") as e:
        pio.load_depth(path, intrinsics=kw["intrinsics"], image=tmp_path / "other.png")
    _one_line(e)
    # a field of view describes the whole image: the same camera at any stride
    fov_full = pio.load_depth(path, fov_deg=50.0, max_pixels=None)
    fov_small = pio.load_depth(path, fov_deg=50.0, max_pixels=1000)
    np.testing.assert_allclose(fov_small.intrinsics, downscale_pointmap(fov_full, s).intrinsics)


# --------------------------------------------------------------------------- absurd files refused from the header


@pytest.mark.parametrize("kind", ["png", "npy", "npz", "exr"])
def test_files_above_max_input_pixels_are_refused_unread(tmp_path, kind):
    path = tmp_path / f"big.{kind}"
    if kind == "png":
        _png_header_only(path, BIG, BIG)
    elif kind == "npy":
        path.write_bytes(_npy_header_bytes((BIG, BIG)))  # a header and no data: reading it would fail
    elif kind == "npz":
        with zipfile.ZipFile(path, "w") as zf:
            zf.writestr("points.npy", _npy_header_bytes((BIG, BIG, 3)))
    else:
        _exr_header_only(path, BIG, BIG)
        assert pio.exr_size(path) == (BIG, BIG)
    with pytest.raises(InputError) as e:
        pio.load_pointmap(path, **({} if kind == "npz" else {"intrinsics": [1.0, 1.0, 0.0, 0.0]}))
    msg = _one_line(e)
    assert f"{BIG}x{BIG} = 100,000,000 pixels" in msg and "--max-input-pixels" in msg and "max_input_pixels" in msg
    # raising the limit gets past the size check (and on to the missing data)
    with pytest.raises(InputError) as e:
        pio.load_pointmap(path, max_input_pixels=BIG * BIG,
                          **({} if kind == "npz" else {"intrinsics": [1.0, 1.0, 0.0, 0.0]}))
    assert "max_input_pixels" not in str(e.value)


@pytest.mark.parametrize("command", ["generate", "foreground"])
@pytest.mark.parametrize("kind", ["png", "npy"])
def test_cli_refuses_a_10000_squared_depth_map_in_one_line_under_a_memory_cap(tmp_path, command, kind):
    path = tmp_path / f"big.{kind}"
    if kind == "png":
        _png_header_only(path, BIG, BIG)
    else:
        np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(BIG, BIG))  # 400 MB, sparse on disk
    out = ["--out", str(tmp_path / "x.glb")] if command == "generate" else ["--out", str(tmp_path / "fg")]
    res = _cli(command, str(path), "--intrinsics", K_BIG, *out, cwd=tmp_path, timeout=120)
    assert res.returncode == 2, res.stderr
    err = res.stderr.strip()
    assert "\n" not in err and err.startswith("error: depth map")
    assert "100,000,000 pixels" in err and "--max-input-pixels" in err
    assert not (tmp_path / "x.glb").exists() and not (tmp_path / "fg").exists()


def test_cli_foreground_downscales_a_large_depth_map_under_a_memory_cap(tmp_path):
    """6000² pixels (36 MP, inside max_input_pixels, above max_pixels): read at stride 3 through a memory map."""
    n, side = 6000, 1200
    path = tmp_path / "large.npy"
    depth = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, n))  # sparse on disk
    lo = (n - side) // 2
    k_block = np.array([[1.5 * side, 0, (side - 1) / 2], [0, 1.5 * side, (side - 1) / 2], [0, 0, 1.0]])
    depth[lo:lo + side, lo:lo + side] = _sphere_depth(side, side, k_block)  # a sphere in the middle
    depth.flush()
    del depth
    out = tmp_path / "fg"
    res = _cli("foreground", str(path), "--intrinsics", f"{n / 2},{n / 2},{(n - 1) / 2},{(n - 1) / 2}",
               "--resolution", "128", "--out", str(out), cwd=tmp_path, timeout=300)
    assert res.returncode == 0, res.stderr
    stride = pixel_stride(n, n, limits.DEFAULT_MAX_PIXELS)
    assert stride == 3
    full = np.load(path, mmap_mode="r")
    o = stride_offset(stride)
    kept = int((np.asarray(full[o::stride, o::stride]) > 0).sum())
    vertices = int(res.stdout.split("seen surface: ")[1].split(" vertices")[0])
    assert 0.9 * kept <= vertices <= kept  # the downscaled map's pixels (less the rim a mesh drops)
    report = json.loads((out / "foreground.json").read_text())
    assert report["shell_voxels"] > 0


# --------------------------------------------------------------------------- memory estimates


def _plane_pm(h: int = 64, w: int = 64) -> PointMap:
    return pio.depth_to_pointmap(np.full((h, w), 2.0), intrinsics_from_fov(50, w, h))


def test_memory_limit_default_and_the_refusal_line():
    lim = limits.memory_limit(None)
    avail = limits.available_memory_bytes()
    if avail is None:  # a system that cannot tell: no default check
        assert lim.bytes is None
    else:
        assert 0 < lim.bytes <= avail and "available now" in lim.source
    assert limits.memory_limit(1.5).bytes == 1.5e9
    limits.check_memory("a step", 1e6, 1.0)  # fits
    with pytest.raises(InputError) as e:
        limits.check_memory("a step", 2e9, 1.0, detail="x tokens", hint="lower y")
    msg = _one_line(e)
    assert msg == ("a step needs about 2 GB (x tokens), above the memory limit of 1 GB (max_memory_gb); raise it "
                   "with --max-memory-gb (max_memory_gb), or lower y")


def test_seen_shell_refused_before_the_shell_is_allocated(monkeypatch):
    from consistent3dgen import seen_side

    pm = _plane_pm()
    with pytest.raises(InputError, match=r"^the seen surface needs about .* \(a 64x64 point map\).*--max-memory-gb"):
        seen_side.build_seen_shell(pm, 128, max_memory_gb=1e-4)

    def never(*a, **k):  # noqa: ANN002, ANN003, ANN202
        raise AssertionError("the thin shell was started")

    monkeypatch.setattr(seen_side, "thin_shell", never)
    with pytest.raises(InputError) as e:
        seen_side.build_seen_shell(pm, 512, band=2.0, shell=1.0, max_memory_gb=0.005)
    msg = _one_line(e)
    assert msg.startswith("the thin shell at 512^3 needs about") and "voxels within 2 voxels" in msg
    assert "memory limit of 0.005 GB (max_memory_gb)" in msg and "--max-memory-gb" in msg


class _FakeStage:
    resolution = 128
    latent_factor = 8
    latent_channels = 8

    def token_order(self, coords):  # noqa: ANN001, ANN201
        raise AssertionError("tokens were ordered: the stage started")


def test_sparse_stage_refused_before_sampling(monkeypatch):
    import torch

    from consistent3dgen import cascade
    from consistent3dgen.geometry.voxels import SparseVoxels
    from consistent3dgen.sampling import FlowMatchSchedule

    class View:
        def target(self, index, sim):  # noqa: ANN001, ANN202
            return None

    monkeypatch.setattr(cascade, "run_sparse_stage", lambda *a, **k: (_ for _ in ()).throw(AssertionError))
    cells = SparseVoxels(np.argwhere(np.ones((16, 16, 16), bool)), 16)
    cfg = cascade.SparseStageConfig(FlowMatchSchedule.shifted(2, 3.0))
    with pytest.raises(InputError) as e:
        cascade.run_sparse_stages([_FakeStage()], [cfg], cells, cascade.Condition(torch.zeros(1)), View(),
                                  max_memory_gb=0.01)
    msg = _one_line(e)
    assert msg.startswith("sparse stage 0 (128^3) needs about") and "(4,096 tokens)" in msg
    assert "--max-memory-gb" in msg
    est = limits.sparse_stage_bytes(_FakeStage(), 4096)
    assert est > 0.01e9


def test_seen_side_downscales_api_pointmaps_and_checks_the_encoding():
    from consistent3dgen.seen_side import SeenSide

    big = _plane_pm(200, 300)
    side = SeenSide(big, [_FakeStage()], band=2.0, shell=1.0, max_pixels=3000, max_memory_gb=1.0)
    assert side.pointmap.shape[0] * side.pointmap.shape[1] <= 3000 and side.pointmap.meta["downscale"]["stride"] == 5
    assert side.first.pointmap is side.pointmap  # every stage's shell from the same downscaled map
    side.max_memory_gb = 0.01
    with pytest.raises(InputError, match=r"^encoding the seen shell at 128\^3 needs about .*voxels"):
        side.target(0, None)


# --------------------------------------------------------------------------- the voxel estimate is an upper bound


def _cases() -> dict[str, PointMap]:
    rng = np.random.default_rng(3)
    k = intrinsics_from_fov(40, 96, 96)
    sphere = _sphere_depth(96, 96, k)
    u = np.arange(96)
    checker = np.where(((u[:, None] // 2) + (u[None, :] // 2)) % 2 == 0, 2.0, 0.0)
    comb = np.zeros((96, 96))
    comb[:, ::6] = comb[:, 1::6] = 2.0
    return {
        "plane": _plane_pm(48, 48),
        "sphere": pio.depth_to_pointmap(sphere, k),
        "noisy sphere": pio.depth_to_pointmap(_sphere_depth(96, 96, k, rng), k),
        "slanted": pio.depth_to_pointmap(2.0 + 0.01 * u[None, :] + 0 * u[:, None], k),
        "checker islands": pio.depth_to_pointmap(checker, k),
        "comb": pio.depth_to_pointmap(comb, k),
        "random holes": PointMap(pio.depth_to_pointmap(sphere, k).points,
                                 mask=(sphere > 0) & (rng.random((96, 96)) < 0.6)),
    }


@pytest.mark.parametrize("resolution", [64, 256])
@pytest.mark.parametrize("band", [2.0, 4.0])
def test_shell_voxel_bound_is_an_upper_bound(resolution, band):
    from consistent3dgen.geometry.shell import thin_shell
    from consistent3dgen.geometry.surface import pointmap_to_canonical_mesh

    for name, pm in _cases().items():
        seen, _ = pointmap_to_canonical_mesh(pm)
        actual = len(thin_shell(seen.vertices, seen.faces, resolution, band=band, shell=band / 2).sdf)
        grid = limits.shell_voxel_bound(seen.vertices, seen.faces, resolution, band, seen.pixels, seen.shape)
        generic = limits.shell_voxel_bound(seen.vertices, seen.faces, resolution, band)
        assert grid.voxels >= actual, (name, grid, actual)
        assert (grid.pieces, round(grid.boundary, 1)) == (generic.pieces, round(generic.boundary, 1)), name
        assert grid.voxels == generic.voxels
        if name in ("plane", "sphere", "slanted"):
            assert grid.voxels <= 3 * actual, (name, grid.voxels, actual)  # and not a useless one
