"""Acquisition like the clinic: each study on its own grid, scanner scale, skull on or off.

A study is rendered on the patient's fine baseline grid (moved by the study's
rigid motion) and then *acquired*: resampled onto the grid the scanner used.
With ``acquisition = "clinical"``:

- the baseline study keeps the patient's isotropic grid;
- a follow-up is either a 3D acquisition (isotropic-ish voxels 0.9-1.25 times
  the baseline spacing) or a 2D one with thick slices (3-5.5 mm at full head
  size, in-plane 0.8-1.1 times the baseline spacing), its axes tilted up to 12
  degrees (oblique), covering the same field of view;
- the slice profile and in-plane resolution blur the image before sampling
  (Gaussian, FWHM = slice thickness along the slice axis);
- labels are sampled with nearest neighbour, so lesion volumes are counted on
  the grid actually written;
- every study gets its own intensity scale per contrast (log-uniform 0.6-1.6),
  as between scanners.

``acquisition = "fixed"`` keeps every study on the baseline grid with scale 1
(the older behaviour). Skull stripping (BraTS style) sets everything outside the
brain envelope to 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from metstrack.core.affine import spacing_from_affine
from metstrack.core.spatial import resample_array

#: Acquisition modes.
ACQUISITION_MODES = ("clinical", "fixed")
#: Skull modes: per cohort, or ``mixed`` (each patient at random).
SKULL_MODES = ("on", "stripped", "mixed")
#: Largest obliquity of a follow-up grid (degrees).
MAX_OBLIQUE_DEG = 12.0


@dataclass(frozen=True, eq=False)
class Acquisition:
    """The grid and scanner settings of one study.

    Attributes:
        affine: float64 (4, 4) voxel-to-world (the study's scanner world, mm).
        shape: Grid shape (X, Y, Z).
        slice_thickness_mm: Thickness of the slices (= the largest voxel size for 3D).
        intensity_scale: float64 (4,) scanner scale per contrast (MODALITIES order).
        skull_stripped: Everything outside the brain is 0.
    """

    affine: np.ndarray
    shape: tuple[int, int, int]
    slice_thickness_mm: float
    intensity_scale: np.ndarray
    skull_stripped: bool

    @property
    def spacing_mm(self) -> tuple[float, float, float]:
        """Voxel size along each grid axis (mm)."""
        return spacing_from_affine(self.affine)


def _small_rotation(rng: np.random.Generator, max_deg: float) -> np.ndarray:
    axis = rng.standard_normal(3)
    axis /= np.linalg.norm(axis)
    ang = math.radians(rng.uniform(0.0, max_deg))
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + math.sin(ang) * k + (1 - math.cos(ang)) * (k @ k)


def draw_acquisition(
    rng: np.random.Generator,
    base_affine: np.ndarray,
    base_shape: tuple[int, int, int],
    *,
    mode: str,
    baseline: bool,
    head_scale: float,
    skull_stripped: bool,
) -> Acquisition:
    """Draw the grid and scanner scale of one study (see the module docstring).

    Args:
        rng: The study's acquisition generator.
        base_affine: float64 (4, 4) the patient's baseline grid (isotropic, centred).
        base_shape: Its shape.
        mode: ``clinical`` or ``fixed``.
        baseline: This is the patient's first study (keeps the baseline grid).
        head_scale: Head size relative to an adult head (thick slices scale with it).
        skull_stripped: Zero everything outside the brain.
    """
    if mode not in ACQUISITION_MODES:
        raise ValueError(f"acquisition mode must be one of {ACQUISITION_MODES}, found {mode!r}")
    base_sp = float(np.linalg.norm(base_affine[:3, 0]))
    if mode == "fixed":
        return Acquisition(
            np.asarray(base_affine, dtype=np.float64).copy(),
            tuple(int(n) for n in base_shape),  # type: ignore[arg-type]
            base_sp,
            np.ones(4),
            skull_stripped,
        )
    scale = np.exp(rng.uniform(math.log(0.6), math.log(1.6), 4))
    if baseline:
        return Acquisition(
            np.asarray(base_affine, dtype=np.float64).copy(),
            tuple(int(n) for n in base_shape),  # type: ignore[arg-type]
            base_sp,
            scale,
            skull_stripped,
        )
    if rng.random() < 0.45:  # 3D acquisition
        vox = np.full(3, base_sp * rng.uniform(0.9, 1.25)) * rng.uniform(0.97, 1.03, 3)
    else:  # 2D, thick slices, usually axial
        vox = np.full(3, base_sp * rng.uniform(0.8, 1.1))
        axis = int(rng.choice(3, p=[0.15, 0.2, 0.65]))
        thick = max(1.6 * base_sp, rng.uniform(3.0, 5.5) * head_scale)
        vox[axis] = thick
    rot = _small_rotation(rng, MAX_OBLIQUE_DEG)
    fov = np.asarray(base_shape, dtype=np.float64) * base_sp
    shape = tuple(int(max(8, math.ceil(f / v))) for f, v in zip(fov, vox, strict=True))
    lin = rot @ np.diag(vox)
    affine = np.eye(4)
    affine[:3, :3] = lin
    centre_world = base_affine[:3, :3] @ ((np.asarray(base_shape) - 1) / 2.0) + base_affine[:3, 3]
    affine[:3, 3] = centre_world - lin @ ((np.asarray(shape) - 1) / 2.0)
    return Acquisition(affine, shape, float(vox.max()), scale, skull_stripped)  # type: ignore[arg-type]


@dataclass(frozen=True, eq=False)
class AcquiredStudy:
    """A study on its acquisition grid.

    Attributes:
        images: float32 (4, X, Y, Z).
        instances: int16 (X, Y, Z) lesion IDs.
        vessel_mask: bool (X, Y, Z).
        brain_mask: bool (X, Y, Z).
        lesion_volume_mm3: float64 (n_lesions,) volume of each lesion on this grid.
    """

    images: np.ndarray
    instances: np.ndarray
    vessel_mask: np.ndarray
    brain_mask: np.ndarray
    lesion_volume_mm3: np.ndarray


def acquire(
    images: np.ndarray,
    instances: np.ndarray,
    vessel_mask: np.ndarray,
    brain_mask: np.ndarray,
    base_affine: np.ndarray,
    acq: Acquisition,
    n_lesions: int,
) -> AcquiredStudy:
    """Sample a rendered study onto its acquisition grid (see the module docstring).

    Args:
        images: float32 (4, X, Y, Z) rendered on the baseline grid (study world).
        instances: int16 (X, Y, Z) lesion IDs on the baseline grid.
        vessel_mask, brain_mask: bool (X, Y, Z) on the baseline grid.
        base_affine: float64 (4, 4) the baseline grid.
        acq: The study's acquisition.
        n_lesions: Number of lesion IDs (for the volume vector).
    """
    same = acq.shape == tuple(images.shape[1:]) and np.allclose(acq.affine, base_affine)
    if same:
        out_img = images
        inst, vmask, bmask = instances, vessel_mask, brain_mask
    else:
        base_sp = float(np.linalg.norm(base_affine[:3, 0]))
        # Blur along each baseline axis by the resolution of the nearest new axis.
        new_dirs = acq.affine[:3, :3] / np.linalg.norm(acq.affine[:3, :3], axis=0)
        sp_new = np.asarray(acq.spacing_mm)
        sigma = np.zeros(3)
        for k in range(3):
            j = int(np.argmax(np.abs(new_dirs[k, :])))
            fwhm = sp_new[j]
            sigma[k] = max(0.0, (fwhm / 2.355) ** 2 - (base_sp / 2.355) ** 2) ** 0.5 / base_sp
        out_img = np.stack(
            [
                resample_array(
                    ndimage.gaussian_filter(images[c], sigma) if sigma.max() > 0.2 else images[c],
                    base_affine,
                    acq.shape,
                    acq.affine,
                    order=1,
                )
                for c in range(images.shape[0])
            ]
        )
        inst = resample_array(instances, base_affine, acq.shape, acq.affine, order=0)
        vmask = (
            resample_array(
                vessel_mask.astype(np.uint8), base_affine, acq.shape, acq.affine, order=0
            )
            > 0
        )
        bmask = (
            resample_array(brain_mask.astype(np.uint8), base_affine, acq.shape, acq.affine, order=0)
            > 0
        )
    out_img = out_img * acq.intensity_scale.astype(np.float32)[:, None, None, None]
    if acq.skull_stripped:
        out_img *= bmask[None]
        inst = np.where(bmask, inst, 0).astype(np.int16)
    vox_mm3 = float(abs(np.linalg.det(acq.affine[:3, :3])))
    counts = np.bincount(inst.ravel().astype(np.int64), minlength=n_lesions + 1)[1 : n_lesions + 1]
    return AcquiredStudy(
        images=out_img.astype(np.float32, copy=False),
        instances=inst.astype(np.int16, copy=False),
        vessel_mask=vmask,
        brain_mask=bmask,
        lesion_volume_mm3=counts.astype(np.float64) * vox_mm3,
    )
