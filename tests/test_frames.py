import numpy as np
import pytest

from consistent3dgen.geometry.frames import (
    CanonicalFrame,
    camera_to_canonical,
    canonical_to_camera,
    fit_canonical_frame,
)


def _front_points(rng):
    # a bumpy patch 2 m in front of the camera, 0.6 wide, 0.4 high, 0.1 deep
    x, y = np.meshgrid(np.linspace(-0.3, 0.3, 40), np.linspace(-0.2, 0.2, 30))
    z = 2.0 + 0.05 * np.sin(8 * x) * np.cos(6 * y) + 0.05 * rng.standard_normal(x.shape) * 0
    return np.stack([x + 0.1, y - 0.05, z], -1).reshape(-1, 3)


def test_round_trip_is_exact():
    rng = np.random.default_rng(0)
    p = _front_points(rng)
    frame = fit_canonical_frame(p)
    q = camera_to_canonical(p.astype(np.float64), frame)
    back = canonical_to_camera(q, frame)
    np.testing.assert_allclose(back, p, rtol=0, atol=1e-12)
    # the frame survives serialisation
    frame2 = CanonicalFrame.from_dict(frame.to_dict())
    np.testing.assert_allclose(camera_to_canonical(p, frame2), q, atol=1e-12)


def test_axes_and_cube():
    rng = np.random.default_rng(1)
    p = _front_points(rng)
    frame = fit_canonical_frame(p, margin=0.05)
    q = camera_to_canonical(p, frame)
    assert np.abs(q).max() <= 0.95 + 1e-9
    # image up (smaller camera y) is canonical +y; nearer to the camera (smaller z) is canonical +z
    top = p[:, 1].argmin()
    bottom = p[:, 1].argmax()
    assert q[top, 1] > q[bottom, 1]
    near = p[:, 2].argmin()
    far = p[:, 2].argmax()
    assert q[near, 2] > q[far, 2]
    # the seen side sits in the front half, leaving room for the unseen back
    assert q[:, 2].min() > 0.0
    # rotation is proper (no mirror): handedness kept
    assert np.isclose(np.linalg.det(frame.R), 1.0)


def test_empty_or_degenerate_points_fail_clearly():
    with pytest.raises(ValueError):
        fit_canonical_frame(np.full((4, 3), np.nan))
    with pytest.raises(ValueError):
        fit_canonical_frame(np.zeros((5, 3)))
