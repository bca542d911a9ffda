"""Sparse 3-D convolution and the small sparse layers of Direct3D-S2, in pure PyTorch (no torchsparse).

Parameter layout follows torchsparse 2.1 so official state dicts load unchanged: ``SparseConv3d`` wraps a
``conv`` module owning ``kernel`` (``[K, Cin, Cout]`` for kernel volume K > 1 or stride != 1, ``[Cin, Cout]``
for a 1x1x1 stride-1 conv) and ``bias`` ``[Cout]``. Kernel offset ``k = ix + s*iy + s*s*iz`` for a kernel of
side ``s`` (x fastest), i.e. ``kernel[k] == W_dense[:, :, ix, iy, iz].T``.

Semantics:
* stride 1, odd kernel: submanifold — output sites are the input sites (same rows, same order);
  ``out[o] = bias + sum_k feats[j(o, k)] @ kernel[k]`` over neighbours ``coords[o] + (ix - r, iy - r, iz - r)``
  that exist (r = s // 2, times ``dilation``).
* stride > 1: output sites are the occupied coarse cells ``unique(coords // stride)`` (sorted by batch, x, y, z),
  and ``out[o]`` equals a dense ``F.conv3d(stride, padding)`` evaluated at ``o`` (inputs at
  ``stride*o + dilation*i - padding``). The official models never use it (they pool with
  ``SparseDownsample``); it exists for completeness and is tested against the dense op.

Neighbour maps are built by hashing coordinates (a direct-address table over the coordinates' box when it is
small enough, ``DENSE_TABLE_ENTRIES``; else sort + searchsorted) and cached in ``SparseTensor.cache``;
the convolution gathers, multiplies and accumulates in row chunks so memory stays bounded for ~10 M voxels.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .sparse_tensor import SparseTensor

# bytes of gathered input one convolution chunk may hold (the [rows, K*Cin] im2col block)
_GATHER_BUDGET_BYTES = 64 * 2**20
# queries per searchsorted call while building neighbour maps
_QUERY_CHUNK = 1 << 22
# a coordinate box of at most this many cells (× batches) is hashed by direct addressing: an int32 row per
# cell (128 MiB at most; a 256³ stage's box is ~19 M cells), one gather per lookup instead of a binary search.
# Larger boxes (a 1024³ stage: ~10⁹ cells) keep the sorted keys.
DENSE_TABLE_ENTRIES = 1 << 25
# neighbour-map rows per direct-address chunk (their (rows, K) int64 keys: ≤ 64 MiB for K = 27)
_DENSE_CHUNK = 1 << 18
# input rows per float64 pooling chunk
_POOL_CHUNK = 1 << 20


def _ntuple(value: int | tuple[int, ...] | list[int], name: str) -> tuple[int, int, int]:
    if isinstance(value, int):
        return (value, value, value)
    out = tuple(int(v) for v in value)
    if len(out) != 3:
        raise ValueError(f"{name} must be an int or 3 ints, got {value!r}")
    return out  # type: ignore[return-value]


def kernel_offsets(kernel_size: tuple[int, int, int], device: torch.device | str | None = None) -> torch.Tensor:
    """(K, 3) int64 kernel indices (ix, iy, iz) in torchsparse order: x fastest, then y, then z."""
    kx, ky, kz = kernel_size
    iz, iy, ix = torch.meshgrid(
        torch.arange(kz, device=device), torch.arange(ky, device=device), torch.arange(kx, device=device), indexing="ij"
    )
    return torch.stack([ix.reshape(-1), iy.reshape(-1), iz.reshape(-1)], dim=1)


class _CoordHash:
    """Int64 keys of (batch, x, y, z) rows in a box widened by ``margin``: a direct-address table (``dense``, key
    → row) when the box holds at most ``dense_entries`` cells, else sorted keys for searchsorted lookups.

    Because the box has the margin, a coordinate shifted by at most ``margin`` per axis stays inside it, so the
    shifted coordinate's key is simply ``key + delta`` (no wrap-around): lookups need no bounds checks.
    """

    def __init__(self, coords: torch.Tensor, margin: int, dense_entries: int | None = None):
        c = coords.long()
        if len(c):
            self.lo = c[:, 1:].min(dim=0).values - margin
            hi = c[:, 1:].max(dim=0).values + margin
            batches = int(c[:, 0].max()) + 1
        else:
            self.lo = torch.zeros(3, dtype=torch.long, device=c.device)
            hi, batches = self.lo, 1
        self.extent = [int(v) for v in (hi - self.lo + 1).tolist()]
        if math.prod(self.extent) * batches >= 2**62:
            raise ValueError("sparse coordinates span too large a range to hash into int64")
        self.keys = self.encode(c)
        volume = math.prod(self.extent) * batches
        self.dense: torch.Tensor | None = None
        if volume <= (DENSE_TABLE_ENTRIES if dense_entries is None else dense_entries):
            self.dense = torch.full((volume,), -1, dtype=torch.int32, device=c.device)
            self.dense[self.keys] = torch.arange(len(c), dtype=torch.int32, device=c.device)
            return
        self.sorted_keys, order = torch.sort(self.keys)
        self.order = order.to(torch.int32)
        # a sentinel past the end makes every searchsorted position a valid index (no clamp needed)
        self._keys_ext = torch.cat([self.sorted_keys, self.sorted_keys.new_full((1,), 2**63 - 1)])
        self._order_ext = torch.cat([self.order, self.order.new_full((1,), -1)])

    def encode(self, c: torch.Tensor) -> torch.Tensor:
        ex, ey, ez = self.extent
        rel = c[:, 1:] - self.lo
        return ((c[:, 0] * ex + rel[:, 0]) * ey + rel[:, 1]) * ez + rel[:, 2]

    def delta(self, offset: list[int]) -> int:
        """Key difference of a coordinate shift (dx, dy, dz)."""
        _, ey, ez = self.extent
        return (offset[0] * ey + offset[1]) * ez + offset[2]

    def lookup(self, query_keys: torch.Tensor) -> torch.Tensor:
        """Row index (int32) of each query key, -1 where absent (searchsorted: fastest when the queries are
        sorted)."""
        if self.dense is not None:
            return self.dense[query_keys]
        pos = torch.searchsorted(self.sorted_keys, query_keys)
        rows = self._order_ext[pos]
        rows[self._keys_ext[pos] != query_keys] = -1
        return rows


def build_neighbor_map(
    in_coords: torch.Tensor,
    out_coords: torch.Tensor,
    kernel_size: tuple[int, int, int],
    stride: tuple[int, int, int] = (1, 1, 1),
    dilation: int = 1,
    padding: tuple[int, int, int] = (0, 0, 0),
    dense_entries: int | None = None,
) -> torch.Tensor:
    """``[N_out, K]`` int32 map: input row read by output site o at kernel offset k, -1 if absent.

    Output site o (batch b, position p) reads input (b, stride*p + dilation*i - padding) for kernel index i.
    ``dense_entries``: the direct-address limit (default ``DENSE_TABLE_ENTRIES``; 0 = always sorted keys).
    """
    offsets = kernel_offsets(kernel_size) * dilation - torch.tensor(padding)
    # stride*p lies within stride - 1 below the inputs it covers, so this margin keeps every query in the box
    margin = int(offsets.abs().max()) + max(stride)
    table = _CoordHash(in_coords, margin, dense_entries)
    same = out_coords is in_coords or (stride == (1, 1, 1) and torch.equal(out_coords, in_coords))
    if same:
        keys = table.keys
    else:  # output site p reads from stride*p: its key in the input's box
        base = out_coords.long().clone()
        base[:, 1:] *= torch.tensor(stride, device=base.device)
        keys = table.encode(base)
    nmap = torch.empty(out_coords.shape[0], offsets.shape[0], dtype=torch.int32, device=out_coords.device)
    if table.dense is not None:  # direct addressing: every offset of a chunk of rows in one gather, in row order
        deltas = torch.tensor([table.delta(off) for off in offsets.tolist()], device=keys.device)
        for s in range(0, keys.shape[0], _DENSE_CHUNK):
            nmap[s : s + _DENSE_CHUNK] = table.dense[keys[s : s + _DENSE_CHUNK, None] + deltas]
        return nmap
    if same:
        base_keys, base_order = table.sorted_keys, table.order.long()  # sorted queries: cache-friendly search
    else:
        base_keys, base_order = torch.sort(keys)
    for k, off in enumerate(offsets.tolist()):
        d = table.delta(off)
        for s in range(0, base_keys.shape[0], _QUERY_CHUNK):
            nmap[base_order[s : s + _QUERY_CHUNK], k] = table.lookup(base_keys[s : s + _QUERY_CHUNK] + d)
    return nmap


def downsample_coords(coords: torch.Tensor, factor: tuple[int, int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Occupied coarse cells of ``coords // factor``: (unique coords sorted by (b, x, y, z), inverse index).

    Same order as the official ``SparseDownsample`` (torch.unique of a packed code, batch-major).
    """
    c = coords.long().clone()
    c[:, 1:] = torch.div(c[:, 1:], torch.tensor(factor, device=c.device), rounding_mode="floor")
    if c.shape[0] == 0:
        return coords[:0].clone(), torch.zeros(0, dtype=torch.long, device=coords.device)
    span = (c[:, 1:].max(dim=0).values + 1).tolist()
    code = ((c[:, 0] * span[0] + c[:, 1]) * span[1] + c[:, 2]) * span[2] + c[:, 3]
    code, inverse = torch.unique(code, return_inverse=True)
    z = code % span[2]
    y = (code // span[2]) % span[1]
    x = (code // (span[1] * span[2])) % span[0]
    b = code // (span[0] * span[1] * span[2])
    return torch.stack([b, x, y, z], dim=1).to(coords.dtype), inverse


class TorchsparseConv3d(nn.Module):
    """Holder of ``kernel``/``bias`` registered exactly like ``torchsparse.nn.Conv3d`` (2.1)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int, int] = 3,
        stride: int | tuple[int, int, int] = 1,
        padding: int | tuple[int, int, int] = 0,
        dilation: int = 1,
        bias: bool = False,
        transposed: bool = False,
    ):
        super().__init__()
        if transposed:
            raise NotImplementedError("transposed sparse convolution is not implemented (unused by Direct3D-S2)")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = _ntuple(kernel_size, "kernel_size")
        self.stride = _ntuple(stride, "stride")
        self.dilation = int(dilation)
        pad = _ntuple(padding, "padding")
        # torchsparse: odd kernels at stride 1 are always "same" (submanifold) whatever padding says
        self.padding = tuple(
            (k - 1) // 2 if k % 2 == 1 and s == 1 else p
            for k, s, p in zip(self.kernel_size, self.stride, pad, strict=True)
        )
        self.kernel_volume = math.prod(self.kernel_size)
        self.transposed = transposed
        if self.kernel_volume > 1 or self.stride != (1, 1, 1):
            self.kernel = nn.Parameter(torch.zeros(self.kernel_volume, in_channels, out_channels))
        else:
            self.kernel = nn.Parameter(torch.zeros(in_channels, out_channels))
        if bias:
            self.bias = nn.Parameter(torch.zeros(out_channels))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        std = 1.0 / math.sqrt(self.in_channels * self.kernel_volume)
        self.kernel.data.uniform_(-std, std)
        if self.bias is not None:
            self.bias.data.uniform_(-std, std)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"padding={self.padding}, dilation={self.dilation}, bias={self.bias is not None}"
        )


def _gather_matmul(feats: torch.Tensor, nmap: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """sum_k feats[nmap[:, k]] @ kernel[k] (absent = 0), as chunked implicit GEMM: [rows, K*Cin] @ [K*Cin, Cout]."""
    n_out, k_vol = nmap.shape
    c_in, c_out = kernel.shape[1], kernel.shape[2]
    weight = kernel.reshape(k_vol * c_in, c_out).to(feats.dtype)
    out = torch.empty(n_out, c_out, dtype=feats.dtype, device=feats.device)
    rows = max(1, _GATHER_BUDGET_BYTES // max(1, k_vol * c_in * feats.element_size()))
    for s in range(0, n_out, rows):
        idx = nmap[s : s + rows].long()
        absent = idx < 0
        gathered = feats[idx.clamp(min=0)]  # [rows, K, Cin]
        gathered[absent] = 0
        out[s : s + rows] = gathered.reshape(idx.shape[0], k_vol * c_in) @ weight
    return out


def sparse_conv3d(x: SparseTensor, conv: TorchsparseConv3d) -> SparseTensor:
    """Apply the convolution held by ``conv`` to ``x`` (see the module docstring for the semantics)."""
    feats = x.feats
    bias = None if conv.bias is None else conv.bias.to(feats.dtype)
    if conv.kernel.ndim == 2:  # 1x1x1, stride 1: a per-voxel linear map
        out = feats @ conv.kernel.to(feats.dtype)
        return x.replace(out + bias if bias is not None else out)
    submanifold = conv.stride == (1, 1, 1)
    if submanifold:
        if any(k % 2 == 0 for k in conv.kernel_size):
            raise NotImplementedError("even kernels at stride 1 are not supported")
        out_coords = x.coords
        key = ("neighbor_map", conv.kernel_size, (1, 1, 1), conv.dilation, conv.padding)
        nmap = x.cache.get(key)
        if nmap is None:
            nmap = build_neighbor_map(x.coords, x.coords, conv.kernel_size, (1, 1, 1), conv.dilation, conv.padding)
            x.cache[key] = nmap
    else:
        key = ("downsample_map", conv.kernel_size, conv.stride, conv.dilation, conv.padding)
        cached = x.cache.get(key)
        if cached is None:
            out_coords, _ = downsample_coords(x.coords, conv.stride)
            nmap = build_neighbor_map(x.coords, out_coords, conv.kernel_size, conv.stride, conv.dilation, conv.padding)
            x.cache[key] = (out_coords, nmap)
        else:
            out_coords, nmap = cached
    out = _gather_matmul(feats, nmap, conv.kernel)
    if bias is not None:
        out += bias
    return x.replace(out) if submanifold else SparseTensor(out, out_coords)


class SparseConv3d(nn.Module):
    """Drop-in for the official ``sp.SparseConv3d`` (torchsparse backend): keys ``conv.kernel``, ``conv.bias``."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int, int],
        stride: int | tuple[int, int, int] = 1,
        dilation: int = 1,
        padding: int | tuple[int, int, int] | None = 0,
        bias: bool = True,
        indice_key: str | None = None,
    ):
        super().__init__()
        self.conv = TorchsparseConv3d(
            in_channels, out_channels, kernel_size, stride, 0 if padding is None else padding, dilation, bias
        )

    def forward(self, x: SparseTensor) -> SparseTensor:
        return sparse_conv3d(x, self.conv)


class SparseLinear(nn.Linear):
    """``nn.Linear`` on the features (keys ``weight [out, in]``, ``bias``)."""

    def forward(self, x: SparseTensor) -> SparseTensor:  # type: ignore[override]
        return x.replace(super().forward(x.feats))


class SparseActivation(nn.Module):
    """Elementwise function on the features (SiLU, GELU, tanh...): no parameters."""

    def __init__(self, fn: nn.Module):
        super().__init__()
        self.fn = fn

    def forward(self, x: SparseTensor) -> SparseTensor:
        return x.replace(self.fn(x.feats))


def SparseSiLU() -> SparseActivation:  # noqa: N802 - named like the official layer
    return SparseActivation(nn.SiLU())


def SparseTanh() -> SparseActivation:  # noqa: N802
    return SparseActivation(nn.Tanh())


def SparseGELU(approximate: str = "none") -> SparseActivation:  # noqa: N802
    return SparseActivation(nn.GELU(approximate=approximate))


class SparseGroupNorm(nn.GroupNorm):
    """GroupNorm over all voxels of each batch element (statistics per element and group)."""

    def forward(self, x: SparseTensor) -> SparseTensor:  # type: ignore[override]
        feats = x.feats
        out = torch.empty_like(feats)
        c = feats.shape[1]
        g = self.num_groups
        for rows in x.layout():
            f = feats[rows]
            if f.shape[0] == 0:
                continue
            grouped = f.reshape(f.shape[0], g, c // g)
            var, mean = torch.var_mean(grouped, dim=(0, 2), unbiased=False, keepdim=True)
            normed = ((grouped - mean) * torch.rsqrt(var + self.eps)).reshape(f.shape[0], c)
            if self.affine:
                normed = normed * self.weight + self.bias
            out[rows] = normed
        return x.replace(out)


class SparseGroupNorm32(SparseGroupNorm):
    """SparseGroupNorm computed in float32, cast back to the input dtype."""

    def forward(self, x: SparseTensor) -> SparseTensor:  # type: ignore[override]
        y = super().forward(x.replace(x.feats.float()))
        return x.replace(y.feats.to(x.feats.dtype))


class SparseLayerNorm(nn.LayerNorm):
    """LayerNorm over channels, per voxel (the official per-batch loop computes the same thing)."""

    def forward(self, x: SparseTensor) -> SparseTensor:  # type: ignore[override]
        return x.replace(super().forward(x.feats))


class SparseLayerNorm32(SparseLayerNorm):
    def forward(self, x: SparseTensor) -> SparseTensor:  # type: ignore[override]
        return x.replace(
            F.layer_norm(x.feats.float(), self.normalized_shape, self.weight, self.bias, self.eps).to(x.feats.dtype)
        )


class SparseDownsample(nn.Module):
    """Pooling by ``factor`` like the official layer; output rows sorted by (b, x, y, z).

    Official quirk, kept for parity: ``torch.scatter_reduce`` runs with its default ``include_self=True`` on a
    zero-initialised output, so "mean" is ``sum(children) / (n_children + 1)`` (checked against the
    ``sparse_encoder_downblock`` fixture). Reduces in float64 like the official layer (fp16 sums overflow).
    Remembers the fine coords and the inverse index in the output's cache so ``SparseUpsample`` can undo it.
    """

    def __init__(self, factor: int | tuple[int, int, int], mode: str = "mean"):
        super().__init__()
        self.factor = _ntuple(factor, "factor")
        self.mode = mode

    def forward(self, x: SparseTensor) -> SparseTensor:
        key = ("downsample", self.factor)
        cached = x.cache.get(key)
        if cached is None:
            cached = downsample_coords(x.coords, self.factor)
            x.cache[key] = cached
        new_coords, inverse = cached
        c = x.feats.shape[1]
        n_out = new_coords.shape[0]
        if self.mode in ("mean", "sum"):
            # float64 sums accumulated in row chunks: no full float64 copy of a ~10 M-row input
            pooled = torch.zeros(n_out, c, dtype=torch.float64, device=x.device)
            for s in range(0, x.feats.shape[0], _POOL_CHUNK):
                pooled.index_add_(0, inverse[s : s + _POOL_CHUNK], x.feats[s : s + _POOL_CHUNK].double())
            if self.mode == "mean":
                counts = torch.bincount(inverse, minlength=n_out).to(torch.float64)
                pooled /= (counts + 1.0)[:, None]  # "+ 1": the zero the official scatter_reduce includes
        else:
            pooled = torch.zeros(n_out, c, dtype=torch.float64, device=x.device)
            pooled = pooled.scatter_reduce(
                0, inverse[:, None].expand(-1, c), x.feats.double(), reduce=self.mode, include_self=True
            )
        out = SparseTensor(pooled.to(x.feats.dtype), new_coords)
        out.cache[("upsample", self.factor)] = (x.coords, inverse, x.cache)
        return out


class SparseUpsample(nn.Module):
    """Nearest upsampling back onto the sites a paired ``SparseDownsample`` pooled from."""

    def __init__(self, factor: int | tuple[int, int, int]):
        super().__init__()
        self.factor = _ntuple(factor, "factor")

    def forward(self, x: SparseTensor) -> SparseTensor:
        cached = x.cache.get(("upsample", self.factor))
        if cached is None:
            raise ValueError("SparseUpsample must follow a SparseDownsample with the same factor")
        fine_coords, inverse, fine_cache = cached
        return SparseTensor(x.feats[inverse], fine_coords, fine_cache)


def subdivide_coords(coords: torch.Tensor) -> torch.Tensor:
    """Each row → 8 consecutive child rows ``2*xyz + d``, d in (0,0,0), (0,0,1), (0,1,0), ... (z fastest)."""
    d = torch.tensor([[0, i >> 2 & 1, i >> 1 & 1, i & 1] for i in range(8)], dtype=coords.dtype, device=coords.device)
    parent = coords.clone()
    parent[:, 1:] *= 2
    return (parent[:, None, :] + d[None]).reshape(-1, 4)


class SparseSubdivide(nn.Module):
    """Split every voxel into its 8 children at twice the resolution, copying features (official order)."""

    def forward(self, x: SparseTensor) -> SparseTensor:
        feats = x.feats.repeat_interleave(8, dim=0)
        return SparseTensor(feats, subdivide_coords(x.coords))
