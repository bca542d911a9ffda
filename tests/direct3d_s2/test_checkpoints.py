"""Checkpoint loading: local folder and hub-cache layouts, strictness, dtypes, clear errors."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
import yaml

from consistent3dgen.errors import InputError, WeightsNotFoundError
from consistent3dgen.generators.direct3d_s2 import checkpoints, targets
from consistent3dgen.generators.direct3d_s2.random_weights import random_state
from consistent3dgen.io.weights import load_into

TINY_CONFIG = {
    "dense_vae": {
        "target": "direct3d_s2.models.autoencoders.dense_vae.DenseShapeVAE",
        "params": {
            "use_checkpoint": True,
            "embed_dim": 4,
            "in_channels": 1,
            "out_channels": 1,
            "model_channels_encoder": [8, 16],
            "num_res_blocks_encoder": 1,
            "num_res_blocks_middle_encoder": 1,
            "model_channels_decoder": [16, 8],
            "num_res_blocks_decoder": 1,
            "num_res_blocks_middle_decoder": 1,
            "use_fp16": True,
            "latents_scale": 1.0,
            "latents_shift": 0.0,
        },
    },
    "dense_dit": {
        "target": "direct3d_s2.models.transformers.dense_dit.DenseDiT",
        "params": {
            "resolution": 4,
            "in_channels": 4,
            "out_channels": 4,
            "model_channels": 32,
            "cond_channels": 16,
            "num_blocks": 1,
            "num_heads": 2,
            "mlp_ratio": 4,
            "patch_size": 1,
            "pe_mode": "ape",
            "qk_rms_norm": True,
            "use_checkpoint": True,
            "use_fp16": True,
            "latent_shape": [4, 4, 4, 4],
        },
    },
}


def _write_dense(folder: Path, config: dict, seed: int = 0, dtype: torch.dtype = torch.float32) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    ckpt = {
        "vae": random_state(config["dense_vae"], seed, dtype),
        "dit": random_state(config["dense_dit"], seed + 1, dtype),
    }
    torch.save(ckpt, folder / "model_dense.ckpt")
    return ckpt


def test_local_folder_loads_strict_values_and_fp16_layout(tmp_path):
    ckpt = _write_dense(tmp_path / "w", TINY_CONFIG)
    parts = checkpoints.load_parts(tmp_path / "w", dtype="fp16")
    vae, dit = parts["dense_vae"], parts["dense_dit"]
    assert not vae.training and not dit.training
    # values arrive cast into the official mixed layout
    assert vae.encoder.input_layer.weight.dtype == torch.float32
    assert vae.encoder.blocks[0].conv1.weight.dtype == torch.float16
    assert dit.blocks[0].self_attn.q_rms_norm.gamma.dtype == torch.float32
    assert dit.input_layer.weight.dtype == torch.float16
    for k, v in dit.state_dict().items():
        assert torch.equal(v, ckpt["dit"][k].to(v.dtype)), k
    for k, v in vae.state_dict().items():
        assert torch.equal(v, ckpt["vae"][k].to(v.dtype)), k
    with torch.no_grad():
        out = dit(
            torch.randn(1, 4, 4, 4, 4, dtype=torch.float16),
            torch.tensor([500.0], dtype=torch.float16),
            torch.randn(1, 3, 16),
        )
    assert out.dtype == torch.float16 and torch.isfinite(out.float()).all()


@pytest.mark.parametrize(
    ("dtype", "conv_dtype"), [("fp32", torch.float32), ("bf16", torch.bfloat16), (None, torch.float16)]
)
def test_dtype_choice(tmp_path, dtype, conv_dtype):
    _write_dense(tmp_path / "w", TINY_CONFIG)
    parts = checkpoints.load_parts(tmp_path / "w", dtype=dtype)
    assert parts["dense_dit"].blocks[0].mlp.mlp[0].weight.dtype == conv_dtype
    assert parts["dense_vae"].decoder.input_layer.weight.dtype == conv_dtype
    assert parts["dense_dit"].blocks[0].norm2.weight.dtype == torch.float32
    assert parts["dense_dit"].pos_emb.dtype == torch.float32


def test_fp32_load_matches_a_plain_strict_load(tmp_path):
    ckpt = _write_dense(tmp_path / "w", TINY_CONFIG)
    dit = checkpoints.load_parts(tmp_path / "w", parts=["dense_dit"], dtype="fp32")["dense_dit"]
    ref = targets.build(TINY_CONFIG["dense_dit"], use_fp16=False).eval()
    ref.load_state_dict(ckpt["dit"], strict=True)
    x, t, c = torch.randn(2, 4, 4, 4, 4), torch.tensor([10.0, 900.0]), torch.randn(2, 5, 16)
    with torch.no_grad():
        assert torch.equal(dit(x, t, c), ref(x, t, c))


def test_strict_errors(tmp_path):
    ckpt = _write_dense(tmp_path / "w", TINY_CONFIG)
    model = checkpoints.build_part(TINY_CONFIG["dense_dit"])
    bad = dict(ckpt["dit"])
    bad.pop("out_layer.bias")
    with pytest.raises(InputError, match="1 missing keys"):
        load_into(checkpoints.build_part(TINY_CONFIG["dense_dit"]), bad)
    bad = dict(ckpt["dit"], extra=torch.zeros(1))
    with pytest.raises(InputError, match="1 unexpected keys"):
        load_into(model, bad)
    bad = dict(ckpt["dit"])
    bad["input_layer.weight"] = torch.zeros(3, 3)
    with pytest.raises(InputError, match="input_layer.weight has shape"):
        load_into(checkpoints.build_part(TINY_CONFIG["dense_dit"]), bad)
    # a checkpoint whose part is not a state dict
    torch.save({"vae": ckpt["vae"], "dit": [1, 2]}, tmp_path / "w" / "model_dense.ckpt")
    with pytest.raises(InputError, match="'dit' is not a state dict"):
        checkpoints.load_parts(tmp_path / "w")


def test_missing_files_name_the_path(tmp_path):
    with pytest.raises(WeightsNotFoundError, match="nowhere"):
        checkpoints.load_parts(tmp_path / "nowhere")
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "config.yaml").write_text(yaml.safe_dump(TINY_CONFIG))
    with pytest.raises(WeightsNotFoundError, match="model_dense.ckpt"):
        checkpoints.load_parts(tmp_path / "w")


def test_bad_arguments(tmp_path):
    with pytest.raises(InputError, match="unknown Direct3D-S2 parts"):
        checkpoints.load_parts(tmp_path, parts=["dense_thing"])
    with pytest.raises(InputError, match="unsupported dtype"):
        checkpoints.load_parts(tmp_path, dtype="int8")
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "config.yaml").write_text(yaml.safe_dump(TINY_CONFIG))
    (tmp_path / "w" / "model_dense.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="cannot read checkpoint .*model_dense.ckpt") as e:
        checkpoints.load_parts(tmp_path / "w")
    assert "\n" not in str(e.value)


def test_hub_id_offline_missing_names_hub_id(tmp_path, offline_hub):
    with pytest.raises(WeightsNotFoundError, match="wushuang98/Direct3D-S2/direct3d-s2-v-1-1/config.yaml"):
        checkpoints.load_parts(checkpoints.HUB_ID, cache_dir=tmp_path / "empty_cache")


def test_hub_cache_tiny(tmp_path, offline_hub, hub_cache):
    ckpt = _write_dense(tmp_path / "src", TINY_CONFIG, seed=5)
    files = {n: tmp_path / "src" / n for n in ("config.yaml", "model_dense.ckpt")}
    cache = hub_cache(tmp_path / "cache", checkpoints.HUB_ID, files, checkpoints.SUBFOLDERS["v1.0"])
    parts = checkpoints.load_parts(checkpoints.HUB_ID, subfolder=checkpoints.SUBFOLDERS["v1.0"], cache_dir=cache,
                                    dtype="fp32")
    assert torch.equal(parts["dense_vae"].decoder.input_layer.weight, ckpt["vae"]["decoder.input_layer.weight"])


@pytest.mark.slow
def test_hub_cache_full_size_dense_checkpoint(tmp_path, offline_hub, hub_cache, fixture_file):
    """A random full-size model_dense.ckpt (fp16 tensors, official keys) loads strict through the hub cache."""
    cfg_path = fixture_file("direct3d_s2", "configs_v1_1.yaml")
    config = targets.load_config(cfg_path)
    src = tmp_path / "src"
    src.mkdir()
    (src / "config.yaml").write_text(cfg_path.read_text())
    t0 = time.perf_counter()
    ckpt = {}
    for part, key in (("dense_vae", "vae"), ("dense_dit", "dit")):
        layout = targets.build(config[part], device="meta").state_dict()
        g = torch.Generator().manual_seed(len(part))
        ckpt[key] = {
            k: torch.empty(v.shape, dtype=torch.float16).uniform_(-1, 1, generator=g) for k, v in layout.items()
        }
    torch.save(ckpt, src / "model_dense.ckpt")
    n_params = sum(v.numel() for sd in ckpt.values() for v in sd.values())
    assert n_params == 193_037_009 + 555_543_560 + 4_194_304
    samples = {key: {k: sd[k].clone() for k in list(sd)[:: max(1, len(sd) // 40)]} for key, sd in ckpt.items()}
    del ckpt
    cache = hub_cache(tmp_path / "cache", checkpoints.HUB_ID, {n: src / n for n in ("config.yaml", "model_dense.ckpt")},
                      checkpoints.SUBFOLDERS["v1.1"])
    t1 = time.perf_counter()
    parts = checkpoints.load_parts(checkpoints.HUB_ID, cache_dir=cache, dtype="fp16")
    t2 = time.perf_counter()
    print(f"write {t1 - t0:.1f}s, load {t2 - t1:.1f}s")
    for part, key in (("dense_vae", "vae"), ("dense_dit", "dit")):
        sd = parts[part].state_dict()
        for k, v in samples[key].items():
            assert torch.equal(sd[k], v.to(sd[k].dtype)), k
    assert parts["dense_vae"].encoder.input_layer.weight.dtype == torch.float32
    assert parts["dense_dit"].blocks[23].cross_attn.to_kv.weight.dtype == torch.float16
    assert not any(t.is_meta for t in parts["dense_dit"].state_dict().values())


TINY_SPARSE = {
    "sparse_vae_512": {
        "target": "direct3d_s2.models.autoencoders.ss_vae_legacy.SparseSDFVAE",
        "params": {
            "embed_dim": 4, "resolution": 4, "model_channels_encoder": 512, "num_blocks_encoder": 1,
            "num_heads_encoder": 8, "model_channels_decoder": 64, "num_blocks_decoder": 1, "num_heads_decoder": 4,
            "num_head_channels_decoder": 16, "out_channels": 1, "use_fp16": True,
        },
    },
    "sparse_dit_512": {
        "target": "direct3d_s2.models.transformers.sparse_dit.SparseDiT",
        "params": {
            "resolution": 4, "in_channels": 4, "out_channels": 4, "model_channels": 64, "cond_channels": 16,
            "num_blocks": 1, "num_heads": 4, "num_kv_heads": 2, "compression_block_size": 4,
            "selection_block_size": 4, "topk": 2, "compression_version": "v1", "pe_mode": "ape", "factor": 1.0,
            "sparse_conditions": False, "qk_rms_norm": True, "use_shift": True, "use_fp16": True,
        },
    },
}  # fmt: skip


def test_load_generator_with_sparse_stage(tmp_path):
    from consistent3dgen.generators.base import DenseStage, Generator, SparseLatent, SparseStage
    from consistent3dgen.generators.direct3d_s2.adapters import load_direct3d_s2 as load_generator

    for part in TINY_SPARSE.values():
        if targets.resolve(part["target"]) is None:
            pytest.skip(f"no class yet for {part['target']}")
    config = {**TINY_CONFIG, **TINY_SPARSE}
    _write_dense(tmp_path / "w", config)
    torch.save(
        {
            "vae": random_state(TINY_SPARSE["sparse_vae_512"], 7),
            "dit": random_state(TINY_SPARSE["sparse_dit_512"], 8),
        },
        tmp_path / "w" / "model_sparse_512.ckpt",
    )
    gen = load_generator(tmp_path / "w", sparse_resolutions=(512,), dtype="fp32", with_conditioner=False)
    assert isinstance(gen, Generator) and gen.conditioner is None
    assert isinstance(gen.dense, DenseStage) and isinstance(gen.sparse[0], SparseStage)
    stage = gen.sparse[0]
    assert stage.resolution == 32 and stage.latent_channels == 4
    g = torch.Generator().manual_seed(0)
    coords = torch.unique(torch.randint(0, 4, (40, 3), generator=g), dim=0).int()
    order = stage.token_order(coords)
    assert sorted(order.tolist()) == list(range(len(coords)))
    coords = coords[order]
    x = torch.randn(len(coords), 4, generator=g)
    cond = torch.randn(1, 6, 16, generator=g)
    v = stage.velocity(x, coords, torch.tensor([800.0]), cond)
    assert v.shape == x.shape and torch.isfinite(v).all()
    v_zero = stage.velocity(x, coords, torch.tensor([800.0]), torch.zeros_like(cond))
    assert not torch.allclose(v, v_zero)  # the condition matters
    sdf = stage.decode_sdf(SparseLatent(coords, x, 4))
    assert sdf.resolution == 32 and len(sdf) == 512 * len(coords)
    with pytest.raises(ValueError, match="coords"):
        stage.velocity(x, coords[:, :2], torch.tensor([800.0]), cond)


def test_sparse_condition_layout():
    from consistent3dgen.generators.direct3d_s2.adapters import sparse_condition

    tokens = torch.arange(2 * (5 + 9) * 2, dtype=torch.float32).reshape(2, 14, 2)
    mask = torch.zeros(2, 3, 3, dtype=torch.bool)
    mask[0, 1, 2] = True  # h=1, w=2 → patch index 5
    mask[1, 0, 0] = mask[1, 2, 1] = True
    sp = sparse_condition(tokens, mask)
    assert sp.coords.dtype == torch.int32 and sp.coords.shape == (5 + 1 + 5 + 2, 4)
    assert sp.coords[:5].tolist() == [[0, 0, 0, 1]] * 5
    assert sp.coords[5].tolist() == [0, 2, 1, 0]  # (b, w, h, 0)
    assert torch.equal(sp.feats[5], tokens[0, 5 + 5])
    assert sp.coords[11:].tolist() == [[1, 0, 0, 0], [1, 1, 2, 0]]
    assert torch.equal(sp.feats[12], tokens[1, 5 + 2 * 3 + 1])
