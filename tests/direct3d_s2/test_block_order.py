"""Block order of latent coordinates against the official ``sort_block`` fixture."""

from __future__ import annotations

import pytest
import torch

from consistent3dgen.generators.direct3d_s2.block_order import block_order, sort_block


@pytest.fixture(scope="module")
def fixture(fixture_file) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(fixture_file("direct3d_s2", "sort_block.safetensors")))


def test_matches_official_sort_block(fixture):
    idx = fixture["input.latent_index"]
    before = idx.clone()
    assert torch.equal(sort_block(idx, 8), fixture["output.sorted_bs8"])
    assert torch.equal(block_order(idx, 8), fixture["output.perm_bs8"])
    assert torch.equal(
        sort_block(fixture["input.latent_index_shuffled"], 8), fixture["output.sorted_bs8_from_shuffled"]
    )
    assert torch.equal(sort_block(idx, 4), fixture["output.sorted_bs4"])
    assert torch.equal(idx, before)  # unlike the official CPU path, the input is untouched


def test_block_order_properties():
    g = torch.Generator().manual_seed(0)
    xyz = torch.unique(torch.randint(0, 20, (300, 3), generator=g), dim=0)
    perm = block_order(xyz, 4)
    s = xyz[perm]
    blocks = s // 4
    keys = (blocks[:, 0] * 100 + blocks[:, 1]) * 100 + blocks[:, 2]
    assert (keys[1:] >= keys[:-1]).all()  # blocks contiguous and ordered
    assert sorted(perm.tolist()) == list(range(len(xyz)))


def test_bad_input():
    with pytest.raises(ValueError):
        block_order(torch.zeros(5, 2, dtype=torch.long), 8)
