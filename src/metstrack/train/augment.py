"""One augmentation per sequence, applied identically to every study of it.

The studies of a patient are co-registered, so the network must see them
still aligned after augmentation. MONAI's dictionary transforms draw their
random parameters once per call and apply them to every key and channel; the
studies are therefore stacked along the channel axis (image ``T*C``
channels, label ``T`` channels) and transformed in one call:

* flips along each axis (MONAI ``RandFlipd``),
* a small rotation plus scaling (``RandAffined``; images bilinear, labels
  nearest-neighbour so they stay binary; border padding, so corners are never
  filled with a constant),
* intensity scaling and shift per modality, shared over time
  (``RandScaleIntensityd``/``RandShiftIntensityd`` channel-wise on a view whose
  channels are the modalities).

Random states are set from the per-sample seed, so the same seed gives the
same augmentation. A guard checks that no channel that had contrast lost it
(the published code's augmentation could blank inputs); if one did, the
sample is returned un-augmented and a warning is logged.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import (
    Compose,
    RandAffined,
    RandFlipd,
    RandScaleIntensityd,
    RandShiftIntensityd,
)

from metstrack.train.config import AugmentConfig

log = logging.getLogger(__name__)

#: A channel whose standard deviation falls below this fraction of its
#: original value counts as blanked.
BLANK_RATIO = 0.05


def _plain(x: torch.Tensor) -> torch.Tensor:
    return x.as_tensor() if isinstance(x, MetaTensor) else x


class SequenceAugment:
    """Shared spatial and intensity augmentation of a patient sequence.

    Args:
        cfg: Probabilities and ranges.
    """

    def __init__(self, cfg: AugmentConfig) -> None:
        self.cfg = cfg
        keys = ["image", "label"]
        spatial: list = [
            RandFlipd(keys=keys, prob=cfg.flip_prob, spatial_axis=ax) for ax in range(3)
        ]
        if cfg.affine_prob > 0 and (cfg.rotate_max_deg > 0 or cfg.scale_max > 0):
            rad = math.radians(cfg.rotate_max_deg)
            spatial.append(
                RandAffined(
                    keys=keys,
                    prob=cfg.affine_prob,
                    rotate_range=(rad, rad, rad),
                    scale_range=(cfg.scale_max,) * 3,
                    mode=("bilinear", "nearest"),
                    padding_mode="border",
                )
            )
        self.spatial = Compose(spatial)
        self.intensity = Compose(
            [
                RandScaleIntensityd(
                    keys="image",
                    factors=cfg.intensity_scale,
                    prob=cfg.intensity_prob,
                    channel_wise=True,
                ),
                RandShiftIntensityd(
                    keys="image",
                    offsets=cfg.intensity_shift,
                    prob=cfg.intensity_prob,
                    channel_wise=True,
                ),
            ]
        )

    def __call__(
        self, image: np.ndarray, label: np.ndarray, *, seed: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Augment one sequence.

        Args:
            image: float32 (T, C, X, Y, Z) studies in time order.
            label: uint8 (T, X, Y, Z) masks (zeros for unlabelled studies).
            seed: Seed of this sample's random parameters.

        Returns:
            ``(image, label)`` with the same shapes and dtypes; label values stay in {0, 1}.
        """
        if not self.cfg.enabled:
            return image, label
        T, C = image.shape[:2]
        spatial_shape = image.shape[2:]
        self.spatial.set_random_state(seed=seed % (2**32 - 1))
        self.intensity.set_random_state(seed=(seed + 1) % (2**32 - 1))
        with torch.no_grad():
            data = {
                "image": torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)).reshape(
                    T * C, *spatial_shape
                ),
                "label": torch.from_numpy(np.ascontiguousarray(label, dtype=np.float32)),
            }
            out = self.spatial(data)
            img = _plain(out["image"]).reshape(T, C, *spatial_shape)
            lab = _plain(out["label"])
            # channels = modalities, so each modality gets one jitter shared over time
            view = img.permute(1, 0, 2, 3, 4).reshape(C, T * spatial_shape[0], *spatial_shape[1:])
            view = _plain(self.intensity({"image": view})["image"])
            img = view.reshape(C, T, *spatial_shape).permute(1, 0, 2, 3, 4)
        img_np = np.ascontiguousarray(img.numpy(), dtype=np.float32)
        lab_np = (lab.numpy() > 0.5).astype(np.uint8)
        if blanked(image, img_np):
            log.warning(
                "augmentation blanked a channel (seed %d); using the sample un-augmented", seed
            )
            return image, label
        return img_np, lab_np


def blanked(before: np.ndarray, after: np.ndarray) -> bool:
    """True when a (study, channel) with contrast before has (almost) none after.

    Args:
        before: (T, C, X, Y, Z) input.
        after: (T, C, X, Y, Z) augmented.
    """
    sd0 = before.reshape(*before.shape[:2], -1).std(axis=-1)
    sd1 = after.reshape(*after.shape[:2], -1).std(axis=-1)
    had = sd0 > 1e-6
    return bool(np.any(had & (sd1 < BLANK_RATIO * sd0)))
