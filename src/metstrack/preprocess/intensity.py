"""Intensity normalisation and bias-field correction.

``zscore_in_brain`` is the normalisation every model input goes through (the
training data module and inference both call it), so training and inference
see identical intensities.
"""

from __future__ import annotations

import logging

import numpy as np

from metstrack.errors import InvalidImageError
from metstrack.preprocess.register import from_sitk, to_sitk
from metstrack.types import Volume

log = logging.getLogger(__name__)

#: Standard deviations below this are treated as a constant channel (no scaling).
_MIN_STD = 1e-6


def zscore_in_brain(x: np.ndarray, brain_mask: np.ndarray | None = None) -> np.ndarray:
    """Per-channel z-score using the statistics of the voxels inside the brain.

    Each channel ``c`` becomes ``(x[c] - mean) / std`` with the mean and standard
    deviation taken over the brain voxels; voxels outside the brain are set to 0.
    Without a mask the brain is taken as the channel's non-zero voxels (the
    convention for skull-stripped inputs), or every voxel when a channel has no
    zero. A constant channel (std ~ 0) is only centred, never divided by ~0.

    Args:
        x: Image channels, shape (C, X, Y, Z), any real dtype.
        brain_mask: Optional boolean-like (X, Y, Z) mask of the brain.

    Returns:
        float32 array of the same shape (C, X, Y, Z).

    Raises:
        InvalidImageError: ``x`` is not 4D, the mask shape differs from the
            spatial shape, or the input holds NaN/inf.
    """
    x = np.asarray(x)
    if x.ndim != 4:
        raise InvalidImageError(
            f"zscore_in_brain expects (C, X, Y, Z) channels, found shape {x.shape}; "
            "stack the modalities along a first axis"
        )
    if not np.all(np.isfinite(x)):
        raise InvalidImageError("zscore_in_brain: input holds NaN or inf values")
    out = np.zeros(x.shape, dtype=np.float32)
    if brain_mask is not None:
        mask = np.asarray(brain_mask).astype(bool)
        if mask.shape != x.shape[1:]:
            raise InvalidImageError(
                f"zscore_in_brain: brain mask shape {mask.shape} differs from image "
                f"shape {x.shape[1:]}; resample the mask onto the image grid"
            )
    for c in range(x.shape[0]):
        ch = x[c].astype(np.float64, copy=False)
        if brain_mask is not None:
            m = mask
        else:
            m = ch != 0
            if not m.any() or m.all():
                m = np.ones(ch.shape, dtype=bool)
        if not m.any():
            log.warning("zscore_in_brain: empty brain mask; channel %d left at 0", c)
            continue
        vals = ch[m]
        mean = float(vals.mean())
        std = float(vals.std())
        scale = 1.0 / std if std > _MIN_STD else 1.0
        out[c][m] = ((vals - mean) * scale).astype(np.float32)
    return out


def n4_correct(
    vol: Volume,
    mask: np.ndarray | None = None,
    *,
    shrink_factor: int = 4,
    iterations: tuple[int, ...] = (50, 50, 30),
    threads: int = 1,
) -> Volume:
    """N4 bias-field correction (SimpleITK ``N4BiasFieldCorrectionImageFilter``).

    The field is fitted on a copy shrunk by ``shrink_factor`` (for speed) and then
    evaluated on the full grid, so the output keeps ``vol``'s grid.

    Args:
        vol: Image with non-negative intensities, shape (X, Y, Z).
        mask: Optional boolean (X, Y, Z) region to fit the field in (the brain or head).
        shrink_factor: Integer downsampling of the fitting grid (1 = none).
        iterations: Fitting iterations per resolution level.
        threads: ITK threads (1 keeps reruns bit-identical).

    Returns:
        float32 volume on the same grid: ``vol / exp(log_bias_field)``.
    """
    import SimpleITK as sitk  # noqa: N813

    arr = np.asarray(vol.array, dtype=np.float32)
    shift = float(min(0.0, arr.min()))
    img = to_sitk(Volume(array=arr - shift + 1e-3, affine=vol.affine))
    if mask is None:
        mask_img = sitk.OtsuThreshold(img, 0, 1, 200)
    else:
        mask_img = to_sitk(
            Volume(array=np.asarray(mask).astype(np.uint8), affine=vol.affine), dtype=sitk.sitkUInt8
        )
    prev = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(int(threads))
    try:
        f = max(1, int(shrink_factor))
        small = sitk.Shrink(img, [f] * 3) if f > 1 else img
        small_mask = sitk.Shrink(mask_img, [f] * 3) if f > 1 else mask_img
        n4 = sitk.N4BiasFieldCorrectionImageFilter()
        n4.SetMaximumNumberOfIterations([int(i) for i in iterations])
        n4.Execute(small, small_mask)
        log_field = n4.GetLogBiasFieldAsImage(img)
    finally:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(prev)
    field = from_sitk(log_field).array.astype(np.float32)
    out = (arr / np.exp(field)).astype(np.float32)
    return Volume(array=out, affine=np.array(vol.affine, copy=True), path=vol.path)
