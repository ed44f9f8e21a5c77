"""Real brain anatomy for the synthetic cohort: the MNI ICBM152 2009 template inside nilearn.

The nilearn wheel ships three 1 mm maps of the ICBM 2009a nonlinear symmetric
template (``nilearn/datasets/data/mni_icbm152_{t1,gm,wm}_tal_nlin_sym_09a_converted.nii.gz``:
a brain-extracted T1 and grey- and white-matter probability maps, 197 x 233 x 189
voxels). They are read from the installed package, never downloaded. Licence: the
ICBM 2009 templates are Copyright (C) 1993-2009 Louis Collins, McConnell Brain
Imaging Centre, Montreal Neurological Institute, McGill University, free to use,
copy and distribute with this notice (see ``docs/synth.md`` for the citation:
Fonov et al., NeuroImage 2011; Fonov et al., NeuroImage 2009).

:func:`load_template` derives, once per process, what the generator needs in
template space: partial volumes of grey matter, white matter and CSF inside
the brain, the distance outside the brain (skull and scalp shells are drawn
from it per patient), and masks of the ventricles, the choroid plexus of the
atria, the deep grey nuclei, the cerebellum and brainstem. Anchor points of
the large vessels (circle of Willis, sinuses, deep veins) are given in template
millimetres (:data:`ARTERY_TRUNKS`, :func:`sinus_paths_mm`).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from metstrack.errors import MetstrackError

#: File names of the template maps inside ``nilearn/datasets/data``.
TEMPLATE_FILES = {
    "t1": "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
    "gm": "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
    "wm": "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
}

#: Template point (mm) that lands on the centre of a patient's grid: the middle of
#: the brain in x and y, raised in z so that the skull vertex fits the field of view.
HEAD_CENTRE_MM = np.array([0.0, -17.0, 9.0])

# Region codes of :attr:`TemplateMaps.regions`.
REGION_NONE, REGION_VENTRICLE, REGION_CHOROID, REGION_DEEP_GM, REGION_CEREBELLUM = range(5)

#: Large arteries as template-mm polylines (radius mm at each point). Cortical
#: branches grow from their ends and from points along them (see
#: :mod:`metstrack.synth.vessels`): internal carotid termini, M1 segments of the
#: middle cerebral arteries into the Sylvian fissures, anterior cerebral and
#: pericallosal arteries over the corpus callosum, posterior cerebral arteries
#: around the midbrain, and the basilar artery.
ARTERY_TRUNKS: tuple[tuple[str, np.ndarray, np.ndarray], ...] = tuple(
    (name, np.asarray(pts, dtype=np.float64), np.asarray(rad, dtype=np.float64))
    for name, pts, rad in [
        ("ica_left", [(-16, 4, -34), (-14, 2, -22), (-12, 1, -14)], [2.0, 1.9, 1.7]),
        ("ica_right", [(16, 4, -34), (14, 2, -22), (12, 1, -14)], [2.0, 1.9, 1.7]),
        (
            "mca_left",
            [(-12, 1, -14), (-24, 3, -12), (-34, 4, -8), (-39, 2, -2)],
            [1.5, 1.4, 1.3, 1.1],
        ),
        ("mca_right", [(12, 1, -14), (24, 3, -12), (34, 4, -8), (39, 2, -2)], [1.5, 1.4, 1.3, 1.1]),
        (
            "aca_left",
            [
                (-6, 8, -12),
                (-3, 22, -6),
                (-3, 34, 6),
                (-3, 32, 22),
                (-3, 14, 32),
                (-3, -10, 36),
                (-3, -32, 34),
                (-3, -48, 26),
            ],
            [1.1, 1.0, 1.0, 0.95, 0.9, 0.85, 0.8, 0.7],
        ),
        (
            "aca_right",
            [
                (6, 8, -12),
                (3, 22, -6),
                (3, 34, 6),
                (3, 32, 22),
                (3, 14, 32),
                (3, -10, 36),
                (3, -32, 34),
                (3, -48, 26),
            ],
            [1.1, 1.0, 1.0, 0.95, 0.9, 0.85, 0.8, 0.7],
        ),
        ("basilar", [(0, -22, -44), (0, -20, -30), (0, -18, -18)], [1.5, 1.5, 1.4]),
        (
            "pca_left",
            [(0, -18, -18), (-10, -22, -14), (-20, -36, -8), (-22, -58, -2), (-16, -78, 4)],
            [1.2, 1.1, 1.0, 0.9, 0.8],
        ),
        (
            "pca_right",
            [(0, -18, -18), (10, -22, -14), (20, -36, -8), (22, -58, -2), (16, -78, 4)],
            [1.2, 1.1, 1.0, 0.9, 0.8],
        ),
    ]
)

#: Deep veins as template-mm polylines (radius mm): paired internal cerebral veins
#: over the thalami into the vein of Galen, then the straight sinus to the torcula.
DEEP_VEINS: tuple[tuple[str, np.ndarray, np.ndarray], ...] = tuple(
    (name, np.asarray(pts, dtype=np.float64), np.asarray(rad, dtype=np.float64))
    for name, pts, rad in [
        (
            "icv_left",
            [(-3, 0, 16), (-3, -14, 19), (-2, -28, 16), (0, -40, 10)],
            [0.9, 1.0, 1.1, 1.4],
        ),
        ("icv_right", [(3, 0, 16), (3, -14, 19), (2, -28, 16), (0, -40, 10)], [0.9, 1.0, 1.1, 1.4]),
        ("straight_sinus", [(0, -40, 10), (0, -60, 4), (0, -80, -2)], [2.0, 2.2, 2.5]),
    ]
)


@dataclass(frozen=True, eq=False)
class TemplateMaps:
    """The template and what the generator derives from it, in template space.

    Attributes:
        affine: float64 (4, 4) voxel-to-world (MNI mm, RAS+) of every map.
        gm, wm, csf: float32 (X, Y, Z) partial volumes inside the brain envelope
            (sum ``brain``); ``csf`` holds the sulcal CSF and the ventricles.
        brain: float32 (X, Y, Z) brain envelope (brain tissue and the CSF inside it), 0..1.
        outside_mm: float32 (X, Y, Z) distance (mm) from the brain envelope, 0 inside.
        regions: uint8 (X, Y, Z) region codes (``REGION_*``).
        sinus_mm: float64 (n, 3) points of the superior sagittal and transverse
            sinuses along the brain surface (template mm), with
        sinus_radius_mm: float64 (n,) their radii.
        sinus_breaks: int64 indices where a new sinus polyline starts in ``sinus_mm``.
    """

    affine: np.ndarray
    gm: np.ndarray
    wm: np.ndarray
    csf: np.ndarray
    brain: np.ndarray
    outside_mm: np.ndarray
    regions: np.ndarray
    sinus_mm: np.ndarray
    sinus_radius_mm: np.ndarray
    sinus_breaks: np.ndarray


def template_folder() -> Path:
    """The folder of nilearn's bundled template maps (the package is not imported).

    Raises:
        MetstrackError: nilearn is not installed or lacks the maps.
    """
    spec = importlib.util.find_spec("nilearn")
    if spec is None or spec.origin is None:
        raise MetstrackError(
            "the template anatomy needs the nilearn package (it ships the MNI ICBM152 maps); "
            "install metstrack with its dependencies, or use anatomy='phantom'"
        )
    folder = Path(spec.origin).parent / "datasets" / "data"
    missing = [f for f in TEMPLATE_FILES.values() if not (folder / f).is_file()]
    if missing:
        raise MetstrackError(
            f"{folder}: the nilearn installation lacks {', '.join(missing)}; reinstall "
            "nilearn==0.14.1 or use anatomy='phantom'"
        )
    return folder


def _read(name: str) -> tuple[np.ndarray, np.ndarray]:
    img = nib.load(template_folder() / TEMPLATE_FILES[name])
    return np.asarray(img.dataobj, dtype=np.float32), np.asarray(img.affine, dtype=np.float64)


def _world(affine: np.ndarray, shape: tuple[int, ...]) -> tuple[np.ndarray, ...]:
    axes = [
        np.arange(n, dtype=np.float32) * float(affine[i, i]) + float(affine[i, 3])
        for i, n in enumerate(shape)
    ]
    return np.meshgrid(*axes, indexing="ij", sparse=True)


@lru_cache(maxsize=1)
def load_template() -> TemplateMaps:
    """Read the template maps and derive the generator's maps (cached per process)."""
    t1, affine = _read("t1")
    gm, _ = _read("gm")
    wm, _ = _read("wm")
    gm /= 255.0
    wm /= 255.0
    inside = t1 > 0
    # Fill pin holes of the brain-extracted T1 so the envelope is one solid body.
    inside = ndimage.binary_closing(inside, iterations=2)
    inside = ndimage.binary_fill_holes(inside)
    brain = ndimage.gaussian_filter(inside.astype(np.float32), 0.5)
    brain[inside] = np.maximum(brain[inside], 0.5)
    gm = np.minimum(gm, brain)
    wm = np.minimum(wm, brain - gm)
    csf = np.clip(brain - gm - wm, 0.0, 1.0)
    spacing = float(abs(affine[0, 0]))
    outside_mm = ndimage.distance_transform_edt(~inside, sampling=spacing).astype(np.float32)
    depth_mm = ndimage.distance_transform_edt(inside, sampling=spacing).astype(np.float32)
    x, y, z = _world(affine, inside.shape)

    regions = np.zeros(inside.shape, dtype=np.uint8)
    # Cerebellum below the tentorium, and the brainstem in front of it.
    cerebellum = (y < -42.0) & (z < -12.0)
    brainstem = (np.abs(x) < 14.0) & (y >= -42.0) & (y < -12.0) & (z < -12.0)
    infratentorial = inside & (cerebellum | brainstem)
    regions[infratentorial] = REGION_CEREBELLUM
    # Deep grey nuclei: grey matter deep in the hemispheres around the third ventricle.
    deep_box = (np.abs(x) < 32) & (y > -38) & (y < 26) & (z > -12) & (z < 22)
    regions[(gm > 0.45) & (depth_mm > 18.0) & deep_box & ~infratentorial] = REGION_DEEP_GM
    # Ventricles: CSF far from the surface, as connected bodies near the midline.
    # (Not the interhemispheric fissure above the corpus callosum, which is deep too.)
    fissure = (np.abs(x) < 4.0) & (z > 17.0)
    vent = (csf > 0.55) & (depth_mm > 9.0) & (np.abs(x) < 40) & (y > -60) & (y < 40) & (z > -30)
    vent &= ~fissure & ~infratentorial
    lab, n = ndimage.label(vent)
    if n:
        sizes = ndimage.sum_labels(vent, lab, index=np.arange(1, n + 1))
        keep = np.flatnonzero(sizes >= 200) + 1
        vent = np.isin(lab, keep)
    regions[vent] = REGION_VENTRICLE
    # Choroid plexus: the glomus in each atrium (trigone) and along the floor of the bodies.
    atrium = (np.abs(x) > 14) & (np.abs(x) < 36) & (y > -46) & (y < -22) & (z > 2) & (z < 26)
    body_floor = (np.abs(x) < 20) & (y > -24) & (y < 0) & (z > 8) & (z < 18)
    regions[vent & (atrium | body_floor) & (csf > 0.6)] = REGION_CHOROID

    sinus, radius, breaks = _sinus_paths(inside, affine)
    return TemplateMaps(
        affine=affine,
        gm=gm.astype(np.float32),
        wm=wm.astype(np.float32),
        csf=csf.astype(np.float32),
        brain=brain.astype(np.float32),
        outside_mm=outside_mm,
        regions=regions,
        sinus_mm=sinus,
        sinus_radius_mm=radius,
        sinus_breaks=breaks,
    )


