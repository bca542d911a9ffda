"""The optional second sparse stage: config (opt-in, old configs load), data, fine-tune from the first stage,
export, loading and the real pipeline on the two-stage prior."""

from __future__ import annotations

import argparse
import json
import re

import numpy as np
import pytest
import torch

from consistent3dgen.errors import InputError
from consistent3dgen.train.config import (
    ALL_STAGES,
    SECOND_STAGES,
    STAGES,
    DataConfig,
    MiniPriorConfig,
)
from consistent3dgen.train.data import cache_key, second_stage_indices

NEW_KEYS = ("sparse_vae_2", "sparse_dit_2", "train_sparse_vae_2", "train_sparse_dit_2")
NEW_DATA_KEYS = ("second_resolution", "second_samples")


def _old_dict(cfg: MiniPriorConfig) -> dict:
    """The config as written before the second stage existed (no new keys)."""
    d = json.loads(cfg.to_json())
    for k in NEW_KEYS:
        del d[k]
    for k in NEW_DATA_KEYS:
        del d["data"][k]
    return d


def test_an_old_config_loads_and_equals_the_default_one_stage_config():
    cfg = MiniPriorConfig()
    assert MiniPriorConfig.from_dict(_old_dict(cfg)) == cfg
    assert not cfg.has_second_stage and cfg.stages() == STAGES
    # the default's exported names and pipeline are the one-stage ones
    assert cfg.component_names() == {"dense_vae": "dense_vae", "dense_dit": "dense_dit",
                                     "sparse_vae": "sparse_vae_128", "sparse_dit": "sparse_dit_128"}
    assert [(s["vae"], s["dit"]) for s in cfg.prior_spec()["stages"]["sparse"]] == [("sparse_vae_128",
                                                                                      "sparse_dit_128")]
    assert cfg.model_entry("sparse_vae") is cfg.sparse_vae
    with pytest.raises(ValueError, match="no second sparse stage"):
        cfg.second_stage_entries()


def test_the_bundled_training_json_still_reads_as_one_stage():
    from consistent3dgen.generators.mini import BUNDLED_DIR

    path = BUNDLED_DIR / "training.json"
    if not path.is_file():
        pytest.skip("no bundled training.json")
    cfg = MiniPriorConfig.load(path)
    assert cfg.stages() == STAGES and len(cfg.prior_spec()["stages"]["sparse"]) == 1


def test_second_stage_entries_derive_from_the_first_and_round_trip():
    cfg = MiniPriorConfig()
    cfg.data.second_resolution = 256
    assert cfg.stages() == ALL_STAGES
    vae, dit = cfg.model_entry("sparse_vae_2"), cfg.model_entry("sparse_dit_2")
    assert vae["params"]["resolution"] == dit["params"]["resolution"] == 256 // 8
    assert dit["params"]["factor"] == 0.5  # 128 / 256: the tokens' positions span the first stage's range
    for entry, first in ((vae, cfg.sparse_vae), (dit, cfg.sparse_dit)):  # same widths: the weights transfer
        assert entry["target"] == first["target"]
        assert {k: v for k, v in entry["params"].items() if k not in ("resolution", "factor")} == {
            k: v for k, v in first["params"].items() if k not in ("resolution", "factor")}
    assert cfg.sparse_vae["params"]["resolution"] == 16 and cfg.sparse_dit["params"]["factor"] == 1.0  # untouched
    names = cfg.component_names()
    assert (names["sparse_vae_2"], names["sparse_dit_2"]) == ("sparse_vae_256", "sparse_dit_256")
    spec = cfg.prior_spec()["stages"]["sparse"]
    assert [(s["vae"], s["dit"]) for s in spec] == [("sparse_vae_128", "sparse_dit_128"),
                                                  ("sparse_vae_256", "sparse_dit_256")]
    cfg.fill_second_stage_entries()
    assert MiniPriorConfig.from_dict(json.loads(cfg.to_json())) == cfg
    bad = json.loads(cfg.to_json())
    bad["data"]["second_resolution"] = 100  # not a multiple of the latent factor
    with pytest.raises(InputError, match="second_resolution"):
        MiniPriorConfig.from_dict(bad)


def test_second_stage_shapes_keep_the_held_out_split():
    train, held = np.arange(2, 40), np.array([0, 1])
    cfg = DataConfig(second_resolution=256, second_samples=10)
    t2, h2 = second_stage_indices(train, held, cfg)
    assert len(t2) == 10 and set(t2) <= set(train) and np.array_equal(h2, held)
    assert np.array_equal(t2, second_stage_indices(train, held, cfg)[0])  # seeded
    t_all, _ = second_stage_indices(train, held, DataConfig(second_resolution=256, second_samples=0))
    assert np.array_equal(t_all, train)
    assert cache_key(cfg.at_second_resolution()) != cache_key(cfg)
    assert cfg.at_second_resolution().sparse_resolution == 256


