"""Trainers: each objective decreases on a fixed batch; resume continues bit-exactly; curves; config budget."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

from consistent3dgen.errors import InputError
from consistent3dgen.generators.mini import build_component
from consistent3dgen.train import shapes
from consistent3dgen.train.config import DataConfig, MiniPriorConfig, StageTraining
from consistent3dgen.train.data import SampleSet, build_sample
from consistent3dgen.train.trainer import (
    StageTrainer,
    batch_band_tensor,
    build_models,
    count_bytes,
    crop_cells,
    dense_dit_loss,
    dense_vae_loss,
    encode_sparse_latents,
    init_for_training,
    sample_sigmas,
    sparse_dit_loss,
    sparse_vae_loss,
    write_curves,
)


@pytest.fixture(scope="module")
def samples():
    cfg = DataConfig(sparse_resolution=64, latent_factor=8, band_voxels=2.0, shell_voxels=1.0)
    a = build_sample(shapes.Shape("s", shapes.sphere((0.0, 0.1, 0.0), 0.5)), cfg, "sphere")
    b = build_sample(shapes.make_shape("coin", 0), cfg, "coin:0")
    return SampleSet([a, b])


def _tiny(entry, is_dit, seed=0):
    torch.manual_seed(seed)
    m = build_component(copy.deepcopy(entry))
    init_for_training(m, is_dit)
    return m


def _descends(model, loss_of, steps=6, lr=3e-3):
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        loss = loss_of(model, torch.Generator().manual_seed(0))  # same batch, same noise every step
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses


def test_dense_vae_loss_decreases_on_a_fixed_batch(samples, tiny_entry):
    occ = torch.from_numpy(samples.occupancy_batch([0, 1]))
    losses = _descends(_tiny(tiny_entry("dense_vae"), False), lambda m, g: dense_vae_loss(m, occ, 1e-4, g)["loss"])
    assert losses[-1] < 0.9 * losses[0]


def test_sparse_vae_loss_decreases_on_a_fixed_batch(samples, tiny_entry):
    batch = [samples[0], samples[1]]

    def loss(m, g):
        return sparse_vae_loss(m, batch, 1e-6, 6, g, np.random.default_rng(0))["loss"]

    losses = _descends(_tiny(tiny_entry("sparse_vae"), False), loss, steps=6, lr=1e-2)
    assert losses[-1] < 0.9 * losses[0]


def test_dense_dit_loss_decreases_on_a_fixed_batch(tiny_entry):
    x0 = torch.randn(3, 4, 4, 4, 4, generator=torch.Generator().manual_seed(1))
    tc = StageTraining(steps=1, batch_size=3, lr=1e-3)
    dit = _tiny(tiny_entry("dense_dit"), True)
    losses = _descends(dit, lambda m, g: dense_dit_loss(m, x0, tc, 1, g)["loss"], 8, 1e-2)
    assert losses[-1] < 0.8 * losses[0]


def test_sparse_dit_loss_decreases_on_a_fixed_batch(samples, tiny_entry):
    vae = _tiny(tiny_entry("sparse_vae"), False)
    tokens = encode_sparse_latents(vae, samples, block_size=8)
    tokens = [(c, np.random.default_rng(i).normal(size=z.shape).astype(np.float32)) for i, (c, z) in enumerate(tokens)]
    tc = StageTraining(steps=1, batch_size=2, lr=1e-3)
    model = _tiny(tiny_entry("sparse_dit"), True)
    losses = _descends(model, lambda m, g: sparse_dit_loss(m, tokens, tc, 1, g)["loss"], 8, 1e-2)
    assert losses[-1] < 0.8 * losses[0]


def test_sigma_sampling_ranges_and_shift():
    g = torch.Generator().manual_seed(0)
    tc = StageTraining(steps=1, batch_size=1, lr=1.0)
    s = sample_sigmas(20000, tc, g)
    assert 0 < float(s.min()) and float(s.max()) < 1
    assert abs(float(torch.logit(s).mean()) - 1.0) < 0.05  # logit-normal(1, 1)
    tc.shift = 3.0
    s3 = sample_sigmas(20000, tc, torch.Generator().manual_seed(0))
    assert torch.allclose(s3, 3 * s / (1 + 2 * s))
    tc.timestep_sampling = "nope"
    with pytest.raises(ValueError):
        sample_sigmas(3, tc, g)


def _dense_trainer(tmp_path, samples, steps, entry):
    tc = StageTraining(steps=steps, batch_size=2, lr=1e-3, warmup_steps=1, checkpoint_every=2, log_every=100)
    return StageTrainer("dense_vae", _tiny(entry, False), tc, tmp_path, seed=3)


def _dense_objective(samples):
    def loss_fn(model, step, gen, rng):
        idx = rng.integers(0, len(samples), 2)
        return dense_vae_loss(model, torch.from_numpy(samples.occupancy_batch(idx)), 1e-4, gen)

    return loss_fn


def test_resume_continues_exactly(tmp_path, samples, tiny_entry):
    straight = _dense_trainer(tmp_path / "a", samples, 4, tiny_entry("dense_vae"))
    straight.run(_dense_objective(samples), log=None)

    first = _dense_trainer(tmp_path / "b", samples, 4, tiny_entry("dense_vae"))
    first.run(_dense_objective(samples), steps=2, log=None)
    first.save()
    resumed = _dense_trainer(tmp_path / "b", samples, 4, tiny_entry("dense_vae"))
    assert resumed.load() and resumed.step == 2
    resumed.run(_dense_objective(samples), log=None)

    assert [r["loss"] for r in resumed.history] == [r["loss"] for r in straight.history]
    for (k, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    for a, b in zip(straight.ema.model.parameters(), resumed.ema.model.parameters(), strict=True):
        assert torch.equal(a, b)
    assert (tmp_path / "b" / "dense_vae" / "loss.csv").is_file()
    assert (tmp_path / "b" / "dense_vae" / "loss.png").read_bytes()[:4] == b"\x89PNG"


def test_corrupt_checkpoint_is_a_clear_error(tmp_path, samples, tiny_entry):
    tr = _dense_trainer(tmp_path, samples, 2, tiny_entry("dense_vae"))
    tr.dir.mkdir(parents=True)
    tr.checkpoint_path.write_bytes(b"garbage")
    (tr.dir / "checkpoint.json").write_text("{}")
    with pytest.raises(InputError, match="cannot resume"):
        tr.load()


def test_write_curves(tmp_path):
    hist = [{"step": i + 1, "loss": 1.0 / (i + 1), "lr": 1e-3} for i in range(30)]
    write_curves(hist, tmp_path / "c.csv", tmp_path / "c.png", "x")
    rows = (tmp_path / "c.csv").read_text().splitlines()
    assert rows[0] == "step,loss,lr" and len(rows) == 31
    from PIL import Image

    assert Image.open(tmp_path / "c.png").size == (640, 400)


def test_default_config_fits_the_weight_budget_and_round_trips():
    cfg = MiniPriorConfig()
    back = MiniPriorConfig.from_dict(json.loads(cfg.to_json()))
    assert back == cfg
    models = build_models(cfg)
    groups = {m.num_groups for m in models["sparse_vae"].encoder.modules() if isinstance(m, torch.nn.GroupNorm)}
    assert groups == {cfg.sparse_vae["encoder_norm_groups"]}  # passed through the VAE's constructor
    total = sum(count_bytes(m) for m in models.values())
    assert total < 20 * 2**20
    # the dense occupancy is the sparse stage's latent-cell grid
    assert (
        cfg.data.occupancy_resolution
        == cfg.sparse_vae["params"]["resolution"]
        == cfg.sparse_dit["params"]["resolution"]
    )
    with pytest.raises(InputError):
        MiniPriorConfig.from_dict({"bogus": 1})
    bad = json.loads(cfg.to_json())
    bad["train_dense_dit"]["timestep_sampling"] = "nope"  # a config value: refused when the config is read
    with pytest.raises(InputError, match="train_dense_dit.timestep_sampling must be one of logit_normal"):
        MiniPriorConfig.from_dict(bad)


def test_train_chain_end_to_end_resumes_and_exports(tmp_path, tiny_entries):
    from consistent3dgen.generators.mini import load_mini_prior
    from consistent3dgen.train.config import MiniPriorConfig
    from consistent3dgen.train.main import train_mini_prior

    cfg = MiniPriorConfig(
        data=DataConfig(sparse_resolution=64, latent_factor=8, num_procedural=3, meshes=[]),
        **tiny_entries(),
    )
    cfg.dense_vae["params"]["model_channels_encoder"] = [8, 8, 16]  # 8³ cells → 2³ latent (factor 4)
    cfg.dense_vae["params"]["model_channels_decoder"] = [16, 8, 8]
    cfg.dense_dit["params"].update(resolution=2, latent_shape=[4, 2, 2, 2])
    for stage in ("dense_vae", "sparse_vae", "dense_dit", "sparse_dit"):
        cfg.training(stage).__dict__.update(steps=2, batch_size=2, warmup_steps=1, checkpoint_every=1, log_every=1)
    stages = ["dense_vae", "sparse_vae", "dense_dit", "sparse_dit"]
    logs = []
    report = train_mini_prior(cfg, tmp_path / "run", tmp_path / "data", stages, None, tmp_path / "mini", logs.append)
    assert all(report["steps"][stage] == 2 for stage in stages)
    for stage in stages:
        assert (tmp_path / "run" / stage / "loss.csv").is_file()
    assert set(report["metrics"]) >= {"dense_vae_iou", "sparse_vae_l1", "sparse_vae_band_sign_accuracy"}
    # a second run resumes every stage at its end and trains nothing more
    logs.clear()
    train_mini_prior(cfg, tmp_path / "run", tmp_path / "data", stages, None, None, logs.append)
    assert any("dense_vae: resumed at step 2" in line for line in logs)
    assert not any(" step 3/" in line for line in logs)
    gen = load_mini_prior(tmp_path / "mini")  # the export is what inference reads
    assert gen.dense.latents_scale > 0 and gen.sparse[0].resolution == 64
    assert gen.defaults == {**cfg.field_convention(), **cfg.inference_defaults}
    assert MiniPriorConfig.load(tmp_path / "mini" / "training.json").data.sparse_resolution == 64
    card = (tmp_path / "mini" / "MODEL_CARD.md").read_text()
    assert "stanford-bunny" in card and "| dense_vae | 2 |" in card


def test_load_mini_prior_names_the_missing_folder(tmp_path):
    from consistent3dgen.errors import WeightsNotFoundError
    from consistent3dgen.generators.mini import load_mini_prior

    with pytest.raises(WeightsNotFoundError, match=str(tmp_path)):
        load_mini_prior(tmp_path)


def test_ema_warm_up_then_decay():
    from consistent3dgen.train.trainer import EMA

    m = torch.nn.Linear(1, 1, bias=False)
    torch.nn.init.zeros_(m.weight)
    ema = EMA(m, decay=0.999)
    with torch.no_grad():
        m.weight.fill_(1.0)
    ema.update(m, 0)  # decay min(0.999, 1/10): the average moves 90 % of the way at the first step
    assert torch.allclose(ema.model.weight, torch.tensor([[0.9]]))
    for step in range(1, 2000):
        ema.update(m, step)
    assert float(ema.model.weight) > 0.999


def test_crop_cells_takes_a_box_of_at_most_max_cells_plus_context():
    cells = np.stack(np.meshgrid(*[np.arange(6)] * 3, indexing="ij"), -1).reshape(-1, 3)
    core, padded = crop_cells(cells, 27, np.random.default_rng(3))
    assert 0 < core.sum() <= 27 and padded.sum() > core.sum() and (padded | ~core).all()
    # the core is a Chebyshev box: its extent is the same along every axis (clipped by the grid)
    assert (cells[core].max(0) - cells[core].min(0)).max() <= 2
    full_core, full_pad = crop_cells(cells, 0, np.random.default_rng(3))
    assert full_core.all() and full_pad.all()


def test_sparse_vae_loss_encodes_only_the_cropped_cells(samples):
    s = samples[0]
    core, padded = crop_cells(s.cells, 6, np.random.default_rng(0))
    x = batch_band_tensor([s], [padded])
    cells_in = np.unique(x.coords[:, 1:].numpy() // s.factor, axis=0)
    expected = np.unique(s.cells[padded], axis=0)
    np.testing.assert_array_equal(cells_in, expected)
    assert len(x.coords) < len(batch_band_tensor([s]).coords)


def test_sparse_encoder_starts_with_a_narrow_posterior(samples, tiny_entry):
    vae = _tiny(tiny_entry("sparse_vae"), False)
    h = vae.encoder(batch_band_tensor([samples[0]]))
    mean, logvar = torch.chunk(h.feats, 2, dim=1)
    assert torch.allclose(logvar, torch.full_like(logvar, -8.0))
    assert mean.abs().max() > 0  # the latent carries the input from the first step on


def test_the_model_card_lists_every_family_and_training_mesh_with_its_origin():
    from consistent3dgen.train.main import model_card
    from consistent3dgen.train.shapes import FAMILIES

    cfg = MiniPriorConfig()  # families None: every family; the three shared training meshes
    card = model_card(cfg, {}, {}, 0)
    assert f"families: {', '.join(FAMILIES)};" in card
    for mesh, origin in (("cow", "Viewpoint Animation Engineering"), ("fandisk", "Hughes Hoppe"),
                         ("beetle", "Ivan Sutherland")):
        assert f"| {mesh} | " in card and origin in card
    cfg.data.meshes = []
    assert "| mesh |" not in model_card(cfg, {}, {}, 0)


def _device_harness():
    """tests/test_devices.py's stand-in second device (a CPU machine has none; see that module's docstring)."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("device_harness", Path(__file__).parents[1] / "test_devices.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_whole_chain_trains_on_a_second_device_with_the_same_batches(tmp_path, tiny_entries):
    # every batch, noise draw and latent cache must reach the models on their device (a CPU tensor beside a
    # device tensor fails in the stand-in as on CUDA), and since batches and noise are drawn on the CPU, the
    # losses are those of the CPU run, step for step
    from consistent3dgen.generators.mini import load_mini_prior
    from consistent3dgen.train.main import train_mini_prior

    def config():
        cfg = MiniPriorConfig(data=DataConfig(sparse_resolution=64, latent_factor=8, num_procedural=3, meshes=[]),
                              **tiny_entries())
        cfg.dense_vae["params"]["model_channels_encoder"] = [8, 8, 16]
        cfg.dense_vae["params"]["model_channels_decoder"] = [16, 8, 8]
        cfg.dense_dit["params"].update(resolution=2, latent_shape=[4, 2, 2, 2])
        for stage in cfg.stages():
            cfg.training(stage).__dict__.update(steps=2, batch_size=2, warmup_steps=1, checkpoint_every=1)
        return cfg

    def losses(run):
        return {stage: [row["loss"] for row in json.loads((run / stage / "checkpoint.json").read_text())["history"]]
                for stage in ("dense_vae", "sparse_vae", "dense_dit", "sparse_dit")}

    train_mini_prior(config(), tmp_path / "cpu", tmp_path / "data", None, None, None, lambda *a: None)
    harness = _device_harness()
    with harness.fake_device() as dev:
        report = train_mini_prior(config(), tmp_path / "dev", tmp_path / "data", None, None, tmp_path / "mini",
                                  lambda *a: None, device=dev)
    assert all(n == 2 for n in report["steps"].values())
    # the same arithmetic up to float32 rounding: kernels chosen by device type may sum in another order (the
    # sparse DiT's second step differed by 1e-7 relative)
    on_device, on_cpu = losses(tmp_path / "dev"), losses(tmp_path / "cpu")
    assert {k: pytest.approx(v, rel=1e-5) for k, v in on_cpu.items()} == on_device
    gen = load_mini_prior(tmp_path / "mini")  # stored from the CPU: it loads where there is no such device
    assert gen.sparse[0].resolution == 64


