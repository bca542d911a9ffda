"""Training samples: values follow the SDF convention, cells = surface cells, disk round trip, cache reuse."""

from __future__ import annotations

import numpy as np
import pytest

from consistent3dgen.errors import InputError
from consistent3dgen.train import shapes
from consistent3dgen.train.config import DataConfig
from consistent3dgen.train.data import (
    SampleSet,
    ShapeSample,
    build_dataset,
    build_sample,
    cache_key,
    distance_to_value,
    parse_source,
)


@pytest.fixture(scope="module")
def small_config():
    return DataConfig(sparse_resolution=64, latent_factor=8, band_voxels=2.0, shell_voxels=1.0, num_procedural=3,
                      meshes=[])


@pytest.fixture(scope="module")
def sphere_sample(small_config):
    ball = shapes.Shape("sphere", shapes.sphere((0.1, -0.05, 0.0), 0.55))
    return build_sample(ball, small_config, "sphere")


def test_values_are_the_thin_shell_of_the_distance_in_voxels(sphere_sample, small_config):
    vox = sphere_sample.all_voxels()
    centres = vox.centers().astype(np.float64)
    d_vox = (np.linalg.norm(centres - [0.1, -0.05, 0.0], axis=1) - 0.55) * 64 / 2
    expected = np.clip(np.abs(d_vox) - 1.0, -1, 1)  # band 2, shell 1: (|d| - 1) / (2 - 1)
    assert np.allclose(vox.feats[:, 0], expected, atol=2e-3)  # float16 storage
    assert sphere_sample.values.dtype == np.float16 and sphere_sample.convention == "thin_shell"


def test_signed_convention_values(small_config):
    cfg = DataConfig(**{**small_config.__dict__, "convention": "signed"})
    s = build_sample(shapes.Shape("sphere", shapes.sphere((0.0, 0.0, 0.0), 0.5)), cfg, "sphere")
    vox = s.all_voxels()
    d_vox = (np.linalg.norm(vox.centers().astype(np.float64), axis=1) - 0.5) * 32
    assert np.allclose(vox.feats[:, 0], np.clip(d_vox / 2.0, -1, 1), atol=2e-3)
    assert np.all(np.abs(s.band().feats) < 1)


def test_thin_shell_values_match_the_inference_shell_of_a_mesh(small_config):
    # the prior must be trained on the field the guidance target is made of (geometry.shell.thin_shell_sdf)
    shell = pytest.importorskip("consistent3dgen.geometry.shell")
    import trimesh

    ico = trimesh.creation.icosphere(subdivisions=5, radius=0.55)
    target = shell.thin_shell_sdf(np.asarray(ico.vertices), np.asarray(ico.faces), 64, band=2.0, shell=1.0)
    mine = build_sample(shapes.Shape("sphere", shapes.sphere((0, 0, 0), 0.55)), small_config, "sphere")
    band = mine.band()
    assert abs(len(band) - len(target)) < 0.02 * len(target)
    vals = mine.lookup(target.coords)
    # icosphere facets sit up to ~0.01 voxels inside the true sphere at this subdivision
    assert np.max(np.abs(vals - target.feats[:, 0])) < 0.05


