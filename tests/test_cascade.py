"""Stage runner with small fake stages: token union, ordering, target alignment, re-normalisation, dense SDEdit
start, guided sparse stages, fusion, free space."""

import numpy as np
import pytest
import torch

from consistent3dgen import cascade
from consistent3dgen.cascade import (
    Condition,
    SparseStageConfig,
    align_target,
    clamp_free_space,
    fuse_sdf,
    mesh_to_cells,
    occupancy_to_cells,
    order_tokens,
    run_dense_stage,
    run_sparse_stages,
)
from consistent3dgen.generators.base import SparseLatent
from consistent3dgen.geometry.frames import CanonicalFrame, Similarity, normalize_to_cube
from consistent3dgen.geometry.freespace import free_space_mask
from consistent3dgen.geometry.voxels import SparseVoxels, points_to_voxels, pool_occupancy
from consistent3dgen.pointmap import PointMap
from consistent3dgen.sampling import FlowMatchSchedule


def transform_voxels(voxels: SparseVoxels, similarity: Similarity) -> SparseVoxels:
    """Voxel centres moved by a similarity, re-voxelised at the same resolution (features follow)."""
    centres = similarity.apply(voxels.centers())
    inside = (np.abs(centres) < 1).all(axis=1)
    coords = points_to_voxels(centres[inside], voxels.resolution)
    _, first = np.unique(SparseVoxels(coords, voxels.resolution).keys, return_index=True)
    feats = None if voxels.feats is None else voxels.feats[inside][first]
    return SparseVoxels(coords[first], voxels.resolution, feats)


