"""Spacing from an affine: the one place metstrack derives voxel size from a 4x4 matrix
(and the two helpers that go the other way: a diagonal affine from a spacing, the
affine of a crop).

Affines map voxel indices (X, Y, Z) to RAS millimetres (nibabel convention);
the voxel spacing along each grid axis is the norm of the matching column of
the 3x3 block, whatever the orientation or obliquity.

>>> import numpy as np
>>> spacing_from_affine(np.diag([0.5, 0.5, 3.0, 1.0]))
(0.5, 0.5, 3.0)
>>> spacing_from_affine(affine_from_spacing((0.5, 0.5, 3.0)))
(0.5, 0.5, 3.0)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def spacing_array_mm(affine: np.ndarray) -> np.ndarray:
    """Voxel spacing (mm) along X, Y, Z as a float64 array of shape (3,).

    Args:
        affine: (4, 4) voxel-to-world matrix (RAS, mm); only its 3x3 block is read.
    """
    return np.linalg.norm(np.asarray(affine, dtype=np.float64)[:3, :3], axis=0)


def spacing_from_affine(affine: np.ndarray) -> tuple[float, float, float]:
    """Voxel spacing (mm) along X, Y, Z: the column norms of a 4x4 affine."""
    sp = spacing_array_mm(affine)
    return (float(sp[0]), float(sp[1]), float(sp[2]))


def affine_from_spacing(spacing_mm: Sequence[float]) -> np.ndarray:
    """Diagonal (4, 4) affine of a grid known only by its spacing (origin 0, axes RAS).

    Use it only where the world position does not matter: volumes, distances and
    every lesion-wise metric depend on the spacing alone, so for them this stands
    in exactly for the real affine.

    Raises:
        ValueError: ``spacing_mm`` is not three positive finite numbers.
    """
    sp = np.asarray(spacing_mm, dtype=np.float64).reshape(-1)
    if sp.shape != (3,) or np.any(sp <= 0) or not np.all(np.isfinite(sp)):
        raise ValueError(f"spacing_mm must be three positive numbers, got {spacing_mm!r}")
    return np.diag([*sp.tolist(), 1.0])


def crop_affine(affine: np.ndarray, start: Sequence[int]) -> np.ndarray:
    """Affine of the sub-grid whose voxel (0, 0, 0) is voxel ``start`` of ``affine``'s grid.

    ``start`` may be negative (a zero-padded crop); the spacing and axes are unchanged.
    """
    aff = np.array(affine, dtype=np.float64)
    aff[:3, 3] = aff[:3, :3] @ np.asarray(start, dtype=np.float64) + aff[:3, 3]
    return aff
