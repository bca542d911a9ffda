import json

import pytest
import torch

from consistent3dgen.errors import InputError, WeightsNotFoundError
from consistent3dgen.generators.base import DenseStage, SparseStage
from consistent3dgen.generators.registry import load_generator


def _write_mini(folder, seed=0):
    from safetensors.torch import save_file

    from consistent3dgen.train.config import smoke_config
    from consistent3dgen.train.trainer import build_models

    cfg = smoke_config()
    models = build_models(cfg, seed=seed)
    tensors = {f"{p}.{k}": v.contiguous() for p, m in models.items() for k, v in m.state_dict().items()}
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(folder / "weights.safetensors"))
    (folder / "config.json").write_text(cfg.to_json())
    return cfg, models


def test_mini_prior_folder_loads_strict_and_exposes_the_stages(tmp_path):
    cfg, models = _write_mini(tmp_path / "mini")
    gen = load_generator(tmp_path / "mini")
    assert isinstance(gen.dense, DenseStage) and all(isinstance(s, SparseStage) for s in gen.sparse)
    assert gen.sparse[0].resolution == cfg.data.sparse_resolution
    assert gen.dense.occupancy_resolution == cfg.data.sparse_resolution // cfg.data.latent_factor
    for k, v in models["dense_dit"].state_dict().items():
        assert torch.equal(gen.dense.dit.state_dict()[k], v)
    assert gen.null_condition.shape == (1, cfg.null_cond_tokens, cfg.dense_dit["params"]["cond_channels"])
    # a velocity call works with the null condition
    x = torch.zeros(1, *gen.dense.latent_shape)
    v = gen.dense.velocity(x, torch.tensor([500.0]), gen.null_condition)
    assert v.shape == x.shape and torch.isfinite(v).all()


def test_missing_or_mismatched_weights_fail_clearly(tmp_path):
    with pytest.raises(WeightsNotFoundError, match="weights.safetensors"):
        load_generator(_empty(tmp_path / "empty"))
    cfg, _ = _write_mini(tmp_path / "bad")
    d = json.loads((tmp_path / "bad" / "config.json").read_text())
    d["dense_dit"]["params"]["model_channels"] *= 2
    (tmp_path / "bad" / "config.json").write_text(json.dumps(d))
    with pytest.raises(InputError, match="do not fit"):
        load_generator(tmp_path / "bad")


def _empty(folder):
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    return folder


def test_mini_prior_carries_the_sdf_convention_it_was_trained_on(tmp_path):
    from consistent3dgen.train.config import MiniPriorConfig

    cfg = MiniPriorConfig()
    cfg.data.shell_voxels, cfg.data.band_voxels = 2.0, 4.0
    # marching cubes 1 voxel from the seen surface: value (1 - shell) / (band - shell)
    assert cfg.field_convention() == {"band": 4.0, "shell": 2.0, "mc_level": -0.5}
    cfg.data.shell_voxels, cfg.data.band_voxels = 1.0, 2.0
    assert cfg.field_convention()["mc_level"] == 0.0
    written, _ = _write_mini(tmp_path / "mini")
    gen = load_generator(tmp_path / "mini")
    assert gen.field_convention == written.field_convention()
    assert gen.field_setting("band") == written.data.band_voxels
    assert gen.field_setting("mc_level") == pytest.approx(written.field_convention()["mc_level"])
