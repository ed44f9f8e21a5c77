import numpy as np
import pytest

from metstrack.errors import InvalidImageError
from metstrack.preprocess.intensity import zscore_in_brain


def test_zscore_inside_mask_has_zero_mean_unit_std(rng):
    x = rng.normal(5.0, 3.0, size=(2, 16, 16, 16))
    x[1] *= 10
    mask = np.zeros((16, 16, 16), bool)
    mask[4:12, 4:12, 4:12] = True
    out = zscore_in_brain(x, mask)
    assert out.dtype == np.float32 and out.shape == x.shape
    for c in range(2):
        assert abs(out[c][mask].mean()) < 1e-5
        assert abs(out[c][mask].std() - 1.0) < 1e-4
        assert np.all(out[c][~mask] == 0)


def test_zscore_without_mask_uses_nonzero_voxels(rng):
    x = np.zeros((1, 8, 8, 8))
    x[0, 2:6, 2:6, 2:6] = rng.uniform(1, 2, size=(4, 4, 4))
    out = zscore_in_brain(x)
    inside = x[0] != 0
    assert abs(out[0][inside].mean()) < 1e-5
    assert np.all(out[0][~inside] == 0)


def test_zscore_constant_channel_is_centred_not_divided():
    x = np.full((1, 4, 4, 4), 7.0)
    out = zscore_in_brain(x)
    assert np.all(np.isfinite(out)) and np.all(out == 0)


def test_zscore_rejects_bad_shapes():
    with pytest.raises(InvalidImageError, match="C, X, Y, Z"):
        zscore_in_brain(np.zeros((4, 4, 4)))
    with pytest.raises(InvalidImageError, match="mask shape"):
        zscore_in_brain(np.zeros((1, 4, 4, 4)), np.ones((3, 3, 3)))
    x = np.zeros((1, 4, 4, 4))
    x[0, 0, 0, 0] = np.nan
    with pytest.raises(InvalidImageError, match="NaN"):
        zscore_in_brain(x)


def test_n4_removes_a_smooth_bias_field(rng):
    from metstrack.preprocess.intensity import n4_correct
    from metstrack.types import Volume

    x, y, z = np.mgrid[0:32, 0:32, 0:32]
    brain = (x - 16) ** 2 + (y - 16) ** 2 + (z - 16) ** 2 < 13**2
    bias = np.exp(0.3 * (x - 16) / 16)
    img = (np.where(brain, 100.0, 0.0) + brain * rng.normal(0, 2, brain.shape)) * bias
    vol = Volume(array=img.astype(np.float32), affine=np.diag([2.0, 2.0, 2.0, 1.0]))
    out = n4_correct(vol, brain, shrink_factor=2)
    assert out.array.dtype == np.float32 and np.allclose(out.affine, vol.affine)
    cv_before = img[brain].std() / img[brain].mean()
    cv_after = out.array[brain].std() / out.array[brain].mean()
    assert cv_after < 0.5 * cv_before