def _surface_along_ray(
    inside: np.ndarray, affine: np.ndarray, origin: np.ndarray, direction: np.ndarray
) -> np.ndarray | None:
    """Outermost brain point (mm) along a ray from ``origin``, or None."""
    inv = np.linalg.inv(affine)
    steps = np.arange(0.0, 140.0, 0.5)
    pts = origin[None] + steps[:, None] * direction[None]
    vox = np.rint(pts @ inv[:3, :3].T + inv[:3, 3]).astype(int)
    ok = np.all((vox >= 0) & (vox < np.array(inside.shape)), axis=1)
    hit = np.zeros(len(steps), dtype=bool)
    hit[ok] = inside[vox[ok, 0], vox[ok, 1], vox[ok, 2]]
    if not hit.any():
        return None
    return pts[np.flatnonzero(hit)[-1]]


def _sinus_paths(
    inside: np.ndarray, affine: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Superior sagittal sinus over the midline and the transverse sinuses, in template mm."""
    centre = np.array([0.0, -18.0, 4.0])
    pts, rads, breaks = [], [], [0]
    # Superior sagittal sinus: from the frontal pole over the vertex to the occiput,
    # 3 mm outside the brain surface (in the falx, under the skull).
    for ang in np.linspace(np.radians(-15), np.radians(200), 70):
        d = np.array([0.0, np.cos(ang), np.sin(ang)])
        s = _surface_along_ray(inside, affine, centre, d)
        if s is None:
            continue
        pts.append(s + d * 3.5)
        frac = (ang + np.radians(15)) / np.radians(215)
        rads.append(1.6 + 2.6 * frac)
    torcula = pts[-1] if pts else np.array([0.0, -100.0, -5.0])
    # Transverse sinuses: from the torcula laterally along the tentorial margin.
    for sx in (-1.0, 1.0):
        breaks.append(len(pts))
        for ang in np.linspace(np.radians(0), np.radians(75), 22):
            d = np.array([sx * np.sin(ang), -np.cos(ang), -0.25])
            d /= np.linalg.norm(d)
            s = _surface_along_ray(inside, affine, np.array([0.0, -40.0, float(torcula[2])]), d)
            if s is None:
                continue
            pts.append(s + d * 2.5)
            rads.append(3.2 - 0.8 * ang / np.radians(75))
    return (
        np.asarray(pts, dtype=np.float64).reshape(-1, 3),
        np.asarray(rads, dtype=np.float64),
        np.asarray(breaks, dtype=np.int64),
    )