def test_train_refuses_a_missing_device_before_any_work(tmp_path, capsys):
    from consistent3dgen.cli import main

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the refusal needs one without")
    assert main(["train", "--smoke", "--out", str(tmp_path / "run"), "--device", "cuda"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "CUDA is not available" in err[0]
    assert not (tmp_path / "run").exists()


def test_ground_symmetries_turn_and_mirror_about_the_vertical_axis(samples, tiny_entry):
    from consistent3dgen.train.trainer import encode_dense_latents, ground_symmetries

    rng = np.random.default_rng(0)
    occ = (rng.random((2, 1, 4, 4, 4)) > 0.5).astype(np.float32)
    eight = ground_symmetries(occ, 8)
    assert eight.shape == (16, 1, 4, 4, 4) and np.array_equal(ground_symmetries(occ, 1), occ)
    assert np.array_equal(eight[:2], occ) and np.array_equal(eight[2:4], occ[:, :, ::-1])  # grouped by variant
    # every variant keeps each vertical column (x, z) whole and in order: y, the up axis, is never touched
    for k in range(8):
        v = eight[2 * k: 2 * k + 2]
        assert sorted(map(bytes, v[0, 0].transpose(0, 2, 1).reshape(16, 4))) == sorted(
            map(bytes, occ[0, 0].transpose(0, 2, 1).reshape(16, 4)))
    # the eight are distinct images of a shape with no symmetry of its own: the whole group, once each
    asym = np.zeros((1, 1, 4, 4, 4), np.float32)
    asym[0, 0, 0, 0, 0] = asym[0, 0, 1, 0, 0] = asym[0, 0, 0, 1, 3] = 1
    assert len({ground_symmetries(asym, 8)[k].tobytes() for k in range(8)}) == 8
    with pytest.raises(ValueError, match="symmetries"):
        ground_symmetries(occ, 3)
    with pytest.raises(InputError, match="symmetries"):
        MiniPriorConfig.from_dict({"train_dense_dit": {"steps": 1, "batch_size": 1, "lr": 1e-3, "symmetries": 3}})
    # the latent cache holds every sample under each symmetry
    vae = _tiny(tiny_entry("dense_vae"), is_dit=False)
    assert len(encode_dense_latents(vae, samples, symmetries=4)) == 4 * len(samples)