def _two_stage_config(tiny_entries) -> MiniPriorConfig:
    """32³ → 64³ with the tiny models (4³ cells → a 2³ dense latent)."""
    cfg = MiniPriorConfig(
        data=DataConfig(sparse_resolution=32, latent_factor=8, num_procedural=4, meshes=[], second_resolution=64,
                        second_samples=2),
        **tiny_entries(),
    )
    cfg.sparse_vae["params"]["resolution"] = cfg.sparse_dit["params"]["resolution"] = 4
    cfg.dense_dit["params"].update(resolution=2, latent_shape=[4, 2, 2, 2])
    for stage in ALL_STAGES:
        cfg.training(stage).__dict__.update(steps=2, batch_size=2, warmup_steps=1, checkpoint_every=1, log_every=1)
    cfg.train_sparse_vae_2.steps = cfg.train_sparse_dit_2.steps = 3
    cfg.train_sparse_vae_2.max_decoded_cells = 16  # a crop, as the real fine-tune decodes (and 4x faster here)
    return cfg


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_entries):
    """A two-stage run: the stage-2 models' weights when their training starts, the logs, the report."""
    from consistent3dgen.train import trainer as trainer_mod
    from consistent3dgen.train.main import train_mini_prior

    tmp = tmp_path_factory.mktemp("two_stage")
    cfg = _two_stage_config(tiny_entries)
    at_start: dict[str, dict[str, torch.Tensor]] = {}
    run = trainer_mod.StageTrainer.run

    def recording_run(self, loss_fn, steps=None, log=print):
        at_start[self.name] = {k: v.clone() for k, v in self.model.state_dict().items()}
        return run(self, loss_fn, steps, log)

    logs: list[str] = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(trainer_mod.StageTrainer, "run", recording_run)
        report = train_mini_prior(cfg, tmp / "run", tmp / "data", None, None, tmp / "mini", logs.append)
    return {"dir": tmp, "cfg": cfg, "at_start": at_start, "logs": logs, "report": report}


def test_two_stages_train_fine_tune_from_the_first_and_export(trained):
    from consistent3dgen.generators.mini import load_mini_prior
    from consistent3dgen.io.weights import read_state_dict

    tmp, report, at_start = trained["dir"], trained["report"], trained["at_start"]
    assert report["steps"] == {**{s: 2 for s in STAGES}, "sparse_vae_2": 3, "sparse_dit_2": 3}
    assert set(at_start) == set(ALL_STAGES)
    for second, first in (("sparse_vae_2", "sparse_vae"), ("sparse_dit_2", "sparse_dit")):
        ema = {k[4:]: v for k, v in read_state_dict(tmp / "run" / first / "checkpoint.safetensors").items()
               if k.startswith("ema.")}
        start = at_start[second]
        assert start.keys() == ema.keys()
        for k in ema:  # the fine-tune starts at the first stage's EMA weights
            assert torch.equal(start[k], ema[k]), (second, k)
        assert any(not torch.equal(v, at_start[first][k]) for k, v in start.items())  # not the fresh init
        assert any(f"{second}: initialised from the {first} EMA weights" in line for line in trained["logs"])
        assert (tmp / "run" / second / "loss.csv").is_file()
    # the second stage's data: its own cache folder at 64³
    cfg = trained["cfg"]
    assert (tmp / "data" / cache_key(cfg.data.at_second_resolution()) / "manifest.json").is_file()
    assert report["metrics"]["second_stage_training_samples"] == 2
    assert {"sparse_vae_2_l1", "sparse_vae_2_band_sign_accuracy"} <= set(report["metrics"])
    # the export: two sparse stages, the second's DiT factor 0.5, its own latent scale
    spec = json.loads((tmp / "mini" / "pipeline.json").read_text())
    assert [(s["vae"], s["dit"]) for s in spec["stages"]["sparse"]] == [("sparse_vae_32", "sparse_dit_32"),
                                                                      ("sparse_vae_64", "sparse_dit_64")]
    dit2 = json.loads((tmp / "mini" / "sparse_dit_64.json").read_text())
    assert dit2["params"]["factor"] == 0.5 and dit2["params"]["resolution"] == 8
    back = MiniPriorConfig.load(tmp / "mini" / "training.json")
    assert back.data.second_resolution == 64 and back.sparse_vae_2["params"]["latents_scale"] != 1.0
    card = (tmp / "mini" / "MODEL_CARD.md").read_text()
    assert "| sparse_vae_2 | 3 |" in card and "| sparse_dit_2 | 3 |" in card and "32³ → 64³" in card
    gen = load_mini_prior(tmp / "mini")
    assert [s.resolution for s in gen.sparse] == [32, 64] and len(gen.sparse_samplers) == 2
    assert gen.sparse[1].dit.factor == 0.5


def test_a_second_call_resumes_every_stage_and_trains_nothing(trained, tiny_entries):
    from consistent3dgen.train.main import train_mini_prior

    tmp, logs = trained["dir"], []
    report = train_mini_prior(_two_stage_config(tiny_entries), tmp / "run", tmp / "data", None, None, None, logs.append)
    assert report["steps"] == trained["report"]["steps"]
    assert any("sparse_vae_2: resumed at step 3" in line for line in logs)
    assert any("sparse_dit_2: resumed at step 3" in line for line in logs)
    assert not any(re.search(r" step \d+/\d+", line) or "initialised from" in line for line in logs)


