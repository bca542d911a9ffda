"""stderr is the one ``error:`` line (or nothing): each known source of stray warnings, triggered on purpose.

Every probe runs with all warnings shown (``simplefilter("always")``, numpy's default ``errstate`` of "warn")
and asserts that none was raised: the fixes are at the source (``np.errstate`` around the one computation,
blanking invalid values before arithmetic, ``warnings.catch_warnings`` around the one library call), never a
global filter.
"""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from consistent3dgen.errors import InputError
from consistent3dgen.pointmap import PointMap

EXAMPLES = Path(__file__).resolve().parents[1] / "src" / "consistent3dgen" / "examples"
H = W = 32
K = np.array([[30.0, 0, 16], [0, 30, 16], [0, 0, 1]])


@contextmanager
def no_warnings():
    with warnings.catch_warnings(record=True) as caught, np.errstate(all="warn"):
        warnings.simplefilter("always")
        yield
    assert not caught, [f"{w.category.__name__} {Path(w.filename).name}:{w.lineno}: {w.message}" for w in caught]


def _disc(outside=np.nan, intrinsics=K, conf=None) -> PointMap:
    yy, xx = np.mgrid[0:H, 0:W]
    z = np.full((H, W), 2.0)
    points = np.stack([(xx - 16) / 30 * z, (yy - 16) / 30 * z, z], -1)
    mask = (xx - 16) ** 2 + (yy - 16) ** 2 < 100
    points[~mask] = outside
    points[0, :, 0] = -outside  # -inf next to inf: inf - inf where a difference reached outside the mask
    return PointMap(points, mask=mask, intrinsics=intrinsics, conf=conf)


QUAD = (np.array([[-1, -1, 2], [1, -1, 2], [1, 1, 2], [-1, 1, 2.0]]), np.array([[0, 1, 2], [0, 2, 3]]))


# --------------------------------------------------------------------------- metrics, surface, render, free space


@pytest.mark.parametrize("outside", [np.nan, np.inf, 1e38])
def test_metrics_with_anything_outside_the_mask(outside):
    from consistent3dgen import metrics

    pm = _disc(outside)
    with no_warnings():
        normals, ok = metrics.pointmap_normals(pm)
        scores = metrics.input_view_consistency(*QUAD, pm)
    assert ok.any() and np.isfinite(normals[ok]).all()
    assert scores.silhouette_iou > 0 and np.isfinite(scores.depth_error_mean)


def test_surface_with_intrinsics_of_a_vanishing_focal_length():
    from consistent3dgen.geometry import surface

    k = K.copy()
    k[0, 0] = k[1, 1] = 1e-320
    with no_warnings():
        mesh = surface.pointmap_to_mesh(_disc(intrinsics=k))
    assert len(mesh.faces) > 0  # the pixel angle is measured from the points instead


@pytest.mark.parametrize("focal", [0.0, -30.0, np.nan])
def test_a_point_map_with_unusable_intrinsics_is_refused_in_one_line(focal):
    from consistent3dgen.errors import InputError

    k = K.copy()
    k[0, 0] = k[1, 1] = focal
    with no_warnings(), pytest.raises(InputError, match="focal lengths must be positive|NaN or inf"):
        _disc(intrinsics=k)


def test_surface_percentile_of_infinite_confidences():
    from consistent3dgen.geometry import surface

    conf = np.full((H, W), np.inf, np.float32)
    conf[10:20, 10:20] = np.linspace(0, 1, 100).reshape(10, 10)
    with no_warnings():
        all_inf = surface.validity_mask(_disc(conf=np.full((H, W), np.inf, np.float32)), drop_percent=10)
        mixed = surface.validity_mask(_disc(conf=conf), drop_percent=10)
    assert all_inf.sum() == _disc().mask.sum()  # every confidence is the same: none is dropped
    assert 0 < mixed.sum() < all_inf.sum()


def test_render_out_of_range_vertices_is_an_error_not_an_overflow():
    from consistent3dgen.geometry.render import raycast

    with no_warnings(), pytest.raises(ValueError, match="out of range"):
        raycast(QUAD[0] * 1e154, QUAD[1], K, W, H)


