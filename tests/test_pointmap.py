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


def test_absurd_coordinates_are_refused_as_out_of_range():
    for points in (_pts() * np.float32(1e30), _pts().astype(np.float64) * 1e39):  # 1e39 is inf in float32
        with pytest.raises(InputError, match=r"^point map: 20 points inside the mask are out of range") as e:
            PointMap(points)
        assert "NaN" not in str(e.value) and "\n" not in str(e.value)
    far = _pts()
    far[0] = 1e30
    mask = np.ones((4, 5), bool)
    mask[0] = False
    assert PointMap(far, mask=mask).mask.sum() == 15  # outside the mask they are nobody's business
    np.testing.assert_array_equal(PointMap(_pts() * np.float32(1e14)).points, _pts() * np.float32(1e14))
    with pytest.raises(InputError, match=r"point map scan\.npz: .*out of range"):
        PointMap(_pts() * np.float32(1e30), meta={"path": "scan.npz"})  # a map read from a file is named


def test_non_numeric_points_are_refused():
    with pytest.raises(InputError, match="numbers"):
        PointMap(np.full((4, 5, 3), "x"))
