"""A synthetic head on a patient's baseline grid: the :class:`Anatomy` record and the phantom.

Two anatomies fill the record:

- ``template`` (the default, :mod:`metstrack.synth.head`): a real brain, the MNI
  ICBM152 2009 template, deformed per patient, with skull and scalp shells, and
  the anchors of the large vessels;
- ``phantom`` (:func:`build_phantom`, for tiny unit-test volumes): a procedural
  head built in world millimetres around the grid centre and scaled to the field
  of view (an adult head at 192 mm): scalp, skull with marrow, subarachnoid
  CSF, cortical grey matter with gyral folding and sulci, white matter, deep
  grey nuclei, lateral and third ventricles with choroid plexus, the
  interhemispheric fissure, and a dural layer under the skull.

Every tissue gets an intensity per contrast (T1, CT1, T2, FLAIR) from the
patient's :class:`~metstrack.synth.contrast.ContrastTable`, a smooth
multiplicative texture and partial-volume edges.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from metstrack.synth.contrast import (  # noqa: F401  (tissue codes re-exported)
    BACKGROUND,
    BONE,
    CHOROID,
    CSF,
    DEEP_GM,
    DURA,
    GM,
    MARROW,
    N_TISSUES,
    SCALP,
    VENTRICLE,
    WM,
    ContrastTable,
)
from metstrack.types import MODALITIES

#: Anatomy kinds.
ANATOMY_KINDS = ("template", "phantom")


@dataclass(frozen=True)
class VesselTrunk:
    """A large vessel given as a polyline in the patient's baseline world (mm).

    Attributes:
        name: Anatomical name (``mca_left``, ``superior_sagittal_sinus`` ...).
        kind: ``artery``, ``vein`` or ``sinus``.
        points_mm: float64 (n, 3) polyline points.
        radius_mm: float64 (n,) radius at each point.
    """

    name: str
    kind: str
    points_mm: np.ndarray
    radius_mm: np.ndarray


@dataclass(frozen=True, eq=False)
class Anatomy:
    """Baseline head of one patient.

    Attributes:
        affine: float64 (4, 4) voxel-to-world (RAS+, mm) of the patient's grid.
        labels: uint8 (X, Y, Z) hard tissue codes.
        contrasts: float32 (4, X, Y, Z) clean images (no lesions, bias or noise)
            in :data:`~metstrack.types.MODALITIES` order.
        wm_fraction: float32 (X, Y, Z) white-matter partial volume (oedema spreads there).
        parenchyma_depth_mm: float32 (X, Y, Z) distance (mm) from the nearest
            non-parenchyma voxel (0 outside brain tissue); lesions sit where it is large.
        cortex_mask: bool (X, Y, Z) cortical grey matter and sulcal surface (vessel sites).
        head_scale: Head size relative to an adult head (field of view / 192 mm).
        table: The patient's intensities per tissue and contrast.
        kind: ``template`` or ``phantom``.
        brain_mask: bool (X, Y, Z) brain envelope (tissue and the CSF inside it):
            what a skull-stripped scan keeps.
        cerebellum_mask: bool (X, Y, Z) cerebellum and brainstem.
        sulcal_csf: float32 (X, Y, Z) CSF outside the ventricles (sulci, fissures,
            subarachnoid space), where arteries run.
        trunks: Large vessels (arteries, deep veins, sinuses) to draw and branch from.
    """

    affine: np.ndarray
    labels: np.ndarray
    contrasts: np.ndarray
    wm_fraction: np.ndarray
    parenchyma_depth_mm: np.ndarray
    cortex_mask: np.ndarray
    head_scale: float
    table: ContrastTable
    kind: str = "phantom"
    brain_mask: np.ndarray | None = None
    cerebellum_mask: np.ndarray | None = None
    sulcal_csf: np.ndarray | None = None
    trunks: tuple[VesselTrunk, ...] = field(default_factory=tuple)


def grid_affine(shape: int, spacing_mm: float) -> np.ndarray:
    """RAS+ affine of a K^3 grid with the world origin at the grid centre."""
    aff = np.diag([spacing_mm, spacing_mm, spacing_mm, 1.0])
    aff[:3, 3] = -(shape - 1) / 2.0 * spacing_mm
    return aff


def _linear_upsampler(n_out: int, n_coarse: int, factor: int) -> np.ndarray:
    """(n_out, n_coarse) linear-interpolation matrix; coarse sample j is at (j - 1) * factor."""
    u = np.arange(n_out, dtype=np.float64) / factor + 1.0
    j0 = np.floor(u).astype(int)
    frac = u - j0
    w = np.zeros((n_out, n_coarse), dtype=np.float32)
    rows = np.arange(n_out)
    w[rows, j0] = 1.0 - frac
    w[rows, j0 + 1] = frac
    return w


def smooth_noise(
    rng: np.random.Generator, shape: tuple[int, int, int], sigma_vox: float
) -> np.ndarray:
    """Zero-mean, unit-std smooth Gaussian random field (float32, ``shape``).

    Drawn on a coarse grid, smoothed, and interpolated up (separable linear
    interpolation as three matrix products), so the cost barely grows with
    ``sigma_vox``.
    """
    factor = max(1, int(sigma_vox // 2))
    coarse = tuple(int(np.ceil(s / factor)) + 3 for s in shape)
    field = rng.standard_normal(coarse, dtype=np.float32)
    field = ndimage.gaussian_filter(field, sigma_vox / factor, mode="wrap")
    if factor > 1:
        wx, wy, wz = (_linear_upsampler(s, c, factor) for s, c in zip(shape, coarse, strict=True))
        field = np.einsum("ia,abc->ibc", wx, field, optimize=True)
        field = np.einsum("jb,ibc->ijc", wy, field, optimize=True)
        field = np.einsum("kc,ijc->ijk", wz, field, optimize=True)
    else:
        field = field[1 : shape[0] + 1, 1 : shape[1] + 1, 1 : shape[2] + 1]
    field = np.ascontiguousarray(field, dtype=np.float32)
    field -= field.mean()
    field /= field.std() + 1e-8
    return field


def interior_depth_mm(mask: np.ndarray, spacing_mm: float) -> np.ndarray:
    """Distance (mm) from each voxel of ``mask`` to the nearest voxel outside it.

    Computed on a grid subsampled by 2 and expanded back (about 1 voxel
    accurate), which is all lesion placement needs and 8 times cheaper.
    """
    coarse = mask[::2, ::2, ::2]
    d = ndimage.distance_transform_edt(coarse, sampling=2 * spacing_mm).astype(np.float32)
    full = (
        d.repeat(2, 0).repeat(2, 1).repeat(2, 2)[: mask.shape[0], : mask.shape[1], : mask.shape[2]]
    )
    return np.where(mask, full, 0.0).astype(np.float32)


def build_phantom(
    rng: np.random.Generator, shape: int, spacing_mm: float, table: ContrastTable
) -> Anatomy:
    """Draw a procedural phantom head on a K^3 grid (tiny unit-test volumes).

    Args:
        rng: The patient's image generator.
        shape: Grid edge K (voxels).
        spacing_mm: Isotropic spacing (mm).
        table: The patient's intensities.

    Returns:
        The :class:`Anatomy`.
    """
    shp = (shape, shape, shape)
    affine = grid_affine(shape, spacing_mm)
    s = shape * spacing_mm / 192.0
    ax = np.arange(shape, dtype=np.float32) * spacing_mm + float(affine[0, 3])
    x, y, z = np.meshgrid(ax, ax, ax, indexing="ij", sparse=True)
    mm = 1.0 / spacing_mm  # voxels per mm

    # Per-patient head proportions.
    semi = np.array([72.0, 88.0, 78.0]) * s * rng.uniform(0.93, 1.03, 3)
    zc = 4.0 * s
    shape_noise = smooth_noise(rng, shp, 14 * s * mm)
    rho = np.sqrt((x / semi[0]) ** 2 + (y / semi[1]) ** 2 + ((z - zc) / semi[2]) ** 2)
    rho = rho * (1.0 + 0.025 * shape_noise)

    labels = np.zeros(shp, dtype=np.uint8)
    labels[rho <= 1.0] = SCALP
    labels[rho <= 0.93] = BONE
    labels[(rho <= 0.915) & (rho >= 0.885)] = MARROW
    labels[rho <= 0.865] = DURA
    labels[rho <= 0.855] = CSF
    brain = rho <= 0.835
    # Cortex: a grey ribbon under the brain surface that also lines the sulci.
    # Sulci are thin CSF sheets at the zero crossings of a smooth folding field,
    # reaching down from the surface; white matter fills the rest, so it sends
    # fingers into the gyri between sulci.
    depth_mm = (0.835 - rho) * float(semi.mean())
    fold = smooth_noise(rng, shp, 3.0 * max(s, 0.5) * mm)
    sulcal_depth = (9.0 + 5.0 * smooth_noise(rng, shp, 10 * s * mm)) * max(s, 0.4)
    ribbon = 2.6 * max(s, 0.5)
    in_sulcus_zone = depth_mm < sulcal_depth
    labels[brain] = WM
    labels[brain & ((depth_mm < ribbon) | (in_sulcus_zone & (np.abs(fold) < 0.45)))] = GM
    labels[brain & in_sulcus_zone & (np.abs(fold) < 0.1) & (depth_mm < sulcal_depth - 1.0)] = CSF
    # Interhemispheric fissure above the deep nuclei.
    fissure = brain & (np.abs(x) < max(0.8, 1.2 * s)) & (z > zc - 0.15 * semi[2]) & (rho > 0.3)
    labels[fissure] = CSF
    # Deep grey nuclei (basal ganglia / thalami).
    for sx in (-1.0, 1.0):
        e = (
            ((x - sx * 14 * s) / (9 * s)) ** 2
            + ((y + 4 * s) / (14 * s)) ** 2
            + ((z - zc + 2 * s) / (9 * s)) ** 2
        )
        labels[brain & (e <= 1.0)] = DEEP_GM
    # Lateral ventricles (curved) and third ventricle.
    for sx in (-1.0, 1.0):
        bend = 6 * s * (y / (26 * s)) ** 2
        e = (
            ((x - sx * 8 * s) / (4.5 * s)) ** 2
            + (y / (27 * s)) ** 2
            + ((z - zc - 10 * s + bend) / (6.5 * s)) ** 2
        )
        labels[e <= 1.0] = VENTRICLE
    for sx in (-1.0, 1.0):  # choroid plexus in the atria of the lateral ventricles
        e = (
            ((x - sx * 8 * s) / (2.6 * s)) ** 2
            + ((y + 18 * s) / (5 * s)) ** 2
            + ((z - zc - 7 * s) / (2.6 * s)) ** 2
        )
        labels[(e <= 1.0) & (labels == VENTRICLE)] = CHOROID
    e3 = (x / max(1.2 * s, 0.7)) ** 2 + ((y + 2 * s) / (11 * s)) ** 2 + ((z - zc) / (7 * s)) ** 2
    labels[e3 <= 1.0] = VENTRICLE

    sigma_pv = 0.6
    contrasts = compose_contrasts(rng, labels, table, mm)
    wm_fraction = ndimage.gaussian_filter((labels == WM).astype(np.float32), sigma_pv)
    parenchyma = np.isin(labels, (GM, WM, DEEP_GM))
    depth = interior_depth_mm(parenchyma, spacing_mm)
    cortex = (labels == GM) & (depth_mm < sulcal_depth + ribbon)
    return Anatomy(
        affine=affine,
        labels=labels,
        contrasts=contrasts,
        wm_fraction=wm_fraction,
        parenchyma_depth_mm=depth,
        cortex_mask=cortex,
        head_scale=float(s),
        table=table,
        kind="phantom",
        brain_mask=labels >= CSF,
        cerebellum_mask=np.zeros(shp, dtype=bool),
        sulcal_csf=(labels == CSF).astype(np.float32),
    )


def compose_contrasts(
    rng: np.random.Generator,
    labels: np.ndarray,
    table: ContrastTable,
    voxels_per_mm: float,
    partials: dict[int, np.ndarray] | None = None,
) -> np.ndarray:
    """Clean contrasts of a tissue map: intensities, texture and partial-volume edges.

    Args:
        rng: Draws the texture field.
        labels: uint8 (X, Y, Z) tissue codes.
        table: Intensities per tissue and contrast.
        voxels_per_mm: Grid resolution (1 / spacing in mm).
        partials: Optional float32 (X, Y, Z) partial volumes by tissue code; where
            given they replace the hard labels of those tissues (each voxel's
            remaining fraction keeps its label's intensity).

    Returns:
        float32 (4, X, Y, Z) in MODALITIES order.
    """
    shp = labels.shape
    texture = smooth_noise(rng, shp, 1.2 * voxels_per_mm)
    tex = 1.0 + table.texture[labels] * texture
    contrasts = np.empty((len(MODALITIES), *shp), dtype=np.float32)
    rest = None
    if partials:
        rest = np.clip(1.0 - sum(partials.values()), 0.0, 1.0).astype(np.float32)
    for c in range(len(MODALITIES)):
        img = table.tissue[c][labels]
        if partials:
            mix = img * rest
            for code, frac in partials.items():
                mix += frac * table.tissue[c, code]
            img = mix
        img = img * tex
        contrasts[c] = ndimage.gaussian_filter(img, 0.6 if not partials else 0.4)
    return contrasts
