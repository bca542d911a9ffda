"""Fixtures of the training tests: the smallest model entries the chain runs with (both test modules use them)."""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest

TINY_ENTRIES = {
    "dense_vae": {
        "target": "direct3d_s2.models.autoencoders.dense_vae.DenseShapeVAE",
        "params": {"embed_dim": 4, "model_channels_encoder": [8, 16], "model_channels_decoder": [16, 8],
                   "num_res_blocks_encoder": 1, "num_res_blocks_middle_encoder": 1, "num_res_blocks_decoder": 1,
                   "num_res_blocks_middle_decoder": 1},
    },
    "dense_dit": {
        "target": "direct3d_s2.models.transformers.dense_dit.DenseDiT",
        "params": {"resolution": 4, "in_channels": 4, "out_channels": 4, "model_channels": 32, "cond_channels": 16,
                   "num_blocks": 2, "num_heads": 2, "patch_size": 1, "qk_rms_norm": True,
                   "latent_shape": [4, 4, 4, 4]},
    },
    "sparse_vae": {
        "target": "direct3d_s2.models.autoencoders.ss_vae.SparseSDFVAE",
        "encoder_norm_groups": 2,
        "params": {"embed_dim": 4, "resolution": 8, "model_channels_encoder": 32, "num_blocks_encoder": 1,
                   "num_heads_encoder": 2, "num_head_channels_encoder": 16, "model_channels_decoder": 32,
                   "num_blocks_decoder": 1, "num_heads_decoder": 2, "num_head_channels_decoder": 16},
    },
    "sparse_dit": {
        "target": "direct3d_s2.models.transformers.sparse_dit.SparseDiT",
        "params": {"resolution": 8, "in_channels": 4, "out_channels": 4, "model_channels": 32, "cond_channels": 16,
                   "num_blocks": 1, "num_heads": 4, "num_kv_heads": 2, "compression_block_size": 4,
                   "selection_block_size": 8, "topk": 2, "compression_version": "v1", "use_shift": True},
    },
}  # fmt: skip


@pytest.fixture(scope="session")
def tiny_entry() -> Callable[[str], dict]:
    """``tiny_entry("sparse_vae")``: a fresh copy of that model's smallest entry (callers may change it)."""
    return lambda stage: copy.deepcopy(TINY_ENTRIES[stage])


@pytest.fixture(scope="session")
def tiny_entries(tiny_entry: Callable[[str], dict]) -> Callable[[], dict]:
    """``MiniPriorConfig(data=..., **tiny_entries())``: fresh copies of all four first-stage model entries."""
    return lambda: {stage: tiny_entry(stage) for stage in TINY_ENTRIES}
