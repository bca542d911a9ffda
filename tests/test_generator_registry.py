"""Loading generators by name: the bundled mini prior, a mini-prior folder (one config + safetensors pair per
component), clear errors; inference never imports the training package."""

import json
import subprocess
import sys

import pytest
import torch

from consistent3dgen.errors import InputError, WeightsNotFoundError
from consistent3dgen.generators.base import DenseStage, SparseStage
from consistent3dgen.generators.registry import load_generator


def test_mini_prior_folder_loads_strict_and_exposes_the_stages(tmp_path, write_tiny_prior):
    cfg, models = write_tiny_prior(tmp_path / "mini")
    gen = load_generator(tmp_path / "mini")
    assert isinstance(gen.dense, DenseStage) and all(isinstance(s, SparseStage) for s in gen.sparse)
    assert gen.sparse[0].resolution == cfg.data.sparse_resolution
    assert gen.dense.occupancy_resolution == cfg.data.sparse_resolution // cfg.data.latent_factor
    for k, v in models["dense_dit"].state_dict().items():
        assert torch.equal(gen.dense.dit.state_dict()[k], v)
    for k, v in models["sparse_vae"].state_dict().items():
        assert torch.equal(gen.sparse[0].vae.state_dict()[k], v)
    assert gen.null_condition.shape == (1, cfg.null_cond_tokens, cfg.dense_dit["params"]["cond_channels"])
    # a velocity call works with the null condition
    x = torch.zeros(1, *gen.dense.latent_shape)
    v = gen.dense.velocity(x, torch.tensor([500.0]), gen.null_condition)
    assert v.shape == x.shape and torch.isfinite(v).all()


def test_missing_or_mismatched_weights_fail_clearly(tmp_path, write_tiny_prior):
    folder = tmp_path / "bad"
    write_tiny_prior(folder)
    (folder / "dense_dit.safetensors").unlink()
    with pytest.raises(WeightsNotFoundError, match="dense_dit.safetensors"):
        load_generator(folder)
    write_tiny_prior(folder)
    entry = json.loads((folder / "dense_dit.json").read_text())
    entry["params"]["model_channels"] *= 2
    (folder / "dense_dit.json").write_text(json.dumps(entry))
    with pytest.raises(InputError, match="dense_dit.safetensors: .* has shape .* the model expects"):
        load_generator(folder)
    # a v1 folder (one config.json + weights.safetensors) is named as such
    old = tmp_path / "v1"
    old.mkdir()
    (old / "config.json").write_text("{}")
    with pytest.raises(WeightsNotFoundError, match="re-export"):
        load_generator(old)


def test_mini_prior_brings_its_defaults_and_sdf_convention(tmp_path, write_tiny_prior):
    from consistent3dgen.options import GenerationOptions
    from consistent3dgen.train.config import MiniPriorConfig

    cfg = MiniPriorConfig()
    cfg.data.shell_voxels, cfg.data.band_voxels = 2.0, 4.0
    # marching cubes 1 voxel from the seen surface: value (1 - shell) / (band - shell)
    assert cfg.field_convention() == {"band": 4.0, "shell": 2.0, "mc_level": -0.5}
    cfg.data.shell_voxels, cfg.data.band_voxels = 1.0, 2.0
    assert cfg.field_convention()["mc_level"] == 0.0
    written, _ = write_tiny_prior(tmp_path / "mini")
    gen = load_generator(tmp_path / "mini")
    for key, value in written.field_convention().items():
        assert gen.defaults[key] == pytest.approx(value)
    asked = GenerationOptions(guidance=3.0)
    opts = asked.resolve(gen.option_defaults(), len(gen.sparse))
    assert asked.band is None and asked.fusion is None  # the caller's options are not touched
    assert opts.band == written.data.band_voxels and opts.guidance == 3.0 and opts.fusion is True
    assert opts.dense_steps == written.dense_sampler["steps"]
    assert opts.sparse_steps == (written.sparse_sampler["steps"],)


def test_bundled_prior_loads_without_the_training_package():
    code = ("import sys; from consistent3dgen.pipeline import Pipeline; "
            "p = Pipeline.from_pretrained('mini'); "
            "print(sorted(m for m in sys.modules if m.startswith('consistent3dgen.train')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
