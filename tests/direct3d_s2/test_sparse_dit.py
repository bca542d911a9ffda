"""SparseDiT: official state-dict manifests, SSA compression blocks, a brute-force reference forward, CFG batches."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from consistent3dgen.generators.direct3d_s2 import ssa
from consistent3dgen.generators.direct3d_s2.sparse_conv import SparseConv3d, SparseGroupNorm32, SparseSiLU
from consistent3dgen.generators.direct3d_s2.sparse_dit import SparseDiT
from consistent3dgen.generators.direct3d_s2.sparse_tensor import SparseTensor


@pytest.mark.parametrize("version", ["v1_0", "v1_1"])
@pytest.mark.parametrize("stage", ["512", "1024"])
def test_full_size_state_dict_matches_official_manifest(version, stage, fixture_file):
    yaml = pytest.importorskip("yaml")
    cfg = yaml.safe_load(fixture_file("direct3d_s2", f"configs_{version}.yaml").read_text())
    params = cfg[f"sparse_dit_{stage}"]["params"]
    with torch.device("meta"):
        model = SparseDiT(**params)
    got = {k: [list(v.shape), str(v.dtype).removeprefix("torch.")] for k, v in model.state_dict().items()}
    expected = json.loads(fixture_file("direct3d_s2", f"{version}_model_sparse_{stage}_dit.json").read_text())
    assert list(got) == list(expected)  # same keys in the same order
    assert got == expected  # same shapes and (fp16 conversion) dtypes
    summary = json.loads(fixture_file("direct3d_s2", "keys_summary.json").read_text())
    summary = summary[f"{version}_model_sparse_{stage}_dit.json"]
    assert sum(p.numel() for p in model.parameters()) == summary["n_parameters"]


def _random_tokens(counts, extent, channels, gen):
    rows = []
    for b, n in enumerate(counts):
        flat = torch.randperm(extent**3, generator=gen)[:n].sort().values
        xyz = torch.stack([flat // extent**2, (flat // extent) % extent, flat % extent], 1)
        rows.append(torch.cat([torch.full((n, 1), b), xyz], 1))
    coords = torch.cat(rows).int()
    return SparseTensor(torch.randn(coords.shape[0], channels, generator=gen), coords)


def test_official_pooling_counts_the_initial_zero():
    feats = torch.tensor([[2.0], [4.0], [6.0], [5.0]])
    coords = torch.tensor([[0, 0, 0, 0], [0, 1, 1, 1], [0, 2, 0, 0], [1, 0, 0, 1]], dtype=torch.int32)
    out = ssa.official_mean_pool(SparseTensor(feats, coords), 2)
    assert out.coords.tolist() == [[0, 0, 0, 0], [0, 1, 0, 0], [1, 0, 0, 0]]
    assert out.feats[:, 0].tolist() == [6.0 / 3, 6.0 / 2, 5.0 / 2]  # sum / (n + 1), as the official layer


def test_official_pooling_reproduces_official_down_block_fixture(fixture_file):
    """The official encoder down block (pool + convs + 1x1 skip) only matches with the (n + 1) pooling."""
    safetensors = pytest.importorskip("safetensors.torch")
    t = safetensors.load_file(str(fixture_file("direct3d_s2", "sparse_encoder_downblock.safetensors")))
    act = torch.nn.Sequential(SparseGroupNorm32(32, 32), SparseSiLU())
    body = torch.nn.Sequential(
        SparseConv3d(32, 64, 3, padding=1), SparseGroupNorm32(32, 64), SparseSiLU(), SparseConv3d(64, 64, 3, padding=1)
    )
    skip = SparseConv3d(32, 64, 1)
    block = torch.nn.ModuleDict({"act_layers": act, "out_layers": body, "skip_connection": skip})
    block.load_state_dict({k.removeprefix("state."): v for k, v in t.items() if k.startswith("state.")})
    x = SparseTensor(t["input.feats"], t["input.coords"])
    with torch.no_grad():
        h = body(ssa.official_mean_pool(act(x), 2))
        y = h.feats + skip(ssa.official_mean_pool(x, 2)).feats
    assert torch.equal(h.coords, t["output.coords"])
    torch.testing.assert_close(y, t["output.feats"], atol=1e-5, rtol=1e-5)


def test_v1_compression_block_by_hand():
    gen = torch.Generator().manual_seed(0)
    x = _random_tokens([40, 25], 8, 32, gen)
    block = ssa.SparseDownBlock3dV1(32, 32, factor=4)
    with torch.no_grad():
        y = block(x)
        h = F.silu(x.feats @ block.act_layers[0].conv.kernel + block.act_layers[0].conv.bias)
    parent = torch.cat([x.coords[:, :1], x.coords[:, 1:] // 4], 1)
    for r, cell in enumerate(y.coords):
        members = (parent == cell).all(1)
        torch.testing.assert_close(y.feats[r], h[members].sum(0) / (members.sum() + 1), atol=1e-6, rtol=1e-6)


def _tiny(version: str, **over) -> SparseDiT:
    params = dict(
        resolution=16,
        in_channels=4,
        out_channels=4,
        model_channels=64,
        cond_channels=64 if version == "v1_0" else 48,
        num_blocks=2,
        num_heads=4,
        num_kv_heads=2,  # head_dim 16 → 32 kv channels (v2's GroupNorm32 needs 32 groups)
        compression_block_size=2 if version == "v1_0" else 4,
        selection_block_size=4,
        topk=3 if version == "v1_0" else 2,
        compression_version="v2" if version == "v1_0" else "v1",
        sparse_conditions=version == "v1_0",
        factor=0.5,
        qk_rms_norm=True,
        use_shift=True,
        window_size=8,
    )
    params.update(over)
    torch.manual_seed(1234)
    model = SparseDiT(**params).eval()
    with torch.no_grad():  # zero-initialised layers would hide most of the wiring
        for name, p in model.named_parameters():
            if p.ndim == 1 and name.endswith(("weight", "gamma")):
                p.copy_(1 + 0.1 * torch.randn_like(p))
            elif p.ndim == 1:
                p.copy_(0.1 * torch.randn_like(p))
            else:
                p.copy_(torch.randn_like(p) / math.sqrt(p.shape[-1] if "kernel" not in name else p.shape[-2]))
    return model


def _dense_attention(q, k, v, mask):
    """(Nq, Hq, D) x (Nk, Hkv, D) with mask (Hkv, Nq, Nk); GQA head h → kv head h // G. float64."""
    group = q.shape[1] // k.shape[1]
    s = torch.einsum("qhd,khd->hqk", q.double(), k.double().repeat_interleave(group, 1)) / math.sqrt(q.shape[-1])
    s = s.masked_fill(~mask.repeat_interleave(group, 0), float("-inf"))
    p = s.softmax(-1)
    return torch.einsum("hqk,khd->qhd", p, v.double().repeat_interleave(group, 1)), p


