"""Sparse convolution and sparse layers: dense-conv equivalence, fixture parity, key layout."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from consistent3dgen.generators.direct3d_s2.sparse_conv import (
    SparseConv3d,
    SparseDownsample,
    SparseGroupNorm32,
    SparseSubdivide,
    SparseUpsample,
    build_neighbor_map,
)
from consistent3dgen.generators.direct3d_s2.sparse_tensor import SparseTensor


def _fixture(fixture_file: Callable[..., Path], name: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(fixture_file("direct3d_s2", f"{name}.safetensors")))


def _state(t: dict[str, torch.Tensor], prefix: str = "state.") -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v for k, v in t.items() if k.startswith(prefix)}


def _random_sparse(batch: int, res: int, density: float, channels: int, seed: int) -> tuple[SparseTensor, torch.Tensor]:
    """Random sites in a res³ grid per batch element; returns the sparse tensor and its dense (B, C, R, R, R) twin."""
    g = torch.Generator().manual_seed(seed)
    occ = torch.rand(batch, res, res, res, generator=g) < density
    coords = occ.nonzero().int()  # batch-major, row-major: rows grouped by batch
    feats = torch.randn(coords.shape[0], channels, generator=g)
    dense = torch.zeros(batch, channels, res, res, res)
    b, x, y, z = coords.long().T
    dense[b, :, x, y, z] = feats
    return SparseTensor(feats, coords), dense


def _dense_weight(conv: SparseConv3d) -> torch.Tensor:
    """torchsparse [K, Cin, Cout] kernel → torch [Cout, Cin, kx, ky, kz] (k = ix + s*iy + s²*iz)."""
    kx, ky, kz = conv.conv.kernel_size
    k = conv.conv.kernel.detach()
    return k.reshape(kz, ky, kx, k.shape[1], k.shape[2]).permute(4, 3, 2, 1, 0).contiguous()


def test_state_dict_layout_like_torchsparse():
    c3 = SparseConv3d(4, 5, 3, padding=1)
    c1 = SparseConv3d(4, 5, 1)
    c2 = SparseConv3d(4, 5, 2, stride=2, bias=False)
    assert {k: tuple(v.shape) for k, v in c3.state_dict().items()} == {"conv.kernel": (27, 4, 5), "conv.bias": (5,)}
    assert {k: tuple(v.shape) for k, v in c1.state_dict().items()} == {"conv.kernel": (4, 5), "conv.bias": (5,)}
    assert {k: tuple(v.shape) for k, v in c2.state_dict().items()} == {"conv.kernel": (8, 4, 5)}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_submanifold_equals_dense_conv_at_active_sites(seed):
    x, dense = _random_sparse(batch=2, res=9, density=0.3, channels=3, seed=seed)
    conv = SparseConv3d(3, 4, 3, padding=1)
    with torch.no_grad():
        y = conv(x)
        ref = F.conv3d(dense, _dense_weight(conv), conv.conv.bias, padding=1)
    assert torch.equal(y.coords, x.coords)
    b, i, j, k = x.coords.long().T
    torch.testing.assert_close(y.feats, ref[b, :, i, j, k], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kernel,padding", [(2, 0), (3, 1), (3, 0)])
def test_strided_conv_equals_dense_conv_at_occupied_cells(kernel, padding):
    x, dense = _random_sparse(batch=2, res=10, density=0.2, channels=3, seed=7 + kernel + padding)
    conv = SparseConv3d(3, 5, kernel, stride=2, padding=padding)
    with torch.no_grad():
        y = conv(x)
        ref = F.conv3d(dense, _dense_weight(conv), conv.conv.bias, stride=2, padding=padding)
    expected_sites = torch.unique(torch.cat([x.coords[:, :1], x.coords[:, 1:] // 2], 1), dim=0)
    assert torch.equal(y.coords.long(), expected_sites.long())
    b, i, j, k = y.coords.long().T
    inside = (i < ref.shape[2]) & (j < ref.shape[3]) & (k < ref.shape[4])
    assert inside.any()
    torch.testing.assert_close(
        y.feats[inside], ref[b[inside], :, i[inside], j[inside], k[inside]], atol=1e-5, rtol=1e-5
    )


def test_neighbor_map_cached_and_chunking_invariant(monkeypatch):
    from consistent3dgen.generators.direct3d_s2 import sparse_conv

    x, _ = _random_sparse(batch=1, res=12, density=0.4, channels=8, seed=3)
    conv = SparseConv3d(8, 6, 3, padding=1)
    with torch.no_grad():
        full = conv(x).feats
        assert len(x.cache) == 1  # the map is reused by later convs on the same sites
        monkeypatch.setattr(sparse_conv, "_GATHER_BUDGET_BYTES", 27 * 8 * 4 * 7)  # 7 rows per chunk
        monkeypatch.setattr(sparse_conv, "_QUERY_CHUNK", 13)
        x2 = SparseTensor(x.feats, x.coords)
        chunked = conv(x2).feats
    torch.testing.assert_close(full, chunked, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("stride,kernel,dilation,padding", [
    ((1, 1, 1), (3, 3, 3), 1, (1, 1, 1)), ((1, 1, 1), (3, 3, 3), 2, (2, 2, 2)),
    ((2, 2, 2), (3, 3, 3), 1, (1, 1, 1)), ((2, 2, 2), (2, 2, 2), 1, (0, 0, 0))])
def test_direct_address_and_sorted_neighbor_maps_agree(monkeypatch, stride, kernel, dilation, padding):
    # small boxes are hashed by direct addressing, large ones by sorted keys: the same map either way
    from consistent3dgen.generators.direct3d_s2 import sparse_conv

    x, _ = _random_sparse(batch=2, res=11, density=0.3, channels=1, seed=5)
    out = x.coords if stride == (1, 1, 1) else sparse_conv.downsample_coords(x.coords, stride)[0]
    by_sorting = build_neighbor_map(x.coords, out, kernel, stride, dilation, padding, dense_entries=0)
    monkeypatch.setattr(sparse_conv, "_DENSE_CHUNK", 17)  # several chunks
    direct = build_neighbor_map(x.coords, out, kernel, stride, dilation, padding)
    assert torch.equal(direct, by_sorting)
    assert (direct >= 0).any() and (direct < 0).any()


def test_fixture_sparse_conv_subm(fixture_file):
    t = _fixture(fixture_file, "sparse_conv_subm")
    x = SparseTensor(t["input.feats"], t["input.coords"])
    conv3 = SparseConv3d(4, 5, 3, padding=1)
    conv1 = SparseConv3d(4, 5, 1)
    conv3.load_state_dict(_state(t, "state.conv3."), strict=True)
    conv1.load_state_dict(_state(t, "state.conv1."), strict=True)
    nmap = build_neighbor_map(x.coords, x.coords, (3, 3, 3), padding=(1, 1, 1))
    assert torch.equal(nmap.long(), t["output.neighbor_map_k3"])
    with torch.no_grad():
        y3, y1 = conv3(x), conv1(x)
    assert torch.equal(y3.coords, t["output.conv3_coords"])
    torch.testing.assert_close(y3.feats, t["output.conv3_feats"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(y1.feats, t["output.conv1_feats"], atol=1e-5, rtol=1e-5)


def test_group_norm_per_batch_element_matches_dense_group_norm():
    x, _ = _random_sparse(batch=2, res=6, density=0.5, channels=8, seed=5)
    norm = SparseGroupNorm32(4, 8)
    with torch.no_grad():
        norm.weight.normal_()
        norm.bias.normal_()
        y = norm(x)
    for rows in x.layout():
        ref = F.group_norm(x.feats[rows].T[None], 4, norm.weight, norm.bias, norm.eps)[0].T
        torch.testing.assert_close(y.feats[rows], ref, atol=1e-5, rtol=1e-5)


def test_downsample_official_mean_order_and_upsample_roundtrip():
    x, _ = _random_sparse(batch=2, res=8, density=0.3, channels=2, seed=9)
    down = SparseDownsample(2)(x)
    parent = torch.cat([x.coords[:, :1], x.coords[:, 1:] // 2], 1)
    uniq = torch.unique(parent, dim=0)
    assert torch.equal(down.coords, uniq)
    for r in range(0, len(uniq), 7):
        members = (parent == uniq[r]).all(1)
        # the official layer's scatter 'mean' includes the zero it starts from: sum / (n + 1)
        torch.testing.assert_close(down.feats[r], x.feats[members].sum(0) / (members.sum() + 1))
    up = SparseUpsample(2)(down)
    assert torch.equal(up.coords, x.coords)
    torch.testing.assert_close(up.feats, down.feats[(parent[:, None] == uniq[None]).all(-1).float().argmax(1)])


def test_subdivide_child_order():
    x = SparseTensor(torch.tensor([[1.0], [2.0]]), torch.tensor([[0, 1, 2, 3], [1, 0, 0, 0]], dtype=torch.int32))
    y = SparseSubdivide()(x)
    assert y.coords.shape == (16, 4)
    assert y.coords[:8, 1:].tolist() == [
        [2, 4, 6],
        [2, 4, 7],
        [2, 5, 6],
        [2, 5, 7],
        [3, 4, 6],
        [3, 4, 7],
        [3, 5, 6],
        [3, 5, 7],
    ]
    assert (y.coords[8:, 0] == 1).all() and torch.equal(y.feats[:8], torch.ones(8, 1))
