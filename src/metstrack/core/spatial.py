"""Grids, rigid transforms and resampling between grids.

Transform convention (ITK's): a 4x4 world transform ``T`` used to resample a
*moving* image onto a *fixed* grid maps a point in fixed world coordinates
(RAS, mm) to the corresponding point in moving world coordinates. For a
follow-up study registered to the baseline, ``T = baseline_to_study``: it
takes a point of the baseline scan to where the same anatomy lies in the
follow-up scan, so resampling the follow-up with ``T`` brings it onto the
baseline grid, and resampling a baseline-grid result with ``inv(T)`` maps it
back to the follow-up's native grid.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from metstrack.types import Volume


def rotation_matrix(angles_deg: tuple[float, float, float]) -> np.ndarray:
    """3x3 rotation from Euler angles about X, then Y, then Z (degrees, right-handed)."""
    ax, ay, az = np.deg2rad(np.asarray(angles_deg, dtype=np.float64))
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def rigid_transform(
    angles_deg: tuple[float, float, float],
    translation_mm: tuple[float, float, float],
    *,
    center_mm: tuple[float, float, float] = (0.0, 0.0, 0.0),
) -> np.ndarray:
    """4x4 rigid world transform: rotate about ``center_mm``, then translate.

    Args:
        angles_deg: Rotation about X, Y, Z in degrees.
        translation_mm: Translation in mm applied after the rotation.
        center_mm: Centre of rotation in world coordinates (mm).

    Returns:
        float64 (4, 4) matrix ``p -> R (p - c) + c + t``.
    """
    r = rotation_matrix(angles_deg)
    c = np.asarray(center_mm, dtype=np.float64)
    t = np.eye(4)
    t[:3, :3] = r
    t[:3, 3] = c - r @ c + np.asarray(translation_mm, dtype=np.float64)
    return t


def rotation_angle_deg(transform: np.ndarray) -> float:
    """Total rotation angle (degrees) of the linear part of a rigid 4x4 transform."""
    r = np.asarray(transform, dtype=np.float64)[:3, :3]
    cos = np.clip((np.trace(r) - 1.0) / 2.0, -1.0, 1.0)
    return float(np.rad2deg(np.arccos(cos)))


def grid_centre_mm(shape: tuple[int, int, int], affine: np.ndarray) -> np.ndarray:
    """World coordinates (mm) of the centre of a grid."""
    c = (np.asarray(shape, dtype=np.float64) - 1.0) / 2.0
    return np.asarray(affine, dtype=np.float64)[:3, :3] @ c + np.asarray(affine)[:3, 3]


def voxel_to_world(idx: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Map voxel indices (N, 3) to world coordinates (N, 3) in mm."""
    a = np.asarray(affine, dtype=np.float64)
    return np.asarray(idx, dtype=np.float64) @ a[:3, :3].T + a[:3, 3]


def world_to_voxel(points_mm: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Map world coordinates (N, 3) in mm to (fractional) voxel indices (N, 3)."""
    inv = np.linalg.inv(np.asarray(affine, dtype=np.float64))
    return np.asarray(points_mm, dtype=np.float64) @ inv[:3, :3].T + inv[:3, 3]


def resample_array(
    moving: np.ndarray,
    moving_affine: np.ndarray,
    fixed_shape: tuple[int, int, int],
    fixed_affine: np.ndarray,
    *,
    transform: np.ndarray | None = None,
    order: int = 1,
    cval: float = 0.0,
) -> np.ndarray:
    """Resample ``moving`` onto a fixed grid.

    Args:
        moving: (X, Y, Z) array on ``moving_affine``.
        moving_affine: (4, 4) voxel-to-world of the moving array.
        fixed_shape: Output shape (X, Y, Z).
        fixed_affine: (4, 4) voxel-to-world of the output grid.
        transform: Fixed-world to moving-world 4x4 transform (identity if None).
        order: Spline order: 0 nearest neighbour (labels), 1 linear, 3 cubic.
        cval: Value outside the moving image.

    Returns:
        Array of ``fixed_shape``; labels (``order=0``) keep their dtype, images are float32.
    """
    t = np.eye(4) if transform is None else np.asarray(transform, dtype=np.float64)
    m = np.linalg.inv(np.asarray(moving_affine, dtype=np.float64)) @ t @ np.asarray(fixed_affine)
    if order == 0:
        out = ndimage.affine_transform(
            moving,
            m[:3, :3],
            offset=m[:3, 3],
            output_shape=tuple(fixed_shape),
            order=0,
            mode="constant",
            cval=cval,
            output=moving.dtype,
        )
        return out
    src = moving.astype(np.float32, copy=False)
    return ndimage.affine_transform(
        src,
        m[:3, :3],
        offset=m[:3, 3],
        output_shape=tuple(fixed_shape),
        order=order,
        mode="constant",
        cval=cval,
        output=np.float32,
        prefilter=order > 1,
    )


def resample_volume(
    moving: Volume,
    fixed: Volume,
    *,
    transform: np.ndarray | None = None,
    order: int = 1,
    cval: float = 0.0,
) -> Volume:
    """Resample a volume onto another volume's grid (see :func:`resample_array`)."""
    arr = resample_array(
        moving.array,
        moving.affine,
        fixed.shape,
        fixed.affine,
        transform=transform,
        order=order,
        cval=cval,
    )
    return Volume(array=arr, affine=np.array(fixed.affine, copy=True), path=None)
