"""End to end on a small random-weight prior (same classes as the mini prior): wiring, guidance, frames."""

import numpy as np
import pytest
import torch

from consistent3dgen.cascade import Similarity
from consistent3dgen.errors import InputError
from consistent3dgen.pipeline import ConsistentPipeline, compose_frame

FAST = dict(dense_steps=3, sparse_steps=8, progress=False, max_faces=20_000)


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from test_generator_registry import _write_mini

    folder = tmp_path_factory.mktemp("mini")
    _write_mini(folder, seed=3)
    p = ConsistentPipeline.from_pretrained(folder)
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
    v_cam, _ = res.mesh("camera")
    v_can, _ = res.mesh("canonical")
    assert np.abs(v_can).max() <= 1.0
    # the camera-frame mesh sits where the seen points are (same depth range, roughly)
    z = pointmap.points[pointmap.mask][:, 2]
    assert z.min() - 0.2 < np.median(v_cam[:, 2]) < z.max() + 1.0
    with pytest.raises(InputError):
        res.mesh("world")
    with pytest.raises(InputError):
        pipe(pointmap, not_an_option=1)


def test_compose_frame_is_the_similarity_after_the_frame():
    from consistent3dgen.geometry.frames import camera_to_canonical, fit_canonical_frame

    rng = np.random.default_rng(0)
    p = rng.normal(size=(50, 3)) + [0, 0, 3]
    frame = fit_canonical_frame(p)
    sim = Similarity(1.3, (0.1, -0.2, 0.05))
    np.testing.assert_allclose(camera_to_canonical(p, compose_frame(frame, sim)),
                               sim.apply(camera_to_canonical(p, frame)), atol=1e-5)
