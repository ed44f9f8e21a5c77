"""Spacing from an affine: the one place metstrack derives voxel size from a 4x4 matrix.

Affines map voxel indices (X, Y, Z) to RAS millimetres (nibabel convention);
the voxel spacing along each grid axis is the norm of the matching column of
the 3x3 block, whatever the orientation or obliquity.

>>> import numpy as np
>>> spacing_from_affine(np.diag([0.5, 0.5, 3.0, 1.0]))
(0.5, 0.5, 3.0)
"""

from __future__ import annotations

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
