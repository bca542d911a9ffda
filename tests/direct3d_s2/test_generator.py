"""The Direct3D-S2 generator as loaded: random weights in the official layout, the official defaults per
release, the refiners on their stages (optional files), v1.0's sparse conditions."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
import yaml

from consistent3dgen.cascade import Condition, stage_condition
from consistent3dgen.errors import InputError
from consistent3dgen.generators.direct3d_s2 import checkpoints, random_weights, targets
from consistent3dgen.generators.direct3d_s2.adapters import config_version, load_direct3d_s2, sparse_condition
from consistent3dgen.generators.direct3d_s2.refinement import InteriorRefiner, SignRefiner

CKPTS = ("model_dense.ckpt", "model_sparse_512.ckpt", "model_sparse_1024.ckpt", "model_refiner.ckpt",
         "model_refiner_1024.ckpt")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    """Tiny random weights of both releases (without DINOv2: these tests load no conditioner)."""
    root = tmp_path_factory.mktemp("d3d_tiny")
    return {v: random_weights.write_direct3d_s2(root / v, "tiny", v, dinov2=False) for v in random_weights.VERSIONS}


@pytest.mark.parametrize("version", random_weights.VERSIONS)
def test_tiny_weights_have_the_official_layout_and_load_strict(tiny, version):
    folder = tiny[version]
    assert sorted(p.name for p in folder.iterdir()) == sorted(["config.yaml", *CKPTS])
    for name in CKPTS:  # the official from_pretrained's keys in each file
        keys = set(torch.load(folder / name, weights_only=True))
        assert keys == ({"refiner"} if "refiner" in name else {"vae", "dit"}), name
    cfg = targets.load_config(folder / "config.yaml")
    assert config_version(cfg) == version
    parts = checkpoints.load_parts(folder, parts=list(targets.PARTS))  # strict keys and shapes
    assert set(parts) == set(targets.PARTS)


@pytest.mark.parametrize("version", random_weights.VERSIONS)
def test_full_config_is_the_release_config(version, fixture_file):
    """Every part's parameters equal the release's config.yaml (the fixture's verbatim copy)."""
    release = yaml.safe_load(fixture_file("direct3d_s2", f"configs_{version.replace('.', '_')}.yaml").read_text())
    ours = random_weights.full_config(version)
    assert set(ours) == set(release)
    for key, entry in release.items():
        assert ours[key]["params"] == entry["params"], key
        # same class (the fork's copy names the sparse VAE ss_vae_legacy)
        assert ours[key]["target"].split(".")[-1] == entry["target"].strip().split(".")[-1], key


@pytest.mark.parametrize("version", random_weights.VERSIONS)
def test_generator_brings_the_official_numbers_and_refiners(tiny, version):
    gen = load_direct3d_s2(tiny[version], with_conditioner=False)
    assert gen.name == f"direct3d-s2 {version}"
    # direct3d_s2/pipeline.py: steps 50 / 30 / 15, CFG 7; config.yaml: shifts 6 / 6 / 8; dense threshold 0.1;
    # mc_threshold 0.2 (512 refined at 2 × 0.2, 1024 at 0.2)
    assert (gen.dense_sampler.steps, gen.dense_sampler.shift) == (50, 6.0)
    assert [(s.steps, s.shift) for s in gen.sparse_samplers] == [(30, 6.0), (15, 8.0)]
    defaults = gen.option_defaults()
    assert (defaults["cfg_scale"], defaults["occupancy_threshold"], defaults["mc_level"]) == (7.0, 0.1, 0.2)
    assert defaults["refine"] is True
    interior, sign = (s.refiner for s in gen.sparse)
    assert isinstance(interior, InteriorRefiner) and isinstance(sign, SignRefiner)
    assert (interior.level(0.2), sign.level(0.2)) == (0.4, 0.2)
    assert interior.vae is gen.sparse[0].vae and sign.vae is gen.sparse[1].vae
    # the refiners' models are among the stage's (moved with it)
    assert interior.model in gen.sparse[0].modules() and sign.model in gen.sparse[1].modules()


def test_without_refiner_files_the_stages_run_unrefined(tiny, tmp_path):
    from consistent3dgen.pipeline import Pipeline

    folder = tmp_path / "no_refiners"
    shutil.copytree(tiny["v1.1"], folder)
    for name in ("model_refiner.ckpt", "model_refiner_1024.ckpt"):
        (folder / name).unlink()
    gen = load_direct3d_s2(folder, with_conditioner=False)
    assert [s.refiner for s in gen.sparse] == [None, None] and not gen.has_refiners()
    pipe = Pipeline(gen)
    assert pipe.resolve_options().refine is False
    with pytest.raises(InputError, match="option refine: generator direct3d-s2 v1.1 has no refiners"):
        pipe.resolve_options(refine=True)
    # with the files: on by default, off when asked
    pipe = Pipeline(load_direct3d_s2(tiny["v1.1"], with_conditioner=False))
    assert pipe.resolve_options().refine is True and pipe.resolve_options(refine=False).refine is False
    assert load_direct3d_s2(tiny["v1.1"], with_conditioner=False, with_refiners=False).has_refiners() is False


def test_a_refiner_at_another_resolution_than_its_stage_is_refused(tiny, tmp_path):
    folder = tmp_path / "bad"
    shutil.copytree(tiny["v1.1"], folder)
    cfg = targets.load_config(folder / "config.yaml")
    cfg["refiner"]["params"]["res"] = 64  # the stage decodes 32³
    (folder / "config.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(InputError, match="Voxel_RefinerXL works at 64\\^3, its sparse stage at 32\\^3"):
        load_direct3d_s2(folder, with_conditioner=False)


def test_v1_0_stages_build_the_sparse_condition_from_the_patch_mask(tiny):
    stage10 = load_direct3d_s2(tiny["v1.0"], with_conditioner=False).sparse[0]
    stage11 = load_direct3d_s2(tiny["v1.1"], with_conditioner=False).sparse[0]
    g = torch.Generator().manual_seed(0)
    width = random_weights.TINY_WIDTH
    tokens = torch.randn(1, 5 + 9, width, generator=g)  # cls + 4 registers + 3 × 3 patches
    mask = torch.zeros(1, 3, 3, dtype=torch.bool)
    mask[0, 0, 1] = mask[0, 2, 2] = True
    assert stage11.prepare_condition(tokens, mask) is tokens  # v1.1: dense tokens, as they are
    sp = stage10.prepare_condition(tokens, mask)
    want = sparse_condition(tokens, mask)  # official extract_tokens_and_coords (test_checkpoints checks it)
    assert torch.equal(sp.coords, want.coords) and torch.equal(sp.feats, want.feats) and len(sp.feats) == 7
    with pytest.raises(ValueError, match="patch mask"):
        stage10.prepare_condition(tokens, None)
    # the cascade prepares both branches once; the negative keeps the positive's coordinates
    cond, uncond = stage_condition(stage10, Condition(tokens, torch.zeros_like(tokens), 7.0, mask=mask))
    assert torch.equal(uncond.coords, cond.coords) and not uncond.feats.any()
    # the velocity takes it, and which patches are foreground matters
    coords = torch.tensor([[0, 0, 0], [1, 0, 0], [2, 3, 1], [3, 3, 3]], dtype=torch.int32)
    coords = coords[stage10.token_order(coords)]
    x = torch.randn(len(coords), stage10.latent_channels, generator=g)
    t = torch.tensor([700.0])
    v = stage10.velocity(x, coords, t, cond)
    other = mask.clone()
    other[0, 1, 1] = True
    v_other = stage10.velocity(x, coords, t, stage10.prepare_condition(tokens, other))
    assert v.shape == x.shape and torch.isfinite(v).all() and not torch.allclose(v, v_other)
    with pytest.raises(ValueError, match="SparseTensor"):  # dense tokens are refused by a v1.0 DiT
        stage10.velocity(x, coords, t, tokens)


def test_random_state_is_seeded_and_keeps_the_dense_position_embedding():
    cfg = random_weights.tiny_config("v1.1")
    a = random_weights.random_state(cfg["dense_dit"], seed=3)
    b = random_weights.random_state(cfg["dense_dit"], seed=3)
    assert all(torch.equal(a[k], b[k]) for k in a)
    with torch.device("cpu"):
        real = targets.build(cfg["dense_dit"]).pos_emb
    torch.testing.assert_close(a["pos_emb"], real)
    adaptive = random_weights.random_state(cfg["refiner"], seed=0)["adaptive_conv1.2.weight"]
    assert (adaptive >= 0).all() and adaptive.abs().sum() > 0
    c = random_weights.random_state(cfg["dense_dit"], seed=4)
    assert not torch.equal(a["input_layer.weight"], c["input_layer.weight"])