def test_the_pipeline_runs_both_sparse_stages(trained):
    import trimesh

    from consistent3dgen.generators.mini import load_mini_prior
    from consistent3dgen.pipeline import Pipeline
    from consistent3dgen.views import orbit_camera, render_rgbd

    ball = trimesh.creation.icosphere(subdivisions=3, radius=0.6)
    pointmap = render_rgbd(np.asarray(ball.vertices, np.float32), np.asarray(ball.faces), orbit_camera(30, 20, 2.5),
                           size=48).to_pointmap()
    pipe = Pipeline(load_mini_prior(trained["dir"] / "mini"))
    res = pipe(pointmap, guidance=5.0, fusion=True, dense_steps=2, sparse_steps=2, progress=False)
    assert len(res.vertices) > 0 and len(res.faces) > 0
    assert [s["stage"] for s in res.report()["stages"]] == ["dense", "sparse32", "sparse64"]
    assert [lat.resolution for lat in res.latents] == [4, 8]


def test_train_main_stages_follow_the_config(monkeypatch, tmp_path, tiny_entries):
    from consistent3dgen.train import main as main_mod

    seen = {}
    monkeypatch.setattr(main_mod, "train_mini_prior", lambda cfg, run, cache, stages, *a, **k: seen.update(s=stages))
    path = tmp_path / "two.json"
    path.write_text(_two_stage_config(tiny_entries).to_json())

    def args(stages, config=str(path)):
        return argparse.Namespace(threads=0, config=config, smoke=False, stages=stages, out=str(tmp_path / "run"),
                                  data_cache=None, export=None, meshes_dir=None, data_workers=1)

    main_mod.train_main(args(None))  # the CLI default: every stage of the config
    assert seen["s"] == list(ALL_STAGES)
    main_mod.train_main(args(",".join(STAGES)))  # named: only those
    assert seen["s"] == list(STAGES)
    main_mod.train_main(args("sparse_vae_2,sparse_dit_2"))
    assert seen["s"] == list(SECOND_STAGES)
    one = tmp_path / "one.json"
    one.write_text(MiniPriorConfig().to_json())
    main_mod.train_main(args(None, str(one)))
    assert seen["s"] == list(STAGES)
    with pytest.raises(InputError, match="need data.second_resolution"):
        main_mod.train_main(args("sparse_vae_2", str(one)))


def test_a_second_stage_refuses_an_unfinished_first_stage(trained, tmp_path, tiny_entries):
    from consistent3dgen.train.main import train_mini_prior

    cfg, data = _two_stage_config(tiny_entries), trained["dir"] / "data"  # a fresh run folder on the cached samples
    with pytest.raises(InputError, match="sparse_vae_2 is fine-tuned from the trained sparse_vae"):
        train_mini_prior(cfg, tmp_path / "run", data, ["sparse_vae_2"], None, None, lambda _: None)


def test_a_later_stage_can_start_from_the_previous_stages_shape(trained, monkeypatch):
    import trimesh

    from consistent3dgen import cascade
    from consistent3dgen.errors import InputError
    from consistent3dgen.generators.mini import load_mini_prior
    from consistent3dgen.pipeline import Pipeline
    from consistent3dgen.views import orbit_camera, render_rgbd

    ball = trimesh.creation.icosphere(subdivisions=3, radius=0.6)
    pointmap = render_rgbd(np.asarray(ball.vertices, np.float32), np.asarray(ball.faces), orbit_camera(30, 20, 2.5),
                           size=48).to_pointmap()
    pipe = Pipeline(load_mini_prior(trained["dir"] / "mini"))
    common = dict(guidance=5.0, fusion=True, dense_steps=2, sparse_steps=4, seen_field="signed", progress=False)
    starts = []
    real = cascade.previous_stage_start

    def recording(stage, sdf, renorm, cells):
        starts.append((stage.resolution, sdf.resolution, len(cells)))
        out = real(stage, sdf, renorm, cells)
        assert out.shape == (len(cells), stage.latent_channels) and out.abs().sum() > 0
        return out

    monkeypatch.setattr(cascade, "previous_stage_start", recording)
    noise = pipe(pointmap, **common)
    assert starts == []  # the default: the later stage starts from noise, as the official cascade
    sdedit = pipe(pointmap, sparse_start_sigma=0.5, **common)
    assert [s[:2] for s in starts] == [(64, 32)]  # only the second stage, from the first stage's field
    assert torch.equal(noise.latents[0].feats, sdedit.latents[0].feats)  # the first stage is unchanged
    assert not torch.equal(noise.latents[1].feats, sdedit.latents[1].feats)
    with pytest.raises(InputError, match="sparse_start_sigma below 1 needs a signed"):
        pipe(pointmap, sparse_start_sigma=0.5, **{**common, "seen_field": "thin_shell"})