def test_free_space_with_non_finite_and_far_points():
    from consistent3dgen.geometry.frames import fit_canonical_frame
    from consistent3dgen.geometry.freespace import free_space_mask

    pm = _disc(np.inf)
    frame = fit_canonical_frame(pm.valid_points())
    grid = np.random.default_rng(0).uniform(-1, 1, (2000, 3))
    grid[:10] = np.nan
    grid[10:20] = 1e300
    grid[20:30] = frame.center  # on the camera plane after the transform: z = 0 for some
    with no_warnings():
        free = free_space_mask(grid, pm, frame, 0.01, mask_dilation_px=1)
    assert free.dtype == bool and 0 < free.sum() < len(grid)


# --------------------------------------------------------------------------- VGGT predictions


class _FakeVGGT:
    """VGGTReconstructor with chosen network outputs (no model): finite defaults, then ``fill`` edits them."""

    def __init__(self, fill, **kw):
        from consistent3dgen.reconstruct.vggt.reconstructor import VGGTReconstructor

        class Fake(VGGTReconstructor):
            def predict(self, images):
                s, _, h, w = images.shape
                ys, xs = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
                d = dict(pose_enc=torch.tensor([[0, 0, 0, 0, 0, 0, 1, 0.9, 0.9]]).float().repeat(s, 1),
                         depth=torch.full((s, h, w, 1), 2.0), depth_conf=torch.full((s, h, w), 3.0),
                         world_points=torch.stack([xs, ys, torch.full((h, w), 2.0)], -1)[None].repeat(s, 1, 1, 1),
                         world_points_conf=torch.full((s, h, w), 3.0))
                fill(d, h)
                return d

        self.rec = Fake(**kw)


