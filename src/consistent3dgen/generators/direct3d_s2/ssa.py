"""Spatial sparse attention (SSA) of Direct3D-S2's sparse DiT, in pure PyTorch.

Three branches over the same queries, mixed by a per-token sigmoid gate (``gate`` → weights for compressed,
selected, window, in that order):

* **compressed**: every query attends to block summaries (keys/values mean-pooled over
  ``compression_block_size``³ cells by a small sparse conv block) of its own batch element;
* **selected**: the compressed attention probabilities, summed over the query heads sharing a kv head and over
  the compressed blocks inside each ``selection_block_size``³ block, pick the ``topk`` blocks per query and kv
  head; the query then attends to all tokens of those blocks (one softmax over their union);
* **window**: attention inside non-overlapping ``window_size``³ windows whose grid is shifted by
  ``shift_window`` (Swin style; the shift alternates 0 / window_size//2 between DiT blocks).

Grouped-query attention: query head ``h`` uses kv head ``h // (num_q_heads // num_kv_heads)`` (flash-attn
convention), scale ``1/sqrt(head_dim)``. The official code runs these as Triton/flash-attn kernels; here the
same math runs chunked so memory stays linear in the number of tokens: no tensor is ever (tokens × tokens).
Attention math runs in float32 whatever the model dtype (fp16 matmuls are slow and inexact on CPU).

Small inputs (every batch element ≤ ``dense_max_tokens`` tokens, by default as many as the mask memory allows:
8192 with 2 kv heads, the mini prior's stages) take an exact fast path instead: the selection branch is one dense
``scaled_dot_product_attention`` per batch element with an additive mask built from the same block membership
(key in one of the query's selected blocks; Hkv·N² floats, the only N × N tensor, hence the bound), and the window
branch one unmasked attention per window (no padding). The chunked path exists for 100 k tokens; on ~2 k tokens
its padded, masked windows and the selection branch's padded tiles and partial-softmax merges dominate (measured
on the mini prior against the earlier per-(head, block) loop version of the selection branch: one velocity call
~1.8× faster, one training step ~2× faster).

The chunked selection branch has no Python loop over blocks: its loops run over memory-bounded chunks of
queries and groups of tiles, each with a constant number of host syncs (``benchmarks/bench_ssa.py`` times it
against the loop over (kv head, block) pairs it replaced).

Autograd: with grad enabled (training) every op is out of place, so all three branches are differentiable
(top-k indices are not, as in the official code); without grad the chunked path reuses buffers in place.

Block bookkeeping: selection blocks are the distinct ``(batch, x//s, y//s, z//s)`` of the tokens, indexed in
lexicographic order (the official ``histc`` order). The official kernels additionally assume tokens are stored
block by block (``sort_block``); here tokens are gathered by block membership, which gives the same result for
sorted input and the mathematically intended one for any order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .sparse_conv import SparseConv3d, SparseGroupNorm32, SparseSiLU, downsample_coords
from .sparse_tensor import SparseTensor

# Upper bound for the scratch memory of one attention chunk (scores + gathered keys/values), in bytes.
DEFAULT_CHUNK_BYTES = 256 * 2**20
# Memory for the dense fast path's additive selection mask, num_kv_heads · N² floats per batch element: the
# largest batch element that takes that path has sqrt(DENSE_MASK_BYTES / (4 · num_kv_heads)) tokens (8192 with
# 2 kv heads). The mini prior's 256³ stage (~5 k tokens) runs its 20 steps in 40 s there vs 57 s chunked.
DENSE_MASK_BYTES = 512 * 2**20


def dense_token_limit(num_kv_heads: int, mask_bytes: int = DENSE_MASK_BYTES) -> int:
    """The most tokens per batch element for which the dense fast path's mask fits in ``mask_bytes``."""
    return math.isqrt(mask_bytes // (4 * max(1, int(num_kv_heads))))


def _grad_needed(*tensors: torch.Tensor) -> bool:
    """True when autograd will record ops on these tensors (then no in-place reuse of saved buffers)."""
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def batch_slices(batch_index: torch.Tensor) -> list[slice]:
    """Row slices of each batch element; rows must be grouped by batch in increasing order."""
    if batch_index.numel() == 0:
        return []
    counts = torch.bincount(batch_index.long()).tolist()
    out, start = [], 0
    for c in counts:
        out.append(slice(start, start + c))
        start += c
    return out


def _pack(coords: torch.Tensor) -> torch.Tensor:
    """Lexicographic int64 code of (batch, x, y, z) rows (order-preserving, collision-free)."""
    c = coords.long()
    if c.shape[0] == 0:
        return c.new_zeros(0)
    extent = int(c[:, 1:].max().item()) + 1
    return ((c[:, 0] * extent + c[:, 1]) * extent + c[:, 2]) * extent + c[:, 3]


def attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_mask: torch.Tensor | None = None,
    return_probs: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Batched grouped-query softmax attention in float32.

    q (B, Lq, Hq, D); k, v (B, Lk, Hkv, D); key_mask (B, Lk) or (B, Lk, Hkv) bool, True = key usable.
    Returns out (B, Lq, Hq, D) float32, lse (B, Lq, Hq) natural log-sum-exp of the scaled scores, and, when
    asked, the probabilities (B, Hkv, G, Lq, Lk) with G = Hq // Hkv.
    """
    bsz, lq, hq, dim = q.shape
    lk, hkv = k.shape[1], k.shape[2]
    group = hq // hkv
    qg = q.float().reshape(bsz, lq, hkv, group, dim).permute(0, 2, 3, 1, 4).reshape(bsz, hkv, group * lq, dim)
    kk = k.float().permute(0, 2, 3, 1)  # (B, Hkv, D, Lk)
    vv = v.float().permute(0, 2, 1, 3)  # (B, Hkv, Lk, D)
    scores = torch.matmul(qg, kk).mul_(1.0 / math.sqrt(dim))  # (B, Hkv, G*Lq, Lk)
    if key_mask is not None:
        mask = key_mask if key_mask.ndim == 3 else key_mask.unsqueeze(-1).expand(bsz, lk, hkv)
        scores.masked_fill_(~mask.permute(0, 2, 1).unsqueeze(2), float("-inf"))
    lse = torch.logsumexp(scores, dim=-1, keepdim=True)
    # logsumexp keeps ``scores`` for its backward: only overwrite it when no graph is recorded
    probs = (scores - lse).exp() if _grad_needed(scores) else scores.sub_(lse).exp_()
    out = torch.matmul(probs, vv)  # (B, Hkv, G*Lq, D)
    out = out.reshape(bsz, hkv, group, lq, dim).permute(0, 3, 1, 2, 4).reshape(bsz, lq, hq, dim)
    lse = lse.reshape(bsz, hkv, group, lq).permute(0, 3, 1, 2).reshape(bsz, lq, hq)
    return out, lse, (probs.reshape(bsz, hkv, group, lq, lk) if return_probs else None)


@dataclass
class BlockLayout:
    """Selection blocks of a token set: which block each token / compressed token belongs to.

    block_of_token (N,) and block_of_compressed (M,) index blocks 0..num_blocks-1 (lexicographic order);
    block_tokens (num_blocks, P) lists each block's token rows, padded with -1; block_batch_start (B+1,)
    delimits each batch element's blocks.
    """

    block_of_token: torch.Tensor
    block_of_compressed: torch.Tensor
    block_tokens: torch.Tensor
    block_batch_start: torch.Tensor

    @property
    def num_blocks(self) -> int:
        return int(self.block_tokens.shape[0])


def block_layout(
    coords: torch.Tensor, compressed_coords: torch.Tensor, compression_block_size: int, selection_block_size: int
) -> BlockLayout:
    """Group tokens (coords (N, 4)) and compressed tokens (coords at 1/compression_block_size) into blocks."""
    if selection_block_size % compression_block_size:
        raise ValueError("selection_block_size must be a multiple of compression_block_size")
    token_block = coords.long().clone()
    token_block[:, 1:] //= selection_block_size
    comp_block = compressed_coords.long().clone()
    comp_block[:, 1:] //= selection_block_size // compression_block_size
    # one packing for both so codes are comparable
    both = _pack(torch.cat([token_block, comp_block]))
    token_code, comp_code = both[: coords.shape[0]], both[coords.shape[0] :]
    codes, block_of_token = torch.unique(token_code, return_inverse=True)
    block_of_compressed = torch.searchsorted(codes, comp_code)
    if block_of_compressed.numel() and (
        block_of_compressed.max() >= codes.numel() or not torch.equal(codes[block_of_compressed], comp_code)
    ):
        raise ValueError("compressed tokens do not lie in the blocks of the tokens")
    num_blocks = codes.numel()
    sizes = torch.bincount(block_of_token, minlength=num_blocks)
    order = torch.argsort(block_of_token, stable=True)
    starts = torch.cumsum(sizes, 0) - sizes
    slot = torch.arange(order.numel(), device=coords.device) - starts[block_of_token[order]]
    width = int(sizes.max().item()) if num_blocks else 0
    block_tokens = torch.full((num_blocks, width), -1, dtype=torch.long, device=coords.device)
    block_tokens[block_of_token[order], slot] = order
    # blocks are sorted batch-first, so each batch element owns a contiguous range of block ids
    first_token_batch = coords[:, 0].long()[order[starts]] if num_blocks else coords.new_zeros(0).long()
    nb = int(coords[:, 0].max().item()) + 1 if coords.shape[0] else 0
    per_batch = torch.bincount(first_token_batch, minlength=nb)
    block_batch_start = torch.cat([per_batch.new_zeros(1), torch.cumsum(per_batch, 0)])
    return BlockLayout(block_of_token, block_of_compressed, block_tokens, block_batch_start)


def _rows_per_chunk(bytes_per_row: float, chunk_bytes: int) -> int:
    return max(1, int(chunk_bytes // max(bytes_per_row, 1.0)))


def compressed_attention_topk(
    q: torch.Tensor,
    compressed_k: torch.Tensor,
    compressed_v: torch.Tensor,
    q_slices: list[slice],
    compressed_slices: list[slice],
    layout: BlockLayout,
    topk: int,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Compressed attention and the top-k selection blocks it implies.

    q (N, Hq, D); compressed_k/v (M, Hkv, D). Returns out (N, Hq, D) float32, lse (N, Hq), and
    topk_blocks (Hkv, N, topk) int64 global block ids, ascending, -1 padded where a batch element has fewer
    than ``topk`` blocks. The block score of a query is sum over its kv head's query heads and over the
    compressed tokens in the block of softmax probabilities (the official ``get_block_score``).
    """
    n, hq, dim = q.shape
    hkv = compressed_k.shape[1]
    out = torch.empty(n, hq, dim, dtype=torch.float32, device=q.device)
    lse = torch.empty(n, hq, dtype=torch.float32, device=q.device)
    topk_blocks = torch.full((hkv, n, topk), -1, dtype=torch.long, device=q.device)
    for b, (qs, cs) in enumerate(zip(q_slices, compressed_slices, strict=True)):
        m = cs.stop - cs.start
        if qs.stop == qs.start:
            continue
        if m == 0:
            raise ValueError(f"batch element {b} has tokens but no compressed tokens")
        block_start = int(layout.block_batch_start[b])
        nblocks = int(layout.block_batch_start[b + 1]) - block_start
        local_block = (layout.block_of_compressed[cs] - block_start).view(1, 1, m)
        real_topk = min(topk, nblocks)
        ck, cv = compressed_k[cs].unsqueeze(0), compressed_v[cs].unsqueeze(0)
        # scores+probs (Hq*m floats) plus block scores (Hkv*nblocks) per query
        rows = _rows_per_chunk(4.0 * (2 * hq * m + 2 * hkv * nblocks), chunk_bytes)
        for start in range(qs.start, qs.stop, rows):
            stop = min(start + rows, qs.stop)
            o, l_, probs = attend(q[start:stop].unsqueeze(0), ck, cv, return_probs=True)
            out[start:stop], lse[start:stop] = o[0], l_[0]
            # (Hkv, rows, m) summed over the heads of a kv group; only feeds the (non-differentiable) top-k
            token_scores = probs[0].detach().sum(dim=1)
            block_scores = token_scores.new_zeros(hkv, stop - start, nblocks)
            block_scores.scatter_add_(2, local_block.expand_as(token_scores), token_scores)
            chosen = block_scores.topk(real_topk, dim=-1).indices.sort(dim=-1).values
            topk_blocks[:, start:stop, :real_topk] = chosen + block_start
    return out, lse, topk_blocks


# Queries per tile of the chunked selection branch: a tile is one (kv head, block) pair with up to this many of
# the queries that selected it, one batched-matmul row block against that block's keys. Bigger tiles amortise
# gathering the block's keys over more query rows but pad the last tile of each pair more (on CPU at 10-20 k
# tokens, 16 and 32 tie and 64 is slower).
SELECTION_QUERY_TILE = 16


def selection_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    topk_blocks: torch.Tensor,
    layout: BlockLayout,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    query_tile: int = SELECTION_QUERY_TILE,
) -> torch.Tensor:
    """Each query (and kv head) attends to the union of tokens of its selected blocks; one softmax.

    q (N, Hq, D); k, v (N, Hkv, D); topk_blocks (Hkv, N, K) distinct global block ids per row (-1 = none).
    Returns (N, Hq, D) float32 (zeros for a query with no selected block).

    Computed key-block-major without a loop over blocks: per chunk of queries, the (kv head, query, slot)
    entries are sorted by (kv head, block) and cut into tiles of ``query_tile`` queries of one pair; each group
    of tiles (similar block sizes, padded and masked) runs as one batched matmul against its blocks' keys,
    giving every entry a softmax over one block's tokens and its log-sum-exp. The K partial softmaxes of a query
    are then merged exactly (weights exp(lse_k − max lse)), which equals one softmax over the union. Python
    loops run over memory-bounded chunks and tile groups only, with a constant number of host syncs per chunk.
    """
    n, hq, dim = q.shape
    hkv, _, topk = topk_blocks.shape
    group = hq // hkv
    if n == 0 or topk == 0 or layout.num_blocks == 0:
        return torch.zeros(n, hq, dim, dtype=torch.float32, device=q.device)
    out = torch.empty(n, hq, dim, dtype=torch.float32, device=q.device)
    block_sizes = (layout.block_tokens >= 0).sum(1)
    tile = max(1, int(query_tile))
    # rows of q / k / v as (N·Hkv, G·D) / (N·Hkv, D): (token, kv head) → token·Hkv + head (one copy at most)
    rows_qkv = (q.reshape(n * hkv, group * dim), k.reshape(n * hkv, dim), v.reshape(n * hkv, dim))
    # half the budget for a chunk's per-entry partials (output + lse, the merge's product, int64 bookkeeping),
    # half for one group of tiles (in _selection_chunk)
    per_query = 4.0 * hkv * topk * group * (2 * dim + 3) + 8.0 * 8 * hkv * topk
    rows = _rows_per_chunk(per_query, chunk_bytes // 2)
    for start in range(0, n, rows):
        stop = min(start + rows, n)
        out[start:stop] = _selection_chunk(
            rows_qkv, topk_blocks[:, start:stop], start, layout, block_sizes, chunk_bytes // 2, tile
        )
    return out


def _selection_chunk(
    rows_qkv: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    chosen: torch.Tensor,
    first_query: int,
    layout: BlockLayout,
    block_sizes: torch.Tensor,
    chunk_bytes: int,
    tile: int,
) -> torch.Tensor:
    """Selection attention of queries first_query .. first_query + nq; chosen (Hkv, nq, K). → (nq, Hq, D)."""
    qrows, krows, vrows = rows_qkv
    hkv, nq, topk = chosen.shape
    dim = krows.shape[1]
    group = qrows.shape[1] // dim
    hq = hkv * group
    nblocks = layout.num_blocks
    device = qrows.device
    grad = _grad_needed(qrows, krows, vrows)
    flat = chosen.reshape(-1)  # entry e = (kv head, query, slot), row-major
    chosen_ok = flat >= 0
    entry = torch.nonzero(chosen_ok).squeeze(1)
    # partials of entry e at row e; row hkv·nq·K is a sink for the empty slots of tiles. Only rows of entries
    # without a block are zeroed: every other row is written below.
    part = torch.empty(flat.numel() + 1, group, dim, dtype=torch.float32, device=device)
    part_lse = torch.empty(flat.numel() + 1, group, dtype=torch.float32, device=device)
    unused = torch.nonzero(~chosen_ok).squeeze(1)
    part.index_fill_(0, unused, 0.0)
    part_lse.index_fill_(0, unused, float("-inf"))
    if entry.numel():
        # sort entries by (kv head, block): the queries of one pair become contiguous
        pair, order = torch.sort(entry // (nq * topk) * nblocks + flat[entry], stable=True)
        entry = entry[order]
        pairs, pair_of_entry, counts = torch.unique_consecutive(pair, return_inverse=True, return_counts=True)
        tiles_per_pair = (counts + tile - 1) // tile
        first_tile = torch.cumsum(tiles_per_pair, 0) - tiles_per_pair
        rank = torch.arange(entry.numel(), device=device) - (torch.cumsum(counts, 0) - counts)[pair_of_entry]
        n_tiles = int(tiles_per_pair.sum())
        sink = flat.numel()
        table = torch.full((n_tiles, tile), sink, dtype=torch.long, device=device)  # entries of each tile
        table[first_tile[pair_of_entry] + rank // tile, rank % tile] = entry
        tile_pair = torch.repeat_interleave(pairs, tiles_per_pair, output_size=n_tiles)
        tile_head, tile_block = tile_pair // nblocks, tile_pair % nblocks
        tile_query_row = (first_query + table.clamp(max=sink - 1) // topk % nq) * hkv + tile_head[:, None]
        # biggest blocks first so each group of tiles is padded to a similar key count (as window_attention)
        tile_size, by_size = torch.sort(block_sizes[tile_block], descending=True, stable=True)
        sizes = tile_size.tolist()
        w = 0
        while w < n_tiles:
            pad = sizes[w]
            # gathered q and partial out (tile·G·D each), k and v (pad·D each), scores and probs (tile·G·pad)
            per_tile = 4.0 * (2 * tile * group * dim + 2 * pad * dim + 2 * tile * group * pad) + 8.0 * (tile + pad)
            sel = by_size[w : w + _rows_per_chunk(per_tile, chunk_bytes)]
            tokens = layout.block_tokens[tile_block[sel], :pad]
            o, lse = _attend_tiles(
                qrows.index_select(0, tile_query_row[sel].view(-1)).view(sel.numel(), tile * group, dim),
                krows,
                vrows,
                tokens.clamp(min=0) * hkv + tile_head[sel, None],
                tokens >= 0 if sizes[w + sel.numel() - 1] < pad else None,  # no mask when no tile is padded
                grad,
            )
            dst = table[sel].view(-1)
            # in place also under autograd: no recorded op saved these buffers
            part.index_copy_(0, dst, o.view(-1, group, dim))
            part_lse.index_copy_(0, dst, lse.view(-1, group))
            w += sel.numel()
    # exact merge of each query's partial softmaxes: weights exp(lse_k − max_k lse_k), normalised. The max is
    # only a shift (detached); a query without entries keeps all −inf and gets weight 0, hence output 0.
    part = part[:-1].view(hkv, nq, topk, group, dim)
    part_lse = part_lse[:-1].view(hkv, nq, topk, group)
    shift = part_lse.detach().amax(2, keepdim=True)
    shift = torch.where(torch.isfinite(shift), shift, torch.zeros_like(shift))
    weight = (part_lse - shift).exp_() if not grad else (part_lse - shift).exp()
    total = weight.sum(2)
    weighted = part * weight.unsqueeze(-1) if grad else part.mul_(weight.unsqueeze(-1))
    merged = weighted.sum(2) / torch.where(total > 0, total, torch.ones_like(total)).unsqueeze(-1)
    return merged.permute(1, 0, 2, 3).reshape(nq, hq, dim)


def _attend_tiles(
    qt: torch.Tensor,
    krows: torch.Tensor,
    vrows: torch.Tensor,
    key_rows: torch.Tensor,
    key_ok: torch.Tensor | None,
    grad: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax attention of each tile's query rows over its block's keys, all tiles in one batched matmul.

    qt (C, R, D) gathered query rows (a fresh copy); krows / vrows (N·Hkv, D); key_rows (C, P) rows of the
    tile's keys; key_ok (C, P) False on padding (masked), None when there is none. Returns the normalised
    outputs (C, R, D) and log-sum-exps (C, R), float32. Every tile has at least one key, so the row maxima are
    finite.
    """
    c, p = key_rows.shape
    dim = qt.shape[-1]
    kt = krows.index_select(0, key_rows.view(-1)).view(c, p, dim).float()
    vt = vrows.index_select(0, key_rows.view(-1)).view(c, p, dim).float()
    # the scale on the (smaller) queries rather than on the scores
    qt = qt.float() * (1.0 / math.sqrt(dim)) if grad else qt.float().mul_(1.0 / math.sqrt(dim))
    scores = torch.bmm(qt, kt.transpose(1, 2))  # (C, R, P)
    if key_ok is not None:
        # a broadcast add of a 0 / −inf row bias: cheaper than masked_fill with a broadcast mask
        bias = torch.zeros(c, 1, p, dtype=torch.float32, device=qt.device)
        scores.add_(bias.masked_fill_(~key_ok.unsqueeze(1), -math.inf))
    peak = scores.detach().amax(-1, keepdim=True)  # a shift only: the result does not depend on it
    # exp keeps its output and bmm its inputs for backward: overwrite only when no graph is recorded
    probs = (scores - peak).exp() if grad else scores.sub_(peak).exp_()
    total = probs.sum(-1, keepdim=True)
    out = torch.bmm(probs, vt)
    out = out / total if grad else out.div_(total)
    return out, (peak + total.log()).squeeze(-1)


def window_partition(coords: torch.Tensor, window_size: int, shift: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Window id of every token: windows are ``(b, (x+shift)//ws, (y+shift)//ws, (z+shift)//ws)``.

    Returns (window_of_token (N,) in 0..W-1, window_sizes (W,)).
    """
    c = coords.long().clone()
    c[:, 1:] = (c[:, 1:] + shift) // window_size
    _, window_of_token, sizes = torch.unique(_pack(c), return_inverse=True, return_counts=True)
    return window_of_token, sizes


def window_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    coords: torch.Tensor,
    window_size: int,
    shift: int,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
) -> torch.Tensor:
    """Full attention inside each (shifted) window, windows padded and processed in memory-bounded groups.

    q (N, Hq, D); k, v (N, Hkv, D); coords (N, 4). Returns (N, Hq, D) float32.
    """
    n, hq, dim = q.shape
    hkv = k.shape[1]
    out = torch.empty(n, hq, dim, dtype=torch.float32, device=q.device)
    if n == 0:
        return out
    window_of_token, sizes = window_partition(coords, window_size, shift)
    order = torch.argsort(window_of_token, stable=True)
    starts = torch.cumsum(sizes, 0) - sizes
    slot = torch.arange(n, device=q.device) - starts[window_of_token[order]]
    # biggest windows first so each group is padded to a similar size
    by_size = torch.argsort(sizes, descending=True, stable=True)
    rank = torch.empty_like(by_size)
    rank[by_size] = torch.arange(by_size.numel(), device=q.device)
    width = int(sizes.max().item())
    table = torch.full((sizes.numel(), width), -1, dtype=torch.long, device=q.device)
    table[rank[window_of_token[order]], slot] = order
    sizes_sorted = sizes[by_size].tolist()
    w = 0
    while w < len(sizes_sorted):
        pad = sizes_sorted[w]
        per_window = 4.0 * pad * (2 * hq * pad + 2 * hkv * dim + 2 * hq * dim)
        count = _rows_per_chunk(per_window, chunk_bytes)
        idx = table[w : w + count, :pad]
        valid = idx >= 0
        safe = idx.clamp(min=0)
        # fused attention (no log-sum-exp needed here): 2-3x faster on CPU than the written-out softmax
        # (benchmarks/bench_window_attention.py)
        qw, kw, vw = (t[safe].float().transpose(1, 2) for t in (q, k, v))  # (C, H, pad, D)
        o = F.scaled_dot_product_attention(qw, kw, vw, attn_mask=valid[:, None, None, :], enable_gqa=hq != hkv)
        out[idx[valid]] = o.transpose(1, 2)[valid]
        w += count
    return out


def dense_selection_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    topk_blocks: torch.Tensor,
    layout: BlockLayout,
    q_slices: list[slice],
) -> torch.Tensor:
    """``selection_attention`` for small batch elements: one dense attention per element with an additive mask
    (0 where the key's block is one of the query's selected blocks for that kv head, −inf elsewhere).

    Same arguments and result as ``selection_attention`` plus the batch slices; memory per element is
    Hkv·n² floats for the mask. Exact: the same keys enter one softmax, only the summation order differs.
    """
    n, hq, dim = q.shape
    hkv = topk_blocks.shape[0]
    group = hq // hkv
    parts = []
    for b, rows in enumerate(q_slices):
        nb = rows.stop - rows.start
        if nb == 0:
            continue
        first = int(layout.block_batch_start[b])
        nblocks = int(layout.block_batch_start[b + 1]) - first
        chosen = topk_blocks[:, rows] - first
        chosen = torch.where(chosen >= 0, chosen, nblocks)  # padding → a spare column, dropped below
        block_bias = torch.full((hkv, nb, nblocks + 1), float("-inf"), device=q.device)
        block_bias = block_bias.scatter_(2, chosen, 0.0)[:, :, :nblocks]
        key_block = (layout.block_of_token[rows] - first).expand(hkv, nb, nb)
        bias = torch.gather(block_bias, 2, key_block)  # (Hkv, nb, nb): 0 = key in a selected block
        del block_bias, key_block
        # kv heads as the batch dim, the query heads of a group as heads: the mask broadcasts over the group
        qb = q[rows].float().view(nb, hkv, group, dim).permute(1, 2, 0, 3)  # (Hkv, G, nb, D)
        kb = k[rows].float().permute(1, 0, 2).unsqueeze(1)  # (Hkv, 1, nb, D)
        vb = v[rows].float().permute(1, 0, 2).unsqueeze(1)
        o = F.scaled_dot_product_attention(qb, kb, vb, attn_mask=bias.unsqueeze(1), enable_gqa=group > 1)
        parts.append(o.permute(2, 0, 1, 3).reshape(nb, hq, dim))
    if not parts:
        return q.new_zeros(n, hq, dim, dtype=torch.float32)
    return torch.cat(parts) if len(parts) > 1 else parts[0]


def grouped_window_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, coords: torch.Tensor, window_size: int, shift: int
) -> torch.Tensor:
    """``window_attention`` for small inputs: one unmasked attention per window (no padding, no mask), then the
    rows put back in token order. Python loops over windows, so only for few windows (small N)."""
    n, hq, dim = q.shape
    hkv = k.shape[1]
    if n == 0:
        return q.new_zeros(0, hq, dim, dtype=torch.float32)
    window_of_token, sizes = window_partition(coords, window_size, shift)
    order = torch.argsort(window_of_token, stable=True)
    qo, ko, vo = (t[order].float().transpose(0, 1) for t in (q, k, v))  # (H, N, D), rows window by window
    parts = []
    for qw, kw, vw in zip(*(t.split(sizes.tolist(), dim=1) for t in (qo, ko, vo)), strict=True):
        parts.append(F.scaled_dot_product_attention(qw, kw, vw, enable_gqa=hq != hkv))
    by_window = torch.cat(parts, dim=1).transpose(0, 1)  # (N, Hq, D) in window order
    return torch.empty_like(by_window).index_copy(0, order, by_window)


def spatial_sparse_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    coords: torch.Tensor,
    compressed_k: torch.Tensor,
    compressed_v: torch.Tensor,
    compressed_coords: torch.Tensor,
    gate: torch.Tensor,
    compression_block_size: int,
    selection_block_size: int,
    topk: int,
    window_size: int,
    shift_window: int,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    layout_cache: dict | None = None,
    dense_max_tokens: int | None = None,
) -> torch.Tensor:
    """Gated sum of the three branches. q (N, Hq, D); k, v (N, Hkv, D); gate (N, 3). Returns (N, Hq, D) float32.

    ``layout_cache``: a dict tied to ``coords`` (e.g. ``SparseTensor.cache``) to reuse the block layout.
    ``dense_max_tokens``: when no batch element has more tokens, the selection and window branches take the
    dense fast path (same result); 0 forces the chunked path; None: :func:`dense_token_limit` of the kv heads.
    """
    if dense_max_tokens is None:
        dense_max_tokens = dense_token_limit(k.shape[1])
    key = ("ssa_block_layout", compression_block_size, selection_block_size)
    layout = layout_cache.get(key) if layout_cache is not None else None
    if layout is None:
        layout = block_layout(coords, compressed_coords, compression_block_size, selection_block_size)
        if layout_cache is not None:
            layout_cache[key] = layout
    q_slices = batch_slices(coords[:, 0])
    c_slices = batch_slices(compressed_coords[:, 0])
    if len(c_slices) != len(q_slices):
        raise ValueError("tokens and compressed tokens cover different batch elements")
    dense = max((s.stop - s.start for s in q_slices), default=0) <= dense_max_tokens
    out_c, _, topk_blocks = compressed_attention_topk(
        q, compressed_k, compressed_v, q_slices, c_slices, layout, topk, chunk_bytes
    )
    gate = gate.float()
    if dense:
        out_s = dense_selection_attention(q, k, v, topk_blocks, layout, q_slices)
        out_w = grouped_window_attention(q, k, v, coords, window_size, shift_window)
    else:
        out_s = selection_attention(q, k, v, topk_blocks, layout, chunk_bytes)
        out_w = None  # computed after out_s is folded in, so at most two (N, Hq, D) buffers live at once
    if _grad_needed(out_c, out_s, gate, q, k, v):
        if out_w is None:
            out_w = window_attention(q, k, v, coords, window_size, shift_window, chunk_bytes)
        return gate[:, 0:1, None] * out_c + gate[:, 1:2, None] * out_s + gate[:, 2:3, None] * out_w
    out = out_c.mul_(gate[:, 0:1, None])
    out.addcmul_(gate[:, 1:2, None], out_s)
    del out_s
    if out_w is None:
        out_w = window_attention(q, k, v, coords, window_size, shift_window, chunk_bytes)
    out.addcmul_(gate[:, 2:3, None], out_w)
    return out


def official_mean_pool(x: SparseTensor, factor: int) -> SparseTensor:
    """Pool onto the occupied cells of ``coords // factor`` (rows sorted by (b, x, y, z)) as the official
    ``SparseDownsample(factor)`` does.

    The official layer calls ``torch.scatter_reduce(zeros, ..., reduce="mean")`` with the default
    ``include_self=True``, so the zero it starts from counts as one more member: a cell holding n voxels gets
    ``sum / (n + 1)``, not the plain mean (checked against the ``sparse_encoder_downblock`` fixture, which the
    official code produced). Sums in float64 like the official layer. The coarse coords are cached in the
    input's cache, so all DiT blocks share them.
    """
    key = ("ssa_pool", factor)
    cached = x.cache.get(key)
    if cached is None:
        coarse, inverse = downsample_coords(x.coords, (factor, factor, factor))
        cached = (coarse, inverse, {})  # the dict: cache for the coarse tensor (neighbour maps of v2 convs)
        x.cache[key] = cached
    coarse, inverse, coarse_cache = cached
    channels = x.feats.shape[1]
    pooled = torch.zeros(coarse.shape[0], channels, dtype=torch.float64, device=x.feats.device)
    pooled = pooled.scatter_reduce(0, inverse[:, None].expand(-1, channels), x.feats.double(), reduce="mean")
    return SparseTensor(pooled.to(x.feats.dtype), coarse, coarse_cache)


class SparseDownBlock3dV1(nn.Module):
    """v1.1 compression: 1x1 sparse conv + SiLU, then pooling (keys ``act_layers.0.conv.{kernel,bias}``)."""

    def __init__(self, channels: int, out_channels: int | None = None, factor: int = 2):
        super().__init__()
        out_channels = out_channels or channels
        self.factor = factor
        self.act_layers = nn.Sequential(SparseConv3d(out_channels, out_channels, 1, padding=0), SparseSiLU())

    def forward(self, x: SparseTensor) -> SparseTensor:
        return official_mean_pool(self.act_layers(x), self.factor)


class SparseDownBlock3dV2(nn.Module):
    """v1.0 compression: GroupNorm32 + SiLU, pooling, two 3³ submanifold convs (GN + SiLU between), plus the
    pooled input as an identity skip."""

    def __init__(self, channels: int, out_channels: int | None = None, num_groups: int = 32, factor: int = 2):
        super().__init__()
        out_channels = out_channels or channels
        if out_channels != channels:
            raise ValueError("the SSA compression block keeps the channel count (identity skip)")
        self.factor = factor
        self.act_layers = nn.Sequential(SparseGroupNorm32(num_groups, channels), SparseSiLU())
        self.out_layers = nn.Sequential(
            SparseConv3d(channels, out_channels, 3, padding=1),
            SparseGroupNorm32(num_groups, out_channels),
            SparseSiLU(),
            SparseConv3d(out_channels, out_channels, 3, padding=1),
        )

    def forward(self, x: SparseTensor) -> SparseTensor:
        h = self.out_layers(official_mean_pool(self.act_layers(x), self.factor))
        skip = official_mean_pool(x, self.factor)
        return h.replace(h.feats + skip.feats)


class SpatialSparseAttention(nn.Module):
    """The SSA self-attention layer of a sparse DiT block (official parameter names and order).

    Keys: ``intra_block_pe`` (cbs, cbs, cbs, Hkv*D) learned position inside a compression block, added to the
    keys before compression; ``proj_q`` / ``proj_k`` / ``proj_v`` (no bias), ``proj_o`` (no bias);
    ``compression_key`` / ``compression_value`` (v1 or v2 down block); ``gate.0`` (hidden → 3, no bias) + sigmoid.
    No q/k RMS norm here (the official block passes ``qk_rms_norm`` only to the non-SSA attention).
    """

    def __init__(
        self,
        hidden_size: int,
        num_q_heads: int,
        num_kv_heads: int,
        head_dim: int,
        compression_block_size: int,
        selection_block_size: int,
        topk: int,
        window_size: int,
        shift_window: int,
        resolution: int = 64,
        compression_version: str = "v2",
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
        dense_max_tokens: int | None = None,
    ):
        super().__init__()
        if num_q_heads % num_kv_heads:
            raise ValueError(f"num_q_heads {num_q_heads} is not a multiple of num_kv_heads {num_kv_heads}")
        if selection_block_size % compression_block_size:
            raise ValueError("selection_block_size must be a multiple of compression_block_size")
        self.hidden_size = hidden_size
        self.num_q_heads = num_q_heads
        self.num_kv_heads = num_kv_heads
        self.head_dim = head_dim
        self.compression_block_size = compression_block_size
        self.selection_block_size = selection_block_size
        self.topk = topk
        self.window_size = window_size
        self.shift_window = shift_window
        self.resolution = resolution  # kept for parity; block ids here do not depend on it
        self.chunk_bytes = chunk_bytes
        # not a parameter: switches to the exact small-input path (None: as the mask memory allows)
        self.dense_max_tokens = dense_token_limit(num_kv_heads) if dense_max_tokens is None else dense_max_tokens
        kv_channels = num_kv_heads * head_dim
        # (intra_block_pe, registered below, still comes first in state_dict(): direct parameters precede submodules)
        self.proj_q = nn.Linear(hidden_size, num_q_heads * head_dim, bias=False)
        self.proj_k = nn.Linear(hidden_size, kv_channels, bias=False)
        self.proj_v = nn.Linear(hidden_size, kv_channels, bias=False)
        self.proj_o = nn.Linear(num_q_heads * head_dim, hidden_size, bias=False)
        if compression_version == "v1":
            block = SparseDownBlock3dV1
        elif compression_version == "v2":
            block = SparseDownBlock3dV2
        else:
            raise ValueError(f"compression_version must be 'v1' or 'v2', got {compression_version!r}")
        self.compression_key = block(kv_channels, kv_channels, factor=compression_block_size)
        self.compression_value = block(kv_channels, kv_channels, factor=compression_block_size)
        self.intra_block_pe = nn.Parameter(torch.zeros((compression_block_size,) * 3 + (kv_channels,)))
        self.gate = nn.Sequential(nn.Linear(hidden_size, 3, bias=False), nn.Sigmoid())

    def forward(self, x: SparseTensor) -> SparseTensor:
        """x: (N, hidden) features on (N, 4) coords, rows grouped by batch. Returns the same sites."""
        feats, coords = x.feats, x.coords
        if feats.shape[-1] != self.hidden_size:
            raise ValueError(f"expected {self.hidden_size} channels, got {feats.shape[-1]}")
        n = feats.shape[0]
        q = self.proj_q(feats).view(n, self.num_q_heads, self.head_dim)
        k = self.proj_k(feats)
        v = self.proj_v(feats)
        inside = (coords[:, 1:].long() % self.compression_block_size).unbind(1)
        k_pe = x.replace(k + self.intra_block_pe[inside].to(k.dtype))
        compressed_k = self.compression_key(k_pe)
        compressed_v = self.compression_value(x.replace(v))
        gate = self.gate(feats)
        hkv = self.num_kv_heads
        out = spatial_sparse_attention(
            q,
            k.view(n, hkv, self.head_dim),
            v.view(n, hkv, self.head_dim),
            coords,
            compressed_k.feats.view(-1, hkv, self.head_dim),
            compressed_v.feats.view(-1, hkv, self.head_dim),
            compressed_k.coords,
            gate,
            self.compression_block_size,
            self.selection_block_size,
            self.topk,
            self.window_size,
            self.shift_window,
            self.chunk_bytes,
            layout_cache=x.cache,
            dense_max_tokens=self.dense_max_tokens,
        )
        return x.replace(self.proj_o(out.view(n, -1).to(feats.dtype)))


__all__ = [
    "DEFAULT_CHUNK_BYTES",
    "DENSE_MASK_BYTES",
    "dense_token_limit",
    "SparseDownBlock3dV1",
    "SparseDownBlock3dV2",
    "SpatialSparseAttention",
    "official_mean_pool",
    "BlockLayout",
    "attend",
    "batch_slices",
    "block_layout",
    "compressed_attention_topk",
    "dense_selection_attention",
    "grouped_window_attention",
    "selection_attention",
    "spatial_sparse_attention",
    "window_attention",
    "window_partition",
]
