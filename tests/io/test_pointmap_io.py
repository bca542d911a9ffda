"""Point-map I/O: npz round trip, depth unprojection (PNG mm / npy m), PLY, and one-line errors."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from consistent3dgen.errors import InputError
from consistent3dgen.io import pointmap_io as pio
from consistent3dgen.pointmap import PointMap

K = np.array([[50.0, 0.0, 16.0], [0.0, 60.0, 12.0], [0.0, 0.0, 1.0]])


def _plane_depth(h=24, w=32, z=2.0):
    d = np.full((h, w), z)
    d[:3, :5] = 0.0  # holes
    d[5, 7] = np.nan
    return d


def _project(points, k):
    uv = points[..., :2] / points[..., 2:3]
    return uv[..., 0] * k[0, 0] + k[0, 2], uv[..., 1] * k[1, 1] + k[1, 2]


def test_depth_unprojection_reprojects_to_pixel_centres():
    d = _plane_depth()
    pm = pio.depth_to_pointmap(d, K)
    assert pm.mask.sum() == d.size - 16
    u, v = _project(pm.points, K)
    vv, uu = np.mgrid[0:24, 0:32]
    np.testing.assert_allclose(u[pm.mask], uu[pm.mask], atol=1e-4)
    np.testing.assert_allclose(v[pm.mask], vv[pm.mask], atol=1e-4)
    np.testing.assert_allclose(pm.points[pm.mask][:, 2], 2.0)
    assert np.isnan(pm.points[0, 0]).all()


def test_intrinsics_forms_agree():
    a = pio.intrinsics_matrix(K, 32, 24)
    b = pio.intrinsics_matrix((50.0, 60.0, 16.0, 12.0), 32, 24)
    np.testing.assert_array_equal(a, b)
    f = pio.intrinsics_matrix(None, 32, 24, fov_deg=90.0)
    np.testing.assert_allclose(f, [[16, 0, 15.5], [0, 16, 11.5], [0, 0, 1]])
    from consistent3dgen.geometry.render import intrinsics_from_fov

    np.testing.assert_array_equal(f, intrinsics_from_fov(90.0, 32, 24))


def test_png_millimetres_and_npy_metres_match(tmp_path):
    d = np.round(_plane_depth() * 1000.0) / 1000.0
    d[10:, 20:] = 1.234
    png = tmp_path / "d.png"
    Image.fromarray(np.nan_to_num(d * 1000.0).astype(np.uint16)).save(png)
    np.save(tmp_path / "d.npy", d)
    a = pio.load_pointmap(png, intrinsics=K)
    b = pio.load_pointmap(tmp_path / "d.npy", intrinsics=K)
    np.testing.assert_array_equal(a.mask, b.mask)
    np.testing.assert_allclose(a.points[a.mask], b.points[b.mask], atol=1e-6)


def test_rgba_alpha_and_mask_image_narrow_the_mask(tmp_path):
    d = np.full((24, 32), 1.5)
    rgba = np.zeros((24, 32, 4), np.uint8)
    rgba[..., :3] = 200
    rgba[4:20, 4:28, 3] = 255
    Image.fromarray(rgba).save(tmp_path / "im.png")
    m = np.zeros((24, 32), np.uint8)
    m[:, :16] = 255
    Image.fromarray(m).save(tmp_path / "m.png")
    np.save(tmp_path / "d.npy", d)
    pm = pio.load_depth(tmp_path / "d.npy", fov_deg=60.0, image=tmp_path / "im.png", mask=tmp_path / "m.png")
    expect = np.zeros((24, 32), bool)
    expect[4:20, 4:16] = True
    np.testing.assert_array_equal(pm.mask, expect)
    assert pm.image.shape == (24, 32, 3) and pm.image[5, 5, 0] == 200


def test_npz_round_trip_is_exact(tmp_path):
    pm = pio.depth_to_pointmap(_plane_depth(), K, image=np.full((24, 32, 3), 7, np.uint8))
    pm.conf = np.random.default_rng(0).random((24, 32)).astype(np.float32)
    pio.save_npz(pm, tmp_path / "pm.npz")
    back = pio.load_pointmap(tmp_path / "pm.npz")
    np.testing.assert_array_equal(back.points, pm.points)
    np.testing.assert_array_equal(back.conf, pm.conf)
    np.testing.assert_array_equal(back.mask, pm.mask)
    np.testing.assert_array_equal(back.image, pm.image)
    np.testing.assert_array_equal(back.intrinsics, pm.intrinsics)


def test_ply_writer_colours(tmp_path):
    import trimesh

    pm = pio.depth_to_pointmap(_plane_depth(), K, image=np.full((24, 32, 3), (10, 20, 30), np.uint8))
    pio.save_ply(pm, tmp_path / "pc.ply")
    cloud = trimesh.load(tmp_path / "pc.ply")
    assert len(cloud.vertices) == pm.mask.sum()
    np.testing.assert_array_equal(cloud.colors[0, :3], [10, 20, 30])
    np.testing.assert_allclose(cloud.vertices, pm.points[pm.mask], atol=1e-6)


def _one_line(excinfo):
    assert "\n" not in str(excinfo.value)


@pytest.mark.parametrize(
    "kwargs, msg",
    [
        (dict(intrinsics=None), "intrinsics"),
        (dict(intrinsics=[[1, 0], [0, 1]]), "3x3"),
        (dict(intrinsics=(0.0, 50.0, 16.0, 12.0)), "focal"),
        (dict(intrinsics=(np.nan, 50.0, 16.0, 12.0)), "NaN"),
        (dict(intrinsics=K, fov_deg=60.0), "not both"),
        (dict(fov_deg=190.0), "field of view"),
        (dict(fov_deg=float("nan")), "field of view"),
        (dict(fov_deg="wide"), "field of view must be a number"),
        (dict(intrinsics=K, mask=np.zeros((24, 32))), "no valid pixel"),
        (dict(intrinsics=K, mask=np.ones((5, 5))), "mask must have shape"),
        (dict(intrinsics=K, image=np.ones((5, 5, 3))), "image must be"),
    ],
)
def test_bad_depth_inputs(kwargs, msg):
    with pytest.raises(InputError, match=msg) as e:
        pio.depth_to_pointmap(_plane_depth(), **kwargs)
    _one_line(e)


def test_bad_files(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    for path, msg in [
        (bad, "cannot read image"),
        (tmp_path / "missing.npy", "not found"),
        (tmp_path / "x.tiff", "unsupported"),
    ]:
        with pytest.raises(InputError, match=msg) as e:
            pio.load_pointmap(path, intrinsics=K)
        _one_line(e)
    rgb = tmp_path / "rgb.png"
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(rgb)
    with pytest.raises(InputError, match="16-bit") as e:
        pio.load_pointmap(rgb, intrinsics=K)
    np.savez(tmp_path / "nopoints.npz", depth=np.ones((3, 3)))
    with pytest.raises(InputError, match="no 'points'") as e:
        pio.load_pointmap(tmp_path / "nopoints.npz")
    _one_line(e)
    (tmp_path / "trunc.npz").write_bytes(b"PK\x03\x04garbage")
    with pytest.raises(InputError, match="cannot read") as e:
        pio.load_pointmap(tmp_path / "trunc.npz")
    _one_line(e)
    pts = np.ones((4, 4, 3), np.float32)
    pts[1, 1] = np.nan
    np.savez(tmp_path / "nan.npz", points=pts, mask=np.ones((4, 4), bool))
    with pytest.raises(InputError, match="NaN") as e:
        pio.load_pointmap(tmp_path / "nan.npz")
    _one_line(e)
    np.save(tmp_path / "empty.npy", np.zeros((0, 5)))
    with pytest.raises(InputError, match="too small") as e:
        pio.load_pointmap(tmp_path / "empty.npy", intrinsics=K)
    _one_line(e)


def test_a_file_that_is_not_an_npz_archive_is_named_so(tmp_path):
    text = tmp_path / "points.npz"
    text.write_text("x y z\n0 0 1\n")
    with pytest.raises(InputError, match=r"points\.npz: not a valid \.npz archive \(it is a text file\)") as e:
        pio.load_pointmap(text)
    assert "allow_pickle" not in str(e.value) and "pickle" not in str(e.value)
    _one_line(e)
    np.save(tmp_path / "single.npy", np.ones((4, 4, 3)))
    (tmp_path / "single.npz").write_bytes((tmp_path / "single.npy").read_bytes())
    with pytest.raises(InputError, match=r"not a valid \.npz archive \(it is a single \.npy array\)"):
        pio.load_pointmap(tmp_path / "single.npz")
    (tmp_path / "empty.npz").write_bytes(b"")
    with pytest.raises(InputError, match=r"not a valid \.npz archive \(the file is empty\)"):
        pio.load_pointmap(tmp_path / "empty.npz")
    np.savez(tmp_path / "objects.npz", points=np.array([None, 1], dtype=object))
    with pytest.raises(InputError, match="object \\(pickled\\) arrays, which are never loaded") as e:
        pio.load_pointmap(tmp_path / "objects.npz")
    assert "allow_pickle" not in str(e.value)


def test_npz_with_absurd_coordinates_names_the_file(tmp_path):
    pts = np.ones((4, 4, 3), np.float32)
    pts[..., 2] = 1e30
    np.savez(tmp_path / "huge.npz", points=pts)
    with pytest.raises(InputError, match=r"point map .*huge\.npz: 16 points inside the mask are out of range") as e:
        pio.load_pointmap(tmp_path / "huge.npz")
    assert "neighbouring" not in str(e.value)
    _one_line(e)


def test_exr_is_optional(tmp_path):
    if pio.exr_supported():
        pytest.skip("OpenEXR installed; the missing-reader message is not reachable")
    (tmp_path / "d.exr").write_bytes(b"\x76\x2f\x31\x01")
    with pytest.raises(InputError, match="OpenEXR") as e:
        pio.load_pointmap(tmp_path / "d.exr", intrinsics=K)
    _one_line(e)


def test_failed_write_leaves_no_file(tmp_path, monkeypatch):
    pm = PointMap(np.ones((4, 4, 3), np.float32))
    target = tmp_path / "out.ply"

    import trimesh

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(trimesh.PointCloud, "export", boom)
    with pytest.raises(RuntimeError):
        pio.save_ply(pm, target)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(np, "savez_compressed", boom)
    with pytest.raises(RuntimeError):
        pio.save_npz(pm, tmp_path / "out.npz")
    assert list(tmp_path.iterdir()) == []
