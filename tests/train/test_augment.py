"""Augmentation shared by every study of a sequence."""

from __future__ import annotations

import numpy as np

from metstrack.train.augment import SequenceAugment, blanked
from metstrack.train.config import AugmentConfig

STRONG = AugmentConfig(
    flip_prob=0.5,
    affine_prob=1.0,
    rotate_max_deg=15,
    scale_max=0.15,
    intensity_prob=1.0,
    intensity_scale=0.3,
    intensity_shift=0.3,
)


def _sequence(rng, T=3, C=2, n=24):
    base = rng.normal(size=(C, n, n, n)).astype(np.float32)
    base[:, 4:10, 6:14, 8:12] += 3.0  # asymmetric structure so flips are visible
    label = np.zeros((n, n, n), np.uint8)
    label[4:10, 6:14, 8:12] = 1
    image = np.stack([base] * T)
    labels = np.stack([label] * T)
    return image, labels


def test_identical_studies_stay_identical_after_augmentation(rng):
    """One draw for the whole sequence: identical studies must come out identical."""
    aug = SequenceAugment(STRONG)
    image, label = _sequence(rng)
    changed = 0
    for seed in range(6):
        out_img, out_lab = aug(image, label, seed=seed)
        assert out_img.shape == image.shape and out_lab.shape == label.shape
        for t in range(1, 3):
            np.testing.assert_allclose(out_img[t], out_img[0], atol=1e-5)
            np.testing.assert_array_equal(out_lab[t], out_lab[0])
        assert set(np.unique(out_lab)) <= {0, 1}
        changed += not np.allclose(out_img, image)
    assert changed == 6


def test_modalities_get_their_own_jitter_but_time_shares_it(rng):
    cfg = AugmentConfig(flip_prob=0, affine_prob=0, intensity_prob=1.0, intensity_scale=0.3)
    aug = SequenceAugment(cfg)
    image, label = _sequence(rng, T=2, C=2)
    out, _ = aug(image, label, seed=7)
    ratio_c0 = (out[0, 0] - out[0, 0].mean()).std() / image[0, 0].std()
    ratio_c1 = (out[0, 1] - out[0, 1].mean()).std() / image[0, 1].std()
    assert abs(ratio_c0 - ratio_c1) > 1e-4
    np.testing.assert_allclose(out[0], out[1], atol=1e-5)


def test_labels_follow_the_image_with_nearest_neighbour(rng):
    aug = SequenceAugment(AugmentConfig(intensity_prob=0.0, affine_prob=1.0, rotate_max_deg=10))
    image, label = _sequence(rng, T=2, C=1)
    image = label[:, None].astype(np.float32) * 5.0  # the image is the label, scaled
    for seed in range(5):
        out_img, out_lab = aug(image, label, seed=seed)
        assert set(np.unique(out_lab)) <= {0, 1}
        inside = out_img[:, 0][out_lab == 1]
        outside = out_img[:, 0][out_lab == 0]
        assert inside.mean() > 3.5 and outside.mean() < 1.0


def test_augmentation_never_blanks_a_channel(rng):
    aug = SequenceAugment(STRONG)
    image, label = _sequence(rng, T=2, C=3)
    for seed in range(25):
        out, _ = aug(image, label, seed=seed)
        assert not blanked(image, out)
        assert np.all(np.isfinite(out))


def test_blank_guard_detects_a_blanked_channel(rng):
    image, _ = _sequence(rng, T=2, C=2)
    out = image.copy()
    out[1, 0] = 0.0
    assert blanked(image, out)
    assert not blanked(image, image * 1.1)


def test_disabled_augmentation_is_identity(rng):
    aug = SequenceAugment(AugmentConfig(enabled=False))
    image, label = _sequence(rng)
    out_img, out_lab = aug(image, label, seed=1)
    assert out_img is image and out_lab is label