def _reference_ssa(
    attn: ssa.SpatialSparseAttention, feats: torch.Tensor, coords: torch.Tensor, shift: int
) -> torch.Tensor:
    """SSA written as three dense masked attentions (float64), block choice by brute force."""
    n, hq, hkv, d = feats.shape[0], attn.num_q_heads, attn.num_kv_heads, attn.head_dim
    q = (feats @ attn.proj_q.weight.T).view(n, hq, d)
    k = feats @ attn.proj_k.weight.T
    v = feats @ attn.proj_v.weight.T
    cbs, sbs = attn.compression_block_size, attn.selection_block_size
    pe = torch.stack([attn.intra_block_pe[tuple(c)] for c in (coords[:, 1:].long() % cbs).tolist()])
    ck = attn.compression_key(SparseTensor(k + pe, coords))
    cv = attn.compression_value(SparseTensor(v, coords))
    ccoords = ck.coords
    k, v = k.view(n, hkv, d), v.view(n, hkv, d)
    ckf, cvf = ck.feats.view(-1, hkv, d), cv.feats.view(-1, hkv, d)
    same = (coords[:, :1] == ccoords[:, 0]).unsqueeze(0).expand(hkv, -1, -1)
    out_c, probs = _dense_attention(q, ckf, cvf, same)
    scores = probs.view(hkv, hq // hkv, n, -1).sum(1)  # (Hkv, N, M)
    tok_block = [(int(c[0]), *(int(x) // sbs for x in c[1:])) for c in coords]
    cmp_block = [(int(c[0]), *(int(x) // (sbs // cbs) for x in c[1:])) for c in ccoords]
    names = sorted(set(tok_block))
    sel = torch.zeros(hkv, n, n, dtype=torch.bool)
    for g in range(hkv):
        for i in range(n):
            own = [nm for nm in names if nm[0] == int(coords[i, 0])]
            s = torch.stack([scores[g, i, [j for j, cb in enumerate(cmp_block) if cb == nm]].sum() for nm in own])
            chosen = {own[j] for j in s.topk(min(attn.topk, len(own))).indices.tolist()}
            sel[g, i] = torch.tensor([tb in chosen for tb in tok_block])
    out_s, _ = _dense_attention(q, k, v, sel)
    sh, ws = shift, attn.window_size
    win = [(int(c[0]), *((int(x) + sh) // ws for x in c[1:])) for c in coords]
    wmask = torch.tensor([[a == b for b in win] for a in win]).unsqueeze(0).expand(hkv, -1, -1)
    out_w, _ = _dense_attention(q, k, v, wmask)
    gate = torch.sigmoid(feats.double() @ attn.gate[0].weight.double().T)[:, :, None]
    out = gate[:, 0:1] * out_c + gate[:, 1:2] * out_s + gate[:, 2:3] * out_w
    return out.reshape(n, -1).float() @ attn.proj_o.weight.T


def _reference_dit(model: SparseDiT, x: SparseTensor, t: torch.Tensor, cond) -> torch.Tensor:
    """The official SparseDiT.forward written out token by token (float32, dense masked attention)."""
    coords = x.coords
    h = x.feats @ model.input_layer.weight.T + model.input_layer.bias
    h = h + model.pos_embedder(coords[:, 1:], factor=model.factor)
    t_emb = model.t_embedder(t)
    if isinstance(cond, SparseTensor):
        c = cond.feats @ model.cond_proj.weight.T + model.cond_proj.bias
        c = c + model.pos_embedder_cond(cond.coords[:, 1:])
        ctx = [c[cond.coords[:, 0] == b] for b in range(t.shape[0])]
    else:
        ctx = list(cond)
    batch = coords[:, 0].long()
    for i, blk in enumerate(model.blocks):
        mod = blk.adaLN_modulation(t_emb)[batch]
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = mod.chunk(6, dim=1)
        a = F.layer_norm(h, h.shape[-1:], eps=1e-6) * (1 + scale_msa) + shift_msa
        h = h + _reference_ssa(blk.self_attn, a, coords, shift=8 // 2 * (i % 2)) * gate_msa
        a = F.layer_norm(h, h.shape[-1:], blk.norm2.weight, blk.norm2.bias, eps=1e-6)
        ca = blk.cross_attn
        heads, hd = ca.num_heads, ca.head_dim
        out = torch.empty_like(h)
        for b in range(t.shape[0]):
            rows = batch == b
            qb = (a[rows] @ ca.to_q.weight.T + ca.to_q.bias).view(-1, heads, hd)
            kv = (ctx[b] @ ca.to_kv.weight.T + ca.to_kv.bias).view(-1, 2, heads, hd)
            w = torch.einsum("qhd,khd->hqk", qb, kv[:, 0]).div(math.sqrt(hd)).softmax(-1)
            out[rows] = torch.einsum("hqk,khd->qhd", w, kv[:, 1]).reshape(qb.shape[0], -1)
        h = h + out @ ca.to_out.weight.T + ca.to_out.bias
        a = F.layer_norm(h, h.shape[-1:], eps=1e-6) * (1 + scale_mlp) + shift_mlp
        h = h + blk.mlp(a) * gate_mlp
    h = F.layer_norm(h, h.shape[-1:], eps=1e-5)
    return h @ model.out_layer.weight.T + model.out_layer.bias


def _inputs(version: str, counts, gen):
    x = _random_tokens(counts, 16, 4, gen)
    b = len(counts)
    t = torch.tensor([900.0, 250.0][:b])
    if version == "v1_0":
        n_cond = 7
        cond_coords = torch.cat(
            [torch.cat([torch.full((n_cond, 1), i), torch.randint(0, 37, (n_cond, 3))], 1) for i in range(b)]
        )
        cond = SparseTensor(torch.randn(b * n_cond, 64, generator=gen), cond_coords.int())
    else:
        cond = torch.randn(b, 6, 48, generator=gen)
    return x, t, cond


@pytest.mark.parametrize("version", ["v1_0", "v1_1"])
def test_forward_matches_brute_force_reference(version):
    model = _tiny(version)
    gen = torch.Generator().manual_seed(7)
    x, t, cond = _inputs(version, [70, 45], gen)
    with torch.no_grad():
        out = model(x, t, cond)
        ref = _reference_dit(model, x, t, cond)
    assert torch.equal(out.coords, x.coords)
    assert out.feats.shape == (115, 4)
    assert ref.abs().mean() > 0.1  # the check is not vacuous
    torch.testing.assert_close(out.feats, ref, atol=2e-4, rtol=2e-4)


def test_cfg_batch_of_two_equals_two_single_calls():
    model = _tiny("v1_1")
    gen = torch.Generator().manual_seed(3)
    x, _, cond = _inputs("v1_1", [60], gen)
    t = torch.tensor([640.0])
    uncond = torch.zeros_like(cond)
    pair = SparseTensor(
        torch.cat([x.feats, x.feats]), torch.cat([x.coords, x.coords.clone().index_fill_(1, torch.tensor([0]), 1)])
    )
    with torch.no_grad():
        both = model(pair, t, torch.cat([cond, uncond]))  # t (1,) broadcast to both elements
        single_cond = model(x, t, cond)
        single_uncond = model(x, t, uncond)
    torch.testing.assert_close(both.feats[:60], single_cond.feats, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(both.feats[60:], single_uncond.feats, atol=1e-5, rtol=1e-5)
    assert (single_cond.feats - single_uncond.feats).abs().max() > 1e-3  # the condition matters


def test_sparse_condition_batch_of_two():
    model = _tiny("v1_0")
    gen = torch.Generator().manual_seed(5)
    x, t, cond = _inputs("v1_0", [50, 50], gen)
    with torch.no_grad():
        out = model(x, t, cond)
        first = model(SparseTensor(x.feats[:50], x.coords[:50]), t[:1], SparseTensor(cond.feats[:7], cond.coords[:7]))
    torch.testing.assert_close(out.feats[:50], first.feats, atol=1e-5, rtol=1e-5)


def test_bfloat16_close_to_float32():
    model = _tiny("v1_1")
    gen = torch.Generator().manual_seed(9)
    x, t, cond = _inputs("v1_1", [80], gen)
    with torch.no_grad():
        ref = model(x, t, cond).feats
        model.convert_to(torch.bfloat16)
        assert model.blocks[0].self_attn.proj_q.weight.dtype == torch.bfloat16
        assert model.blocks[0].self_attn.compression_key.act_layers[0].conv.kernel.dtype == torch.bfloat16
        assert model.blocks[0].norm2.weight.dtype == torch.float32  # norms stay float32, as the official
        out = model(x, t, cond).feats
    assert out.dtype == torch.float32  # output follows the input dtype
    # mean, not max: a bf16 rounding can flip a discrete top-k block choice for a few tokens
    assert (out - ref).abs().mean() < 0.03 * ref.abs().mean()


def test_bad_inputs_raise_value_error():
    model = _tiny("v1_1")
    gen = torch.Generator().manual_seed(2)
    x, t, cond = _inputs("v1_1", [30, 20], gen)
    with pytest.raises(ValueError, match="condition sets"):
        model(x, t, cond[:1])
    with pytest.raises(ValueError, match="timesteps"):
        model(x, torch.tensor([1.0, 2.0, 3.0]), cond)
    shuffled = SparseTensor(x.feats.flip(0), x.coords.flip(0))
    with pytest.raises(ValueError, match="grouped by batch"):
        model(shuffled, t, cond)
    with pytest.raises(ValueError, match="SparseTensor"):
        _tiny("v1_0")(x, t, torch.randn(2, 5, 64))


def _with_dense_max_tokens(model: SparseDiT, value: int) -> SparseDiT:
    for m in model.modules():
        if isinstance(m, ssa.SpatialSparseAttention):
            m.dense_max_tokens = value
    return model


@pytest.mark.parametrize("counts", [[110], [70, 45]])
@pytest.mark.parametrize("version", ["v1_0", "v1_1"])
def test_fast_path_forward_equals_chunked_forward(version, counts):
    gen = torch.Generator().manual_seed(21)
    x, t, cond = _inputs(version, counts, gen)
    t = t[: len(counts)]
    with torch.no_grad():
        fast = _tiny(version)(x, t, cond).feats
        chunked = _with_dense_max_tokens(_tiny(version, chunk_bytes=4096), 0)(x, t, cond).feats
    assert _tiny(version).blocks[0].self_attn.dense_max_tokens >= max(counts)  # the default takes the fast path
    assert fast.abs().mean() > 0.1
    torch.testing.assert_close(fast, chunked, atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize("version", ["v1_0", "v1_1"])
def test_backward_reaches_every_parameter_and_paths_agree(version):
    """Training needs the whole forward differentiable: every weight gets a finite, non-zero gradient, the same on
    the fast and the chunked path."""
    gen = torch.Generator().manual_seed(22)
    x, t, cond = _inputs(version, [70, 45], gen)
    grads = []
    for dense_max_tokens in (10**6, 0):
        model = _with_dense_max_tokens(_tiny(version).train(), dense_max_tokens)
        out = model(x, t, cond).feats
        out.square().mean().backward()
        grads.append({k: p.grad for k, p in model.named_parameters()})
    fast, chunked = grads
    for name, g in fast.items():
        assert g is not None and torch.isfinite(g).all() and g.abs().max() > 0, name
        torch.testing.assert_close(g, chunked[name], atol=1e-4, rtol=1e-3, msg=name)