def test_cells_are_exactly_the_cells_holding_band_voxels(sphere_sample):
    # brute force over the whole 64³ grid
    r = 64
    ax = -1 + (2 * np.arange(r) + 1) / r
    grid = np.stack(np.meshgrid(ax, ax, ax, indexing="ij"), -1).reshape(-1, 3)
    d_vox = (np.linalg.norm(grid - [0.1, -0.05, 0.0], axis=1) - 0.55) * r / 2
    band = np.argwhere((np.abs(d_vox) < 2.0).reshape(r, r, r))
    expected = {tuple(c) for c in band // 8}
    assert {tuple(c) for c in sphere_sample.cells} == expected
    assert len(sphere_sample.band()) == len(band)
    occ = sphere_sample.occupancy()
    assert occ.shape == (8, 8, 8) and occ.sum() == len(expected)


def test_lookup_matches_stored_values_and_fills_absent_with_plus_one(sphere_sample):
    vox = sphere_sample.all_voxels()
    rng = np.random.default_rng(0)
    pick = rng.choice(len(vox), 500, replace=False)
    assert np.array_equal(sphere_sample.lookup(vox.coords[pick]), vox.feats[pick, 0])
    assert np.all(sphere_sample.lookup(np.array([[0, 0, 0], [63, 63, 63]])) == 1.0)


def test_thin_shell_convention():
    cfg = DataConfig(convention="thin_shell", shell_voxels=0.5, band_voxels=2.0)
    d_world = np.array([-4.0, -0.5, 0.0, 0.5, 4.0]) * 2 / 128  # in voxels at 128
    assert np.allclose(distance_to_value(d_world, 128, cfg), [1.0, 0.0, -1 / 3, 0.0, 1.0])
    with pytest.raises(ValueError):
        distance_to_value(d_world, 128, DataConfig(convention="bogus"))


def test_sample_round_trips_through_disk(sphere_sample, tmp_path):
    path = tmp_path / "s.npz"
    sphere_sample.save(path)
    back = ShapeSample.load(path)
    assert np.array_equal(back.cells, sphere_sample.cells)
    assert np.array_equal(back.values, sphere_sample.values)
    assert (back.resolution, back.factor, back.source) == (64, 8, "sphere")
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(InputError):
        ShapeSample.load(tmp_path / "bad.npz")


def test_build_dataset_caches_and_reuses(small_config, tmp_path):
    sources = ["coin:0", "csg:1"]
    paths = build_dataset(tmp_path, small_config, sources, log=None)
    assert all(p.is_file() for p in paths) and paths[0].parent.name == cache_key(small_config)
    stamp = [p.stat().st_mtime_ns for p in paths]
    again = build_dataset(tmp_path, small_config, sources, log=None)
    assert [p.stat().st_mtime_ns for p in again] == stamp  # reused, not rebuilt
    assert (paths[0].parent / "manifest.json").is_file()
    ds = SampleSet.from_paths(paths)
    occ = ds.occupancy_batch([0, 1])
    assert occ.shape == (2, 1, 8, 8, 8) and occ.sum() > 0
    # two worker processes build the same bytes
    par = build_dataset(tmp_path / "par", small_config, sources, log=None, workers=2)
    for a, b in zip(paths, par, strict=True):
        sa, sb = ShapeSample.load(a), ShapeSample.load(b)
        assert np.array_equal(sa.values, sb.values) and np.array_equal(sa.cells, sb.cells)
    # a different convention goes to a different folder
    other = DataConfig(**{**small_config.__dict__, "convention": "signed"})
    assert cache_key(other) != cache_key(small_config)


def test_bad_sources_and_empty_shapes(small_config):
    with pytest.raises(ValueError):
        parse_source("coin")
    far = shapes.Shape("far", shapes.sphere((5.0, 5.0, 5.0), 0.5))
    with pytest.raises(ValueError):
        build_sample(far, small_config, "far")


def test_the_second_resolution_uses_the_same_builder_in_its_own_voxels(small_config, tmp_path):
    cfg = DataConfig(**{**small_config.__dict__, "second_resolution": 128})
    second = cfg.at_second_resolution()
    assert (second.sparse_resolution, second.second_resolution, second.band_voxels) == (128, None, 2.0)
    s = build_sample(shapes.Shape("sphere", shapes.sphere((0.1, -0.05, 0.0), 0.55)), second, "sphere")
    assert (s.resolution, s.cell_resolution) == (128, 16)
    vox = s.all_voxels()
    d_vox = (np.linalg.norm(vox.centers().astype(np.float64) - [0.1, -0.05, 0.0], axis=1) - 0.55) * 128 / 2
    assert np.allclose(vox.feats[:, 0], np.clip(np.abs(d_vox) - 1.0, -1, 1), atol=2e-3)  # band/shell in 128³ voxels
    # cached beside the first resolution's samples, in a folder of its own
    first = build_dataset(tmp_path, cfg, ["coin:0"], log=None)
    again = build_dataset(tmp_path, second, ["coin:0"], log=None)
    assert first[0].parent != again[0].parent and again[0].parent.name.startswith("r128_")