def block_order(coords: torch.Tensor, bs: int = 4) -> torch.Tensor:
    c = coords.long()
    keys = [c[:, 2] % bs, c[:, 1] % bs, c[:, 0] % bs, c[:, 2] // bs, c[:, 1] // bs, c[:, 0] // bs]
    return torch.from_numpy(np.lexsort([k.numpy() for k in keys]))


class FakeSparse:
    """Velocity of data at 0, ``v = x/σ`` (Euler lands every token on 0 exactly);
    decode = one SDF voxel per token with value = mean feature."""

    latent_factor, latent_channels = 2, 3

    def __init__(self, resolution: int) -> None:
        self.resolution = resolution
        self.seen_coords: list[np.ndarray] = []

    def token_order(self, coords):
        return block_order(coords)

    def velocity(self, x, coords, t, cond):
        self.seen_coords.append(coords.numpy().copy())
        return x / (t.float() / 1000)

    def encode_sdf(self, sdf):
        return SparseLatent.from_voxels(sdf.downsample(2))

    def decode_sdf(self, latent):
        v = latent.to_voxels()
        return SparseVoxels(v.coords * 2, self.resolution, v.feats.mean(1, keepdims=True))


class FakeDense:
    occupancy_resolution, latent_shape = 8, (2, 4, 4, 4)

    def encode_occupancy(self, occ):
        pooled = torch.nn.functional.max_pool3d(occ, 2)
        return torch.cat([pooled * 2 - 1, pooled], 1)

    def decode_occupancy(self, latent):
        return torch.nn.functional.interpolate(latent[:, :1] * 10, scale_factor=2)

    def velocity(self, x, t, cond):
        return torch.zeros_like(x)


def test_occupancy_union_threshold_and_free_cells():
    prob = np.zeros((8, 8, 8), np.float32)
    prob[1, 1, 1], prob[2, 2, 2], prob[5, 5, 5] = 0.5, 0.05, 0.9
    fg = SparseVoxels([[3, 3, 3], [5, 5, 5]], 8)
    free = SparseVoxels([[1, 1, 1], [3, 3, 3]], 8)
    cells = occupancy_to_cells(prob, 0.1, 8, seen_cells=fg, free_cells=free)
    # (1,1,1) freed, (2,2,2) below threshold, (3,3,3) free but foreground → kept, (5,5,5) in both once
    assert cells.coords.tolist() == [[3, 3, 3], [5, 5, 5]]
    coarse = occupancy_to_cells(prob, 0.1, 4)
    assert coarse.coords.tolist() == [[0, 0, 0], [2, 2, 2]]
    assert pool_occupancy(np.ones((2, 2, 2), bool), 4).sum() == 64
    # grown by one cell (26-connected): (5,5,5) brings its 3³ block, (1,1,1) its block minus the free cells, the
    # grid's edge clips nothing here; the free cell (3,3,3) stays out of the growth but in as a seen cell
    grown = occupancy_to_cells(prob, 0.1, 8, seen_cells=fg, free_cells=free, dilation=1)
    block = {(x, y, z) for c in ((1, 1, 1), (5, 5, 5)) for x in range(c[0] - 1, c[0] + 2)
             for y in range(c[1] - 1, c[1] + 2) for z in range(c[2] - 1, c[2] + 2)}
    assert {tuple(c) for c in grown.coords.tolist()} == (block - {(1, 1, 1)}) | {(3, 3, 3)}


def test_order_tokens_and_alignment():
    rng = np.random.default_rng(0)
    coords = np.unique(rng.integers(0, 8, (60, 3)), axis=0)
    cells = order_tokens(FakeSparse(16), SparseVoxels(rng.permutation(coords), 8))
    c = cells.coords
    block = [tuple(r) for r in np.concatenate([c // 4, c % 4], 1)]
    assert block == sorted(block) and len(c) == len(coords)
    # target covering half of the tokens, in another order, with one coordinate that is not a token
    tgt_coords = np.concatenate([c[::2][::-1], [[7, 7, 7]] if not (c == 7).all(1).any() else c[:0]])
    tgt = SparseLatent(torch.as_tensor(tgt_coords, dtype=torch.int32),
                       torch.as_tensor(tgt_coords.sum(1, keepdims=True).repeat(3, 1), dtype=torch.float32), 8)
    feats, mask = align_target(c, tgt)
    assert mask.tolist() == [1.0 if i % 2 == 0 else 0.0 for i in range(len(c))]
    assert torch.equal(feats[::2, 0], torch.as_tensor(c[::2].sum(1), dtype=torch.float32))
    assert torch.all(feats[1::2] == 0)


def test_similarity_and_renormalisation():
    a, b = Similarity(2.0, (0.1, 0.0, -0.2)), normalize_to_cube(np.array([[0, 0, 0], [0.5, 0.2, 0.1]]))
    p = np.random.default_rng(1).normal(size=(5, 3))
    assert np.allclose(a.then(b).apply(p), b.apply(a.apply(p)), atol=1e-5)
    assert np.allclose(a.inverse().apply(a.apply(p)), p, atol=1e-5)
    q = b.apply(np.array([[0, 0, 0], [0.5, 0.2, 0.1]]))
    assert np.allclose(q[:, 0], [-0.95, 0.95], atol=1e-6) and np.allclose(q.mean(0), 0, atol=1e-6)
    # a target voxel set follows the same similarity as the mesh
    vox = SparseVoxels([[4, 4, 4], [5, 4, 4]], 16, np.array([[1.0], [2.0]], np.float32))
    moved = transform_voxels(vox, Similarity(1.0, (0.25, 0.0, 0.0)))  # +0.25 = +2 voxels at 16³
    assert moved.coords.tolist() == [[6, 4, 4], [7, 4, 4]] and moved.feats[:, 0].tolist() == [1.0, 2.0]


def test_mesh_to_cells_within_distance():
    # a square at z = 0.01 spanning [-0.5, 0.5]² at 32³ (voxel 1/16), latent factor 4
    v = np.array([[-0.5, -0.5, 0.01], [0.5, -0.5, 0.01], [0.5, 0.5, 0.01], [-0.5, 0.5, 0.01]], np.float32)
    f = np.array([[0, 1, 2], [0, 2, 3]])
    cells = mesh_to_cells(v, f, 32, 4, distance=2.0)
    assert cells.resolution == 8
    assert set(cells.coords[:, 2].tolist()) == {3, 4}  # z = 0.01 lies near the boundary of cells 3 and 4
    assert cells.coords[:, :2].min() == 1 and cells.coords[:, :2].max() == 6


def test_dense_sdedit_start_and_free_space():
    stage = FakeDense()
    fg = np.zeros((8, 8, 8), bool)
    fg[2:4, 2:4, 2:4] = True
    free = np.zeros((8, 8, 8), bool)
    free[:, :, 3] = True  # overlaps the foreground, which must survive
    sched = FlowMatchSchedule.shifted(10, 6.0)
    # zero velocity + tiny SDEdit strength: the result stays close to the encoded foreground
    res = run_dense_stage(stage, Condition(None), sched, start=fg, sdedit_strength=0.02, free_space=free,
                          generator=torch.Generator().manual_seed(0), progress=False)
    target = stage.encode_occupancy(torch.as_tensor(fg, dtype=torch.float32)[None, None])
    assert (res.latent - target).abs().max() < 0.1
    occupied = res.probability.numpy() > 0.5
    assert np.array_equal(occupied, fg)
    free2 = free.copy()
    free2[2, 2, 2] = False
    res2 = run_dense_stage(stage, Condition(None), sched, start=None, free_space=free2, progress=False,
                           generator=torch.Generator().manual_seed(0))
    assert float(res2.probability[free2].max()) == 0.0


class FakeSeen:
    """The seen side as the cascade asks for it: targets (the seen cells moved by each stage's frame), nothing
    to fuse, no free space; records the frames it was asked about."""

    def __init__(self, cells: SparseVoxels) -> None:
        self.cells, self.frames = cells, []

    def target(self, index, sim):
        self.frames.append(sim)
        return SparseLatent.from_voxels(transform_voxels(self.cells, sim))

    def fusion_sdf(self, index, sim, level=None):
        return None

    def free_voxels(self, points, sim):
        return None


def test_sparse_stages_guided_and_renormalised(monkeypatch):
    s1, s2 = FakeSparse(16), FakeSparse(16)
    fg_cells = SparseVoxels([[2, 2, 2], [3, 2, 2]], 8, np.full((2, 3), 0.5, np.float32))
    seen = FakeSeen(fg_cells)

    def next_stage_cells(sdf, stage, mc_level, distance):  # a small square around the decoded voxels
        c = sdf.centers().mean(0)
        v = (c + np.array([[-0.3, -0.3, 0], [0.3, -0.3, 0], [0.3, 0.3, 0], [-0.3, 0.3, 0]])).astype(np.float32)
        renorm = normalize_to_cube(v)
        f = np.array([[0, 1, 2], [0, 2, 3]])
        return mesh_to_cells(renorm.apply(v), f, stage.resolution, stage.latent_factor, distance), renorm

    monkeypatch.setattr(cascade, "next_stage_cells", next_stage_cells)
    first = fg_cells.union(SparseVoxels([[5, 5, 5]], 8))
    cfg = SparseStageConfig(FlowMatchSchedule.shifted(8, 6.0), guidance_strength=1.0, guidance_variant="replace",
                            cell_distance=2.0)
    out = run_sparse_stages([s1, s2], [cfg, cfg], first, Condition(None), seen,
                            generator=torch.Generator().manual_seed(0), progress=False)
    lat1, lat2 = out.latents
    # stage 1: guided tokens land on the target; the unguided token goes to the model's data, 0
    feats, mask = align_target(lat1.coords.numpy(), SparseLatent.from_voxels(fg_cells))
    assert torch.allclose(lat1.feats[mask > 0], feats[mask > 0], atol=1e-5)
    assert lat1.feats[mask == 0].abs().max() < 1e-6
    # tokens went to the model in block order
    c = s1.seen_coords[0]
    block = [tuple(r) for r in np.concatenate([c // 4, c % 4], 1)]
    assert block == sorted(block)
    # stage 2 in a re-normalised frame: its targets are the seen cells moved by that frame, and they are tokens
    assert out.frame == seen.frames[-1] and out.frame != Similarity()
    assert len(out.targets) == 2
    moved = transform_voxels(fg_cells, out.frame)
    rows = SparseVoxels(lat2.coords.numpy(), 8).lookup(moved.coords)
    assert (rows >= 0).all() and torch.allclose(lat2.feats[torch.as_tensor(rows)], torch.tensor(0.5), atol=1e-5)
    with pytest.raises(ValueError):
        run_sparse_stages([s1], [], first, Condition(None), seen)


def test_fusion_and_free_space_clamp():
    dec = SparseVoxels([[0, 0, 0], [1, 0, 0], [2, 0, 0]], 4, np.array([[0.5], [-0.2], [0.1]], np.float32))
    seen = SparseVoxels([[1, 0, 0]], 4, np.array([[0.3]], np.float32))
    assert fuse_sdf(dec, seen, 1.0).feats[:, 0].tolist() == pytest.approx([0.5, 0.3, 0.1])
    assert fuse_sdf(dec, seen, 0.5).feats[1, 0] == pytest.approx(0.05)
    assert clamp_free_space(dec, np.array([False, True, False])).feats[:, 0].tolist() == pytest.approx([0.5, 1, 0.1])


def test_free_space_mask_geometry():
    h = w = 20
    k = np.array([[20.0, 0, 10], [0, 20.0, 10], [0, 0, 1]])
    ys, xs = np.mgrid[0:h, 0:w]
    depth = np.full((h, w), 2.0, np.float32)
    pts = np.stack([(xs + 0.5 - 10) / 20 * depth, (ys + 0.5 - 10) / 20 * depth, depth], -1).astype(np.float32)
    mask = np.zeros((h, w), bool)
    mask[5:15, 5:15] = True
    pm = PointMap(pts, mask=mask, intrinsics=k)
    frame = CanonicalFrame(center=(0.0, 0.0, 2.2), scale=2.0)
    # camera-frame probes → canonical: in front of the surface, behind it, outside the silhouette, outside image
    cam = np.array([[0.0, 0.0, 1.5], [0.0, 0.0, 2.4], [0.8, 0.0, 2.4], [5.0, 0.0, 2.0]])
    canon = frame.scale * (cam - np.array(frame.center)) @ frame.R.T
    free = free_space_mask(canon, pm, frame, margin=0.1, mask_dilation_px=1)
    assert free.tolist() == [True, False, True, False]
    # whole cells: the margin holds for the silhouette too. Margin 0.5 canonical = 0.25 camera units = 2.08 px at
    # depth 2.4; behind the surface, 1 px and 4 px outside the dilated mask (its last column is 15)
    cam = np.array([[(16 - 10) * 2.4 / 20, 0.0, 2.4], [(19 - 10) * 2.4 / 20, 0.0, 2.4]])
    canon = frame.scale * (cam - np.array(frame.center)) @ frame.R.T
    assert free_space_mask(canon, pm, frame, margin=0.5, mask_dilation_px=1).tolist() == [True, True]
    assert free_space_mask(canon, pm, frame, margin=0.5, mask_dilation_px=1, silhouette_margin=True).tolist() == [
        False, True]


def test_a_signed_field_resamples_into_the_next_stages_frame():
    """A sphere's signed field at 32³, resampled to the 64³ voxels of a re-normalised frame, equals the sphere's
    field computed there. Trilinear interpolation of a distance field errs by its curvature: about 3·h²/(8·R) voxels
    for spacing h = 1 and radius R = 8 voxels at 32³, i.e. 0.047 / 4 (band) · 3 (1.5 × 2, the next stage's voxels
    per previous voxel) ≈ 0.035 of the band at 64³."""
    from consistent3dgen.cascade import resample_signed_field
    from consistent3dgen.geometry.frames import Similarity
    from consistent3dgen.geometry.voxels import SparseVoxels, all_voxels, voxel_centers

    def sphere_field(res, sim):
        coords = all_voxels(res)
        centers = voxel_centers(coords, res).astype(np.float64)
        d = (np.linalg.norm((centers - np.asarray(sim.offset)) / sim.scale, axis=1) - 0.5) * sim.scale
        return coords, np.clip(d * res / 2 / 4.0, -1.0, 1.0)  # band 4 voxels

    coords, values = sphere_field(32, Similarity())
    band = np.abs(values) < 1
    sdf = SparseVoxels(coords[band], 32, values[band].astype(np.float32)[:, None])
    sim = Similarity(1.5, (0.1, 0.0, -0.05))
    coords2, values2 = sphere_field(64, sim)
    cells = SparseVoxels(coords2[np.abs(values2) < 1], 64).downsample(8)
    out = resample_signed_field(sdf, sim, 64, cells)
    truth = values2[SparseVoxels(coords2, 64).lookup(out.coords)]
    assert len(out) > 0.95 * (np.abs(values2) < 1).sum()  # the band, but for voxels no previous voxel reaches
    assert np.abs(out.feats[:, 0] - truth).max() < 0.04
    assert np.all(np.abs(out.feats[:, 0]) < 1) and out.resolution == 64


def test_a_signed_stage_field_comes_out_with_its_inside_filled():
    # a stage whose decoder gives a signed ball's band cells (deep inside absent): the cascade's field has them
    # inside, so its mesh is one sphere, not a sphere and an inner shell
    from consistent3dgen.geometry.marching_cubes import sparse_marching_cubes
    from consistent3dgen.geometry.mesh_ops import mesh_pieces

    res, factor, band = 64, 4, 2.0
    coords = np.argwhere(np.ones((res,) * 3, bool))
    d_vox = (np.linalg.norm(-1.0 + (2.0 * coords + 1.0) / res, axis=1) - 0.7) * res / 2
    cells = np.unique(coords[np.abs(d_vox) < band] // factor, axis=0)
    keep = np.isin(SparseVoxels(coords // factor, res // factor).keys, SparseVoxels(cells, res // factor).keys)
    ball = SparseVoxels(coords[keep], res, np.clip(d_vox[keep] / band, -1, 1)[:, None].astype(np.float32))

    class BallStage(FakeSparse):
        latent_factor = factor

        def decode_sdf(self, latent):
            return ball

    class NoView(FakeSeen):
        def target(self, index, sim):
            return None

    assert mesh_pieces(*sparse_marching_cubes(ball))["pieces"] == 2
    out = run_sparse_stages([BallStage(res)], [SparseStageConfig(FlowMatchSchedule.shifted(2, 1.0))],
                            SparseVoxels(cells, res // factor), Condition(None), NoView(None), progress=False,
                            generator=torch.Generator().manual_seed(0))
    assert len(out.sdf) > len(ball)
    assert mesh_pieces(*sparse_marching_cubes(out.sdf))["pieces"] == 1


def test_dense_candidates_keep_the_sample_that_agrees_best_with_the_view():
    from consistent3dgen.cascade import view_agreement
    from consistent3dgen.sampling import initial_noise

    stage = FakeDense()  # zero velocity: each sample is its own starting noise, decoded by sign
    fg = np.zeros((8, 8, 8), bool)
    fg[2:6, 2:6, 4:6] = True
    free = np.zeros((8, 8, 8), bool)
    free[:, :, 6:] = True
    sched = FlowMatchSchedule.shifted(4, 1.0)
    gen = torch.Generator().manual_seed(3)
    noises = [initial_noise((1, *stage.latent_shape), gen) for _ in range(6)]
    scores = [view_agreement(torch.sigmoid(stage.decode_occupancy(n))[0, 0], fg, free) for n in noises]
    assert len(set(scores)) > 1  # the candidates differ in how well they fit
    run = {k: run_dense_stage(stage, Condition(None), sched, start=fg, free_space=free, candidates=k,
                              generator=torch.Generator().manual_seed(3), progress=False) for k in (1, 6)}
    assert torch.equal(run[1].latent, noises[0])
    assert torch.equal(run[6].latent, noises[int(np.argmax(scores))])
    # the agreement: all of the seen occupancy covered, half of the occupied voxels in free space
    occ = torch.zeros(8, 8, 8)
    occ[2:6, 2:6, 4:8] = 1.0
    assert view_agreement(occ, fg, free) == pytest.approx(1.0 - 0.5)
    assert view_agreement(occ, fg, None) == 1.0
