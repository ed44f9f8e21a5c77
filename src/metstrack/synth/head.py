"""A patient's head from real anatomy: the MNI ICBM152 2009 template, deformed per patient.

Each patient gets its own global scaling (per axis), a small rotation and a
smooth random nonlinear deformation, so no two brains are identical while the
folded cortex, cerebellum, brainstem, temporal lobes, deep grey nuclei and
ventricles all come from a real brain (:mod:`metstrack.synth.template`). Around
the brain, a thin subarachnoid CSF layer, dura, a skull with inner and outer
tables and marrow, and scalp are drawn as shells of per-patient thickness with a
smooth irregularity. Grids smaller than a 192 mm field of view hold the head
scaled to fit (``head_scale``), as in the phantom.

The mapping from a patient's world point ``p`` (mm) to template millimetres is
``q = HEAD_CENTRE + A (p / head_scale) + u(p)`` with ``A`` the inverse of the
patient's scaling and rotation and ``u`` the smooth displacement (mm).
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from metstrack.synth import template as tpl
from metstrack.synth.anatomy import (
    BONE,
    CHOROID,
    CSF,
    DEEP_GM,
    DURA,
    GM,
    MARROW,
    SCALP,
    VENTRICLE,
    WM,
    Anatomy,
    VesselTrunk,
    compose_contrasts,
    grid_affine,
    interior_depth_mm,
    smooth_noise,
)
from metstrack.synth.contrast import ContrastTable

#: Std (mm) of the nonlinear displacement and its smoothness (Gaussian sigma, mm).
WARP_STD_MM = 2.5
WARP_SIGMA_MM = 16.0


def _rotation(rng: np.random.Generator, max_deg: float) -> np.ndarray:
    axis = rng.standard_normal(3)
    axis /= np.linalg.norm(axis)
    ang = math.radians(rng.uniform(-max_deg, max_deg))
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + math.sin(ang) * k + (1 - math.cos(ang)) * (k @ k)


class _Warp:
    """Patient world (mm) -> template mm, with the displacement sampled on the patient grid."""

    def __init__(
        self,
        rng: np.random.Generator,
        affine: np.ndarray,
        shape: tuple[int, int, int],
        head_scale: float,
    ) -> None:
        self.affine = affine
        self.head_scale = head_scale
        scale = rng.uniform(0.86, 0.96) * rng.uniform(0.97, 1.03, 3)
        self.forward = _rotation(rng, 6.0) @ np.diag(scale)  # template -> patient (unscaled)
        self.inverse = np.linalg.inv(self.forward)
        spacing = float(np.linalg.norm(affine[:3, 0]))
        sigma_vox = WARP_SIGMA_MM * head_scale / spacing
        self.disp = np.stack(
            [WARP_STD_MM * smooth_noise(rng, shape, sigma_vox) for _ in range(3)]
        ).astype(np.float32)

    def template_voxels(self, tmap_affine: np.ndarray) -> np.ndarray:
        """Template voxel coordinates (3, X, Y, Z) of every patient voxel."""
        shape = self.disp.shape[1:]
        m = np.linalg.inv(tmap_affine)[:3, :3] @ self.inverse / self.head_scale
        lin = m @ self.affine[:3, :3]
        off = (
            np.linalg.inv(tmap_affine)[:3, :3]
            @ (self.inverse @ self.affine[:3, 3] / self.head_scale + tpl.HEAD_CENTRE_MM)
            + np.linalg.inv(tmap_affine)[:3, 3]
        )
        tinv = np.linalg.inv(tmap_affine)[:3, :3].astype(np.float32)
        idx = [np.arange(n, dtype=np.float32) for n in shape]
        out = np.empty((3, *shape), dtype=np.float32)
        for a in range(3):
            out[a] = (
                lin[a, 0] * idx[0][:, None, None]
                + lin[a, 1] * idx[1][None, :, None]
                + lin[a, 2] * idx[2][None, None, :]
                + off[a]
            )
            out[a] += (
                tinv[a, 0] * self.disp[0] + tinv[a, 1] * self.disp[1] + tinv[a, 2] * self.disp[2]
            )
        return out

    def to_patient_mm(self, q_mm: np.ndarray) -> np.ndarray:
        """Template mm (n, 3) -> patient world mm (n, 3), inverting the displacement."""
        q = np.asarray(q_mm, dtype=np.float64).reshape(-1, 3)
        inv_aff = np.linalg.inv(self.affine)
        p = self.head_scale * (q - tpl.HEAD_CENTRE_MM) @ self.forward.T
        for _ in range(6):
            vox = p @ inv_aff[:3, :3].T + inv_aff[:3, 3]
            u = np.stack(
                [ndimage.map_coordinates(d, vox.T, order=1, mode="nearest") for d in self.disp],
                axis=1,
            )
            p = self.head_scale * (q - u - tpl.HEAD_CENTRE_MM) @ self.forward.T
        return p


def _sample(vol: np.ndarray, coords: np.ndarray, *, order: int, cval: float) -> np.ndarray:
    return ndimage.map_coordinates(
        vol, coords, order=order, mode="constant", cval=cval, output=vol.dtype, prefilter=False
    )


def build_template_anatomy(
    rng: np.random.Generator, shape: int, spacing_mm: float, table: ContrastTable
) -> Anatomy:
    """Draw a patient's head from the template on a K^3 grid.

    Args:
        rng: The patient's anatomy generator.
        shape: Grid edge K (voxels).
        spacing_mm: Isotropic spacing (mm).
        table: The patient's intensities.

    Returns:
        The :class:`~metstrack.synth.anatomy.Anatomy` (``kind='template'``).
    """
    T = tpl.load_template()
    shp = (shape, shape, shape)
    affine = grid_affine(shape, spacing_mm)
    s = shape * spacing_mm / 192.0
    mm = 1.0 / spacing_mm
    warp = _Warp(rng, affine, shp, s)
    coords = warp.template_voxels(T.affine)
    gm = _sample(T.gm, coords, order=1, cval=0.0)
    wm = _sample(T.wm, coords, order=1, cval=0.0)
    csf = _sample(T.csf, coords, order=1, cval=0.0)
    brain = _sample(T.brain, coords, order=1, cval=0.0)
    outside = _sample(T.outside_mm, coords, order=1, cval=99.0)
    regions = _sample(T.regions, coords, order=0, cval=0)
    del coords

    # Shells around the brain (template mm, so they scale with the head), with a
    # per-patient thickness and a smooth irregularity.
    wobble = 1.0 + 0.18 * smooth_noise(rng, shp, 20.0 * s * mm)
    d = outside / wobble
    t_csf = rng.uniform(1.0, 2.2)
    t_dura = t_csf + rng.uniform(0.6, 1.0)
    t_inner = t_dura + rng.uniform(1.2, 2.2)
    t_marrow = t_inner + rng.uniform(1.5, 3.5)
    t_outer = t_marrow + rng.uniform(1.2, 2.2)
    t_scalp = t_outer + rng.uniform(4.0, 7.0)
    labels = np.zeros(shp, dtype=np.uint8)
    labels[d <= t_scalp] = SCALP
    labels[d <= t_outer] = BONE
    labels[(d <= t_marrow) & (d > t_inner)] = MARROW
    labels[d <= t_dura] = DURA
    labels[d <= t_csf] = CSF
    inside = brain >= 0.5
    labels[inside] = CSF
    tissue_max = np.maximum(gm, wm)
    labels[inside & (gm >= wm) & (gm >= csf)] = GM
    labels[inside & (wm > gm) & (wm >= csf)] = WM
    vent = regions == tpl.REGION_VENTRICLE
    choroid = regions == tpl.REGION_CHOROID
    deep = regions == tpl.REGION_DEEP_GM
    labels[inside & deep & (gm >= wm) & (gm >= csf)] = DEEP_GM
    labels[inside & (vent | choroid) & (csf >= tissue_max)] = VENTRICLE
    labels[inside & choroid & (csf >= tissue_max)] = CHOROID

    deep_f = deep.astype(np.float32)
    vent_f = (vent | choroid).astype(np.float32)
    chor = labels == CHOROID
    partials = {
        GM: gm * (1.0 - deep_f),
        DEEP_GM: gm * deep_f,
        WM: wm,
        CSF: csf * (1.0 - vent_f),
        VENTRICLE: csf * vent_f,
    }
    for frac in partials.values():
        frac[chor] = 0.0
    contrasts = compose_contrasts(rng, labels, table, mm, partials)
    wm_fraction = ndimage.gaussian_filter(wm, 0.5)
    parenchyma = np.isin(labels, (GM, WM, DEEP_GM))
    depth = interior_depth_mm(parenchyma, spacing_mm)
    sulcal = np.where(inside, csf * (1.0 - vent_f), 0.0).astype(np.float32)
    sulcal[(labels == CSF) & ~inside] = 1.0
    cortex = (labels == GM) & (interior_depth_mm(inside, spacing_mm) < 6.0 * max(s, 0.3))
    return Anatomy(
        affine=affine,
        labels=labels,
        contrasts=contrasts,
        wm_fraction=wm_fraction,
        parenchyma_depth_mm=depth,
        cortex_mask=cortex,
        head_scale=float(s),
        table=table,
        kind="template",
        brain_mask=inside,
        cerebellum_mask=inside & (regions == tpl.REGION_CEREBELLUM),
        sulcal_csf=sulcal,
        trunks=_trunks(warp, T),
    )


def _trunks(warp: _Warp, T: tpl.TemplateMaps) -> tuple[VesselTrunk, ...]:
    s = warp.head_scale
    out: list[VesselTrunk] = []
    for name, pts, rad in tpl.ARTERY_TRUNKS:
        out.append(VesselTrunk(name, "artery", warp.to_patient_mm(pts), rad * s))
    for name, pts, rad in tpl.DEEP_VEINS:
        kind = "sinus" if "sinus" in name else "vein"
        out.append(VesselTrunk(name, kind, warp.to_patient_mm(pts), rad * s))
    bounds = [*T.sinus_breaks.tolist(), len(T.sinus_mm)]
    names = ["superior_sagittal_sinus", "transverse_sinus_left", "transverse_sinus_right"]
    for k in range(len(bounds) - 1):
        a, b = bounds[k], bounds[k + 1]
        if b - a < 2:
            continue
        out.append(
            VesselTrunk(
                names[k] if k < len(names) else f"sinus_{k}",
                "sinus",
                warp.to_patient_mm(T.sinus_mm[a:b]),
                T.sinus_radius_mm[a:b] * s,
            )
        )
    return tuple(out)
