"""End to end on a small random-weight prior (same classes as the mini prior): wiring, guidance, frames, options."""

import numpy as np
import pytest
import torch

from consistent3dgen.errors import InputError
from consistent3dgen.geometry.frames import Similarity, compose_frame
from consistent3dgen.options import GenerationOptions
from consistent3dgen.pipeline import Pipeline

FAST = dict(dense_steps=3, sparse_steps=8, progress=False, max_faces=20_000)


@pytest.fixture(scope="module")
def pipe(tiny_prior_dir):
    p = Pipeline.from_pretrained(tiny_prior_dir)
    # random (non-zero) output layers, so that the prior generates something and guidance has work to do
    g = torch.Generator().manual_seed(0)
    for stage_model in (p.generator.sparse[0].dit, p.generator.dense.dit):
        for prm in stage_model.parameters():
            if prm.ndim >= 2 and prm.abs().sum() == 0:
                with torch.no_grad():
                    prm.copy_(torch.randn(prm.shape, generator=g) * 0.02)
    return p


@pytest.fixture(scope="module")
def pointmap(meshes_dir):
    from consistent3dgen.views import load_normalized_mesh, orbit_camera, render_rgbd

    v, f = load_normalized_mesh(meshes_dir / "spot.obj")
    return render_rgbd(v, f, orbit_camera(30, 20, 2.5), size=64).to_pointmap()


def _target_error(res):
    lat, tgt = res.latents[0], res.targets[0]
    rows = tgt.to_voxels().lookup(lat.coords.numpy())
    hit = rows >= 0
    return float((lat.feats[hit] - tgt.feats[rows[hit]]).norm(dim=1).mean()), int(hit.sum())


def test_guidance_pulls_the_seen_tokens_to_the_target_and_seeds_repeat(pipe, pointmap):
    free = pipe(pointmap, guidance=0.0, fusion=True, **FAST)
    guided = pipe(pointmap, guidance=5.0, fusion=True, **FAST)
    again = pipe(pointmap, guidance=5.0, fusion=True, **FAST)
    e_free, n = _target_error(free)
    e_guided, _ = _target_error(guided)
    assert n > 10
    assert e_guided < 0.5 * e_free
    np.testing.assert_array_equal(guided.vertices, again.vertices)
    # with fusion the seen side is pinned: the mesh in the camera frame overlays the input view
    m = guided.metrics()
    assert m["silhouette_iou"] > 0.8 and m["depth_error_mean"] < 0.05
    assert set(guided.timings) >= {"foreground", "dense", "sparse", "extract", "total"}


def test_result_frames_and_bad_options(pipe, pointmap):
    res = pipe(pointmap, guidance=5.0, fusion=True, **FAST)
    v_cam, _ = res.arrays("camera")
    v_can, _ = res.arrays("canonical")
    assert np.abs(v_can).max() <= 1.0
    # the camera-frame mesh sits where the seen points are (same depth range, roughly)
    z = pointmap.points[pointmap.mask][:, 2]
    assert z.min() - 0.2 < np.median(v_cam[:, 2]) < z.max() + 1.0
    with pytest.raises(InputError):
        res.arrays("world")


@pytest.mark.parametrize(("option", "value"), [
    ("not_an_option", 1), ("guidance", float("nan")), ("guidance", -5.0), ("guidance", float("inf")),
    ("guidance", "high"), ("seed", "abc"), ("seed", 1.5), ("seed", 2**70), ("guidance_variant", "bogus"),
    ("sparse_steps", -3), ("sparse_steps", 0), ("cfg_scale", float("nan")), ("max_faces", 0), ("fusion", 1),
    ("dense_start", "zero"), ("min_component", 1.0), ("occupancy_threshold", 1.5),
    ("free_space_dilation", -1), ("free_space_dilation", 1.5), ("token_dilation", -1), ("token_dilation", 9),
    ("sparse_start_sigma", 0.0), ("sparse_start_sigma", 1.5), ("dense_candidates", 0), ("first_stage_passes", 0),
    ("first_stage_passes", 9),
])
def test_every_option_is_checked_before_the_work_starts(pipe, option, value):
    with pytest.raises(InputError, match=option):
        pipe("never read", **{option: value})  # the options are refused before the input is looked at


