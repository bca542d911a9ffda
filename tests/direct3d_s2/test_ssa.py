"""SSA branches against brute-force dense masked attention on small inputs."""

from __future__ import annotations

import gc
import math
import sys

import pytest
import torch

from consistent3dgen.generators.direct3d_s2 import ssa

HQ, HKV, DIM = 4, 2, 8


def _random_coords(counts: list[int], extent: int, gen: torch.Generator, shuffle: bool) -> torch.Tensor:
    rows = []
    for b, n in enumerate(counts):
        flat = torch.randperm(extent**3, generator=gen)[:n]
        xyz = torch.stack([flat // extent**2, (flat // extent) % extent, flat % extent], 1)
        if not shuffle:  # block order, as the pipeline's sort_block gives
            xyz = xyz[torch.argsort(flat)]
        rows.append(torch.cat([torch.full((n, 1), b), xyz], 1))
    return torch.cat(rows).int()


def _compressed_coords(coords: torch.Tensor, factor: int) -> torch.Tensor:
    c = coords.clone()
    c[:, 1:] //= factor
    return torch.unique(c, dim=0).int()  # lexicographic, batch first (as SparseDownsample)


def _dense_reference(q, k, v, mask):
    """softmax(q k^T / sqrt(d)) v with mask (Hkv, Nq, Nk) → (Nq, Hq, D), probs (Hq, Nq, Nk)."""
    group = q.shape[1] // k.shape[1]
    kk = k.double().repeat_interleave(group, dim=1)
    vv = v.double().repeat_interleave(group, dim=1)
    scores = torch.einsum("qhd,khd->hqk", q.double(), kk) / math.sqrt(q.shape[-1])
    scores = scores.masked_fill(~mask.repeat_interleave(group, dim=0), float("-inf"))
    probs = scores.softmax(-1)
    return torch.einsum("hqk,khd->qhd", probs, vv), probs, torch.logsumexp(scores, -1).T


# Float32 error bound of one softmax attention o = Σ_j w_j v_j, w = softmax(s), s_j = q·k_j / √D, over n keys,
# to first order in the unit roundoff u = eps/2, for any summation order (chunking, threads, SIMD width, BLAS):
#   A = max‖q‖·max‖k‖/√D ≥ Σ_d |q_d k_jd|/√D ≥ |s_j| (Cauchy-Schwarz), V = max|v|, so |o| ≤ V and |L| ≤ A + ln n
#   for the log-sum-exp L of the scores.
# 1. scores: a D-term dot product and the 1/√D scale, |δs_j| ≤ (D+1)·u·A. The weights follow as
#    w_j(1 + δs_j − Σ_i w_i δs_i), which moves o by Σ_j w_j δs_j (v_j − o), at most 2V·(D+1)·u·A.
# 2. normalisation: L or the weight sum (n terms) is off by ≤ u(n + |L| + 1); each exp argument s_j − L
#    (≤ 2A + ln n) is rounded once, and exp itself is good to c_exp·u (torch's vectorised exp_u20, used by the
#    CPU flash-attention kernel, to 20 ulp: c_exp = 40). Every weight is then relatively off by
#    ≤ u(n + 3A + 2 ln n + 1 + c_exp), which moves o by that times V (Σ w_j |v_j| ≤ V).
# 3. the weighted sum of n terms: ≤ n·u·V (Higham's γ_n bound).
# 4. merging M partial softmaxes (the chunked selection branch has one per selected block): with weights
#    w_k = exp(L_k − max L) (arguments ≤ 2(A + ln n), each rounded once, exp to c_exp·u), o = Σ w_k o_k / Σ w_k
#    is off by ≤ u·V·[2(2A + 2 ln n + c_exp + 1) + 2M + 2]; for M ≥ 2 that is below M·u(3A + 3 ln n + c_exp + 4)·V
#    (the budget of M sequential online merges), and M = 1 is exact (weight exp(0) = 1). So ≤ u(3A + 3 ln n +
#    c_exp + 4)·V per merge.
# Sum: |o − o_exact| ≤ u·V·[(2D + 5 + 3M)·A + 2n + (2 + 3M)·ln n + (M + 1)·c_exp + 4M + 1] for M merges.
# This is a worst case (every rounding at its bound, same sign): here ~3e-4, against observed errors ≤ 7e-6
# (≤ 0.015 of the bound over 50 seeds of every test below, 1 and 2 threads), while a key wrongly in or out of
# a softmax moves o by its weight × |v_j − o|. Both float32 paths are checked against the float64 attention of
# the same inputs (float64 rounding, ~1e-16, is negligible next to the bound).
EXP_ULP = 20


def _attention_bound(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, n_keys: int, merges: int) -> float:
    """The bound above for attention of q (.., D) over at most ``n_keys`` of k, v (.., D) with ``merges`` merges."""
    u = torch.finfo(torch.float32).eps / 2
    d = q.shape[-1]
    a = q.double().norm(dim=-1).max().item() * k.double().norm(dim=-1).max().item() / math.sqrt(d)
    ln_n = math.log(max(n_keys, 1))
    c_exp = 2 * EXP_ULP
    terms = (2 * d + 5 + 3 * merges) * a + 2 * n_keys + (2 + 3 * merges) * ln_n + (merges + 1) * c_exp
    return u * v.abs().max().item() * (terms + 4 * merges + 1)


def _assert_within(got: torch.Tensor, ref: torch.Tensor, bound: float | torch.Tensor, what: str) -> None:
    """|got − ref| ≤ bound elementwise (bound a float or broadcastable to got)."""
    err = (got.double() - ref.double()).abs()
    ratio = (err / torch.as_tensor(bound, dtype=torch.float64)).max().item()
    assert ratio <= 1.0, f"{what}: max |error| {err.max().item():.3g} is {ratio:.3g} × the float32 bound"


def _block_keys(coords: torch.Tensor, size: int) -> list[tuple]:
    return [(int(r[0]), int(r[1]) // size, int(r[2]) // size, int(r[3]) // size) for r in coords]


def _setup(seed: int, counts: list[int], extent: int, cbs: int, shuffle: bool):
    gen = torch.Generator().manual_seed(seed)
    coords = _random_coords(counts, extent, gen, shuffle)
    ccoords = _compressed_coords(coords, cbs)
    n, m = coords.shape[0], ccoords.shape[0]
    q = torch.randn(n, HQ, DIM, generator=gen) * 2
    k = torch.randn(n, HKV, DIM, generator=gen) * 2
    v = torch.randn(n, HKV, DIM, generator=gen)
    ck = torch.randn(m, HKV, DIM, generator=gen) * 2
    cv = torch.randn(m, HKV, DIM, generator=gen)
    return coords, ccoords, q, k, v, ck, cv


def _brute_topk(q, ck, coords, ccoords, cbs, sbs, topk):
    """Per query and kv head: the set of selection-block keys with the largest summed probabilities."""
    same_batch = coords[:, 0:1] == ccoords[:, 0].unsqueeze(0)
    _, probs, _ = _dense_reference(q, ck, ck, same_batch.unsqueeze(0).expand(HKV, -1, -1))
    group = HQ // HKV
    token_scores = probs.reshape(HKV, group, *probs.shape[1:]).sum(1)  # (Hkv, N, M)
    cblock = _block_keys(ccoords, sbs // cbs)
    names = sorted(set(cblock))
    onehot = torch.zeros(len(cblock), len(names), dtype=torch.float64)
    for j, key in enumerate(cblock):
        onehot[j, names.index(key)] = 1
    block_scores = token_scores @ onehot  # (Hkv, N, nblocks)
    result = []
    for g in range(HKV):
        per_query = []
        for i in range(coords.shape[0]):
            own = [j for j, name in enumerate(names) if name[0] == int(coords[i, 0])]
            s = block_scores[g, i, own]
            best = torch.topk(s, min(topk, len(own))).indices
            per_query.append({names[own[j]] for j in best.tolist()})
        result.append(per_query)
    return result, names


@pytest.mark.parametrize("cbs,sbs,shuffle", [(2, 4, False), (4, 4, True), (2, 4, True)])
def test_compressed_branch_and_topk_match_brute_force(cbs, sbs, shuffle):
    coords, ccoords, q, k, v, ck, cv = _setup(0, [70, 45], 12, cbs, shuffle)
    layout = ssa.block_layout(coords, ccoords, cbs, sbs)
    topk = 3
    out, lse, topk_blocks = ssa.compressed_attention_topk(
        q, ck, cv, ssa.batch_slices(coords[:, 0]), ssa.batch_slices(ccoords[:, 0]), layout, topk, chunk_bytes=2048
    )
    same_batch = (coords[:, 0:1] == ccoords[:, 0].unsqueeze(0)).unsqueeze(0).expand(HKV, -1, -1)
    ref, _, ref_lse = _dense_reference(q, ck, cv, same_batch)
    torch.testing.assert_close(out.double(), ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(lse.double(), ref_lse, atol=1e-5, rtol=1e-5)

    expected, names = _brute_topk(q, ck, coords, ccoords, cbs, sbs, topk)
    assert layout.num_blocks == len(names)
    # block ids are in lexicographic (batch, bx, by, bz) order: same as the sorted names
    for g in range(HKV):
        for i in range(coords.shape[0]):
            got = {names[j] for j in topk_blocks[g, i].tolist() if j >= 0}
            assert got == expected[g][i]
            ids = topk_blocks[g, i][topk_blocks[g, i] >= 0]
            assert torch.all(ids[1:] > ids[:-1])  # ascending, as the official sort(-1)


def test_topk_padding_when_fewer_blocks_than_topk():
    coords, ccoords, q, k, v, ck, cv = _setup(1, [30, 8], 6, 2, False)
    layout = ssa.block_layout(coords, ccoords, 2, 4)
    nblocks_b1 = int(layout.block_batch_start[2] - layout.block_batch_start[1])
    topk = nblocks_b1 + 2
    _, _, topk_blocks = ssa.compressed_attention_topk(
        q, ck, cv, ssa.batch_slices(coords[:, 0]), ssa.batch_slices(ccoords[:, 0]), layout, topk
    )
    rows_b1 = coords[:, 0] == 1
    assert (topk_blocks[:, rows_b1, nblocks_b1:] == -1).all()
    assert (topk_blocks[:, rows_b1, :nblocks_b1] >= layout.block_batch_start[1]).all()


@pytest.mark.parametrize("shuffle", [False, True])
def test_selection_branch_matches_masked_dense(shuffle):
    cbs, sbs = 2, 4
    coords, ccoords, q, k, v, ck, cv = _setup(2, [80, 50], 12, cbs, shuffle)
    layout = ssa.block_layout(coords, ccoords, cbs, sbs)
    gen = torch.Generator().manual_seed(3)
    n = coords.shape[0]
    topk = 3
    # arbitrary per-query choices of own-batch blocks, with some -1 padding
    topk_blocks = torch.full((HKV, n, topk), -1, dtype=torch.long)
    for i in range(n):
        b = int(coords[i, 0])
        lo, hi = int(layout.block_batch_start[b]), int(layout.block_batch_start[b + 1])
        for g in range(HKV):
            kk = 1 + int(torch.randint(0, topk, (1,), generator=gen))
            topk_blocks[g, i, :kk] = lo + torch.randperm(hi - lo, generator=gen)[:kk].sort().values
    out = ssa.selection_attention(q, k, v, topk_blocks, layout, chunk_bytes=4096)
    token_block = layout.block_of_token
    mask = torch.zeros(HKV, n, n, dtype=torch.bool)
    for g in range(HKV):
        for i in range(n):
            chosen = topk_blocks[g, i][topk_blocks[g, i] >= 0]
            mask[g, i] = torch.isin(token_block, chosen)
    ref, _, _ = _dense_reference(q, k, v, mask)
    torch.testing.assert_close(out.double(), ref, atol=1e-5, rtol=1e-5)
    # the layout maps tokens to the right blocks
    names = sorted(set(_block_keys(coords, sbs)))
    assert [names[j] for j in token_block.tolist()] == _block_keys(coords, sbs)


@pytest.mark.parametrize("shift", [0, 4])
def test_window_branch_matches_masked_dense(shift):
    coords, _, q, k, v, _, _ = _setup(4, [120, 60], 16, 2, True)
    out = ssa.window_attention(q, k, v, coords, window_size=8, shift=shift, chunk_bytes=8192)
    keys = [(int(r[0]), (int(r[1]) + shift) // 8, (int(r[2]) + shift) // 8, (int(r[3]) + shift) // 8) for r in coords]
    same = torch.tensor([[a == b for b in keys] for a in keys])
    ref, _, _ = _dense_reference(q, k, v, same.unsqueeze(0).expand(HKV, -1, -1))
    torch.testing.assert_close(out.double(), ref, atol=1e-5, rtol=1e-5)
    assert len(set(keys)) > 4  # several windows, so the mask matters


@pytest.mark.parametrize("dense_max_tokens", [0, None])
def test_gated_sum_equals_weighted_branches(dense_max_tokens):
    cbs, sbs, topk = 2, 4, 2
    coords, ccoords, q, k, v, ck, cv = _setup(5, [60, 40], 12, cbs, False)
    gate = torch.rand(coords.shape[0], 3)
    out = ssa.spatial_sparse_attention(
        q, k, v, coords, ck, cv, ccoords, gate, cbs, sbs, topk, window_size=8, shift_window=4, chunk_bytes=4096,
        dense_max_tokens=dense_max_tokens,
    )  # fmt: skip
    # brute force: every branch as a dense masked attention
    n = coords.shape[0]
    same_batch = (coords[:, 0:1] == ccoords[:, 0].unsqueeze(0)).unsqueeze(0).expand(HKV, -1, -1)
    ref_c, _, _ = _dense_reference(q, ck, cv, same_batch)
    expected, names = _brute_topk(q, ck, coords, ccoords, cbs, sbs, topk)
    token_names = _block_keys(coords, sbs)
    sel_mask = torch.tensor(
        [[[token_names[j] in expected[g][i] for j in range(n)] for i in range(n)] for g in range(HKV)]
    )
    ref_s, _, _ = _dense_reference(q, k, v, sel_mask)
    keys = [(int(r[0]), (int(r[1]) + 4) // 8, (int(r[2]) + 4) // 8, (int(r[3]) + 4) // 8) for r in coords]
    win_mask = torch.tensor([[a == b for b in keys] for a in keys]).unsqueeze(0).expand(HKV, -1, -1)
    ref_w, _, _ = _dense_reference(q, k, v, win_mask)
    g = gate.double()[:, :, None]
    ref = g[:, 0:1] * ref_c + g[:, 1:2] * ref_s + g[:, 2:3] * ref_w
    torch.testing.assert_close(out.double(), ref, atol=1e-5, rtol=1e-5)


def test_chunking_does_not_change_results(seed=6):
    cbs, sbs, topk, window_size, shift = 2, 4, 3, 8, 0
    coords, ccoords, q, k, v, ck, cv = _setup(seed, [90], 12, cbs, False)
    gate = torch.rand(coords.shape[0], 3, generator=torch.Generator().manual_seed(seed))
    args = (q, k, v, coords, ck, cv, ccoords, gate, cbs, sbs, topk, window_size, shift)
    small = ssa.spatial_sparse_attention(*args, chunk_bytes=1, dense_max_tokens=0)  # one row / window at a time
    big = ssa.spatial_sparse_attention(*args, chunk_bytes=2**30, dense_max_tokens=0)
    tensors = (q, k, v, ck, cv, gate)
    masks = _ssa_masks(coords, ccoords, tensors, cbs, sbs, topk, window_size, shift)
    ref, bound = _ssa_reference(tensors, masks), _ssa_bound(tensors, masks, topk)
    _assert_within(small, ref, bound, "one row / window per chunk")
    _assert_within(big, ref, bound, "one chunk")


def test_compressed_tokens_outside_blocks_rejected():
    coords = torch.tensor([[0, 0, 0, 0], [0, 1, 1, 1]], dtype=torch.int32)
    bad = torch.tensor([[0, 3, 3, 3]], dtype=torch.int32)
    with pytest.raises(ValueError, match="compressed tokens"):
        ssa.block_layout(coords, bad, 2, 4)


# ------------------------------------------------------------------ small-input fast path and autograd

# (compression, selection) block sizes of v1.0 (4, 8) and v1.1 (8, 8), on a 24³ grid, and half-size variants
BLOCK_SIZES = [(4, 8), (8, 8), (2, 4)]


def _random_topk(layout: ssa.BlockLayout, coords: torch.Tensor, topk: int, gen: torch.Generator) -> torch.Tensor:
    """Arbitrary ascending own-batch block choices per (kv head, query), with some -1 padding."""
    n = coords.shape[0]
    out = torch.full((HKV, n, topk), -1, dtype=torch.long)
    for i in range(n):
        b = int(coords[i, 0])
        lo, hi = int(layout.block_batch_start[b]), int(layout.block_batch_start[b + 1])
        for g in range(HKV):
            kk = min(hi - lo, 1 + int(torch.randint(0, topk, (1,), generator=gen)))
            out[g, i, :kk] = lo + torch.randperm(hi - lo, generator=gen)[:kk].sort().values
    return out


def _selection_mask(layout: ssa.BlockLayout, topk_blocks: torch.Tensor) -> torch.Tensor:
    """(Hkv, N, N): key j lies in one of query i's selected blocks for kv head g (-1 padding matches nothing)."""
    return (layout.block_of_token[None, None, :, None] == topk_blocks[:, :, None, :]).any(-1)


def _window_mask(coords: torch.Tensor, window_size: int, shift: int) -> torch.Tensor:
    """(Hkv, N, N): query and key in the same shifted window."""
    c = coords.long().clone()
    c[:, 1:] = (c[:, 1:] + shift) // window_size
    return (c[:, None] == c[None]).all(-1).unsqueeze(0).expand(HKV, -1, -1)


def _n_keys(mask: torch.Tensor) -> int:
    return int(mask.sum(-1).max())


@pytest.mark.parametrize("counts", [[300], [220, 130]])
@pytest.mark.parametrize("cbs,sbs", BLOCK_SIZES)
def test_fast_selection_equals_chunked(counts, cbs, sbs, seed=11):
    """Both paths give the float64 attention over the selected blocks, to the float32 bound (they differ only in
    summation order: per-block partial softmaxes merged online vs one masked softmax)."""
    topk = 3
    coords, ccoords, q, k, v, _, _ = _setup(seed, counts, 24, cbs, True)
    layout = ssa.block_layout(coords, ccoords, cbs, sbs)
    assert layout.num_blocks > 3 * len(counts)  # several blocks per element, so the mask matters
    topk_blocks = _random_topk(layout, coords, topk, torch.Generator().manual_seed(seed + 1))
    chunked = ssa.selection_attention(q, k, v, topk_blocks, layout, chunk_bytes=4096)
    fast = ssa.dense_selection_attention(q, k, v, topk_blocks, layout, ssa.batch_slices(coords[:, 0]))
    mask = _selection_mask(layout, topk_blocks)
    ref, _, _ = _dense_reference(q, k, v, mask)
    bound = _attention_bound(q, k, v, _n_keys(mask), merges=topk)
    _assert_within(chunked, ref, bound, "chunked selection")
    _assert_within(fast, ref, bound, "dense selection")


@pytest.mark.parametrize("counts", [[300], [220, 130]])
@pytest.mark.parametrize("window_size,shift", [(8, 0), (8, 4), (4, 2)])
def test_fast_window_equals_chunked(counts, window_size, shift, seed=13):
    coords, _, q, k, v, _, _ = _setup(seed, counts, 24, 2, True)
    chunked = ssa.window_attention(q, k, v, coords, window_size, shift, chunk_bytes=8192)
    fast = ssa.grouped_window_attention(q, k, v, coords, window_size, shift)
    mask = _window_mask(coords, window_size, shift)
    ref, _, _ = _dense_reference(q, k, v, mask)
    bound = _attention_bound(q, k, v, _n_keys(mask), merges=0)  # one softmax per window on both paths
    _assert_within(chunked, ref, bound, "padded windows")
    _assert_within(fast, ref, bound, "grouped windows")


def _ssa_inputs(seed, counts, cbs, requires_grad=False):
    coords, ccoords, q, k, v, ck, cv = _setup(seed, counts, 24, cbs, False)
    gate = torch.rand(coords.shape[0], 3, generator=torch.Generator().manual_seed(seed))
    tensors = [t.clone().requires_grad_(requires_grad) for t in (q, k, v, ck, cv, gate)]
    return coords, ccoords, tensors


def _ssa_masks(coords, ccoords, tensors, cbs, sbs, topk, window_size, shift):
    """The three branches' key masks for a brute-force SSA, with the block choice of the float32 compressed
    attention (as the SSA under test picks it): same batch (Hkv, N, M), selected blocks and window (Hkv, N, N)."""
    q, _, _, ck, cv, _ = (t.detach().float() for t in tensors)
    layout = ssa.block_layout(coords, ccoords, cbs, sbs)
    _, _, topk_blocks = ssa.compressed_attention_topk(
        q, ck, cv, ssa.batch_slices(coords[:, 0]), ssa.batch_slices(ccoords[:, 0]), layout, topk
    )
    same_batch = (coords[:, 0:1] == ccoords[:, 0].unsqueeze(0)).unsqueeze(0).expand(HKV, -1, -1)
    return same_batch, _selection_mask(layout, topk_blocks), _window_mask(coords, window_size, shift)


def _ssa_reference(tensors, masks):
    """Float64 gated sum of the three dense masked attentions (differentiable in float64 leaves)."""
    q, k, v, ck, cv, gate = (t.double() for t in tensors)
    same_batch, sel, win = masks
    return (
        gate[:, 0:1, None] * _dense_reference(q, ck, cv, same_batch)[0]
        + gate[:, 1:2, None] * _dense_reference(q, k, v, sel)[0]
        + gate[:, 2:3, None] * _dense_reference(q, k, v, win)[0]
    )


def _ssa_bound(tensors, masks, topk):
    """Per-row float32 bound of the gated sum: Σ_b gate_b · (bound of branch b + 3u·V_b for the gate product and
    the two additions). Only the chunked selection branch merges partial softmaxes (≤ topk)."""
    q, k, v, ck, cv, gate = (t.detach().float() for t in tensors)
    same_batch, sel, win = masks
    u = torch.finfo(torch.float32).eps / 2
    branch = [
        _attention_bound(q, ck, cv, _n_keys(same_batch), merges=0) + 3 * u * cv.abs().max().item(),
        _attention_bound(q, k, v, _n_keys(sel), merges=topk) + 3 * u * v.abs().max().item(),
        _attention_bound(q, k, v, _n_keys(win), merges=0) + 3 * u * v.abs().max().item(),
    ]
    return (gate.double() @ torch.tensor(branch, dtype=torch.float64)).view(-1, 1, 1)


def _run_ssa(coords, ccoords, tensors, cbs, sbs, dense_max_tokens, chunk_bytes=ssa.DEFAULT_CHUNK_BYTES):
    q, k, v, ck, cv, gate = tensors
    return ssa.spatial_sparse_attention(
        q, k, v, coords, ck, cv, ccoords, gate, cbs, sbs, 3, 8, 4, chunk_bytes=chunk_bytes,
        dense_max_tokens=dense_max_tokens,
    )  # fmt: skip


@pytest.mark.parametrize("counts", [[300], [220, 130]])
@pytest.mark.parametrize("cbs,sbs", BLOCK_SIZES)
def test_fast_path_equals_chunked_path(counts, cbs, sbs, seed=14):
    coords, ccoords, tensors = _ssa_inputs(seed, counts, cbs)
    chunked = _run_ssa(coords, ccoords, tensors, cbs, sbs, 0)
    fast = _run_ssa(coords, ccoords, tensors, cbs, sbs, 10**6)
    masks = _ssa_masks(coords, ccoords, tensors, cbs, sbs, 3, 8, 4)
    ref, bound = _ssa_reference(tensors, masks), _ssa_bound(tensors, masks, 3)
    _assert_within(chunked, ref, bound, "chunked path")
    _assert_within(fast, ref, bound, "fast path")
    # the threshold is per batch element: just above the largest element → fast, just below → chunked
    assert torch.equal(_run_ssa(coords, ccoords, tensors, cbs, sbs, max(counts)), fast)
    assert torch.equal(_run_ssa(coords, ccoords, tensors, cbs, sbs, max(counts) - 1), chunked)


@pytest.mark.parametrize("dense_max_tokens,chunk_bytes", [(0, 2**16), (10**6, ssa.DEFAULT_CHUNK_BYTES)])
def test_gradients_of_both_paths_match_float64_reference(dense_max_tokens, chunk_bytes):
    """Every input (q, k, v, compressed k/v, gate) gets the gradient of the brute-force float64 attention with
    the same block choice; the in-place no-grad code must not leak into the recorded graph."""
    cbs, sbs = 4, 8
    coords, ccoords, tensors = _ssa_inputs(15, [160, 90], cbs, requires_grad=True)
    out = _run_ssa(coords, ccoords, tensors, cbs, sbs, dense_max_tokens, chunk_bytes)
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(16))
    (out * weights).sum().backward()
    with torch.no_grad():
        torch.testing.assert_close(_run_ssa(coords, ccoords, tensors, cbs, sbs, dense_max_tokens, chunk_bytes), out)

    leaves = [t.detach().double().requires_grad_(True) for t in tensors]
    masks = _ssa_masks(coords, ccoords, tensors, cbs, sbs, 3, 8, 4)
    ref = _ssa_reference(leaves, masks)
    _assert_within(out, ref.detach(), _ssa_bound(tensors, masks, 3), "forward")
    (ref * weights.double()).sum().backward()
    for name, got, want in zip("q k v ck cv gate".split(), tensors, leaves, strict=True):
        assert got.grad is not None and want.grad.abs().max() > 1e-3, name
        torch.testing.assert_close(got.grad.double(), want.grad, atol=1e-4, rtol=1e-4, msg=name)


# ------------------------------------------------------------------ chunked selection: exactness and no per-block loop


def _uneven_coords(counts: list[int], gen: torch.Generator) -> torch.Tensor:
    """Per batch element of n ≥ 96 tokens: one full 4³ block (64 tokens), a half-full one, then the rest scattered
    over a 24³ grid (mostly 1–3 tokens per 4³ block), shuffled: block sizes from 1 to 64, tokens not in block
    order. A smaller element is the first n tokens of the full block (one block)."""
    rows = []
    for b, n in enumerate(counts):
        full = torch.cartesian_prod(*[torch.arange(4)] * 3)
        half = torch.cartesian_prod(*[torch.arange(4)] * 3)[torch.randperm(64, generator=gen)[:32]] + 20
        taken = {tuple(r) for r in torch.cat([full, half]).tolist()}
        rest = [r for r in _random_coords([n], 24, gen, True)[:, 1:].tolist() if tuple(r) not in taken]
        xyz = torch.cat([full, half, torch.tensor(rest, dtype=torch.long)])[:n]
        xyz = xyz[torch.randperm(xyz.shape[0], generator=gen)]
        rows.append(torch.cat([torch.full((xyz.shape[0], 1), b), xyz], 1))
    return torch.cat(rows).int()


def _random_choice(layout: ssa.BlockLayout, coords: torch.Tensor, hkv: int, topk: int, gen: torch.Generator):
    """(Hkv, N, topk) distinct own-batch block ids per row, 1..topk of them (all blocks when topk exceeds them),
    -1 in the other slots, slots in random order (nothing requires them sorted or padded at the end)."""
    n = coords.shape[0]
    out = torch.full((hkv, n, topk), -1, dtype=torch.long)
    for i in range(n):
        b = int(coords[i, 0])
        lo, hi = int(layout.block_batch_start[b]), int(layout.block_batch_start[b + 1])
        for g in range(hkv):
            kk = min(hi - lo, 1 + int(torch.randint(0, topk, (1,), generator=gen)))
            row = torch.full((topk,), -1, dtype=torch.long)
            row[:kk] = lo + torch.randperm(hi - lo, generator=gen)[:kk]
            out[g, i] = row[torch.randperm(topk, generator=gen)]
    return out


def _selection_case(seed: int, counts: list[int], hq: int, hkv: int, dim: int, uneven: bool):
    gen = torch.Generator().manual_seed(seed)
    sbs = 4
    coords = _uneven_coords(counts, gen) if uneven else _random_coords(counts, 24, gen, True)
    layout = ssa.block_layout(coords, _compressed_coords(coords, 2), 2, sbs)
    n = coords.shape[0]
    q = torch.randn(n, hq, dim, generator=gen) * 2
    k = torch.randn(n, hkv, dim, generator=gen) * 2
    v = torch.randn(n, hkv, dim, generator=gen)
    return coords, layout, q, k, v, gen


# (query heads, kv heads, head dim): GQA groups of 2 and 4, one kv head, plain multi-head
SELECTION_CASES = [
    # counts, heads, topk, query_tile, chunk_bytes, uneven blocks
    ([300], (4, 2, 8), 3, 32, ssa.DEFAULT_CHUNK_BYTES, True),
    ([220, 130, 17], (4, 2, 8), 3, 5, 2**14, True),  # several chunks, tiles and tile groups; a tiny element
    ([220, 130], (8, 2, 4), 2, 1, 2**16, False),
    ([160, 60], (4, 1, 8), 4, 7, 2**13, True),
    ([200], (3, 3, 8), 3, 32, 4096, False),
    ([120, 40], (4, 2, 8), 300, 16, 2**16, True),  # topk above every element's number of blocks
]


@pytest.mark.parametrize("counts,heads,topk,tile,chunk_bytes,uneven", SELECTION_CASES)
def test_selection_equals_brute_force(counts, heads, topk, tile, chunk_bytes, uneven, seed=21):
    """The tiled selection branch is the float64 softmax over the union of the selected blocks' tokens (dense
    masked attention), to the float32 bound, whatever the tiling, chunking and block sizes."""
    hq, hkv, dim = heads
    coords, layout, q, k, v, gen = _selection_case(seed, counts, hq, hkv, dim, uneven)
    sizes = (layout.block_tokens >= 0).sum(1)
    if uneven:
        assert sizes.max() == 64 and sizes.min() == 1  # block sizes really differ
    topk_blocks = _random_choice(layout, coords, hkv, topk, gen)
    out = ssa.selection_attention(q, k, v, topk_blocks, layout, chunk_bytes=chunk_bytes, query_tile=tile)
    mask = _selection_mask(layout, topk_blocks)
    ref, _, _ = _dense_reference(q, k, v, mask)
    merges = int((topk_blocks >= 0).sum(-1).max())
    _assert_within(out, ref, _attention_bound(q, k, v, _n_keys(mask), merges), "tiled selection")


def test_selection_with_compressed_topk_and_empty_rows():
    """With the block choice of the compressed branch (ascending ids, -1 padding at the end) the result is the
    brute-force one; a query with no selected block at all gets zeros (no NaN)."""
    coords, layout, q, k, v, _ = _selection_case(22, [180, 70], 4, 2, 8, True)
    ccoords = _compressed_coords(coords, 2)
    gen = torch.Generator().manual_seed(23)
    ck = torch.randn(ccoords.shape[0], 2, 8, generator=gen) * 2
    slices = ssa.batch_slices(coords[:, 0])
    _, _, topk_blocks = ssa.compressed_attention_topk(q, ck, ck, slices, ssa.batch_slices(ccoords[:, 0]), layout, 3)
    topk_blocks[1, 5:9] = -1  # four queries without blocks on kv head 1
    out = ssa.selection_attention(q, k, v, topk_blocks, layout, chunk_bytes=2**14, query_tile=4)
    assert torch.isfinite(out).all()
    assert (out[5:9, 2:] == 0).all()  # query heads 2, 3 use kv head 1
    mask = _selection_mask(layout, topk_blocks)
    ref, _, _ = _dense_reference(q, k, v, mask)
    keep = torch.ones_like(out, dtype=torch.bool)
    keep[5:9, 2:] = False
    bound = _attention_bound(q, k, v, _n_keys(mask), merges=3)
    _assert_within(out[keep], ref[keep], bound, "tiled selection")


def test_selection_gradients_match_float64_reference():
    """Under autograd (out-of-place path) q, k and v get the gradient of the float64 masked attention."""
    coords, layout, q, k, v, gen = _selection_case(24, [150, 60], 4, 2, 8, True)
    topk_blocks = _random_choice(layout, coords, 2, 3, gen)
    leaves = [t.clone().requires_grad_(True) for t in (q, k, v)]
    out = ssa.selection_attention(*leaves, topk_blocks, layout, chunk_bytes=2**15, query_tile=8)
    weights = torch.randn(out.shape, generator=gen)
    (out * weights).sum().backward()
    with torch.no_grad():  # the in-place path gives the same forward
        torch.testing.assert_close(ssa.selection_attention(q, k, v, topk_blocks, layout, 2**15, 8), out)
    ref_leaves = [t.double().requires_grad_(True) for t in (q, k, v)]
    ref, _, _ = _dense_reference(*ref_leaves, _selection_mask(layout, topk_blocks))
    (ref * weights.double()).sum().backward()
    for name, got, want in zip("qkv", leaves, ref_leaves, strict=True):
        assert want.grad.abs().max() > 1e-3, name
        torch.testing.assert_close(got.grad.double(), want.grad, atol=1e-4, rtol=1e-4, msg=name)


def _python_events(fn) -> tuple[object, int]:
    """fn() and the number of Python-level calls (Python and C functions, ``.tolist``/``.item`` included) it made.

    Garbage collection is off meanwhile: finalizers it would run are no part of fn's work.
    """
    count = 0

    def profile(frame, event, arg):
        nonlocal count
        if event in ("call", "c_call"):
            count += 1

    gc.collect()
    gc.disable()
    sys.setprofile(profile)
    try:
        result = fn()
    finally:
        sys.setprofile(None)
        gc.enable()
    return result, count


def test_selection_python_work_does_not_grow_with_blocks():
    """Same 512 tokens (a full 8³ cube), same top-k, 8 / 64 / 512 selection blocks: the number of Python-level
    calls (every op dispatch and host sync goes through one) is the same, while the number of (kv head, block)
    pairs to attend to grows ×50; a loop over pairs would add calls per pair. One chunk (ample chunk_bytes)."""
    xyz = torch.cartesian_prod(*[torch.arange(8)] * 3)
    coords = torch.cat([torch.zeros(512, 1, dtype=torch.long), xyz], 1).int()
    gen = torch.Generator().manual_seed(25)
    q, k, v = torch.randn(512, 4, 8, generator=gen), torch.randn(512, 2, 8, generator=gen), torch.randn(512, 2, 8)
    events, pairs = [], []
    for sbs in (4, 2, 1):
        layout = ssa.block_layout(coords, coords, 1, sbs)
        assert layout.num_blocks == (8 // sbs) ** 3
        topk_blocks = _random_choice(layout, coords, 2, 3, gen)
        out, count = _python_events(lambda layout=layout, tb=topk_blocks: ssa.selection_attention(q, k, v, tb, layout))
        mask = _selection_mask(layout, topk_blocks)
        ref, _, _ = _dense_reference(q, k, v, mask)
        bound = _attention_bound(q, k, v, _n_keys(mask), merges=3)
        _assert_within(out, ref, bound, f"{layout.num_blocks} blocks")
        valid = topk_blocks >= 0
        pairs.append(torch.unique((torch.arange(2).view(2, 1, 1) * layout.num_blocks + topk_blocks)[valid]).numel())
        events.append(count)
    assert pairs[-1] >= 50 * pairs[0], pairs
    assert events[0] == events[1] == events[2], f"Python calls {events} for (kv head, block) pairs {pairs}"
