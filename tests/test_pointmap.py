import numpy as np
import pytest

from consistent3dgen import InputError, PointMap


def _pts(h=4, w=5):
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    return np.stack([x, y, np.full_like(x, 2.0)], -1)


def test_defaults():
    pm = PointMap(_pts())
    assert pm.conf.shape == (4, 5) and pm.mask.all()
    assert pm.valid_points().shape == (20, 3)


@pytest.mark.parametrize(
    "kwargs, msg",
    [
        (dict(points=np.zeros((4, 5))), "shape"),
        (dict(points=np.zeros((0, 0, 3))), "too small"),
        (dict(points=_pts(), mask=np.zeros((4, 5), bool)), "empty"),
        (dict(points=_pts(), conf=np.ones((3, 3))), "confidence"),
        (dict(points=_pts(), intrinsics=np.eye(2)), "intrinsics"),
    ],
)
def test_bad_inputs_give_one_line_errors(kwargs, msg):
    with pytest.raises(InputError, match=msg) as e:
        PointMap(**kwargs)
    assert "\n" not in str(e.value)


def test_nan_inside_mask_is_rejected_but_outside_is_fine():
    p = _pts()
    p[0, 0] = np.nan
    with pytest.raises(InputError, match="NaN"):
        PointMap(p, mask=np.ones((4, 5), bool))
    pm = PointMap(p)  # default mask excludes non-finite points
    assert not pm.mask[0, 0] and pm.mask.sum() == 19