def test_unset_options_resolve_from_the_generator_without_touching_the_callers(pipe, pointmap):
    asked = GenerationOptions(guidance=0.0, **FAST)
    opts = pipe.resolve_options(asked)
    assert asked.fusion is None and asked.band is None  # the caller's object is as given
    defaults = pipe.generator.defaults
    assert opts.fusion is False  # λ = 0 is the baseline: nothing of the seen shell is written in
    assert (opts.band, opts.shell, opts.mc_level) == (defaults["band"], defaults["shell"], defaults["mc_level"])
    assert pipe.resolve_options(None, guidance=0.0, **FAST) == opts  # the keyword form is the same run
    res = pipe(pointmap, asked.with_changes(guidance=5.0))
    assert res.options == pipe.resolve_options(asked, guidance=5.0) and res.options.fusion is True


def test_an_unconditional_prior_runs_each_model_once_per_step(pipe, pointmap):
    """No negative branch, no classifier-free guidance: the DiTs run once per step, not twice."""
    calls = {"dense": 0, "sparse": 0}
    hooks = [pipe.generator.dense.dit.register_forward_hook(lambda *a: calls.__setitem__("dense", calls["dense"] + 1)),
             pipe.generator.sparse[0].dit.register_forward_hook(
                 lambda *a: calls.__setitem__("sparse", calls["sparse"] + 1))]
    try:
        res = pipe(pointmap, dense_start="noise", **FAST)
    finally:
        for h in hooks:
            h.remove()
    assert calls == {"dense": res.options.dense_steps, "sparse": res.options.sparse_steps[0]}


def test_compose_frame_is_the_similarity_after_the_frame():
    from consistent3dgen.geometry.frames import camera_to_canonical, fit_canonical_frame

    rng = np.random.default_rng(0)
    p = rng.normal(size=(50, 3)) + [0, 0, 3]
    frame = fit_canonical_frame(p)
    sim = Similarity(1.3, (0.1, -0.2, 0.05))
    np.testing.assert_allclose(camera_to_canonical(p, compose_frame(frame, sim)),
                               sim.apply(camera_to_canonical(p, frame)), atol=1e-5)


@pytest.mark.parametrize(("inputs", "match"), [
    (5, "type int"), ({"points": 1}, "type dict"), (np.zeros((8, 8, 3), np.float32), "not an image.*PointMap"),
    (np.zeros((8, 8, 5), np.uint8), "uint8 image"), ([], "no input"),
])
def test_inputs_of_the_wrong_type_are_named(pipe, inputs, match):
    with pytest.raises(InputError, match=match):
        pipe(inputs, **FAST)


def test_token_growth_adds_first_stage_tokens_around_the_dense_occupancy(pipe, pointmap):
    def dense_tokens(res):
        return next(s["tokens"] for s in res.stages if s["stage"] == "dense")

    plain = pipe(pointmap, **FAST)
    grown = pipe(pointmap, token_dilation=1, **FAST)
    assert plain.options.token_dilation == 0 and grown.options.token_dilation == 1
    assert dense_tokens(grown) > dense_tokens(plain)


def test_a_repeated_first_stage_takes_its_tokens_from_the_previous_passs_mesh(pipe, pointmap, monkeypatch):
    from consistent3dgen import cascade

    handed = []
    hand_off = cascade.next_stage_cells

    def recording(sdf, stage, mc_level, distance=4.0, **kw):
        cells, renorm = hand_off(sdf, stage, mc_level, distance, **kw)
        handed.append(len(cells))
        return cells, renorm

    monkeypatch.setattr(cascade, "next_stage_cells", recording)
    once = pipe(pointmap, **FAST)
    twice = pipe(pointmap, first_stage_passes=2, **FAST)
    sparse = [s for s in twice.stages if s["stage"].startswith("sparse")]
    res = pipe.generator.sparse[0].resolution
    assert [s["stage"] for s in sparse] == [f"sparse{res}", f"sparse{res}.2"] and len(twice.latents) == 2
    assert len(handed) == 1  # once: none; twice: the second pass's cells came from the first pass's mesh
    # the second pass's tokens: those cells ∪ its seen cells, in the second pass's own frame
    assert sparse[1]["tokens"] >= handed[0] and twice.targets[1] is not None
    assert len(once.latents) == 1 and not np.array_equal(once.vertices[:10], twice.vertices[:10])