def _inf_depth(d, h):
    d["depth"][0, : h // 2] = float("inf")
    d["depth_conf"][0, : h // 3] = float("inf")


def _inf_world(d, h):
    d["world_points"][0, : h // 2] = float("inf")
    d["world_points_conf"][0, : h // 3] = float("inf")


@pytest.mark.parametrize(("fill", "points_from"), [(_inf_depth, "depth"), (_inf_world, "point_head")])
def test_vggt_non_finite_predictions(fill, points_from):
    rec = _FakeVGGT(fill, points_from=points_from, conf_percentile=10).rec
    with no_warnings():
        pm = rec([str(EXAMPLES / "spot_rgba.png")])[0]
    assert pm.mask.any() and np.isfinite(pm.points[pm.mask]).all()


# --------------------------------------------------------------------------- images and checkpoints


def test_decompression_bomb_warning_range_is_the_one_error(tmp_path, monkeypatch):
    from consistent3dgen.io import images

    path = tmp_path / "big.png"
    Image.new("RGB", (40, 30)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 1200 pixels: PIL warns (it raises above 2000)
    with no_warnings():
        with pytest.raises(InputError, match="too large: more than PIL's limit of 1,000 pixels"):
            images.read_image(path)
        assert images.image_mode(path) == "RGB"
    Image.new("I;16", (40, 30)).save(tmp_path / "depth.png")
    with no_warnings(), pytest.raises(InputError, match="too large"):
        images.read_depth_png(tmp_path / "depth.png")


@pytest.mark.parametrize("zipped", [True, False])
@pytest.mark.parametrize("protocol", [2, 4])
def test_torch_checkpoints_read_or_fail_quietly(tmp_path, zipped, protocol):
    from consistent3dgen.io.weights import read_state_dict

    path = tmp_path / "c.pt"
    torch.save({"w": torch.ones(2)}, path, _use_new_zipfile_serialization=zipped, pickle_protocol=protocol)
    with no_warnings():
        if protocol == 2:
            assert torch.equal(read_state_dict(path)["w"], torch.ones(2))
        else:
            with pytest.raises(InputError, match="saved with pickle protocol 4, which torch.load") as e:
                read_state_dict(path)
            assert "\n" not in str(e.value)


def test_dinov2_loads_quietly_and_strictly(tmp_path, capfd):
    pytest.importorskip("transformers")
    from safetensors.torch import load_file, save_file
    from transformers import Dinov2WithRegistersConfig, Dinov2WithRegistersModel

    from consistent3dgen.generators.direct3d_s2.conditioner import DinoConditioner

    config = Dinov2WithRegistersConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                       intermediate_size=64, image_size=28, patch_size=14)
    Dinov2WithRegistersModel(config).save_pretrained(tmp_path / "dino")
    capfd.readouterr()
    with no_warnings():
        cond = DinoConditioner(weights=tmp_path / "dino", size=28)
    assert capfd.readouterr().err == ""  # no "Loading weights" bar, no log line
    assert type(cond.encoder).__name__ == "Dinov2WithRegistersModel"
    sd = load_file(str(tmp_path / "dino" / "model.safetensors"))
    del sd["embeddings.cls_token"]
    save_file(sd, str(tmp_path / "dino" / "model.safetensors"), metadata={"format": "pt"})
    with no_warnings(), pytest.raises(InputError, match=r"do not match the model: 1 missing .*cls_token") as e:
        DinoConditioner(weights=tmp_path / "dino", size=28)
    assert "\n" not in str(e.value) and capfd.readouterr().err == ""


def test_cache_only_hub_lookups_print_nothing(tmp_path, monkeypatch, capfd):
    import huggingface_hub.constants as hfc

    from consistent3dgen.errors import WeightsNotFoundError
    from consistent3dgen.io import weights as W

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(hfc, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(W, "_probed", {W._hub_endpoint(): False})  # probed: no hub
    with no_warnings(), pytest.raises(WeightsNotFoundError):
        W.resolve_source("facebook/VGGT-1B", [("model.safetensors", "model.pt")], cache_dir=tmp_path / "empty")
    captured = capfd.readouterr()
    assert captured.err == "" and captured.out == ""


# --------------------------------------------------------------------------- through the CLI


def run_cli(*args, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("HF_ENDPOINT",)}
    env["HF_HUB_OFFLINE"] = "1"
    return subprocess.run([sys.executable, "-m", "consistent3dgen", *map(str, args)], capture_output=True,
                          text=True, env=env, cwd=cwd, timeout=600)


def test_cli_bomb_image_in_the_warning_range_is_one_line(tmp_path):
    Image.new("1", (10000, 9000)).save(tmp_path / "big.png")  # 90 M pixels: above PIL's limit, below twice it
    out = run_cli("generate", "big.png", "--out", "x.glb", cwd=tmp_path)
    assert out.returncode == 2
    assert out.stderr.splitlines() == [out.stderr.strip()] and "too large" in out.stderr


def test_cli_generate_with_non_finite_points_outside_the_mask_is_silent(tmp_path):
    """A whole run (seen surface, free space, generation, metrics) on a point map holding NaN, inf and huge
    values outside its mask: stderr stays empty."""
    yy, xx = np.mgrid[0:40, 0:40]
    z = 2.0 + 0.3 * np.cos(xx / 6.0) * np.cos(yy / 6.0)
    points = np.stack([(xx - 20) / 40 * z, (yy - 20) / 40 * z, z], -1)
    mask = (xx - 20) ** 2 + (yy - 20) ** 2 < 200
    points[~mask] = np.nan
    points[0] = np.inf
    points[1, :, 2] = -np.inf
    points[2] = 1e38
    k = np.array([[40.0, 0, 20], [0, 40, 20], [0, 0, 1]])
    np.savez(tmp_path / "pm.npz", points=points, mask=mask, intrinsics=k)
    out = run_cli("generate", "pm.npz", "--out", "x.glb", "--quiet", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stderr == ""
    assert (tmp_path / "x.glb").is_file()


def test_cli_complex_points(tmp_path):
    points = _disc().points.astype(np.complex128)
    np.savez(tmp_path / "c.npz", points=points, mask=np.isfinite(points.real).all(-1))
    out = run_cli("foreground", "c.npz", "--resolution", "512", "--out", "fg", cwd=tmp_path)
    assert "Warning" not in out.stderr


def test_cli_complex_depth(tmp_path):
    np.save(tmp_path / "d.npy", np.full((H, W), 2.0, np.complex128))
    out = run_cli("foreground", "d.npy", "--fov", "50", "--resolution", "512", "--out", "fg", cwd=tmp_path)
    assert "Warning" not in out.stderr


def test_cli_depth_beyond_float32(tmp_path):
    d = np.full((H, W), 2.0)
    d[5, 5] = 1e300
    np.save(tmp_path / "d.npy", d)
    out = run_cli("foreground", "d.npy", "--fov", "50", "--resolution", "512", "--out", "fg", cwd=tmp_path)
    assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr
