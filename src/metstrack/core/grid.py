"""Grids, reorientation to RAS and isotropic target grids.

A :class:`Grid` is the geometry of a volume without its voxels: a shape
(X, Y, Z) and a voxel-to-world affine (RAS+, mm). Reorientation to RAS is the
lossless permutation/flip of nibabel's ``as_closest_canonical``; it is recorded
(:class:`OrientationRecord`) and never applied silently by the readers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from nibabel import orientations as ornt

from metstrack.core.affine import spacing_from_affine
from metstrack.types import Volume


@dataclass(frozen=True, eq=False)
class Grid:
    """Geometry of a 3D volume.

    Attributes:
        shape: Voxel counts along X, Y, Z.
        affine: float64 (4, 4) voxel-to-world matrix (RAS+, mm).
    """

    shape: tuple[int, int, int]
    affine: np.ndarray

    @classmethod
    def of(cls, vol: Volume | Grid) -> Grid:
        """The grid of a volume (a grid is returned unchanged)."""
        if isinstance(vol, Grid):
            return vol
        return cls(shape=vol.shape, affine=np.array(vol.affine, dtype=np.float64))

    @property
    def spacing_mm(self) -> tuple[float, float, float]:
        """Voxel spacing along X, Y, Z in mm."""
        return spacing_from_affine(self.affine)

    def to_dict(self) -> dict:
        """JSON-friendly form: ``{"shape": [...], "affine": [[...] x4]}``."""
        return {"shape": [int(s) for s in self.shape], "affine": self.affine.tolist()}

    @classmethod
    def from_dict(cls, d: dict) -> Grid:
        """Inverse of :meth:`to_dict`."""
        shape = tuple(int(s) for s in d["shape"])
        return cls(shape=shape, affine=np.asarray(d["affine"], dtype=np.float64))  # type: ignore[arg-type]

    def same_as(self, other: Grid, *, atol_mm: float = 1e-3) -> bool:
        """True when shapes match and affines agree within ``atol_mm``."""
        return tuple(self.shape) == tuple(other.shape) and bool(
            np.allclose(self.affine, other.affine, atol=atol_mm, rtol=0)
        )


@dataclass(frozen=True)
class OrientationRecord:
    """What :func:`reorient_to_ras` did, for provenance.

    Attributes:
        source_axcodes: Axis codes of the input (e.g. ``("L", "A", "S")``).
        transform: nibabel orientation array (axis permutation and flips) applied.
        oblique_deg: Largest angle between a voxel axis and its closest world axis.
        changed: False when the input already was RAS (nothing done).
    """

    source_axcodes: tuple[str, str, str]
    transform: tuple[tuple[float, float], ...]
    oblique_deg: float
    changed: bool

    def to_dict(self) -> dict:
        """JSON-friendly form."""
        return {
            "source_axcodes": "".join(self.source_axcodes),
            "transform": [list(t) for t in self.transform],
            "oblique_deg": round(self.oblique_deg, 4),
            "changed": self.changed,
        }


def obliquity_deg(affine: np.ndarray) -> float:
    """Largest angle (degrees) between a voxel axis of ``affine`` and its nearest world axis."""
    a = np.asarray(affine, dtype=np.float64)[:3, :3]
    cols = a / np.linalg.norm(a, axis=0)
    cos = np.clip(np.max(np.abs(cols), axis=0), -1.0, 1.0)
    return float(np.rad2deg(np.arccos(cos)).max())


def reorient_to_ras(vol: Volume) -> tuple[Volume, OrientationRecord]:
    """Permute and flip the voxel axes so they run closest to R, A, S (lossless).

    This is nibabel's ``as_closest_canonical``: voxels are not interpolated, the
    affine changes so every voxel keeps its world position. An oblique affine
    stays oblique (resampling onto an axis-aligned grid is a separate step).

    Args:
        vol: Any 3D volume.

    Returns:
        The reoriented volume (array (X, Y, Z) with X towards Right... i.e.
        increasing index moves to R, A, S) and the record of what was done.
    """
    affine = np.asarray(vol.affine, dtype=np.float64)
    current = ornt.io_orientation(affine)
    codes = tuple(ornt.aff2axcodes(affine))
    target = ornt.axcodes2ornt(("R", "A", "S"))
    xform = ornt.ornt_transform(current, target)
    changed = not np.array_equal(xform, [[0, 1], [1, 1], [2, 1]])
    arr = ornt.apply_orientation(vol.array, xform)
    new_affine = affine @ ornt.inv_ornt_aff(xform, vol.shape)
    out = Volume(array=np.ascontiguousarray(arr), affine=new_affine, path=vol.path)
    rec = OrientationRecord(
        source_axcodes=codes,  # type: ignore[arg-type]
        transform=tuple((float(a), float(b)) for a, b in xform),
        oblique_deg=obliquity_deg(affine),
        changed=bool(changed),
    )
    return out, rec


def isotropic_grid(grid: Grid | Volume, spacing_mm: float = 1.0) -> Grid:
    """An axis-aligned RAS grid of isotropic spacing covering ``grid``'s field of view.

    The output affine is ``diag(spacing_mm)`` plus an origin; its extent is the
    world bounding box of the input's voxel corners (so an oblique input is
    covered entirely and nothing is cropped).

    Args:
        grid: Input geometry (any orientation, possibly oblique).
        spacing_mm: Output voxel size in mm (> 0).

    Returns:
        The target :class:`Grid`.
    """
    if spacing_mm <= 0:
        raise ValueError(f"spacing_mm must be positive, found {spacing_mm}")
    g = Grid.of(grid)
    sx, sy, sz = g.shape
    corners = np.array(
        [[i, j, k] for i in (-0.5, sx - 0.5) for j in (-0.5, sy - 0.5) for k in (-0.5, sz - 0.5)]
    )
    world = corners @ g.affine[:3, :3].T + g.affine[:3, 3]
    lo, hi = world.min(axis=0), world.max(axis=0)
    # Snap tiny floating noise so a grid already on the lattice keeps its size.
    n = np.maximum(1, np.ceil(np.round((hi - lo) / spacing_mm, 6))).astype(int)
    centre = (lo + hi) / 2.0
    origin = centre - (n - 1) * spacing_mm / 2.0
    aff = np.diag([spacing_mm, spacing_mm, spacing_mm, 1.0])
    aff[:3, 3] = origin
    return Grid(shape=(int(n[0]), int(n[1]), int(n[2])), affine=aff)


def shares_grid(a: Volume, b: Volume, *, tol_mm: float = 1e-3) -> bool:
    """True when two volumes lie on the same voxel grid: same shape, affines equal within ``tol_mm``.

    Two sequences of one study stored on one grid were resampled there by whoever
    co-registered them (scanner series come on their own grids).
    """
    return a.array.shape[:3] == b.array.shape[:3] and bool(
        np.allclose(a.affine, b.affine, rtol=0.0, atol=tol_mm)
    )
