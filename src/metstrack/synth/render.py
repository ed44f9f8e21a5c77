"""Lesion and vessel geometry, rigid motion, and rendering of one study.

Each study is rendered directly on the patient's scanner grid: the clean
baseline anatomy (vessels baked in, see :func:`bake_vessels`) is resampled
through ``inverse(baseline_to_study)``, and lesions are drawn analytically at
their moved positions, so the instance map and the images agree voxel for voxel.

Lesions look like metastases: the outline is a lobulated, noise-deformed
surface (random radial harmonics and a band of 3D cosine noise in the
lesion's own frame, so a lesion keeps its shape as it grows or shrinks); small
ones are solid nodules; large ones (equivalent radius >= 4 mm) usually have an
eccentric, irregular necrotic or cystic core inside a thick, uneven enhancing
rim. Vasogenic oedema spreads irregularly along white matter. Vessels never
change and are never labelled.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
from scipy import ndimage

from metstrack.core.spatial import resample_array
from metstrack.synth.anatomy import Anatomy, smooth_noise
from metstrack.synth.contrast import StudyAppearance
from metstrack.synth.vessels import (
    VesselSegments,
    grow_vessels,
    place_bait,
    rasterize_vessels,
)
from metstrack.types import MODALITIES

#: Written intensity of T1 white matter.
INTENSITY_SCALE = 1000.0
#: Rician noise std relative to T1 white matter (clinical contrast).
NOISE_STD = 0.025
#: Lesions with an equivalent radius at least this large (mm) may have a necrotic core.
NECROSIS_MIN_RADIUS_MM = 4.0
#: Radial harmonics and cosine-noise terms of a lesion outline.
N_LOBES = 8
N_WAVES = 6


@dataclass(frozen=True, eq=False)
class Geometry:
    """Where a patient's lesions and vessels are, in baseline world coordinates (mm).

    Attributes:
        centres_mm: float64 (n_lesions, 3) lesion centres.
        orientations: float64 (n_lesions, 3, 3) lesion axes (columns).
        axes: float64 (n_lesions, 3) relative semi-axes (product 1).
        lobe_dirs: float64 (n_lesions, N_LOBES, 3) unit vectors of the radial harmonics.
        lobe_amp: float64 (n_lesions, N_LOBES) their amplitudes (larger for large lesions).
        wave_vecs: float64 (n_lesions, N_WAVES, 3) wave vectors of the outline noise
            (per lesion radius, so the shape is scale invariant).
        wave_phase: float64 (n_lesions, N_WAVES) their phases.
        wave_amp: float64 (n_lesions,) amplitude of the outline noise.
        core_fraction: float64 (n_lesions,) core radius relative to the lesion (0: solid).
        core_offset: float64 (n_lesions, 3) core centre offset relative to the lesion radius.
        core_cystic: bool (n_lesions,) the core is a cyst (fluid) rather than necrosis.
        core_lobe_amp: float64 (n_lesions, N_LOBES) the core's own radial harmonics.
        core_wave_phase: float64 (n_lesions, N_WAVES) the core's own outline noise phases,
            so the enhancing rim is thick and uneven.
        oedema_gain: float64 (n_lesions,) oedema extent relative to the lesion radius.
        oedema_lobe_amp: float64 (n_lesions, N_LOBES) lobulation of the oedema outline.
        vessels: The vessel segments.
    """

    centres_mm: np.ndarray
    orientations: np.ndarray
    axes: np.ndarray
    lobe_dirs: np.ndarray
    lobe_amp: np.ndarray
    wave_vecs: np.ndarray
    wave_phase: np.ndarray
    wave_amp: np.ndarray
    core_fraction: np.ndarray
    core_offset: np.ndarray
    core_cystic: np.ndarray
    core_lobe_amp: np.ndarray
    core_wave_phase: np.ndarray
    oedema_gain: np.ndarray
    oedema_lobe_amp: np.ndarray
    vessels: VesselSegments

    @property
    def vessel_start_mm(self) -> np.ndarray:
        """float64 (n_vessels, 3) segment starts."""
        return self.vessels.start_mm

    @property
    def vessel_end_mm(self) -> np.ndarray:
        """float64 (n_vessels, 3) segment ends."""
        return self.vessels.end_mm

    @property
    def vessel_radius_mm(self) -> np.ndarray:
        """float64 (n_vessels,) segment radii."""
        return self.vessels.radius_mm


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    q = rng.standard_normal(4)
    q /= np.linalg.norm(q)
    w, x, y, z = q
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )


def random_motion(rng: np.random.Generator, max_deg: float, max_mm: float) -> np.ndarray:
    """A rigid ``baseline_to_study`` world transform about the grid centre (world origin).

    Rotation about a uniformly random axis by an angle uniform in [0, max_deg],
    translation in a uniformly random direction with length uniform in [0, max_mm].

    Returns:
        float64 (4, 4) matrix ``p -> R p + t``.
    """
    axis = rng.standard_normal(3)
    axis /= np.linalg.norm(axis)
    angle = math.radians(rng.uniform(0.0, max_deg))
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    r = np.eye(3) + math.sin(angle) * k + (1 - math.cos(angle)) * (k @ k)
    direction = rng.standard_normal(3)
    direction /= np.linalg.norm(direction)
    t = np.eye(4)
    t[:3, :3] = r
    t[:3, 3] = direction * rng.uniform(0.0, max_mm)
    return t


def equivalent_radius_mm(volume_mm3: np.ndarray | float) -> np.ndarray:
    """Radius (mm) of a sphere of the given volume (mm3)."""
    return np.cbrt(3.0 * np.asarray(volume_mm3, dtype=np.float64) / (4.0 * math.pi))


def place_geometry(
    rng: np.random.Generator, anatomy: Anatomy, max_volume_mm3: np.ndarray, *, vessels: bool
) -> Geometry:
    """Place lesions (largest first, not overlapping) in brain parenchyma, then the vessels.

    Metastases favour the grey-white junction (weight by white-matter partial
    volume times its complement), and the cerebellum gets a realistic share
    (its weight is raised 1.5x). Vessels avoid every lesion.

    Args:
        rng: The patient's geometry generator.
        anatomy: The baseline head.
        max_volume_mm3: float64 (n_lesions,) largest volume each lesion reaches.
        vessels: Draw vessels (the vascular tree on a template anatomy, dots and
            short tubes on the phantom).
    """
    n = int(max_volume_mm3.size)
    aff = anatomy.affine
    depth = anatomy.parenchyma_depth_mm
    cand = np.flatnonzero(depth.ravel() > 1.0)
    if cand.size > 150_000:
        cand = rng.choice(cand, 150_000, replace=False)
    cand_vox = np.stack(np.unravel_index(cand, depth.shape), axis=1).astype(np.float64)
    cand_mm = cand_vox @ aff[:3, :3].T + aff[:3, 3]
    cand_depth = depth.ravel()[cand]
    wm_near = np.clip(anatomy.wm_fraction.ravel()[cand], 0, 1)
    weight = 0.3 + wm_near * (1 - wm_near) * 4
    if anatomy.cerebellum_mask is not None:
        weight = weight * np.where(anatomy.cerebellum_mask.ravel()[cand], 1.5, 1.0)

    r_max = equivalent_radius_mm(max_volume_mm3) * 1.45 + 0.5
    centres = np.zeros((n, 3))
    placed: list[int] = []
    for i in np.argsort(-r_max, kind="stable"):
        ok = cand_depth >= r_max[i] * 0.8 + 1.0
        if placed:
            d = np.linalg.norm(cand_mm[:, None, :] - centres[placed][None, :, :], axis=2)
            ok &= np.all(d >= r_max[placed][None, :] + r_max[i] + 1.5, axis=1)
        if ok.any():
            w = weight * ok
            k = int(rng.choice(cand.size, p=w / w.sum()))
        else:  # crowded: take the deepest spot farthest from the others
            score = cand_depth.copy()
            if placed:
                d = np.linalg.norm(cand_mm[:, None, :] - centres[placed][None, :, :], axis=2)
                score = score + d.min(axis=1)
            k = int(np.argmax(score))
        centres[i] = cand_mm[k]
        placed.append(int(i))

    radius = equivalent_radius_mm(max_volume_mm3) if n else np.zeros(0)
    big = np.clip((radius - 2.0) / 6.0, 0.0, 1.0)  # 0 for nodules, 1 from ~8 mm radius
    orient = np.stack([_random_rotation(rng) for _ in range(n)]) if n else np.zeros((0, 3, 3))
    axes = rng.uniform(0.75, 1.3, (n, 3))
    axes /= np.cbrt(axes.prod(axis=1))[:, None]
    lobe_dirs = rng.standard_normal((n, N_LOBES, 3))
    lobe_dirs /= np.linalg.norm(lobe_dirs, axis=2, keepdims=True)
    lobe_amp = rng.normal(0.0, 1.0, (n, N_LOBES)) * (0.1 + 0.25 * big)[:, None]
    wave_vecs = rng.standard_normal((n, N_WAVES, 3))
    wave_vecs *= rng.uniform(1.5, 4.0, (n, N_WAVES, 1)) / np.linalg.norm(
        wave_vecs, axis=2, keepdims=True
    )
    wave_phase = rng.uniform(0, 2 * np.pi, (n, N_WAVES))
    wave_amp = (0.05 + 0.2 * big) * rng.uniform(0.6, 1.3, n)
    necrotic = rng.random(n) < 0.75
    core = np.where(necrotic, rng.uniform(0.35, 0.75, n), 0.0)
    core_dir = rng.standard_normal((n, 3))
    core_dir /= np.maximum(np.linalg.norm(core_dir, axis=1, keepdims=True), 1e-9)
    core_offset = core_dir * rng.uniform(0.0, 0.3, (n, 1)) * (core > 0)[:, None]
    cystic = (rng.random(n) < 0.3) & (core > 0)
    core_lobe_amp = rng.normal(0.0, 0.3, (n, N_LOBES))
    core_wave_phase = rng.uniform(0, 2 * np.pi, (n, N_WAVES))
    oedema = rng.uniform(0.8, 2.8, n)
    oedema_lobes = rng.normal(0.0, 0.25, (n, N_LOBES))

    if not vessels:
        segs = VesselSegments.empty()
    elif anatomy.trunks:
        segs = grow_vessels(rng, anatomy, centres, r_max)
    else:
        segs = place_bait(rng, anatomy, centres, r_max)
    return Geometry(
        centres_mm=centres,
        orientations=orient,
        axes=axes,
        lobe_dirs=lobe_dirs,
        lobe_amp=lobe_amp,
        wave_vecs=wave_vecs,
        wave_phase=wave_phase,
        wave_amp=wave_amp,
        core_fraction=core,
        core_offset=core_offset,
        core_cystic=cystic,
        core_lobe_amp=core_lobe_amp,
        core_wave_phase=core_wave_phase,
        oedema_gain=oedema,
        oedema_lobe_amp=oedema_lobes,
        vessels=segs,
    )


@dataclass(frozen=True, eq=False)
class BakedAnatomy:
    """The baseline head with its vessels drawn in.

    Attributes:
        anatomy: The head (``contrasts`` include the vessels).
        vessel_alpha: float32 (X, Y, Z) vessel fraction of each voxel.
    """

    anatomy: Anatomy
    vessel_alpha: np.ndarray


def bake_vessels(anatomy: Anatomy, geometry: Geometry) -> BakedAnatomy:
    """Draw the (persistent) vessels into the clean baseline contrasts."""
    shape = anatomy.labels.shape
    alpha, sinus = rasterize_vessels(geometry.vessels, anatomy.affine, shape)
    if not alpha.any():
        return BakedAnatomy(anatomy, alpha)
    table = anatomy.table
    contrasts = anatomy.contrasts.copy()
    for c in range(len(MODALITIES)):
        val = np.where(sinus, table.sinus[c], table.artery[c]).astype(np.float32)
        contrasts[c] = contrasts[c] * (1 - alpha) + alpha * val
    return BakedAnatomy(replace(anatomy, contrasts=contrasts), alpha)


def _box(centre_vox: np.ndarray, half: float, shape: tuple[int, ...]) -> tuple[slice, ...] | None:
    lo = np.maximum(np.floor(centre_vox - half).astype(int), 0)
    hi = np.minimum(np.ceil(centre_vox + half).astype(int) + 1, shape)
    if np.any(hi <= lo):
        return None
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))


def _box_offsets(
    box: tuple[slice, ...], affine: np.ndarray, origin_mm: np.ndarray, dtype=np.float64
) -> np.ndarray:
    """World offsets (bx, by, bz, 3) in mm of the voxels of a box from ``origin_mm``."""
    axes = [np.arange(b.start, b.stop, dtype=dtype) for b in box]
    idx = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1)
    lin = affine[:3, :3].T.astype(dtype)
    return idx @ lin + (affine[:3, 3] - origin_mm).astype(dtype)


@dataclass(frozen=True, eq=False)
class RenderedStudy:
    """One rendered study on the patient's baseline grid, moved by the study's motion.

    Attributes:
        images: float32 (4, X, Y, Z) T1, CT1, T2, FLAIR (T1 white matter ~1000).
        instances: int16 (X, Y, Z) lesion IDs (1-based, patient-wide), 0 background.
        vessel_mask: bool (X, Y, Z) voxels mostly inside a vessel (never labelled).
        brain_mask: bool (X, Y, Z) brain envelope (what skull stripping keeps).
        lesion_volume_mm3: float64 (n_lesions,) rendered volume of each lesion.
    """

    images: np.ndarray
    instances: np.ndarray
    vessel_mask: np.ndarray
    brain_mask: np.ndarray
    lesion_volume_mm3: np.ndarray


def _wm_in_box(anatomy: Anatomy, box: tuple[slice, ...], inv: np.ndarray | None) -> np.ndarray:
    """White-matter fraction on a box of the study grid (moved back to the baseline)."""
    if inv is None:
        return anatomy.wm_fraction[box]
    aff = anatomy.affine
    axes = [np.arange(b.start, b.stop, dtype=np.float64) for b in box]
    idx = np.stack(np.meshgrid(*axes, indexing="ij"), axis=0).reshape(3, -1)
    m = np.linalg.inv(aff) @ inv @ aff
    src = m[:3, :3] @ idx + m[:3, 3:4]
    out = ndimage.map_coordinates(anatomy.wm_fraction, src, order=1, mode="constant", cval=0.0)
    return out.reshape(tuple(len(a) for a in axes)).astype(np.float32)


def _outline(
    geometry: Geometry, i: int, d: np.ndarray, r: float, *, core: bool = False
) -> np.ndarray:
    """Normalised radius ``rho`` (1 on the outline) of lesion ``i`` at baseline-frame offsets ``d``.

    The outline radius in direction ``u`` is ``r (1 + sum_k a_k c_k |c_k| + w)``
    with ``c_k = u . dir_k`` (lobulation) and ``w`` a band of 3D cosine noise in
    units of the lesion radius (irregularity); the core has its own terms.
    """
    e = (d @ geometry.orientations[i]) / geometry.axes[i]
    norm = np.linalg.norm(e, axis=-1)
    u = e / np.maximum(norm, 1e-9)[..., None]
    cosines = u @ geometry.lobe_dirs[i].T
    amp = geometry.core_lobe_amp[i] if core else geometry.lobe_amp[i]
    phase = geometry.core_wave_phase[i] if core else geometry.wave_phase[i]
    lobes = 1.0 + (cosines * np.abs(cosines)) @ amp
    waves = np.cos((d / max(r, 1e-6)) @ geometry.wave_vecs[i].T + phase)
    lobes += geometry.wave_amp[i] * waves.sum(axis=-1) / np.sqrt(N_WAVES / 2.0)
    return norm / (r * np.maximum(lobes, 0.35))


def render_study(
    baked: BakedAnatomy,
    geometry: Geometry,
    volumes_mm3: np.ndarray,
    baseline_to_study: np.ndarray,
    rng: np.random.Generator,
    appearance: StudyAppearance | None = None,
) -> RenderedStudy:
    """Render one study (see the module docstring).

    Args:
        baked: Baseline head with its vessels (:func:`bake_vessels`).
        geometry: Lesion and vessel placement (baseline world, mm).
        volumes_mm3: float64 (n_lesions,) planned lesion volumes at this study.
        baseline_to_study: float64 (4, 4) rigid world transform of this study.
        rng: Generator for this study's texture, bias field and noise.
        appearance: Gamma, bias, noise and blur of this study (clinical defaults).
    """
    app = appearance or StudyAppearance()
    anatomy = baked.anatomy
    table = anatomy.table
    aff = anatomy.affine
    shape = anatomy.labels.shape
    t = np.asarray(baseline_to_study, dtype=np.float64)
    rot = t[:3, :3]
    brain0 = anatomy.brain_mask if anatomy.brain_mask is not None else anatomy.labels > 0
    # Brain envelope (bit 0) and vessel cores (bit 1) travel as one label map.
    masks0 = brain0.astype(np.uint8) | ((baked.vessel_alpha >= 0.5).astype(np.uint8) << 1)
    moved = not np.allclose(t, np.eye(4))
    inv = np.linalg.inv(t)
    if moved:
        images = np.stack(
            [resample_array(c, aff, shape, aff, transform=inv, order=1) for c in anatomy.contrasts]
        )
        masks = resample_array(masks0, aff, shape, aff, transform=inv, order=0)
    else:
        images = anatomy.contrasts.copy()
        masks = masks0
    brain = (masks & 1) > 0
    inv_aff = np.linalg.inv(aff)
    spacing = float(np.linalg.norm(aff[:3, 0]))
    vox_mm3 = float(abs(np.linalg.det(aff[:3, :3])))
    instances = np.zeros(shape, dtype=np.int16)
    n = int(volumes_mm3.size)
    rendered = np.zeros(n)
    oedema = np.zeros(shape, dtype=np.float32)
    lesion_alpha: list[tuple[tuple[slice, ...], np.ndarray, np.ndarray, bool, np.ndarray]] = []

    for i in range(n):
        v = float(volumes_mm3[i])
        n_vox = int(round(v / vox_mm3))
        if n_vox < 1:
            continue
        r = float(equivalent_radius_mm(v))
        c_study = rot @ geometry.centres_mm[i] + t[:3, 3]
        c_vox = inv_aff[:3, :3] @ c_study + inv_aff[:3, 3]
        r_oed = r * (1 + geometry.oedema_gain[i]) + 2.0 if v >= 30.0 else 0.0
        box = _box(c_vox, (r * 1.9 + 2 * spacing) / spacing + 1, shape)
        if box is None:
            continue
        q = _box_offsets(box, aff, c_study)
        d = q @ rot  # baseline-frame offsets: R^T q for each voxel
        rho = _outline(geometry, i, d, r)
        free = instances[box] == 0
        flat = np.where(free, rho, np.inf).ravel()
        n_vox = min(n_vox, int(np.isfinite(flat).sum()))
        if n_vox < 1:
            continue
        chosen = np.argpartition(flat, n_vox - 1)[:n_vox]
        rho_thr = float(flat[chosen].max())
        lab = np.zeros(flat.size, dtype=bool)
        lab[chosen] = True
        lab = lab.reshape(rho.shape)
        instances[box][lab] = i + 1
        rendered[i] = n_vox * vox_mm3
        alpha = np.clip((rho_thr - rho) * r / spacing + 0.5, 0.0, 1.0).astype(np.float32)
        alpha[lab] = np.maximum(alpha[lab], 0.5)
        alpha[~free] = 0.0
        core_map = np.zeros_like(alpha)
        if geometry.core_fraction[i] > 0 and r >= NECROSIS_MIN_RADIUS_MM:
            cf = geometry.core_fraction[i] * rho_thr
            dc = d - geometry.core_offset[i] * r
            rho_c = _outline(geometry, i, dc, r, core=True)
            core_map = np.clip((cf - rho_c) * r / spacing + 0.5, 0.0, 1.0).astype(np.float32)
            core_map *= alpha
        # Enhancement is uneven: a smooth +-15% modulation of the solid part.
        hetero = 1.0 + 0.1 * np.cos(
            (d / max(r, 1.0)) @ geometry.wave_vecs[i, :3].T * 1.7 + geometry.core_wave_phase[i, :3]
        ).sum(axis=-1)
        lesion_alpha.append(
            (box, alpha, core_map, bool(geometry.core_cystic[i]), hetero.astype(np.float32))
        )
        if r_oed > 0:
            # Oedema spreads irregularly, only in white matter; float32 in its own
            # (larger) box to bound memory.
            ebox = _box(c_vox, r_oed * 1.3 / spacing + 1, shape)
            qe = _box_offsets(ebox, aff, c_study, np.float32)
            de = qe @ rot.astype(np.float32)
            dn = np.linalg.norm(de, axis=-1)
            de /= np.maximum(dn, np.float32(1e-6))[..., None]
            cos_e = de @ geometry.lobe_dirs[i].T.astype(np.float32)
            outline = 1.0 + (cos_e * cos_e) @ geometry.oedema_lobe_amp[i].astype(np.float32)
            dist = dn / (np.float32(r_oed) * np.clip(outline, 0.5, 1.8))
            strength = np.float32(min(1.0, v / 400.0) * 0.9)
            ed = strength * np.exp(-(dist**4))
            ed *= np.clip(
                _wm_in_box(anatomy, ebox, inv if moved else None) * np.float32(1.15), 0, 1
            )
            np.maximum(oedema[ebox], ed, out=oedema[ebox])

    if oedema.any():
        images *= 1.0 - oedema[None]
        images += oedema[None] * table.oedema[:, None, None, None]
    for box, alpha, core_map, cystic, hetero in lesion_alpha:
        core_val = table.cyst if cystic else table.necrosis
        solid = table.solid[:, None, None, None] * hetero[None]
        val = solid * (1 - core_map) + core_val[:, None, None, None] * core_map
        sub = images[(slice(None), *box)]
        images[(slice(None), *box)] = sub * (1 - alpha) + alpha * val

    vessel_mask = ((masks & 2) > 0) & (instances == 0)

    # Extra blur, bias field and Rician noise, one contrast at a time to bound peak memory.
    bias_sigma = 45.0 / spacing
    sd = np.float32(app.noise_std)
    for c in range(len(MODALITIES)):
        img = images[c]
        if app.blur_sigma_vox > 0:
            img[...] = ndimage.gaussian_filter(img, app.blur_sigma_vox)
        if app.gamma[c] != 1.0:
            ref = float(np.percentile(img[img > 0], 99)) if np.any(img > 0) else 1.0
            img[...] = ref * np.power(np.clip(img / ref, 0, None), np.float32(app.gamma[c]))
        img *= np.exp(np.float32(app.bias_strength) * smooth_noise(rng, shape, bias_sigma))
        real = rng.standard_normal(shape, dtype=np.float32)
        real *= sd
        real += img
        imag = rng.standard_normal(shape, dtype=np.float32)
        imag *= sd
        np.hypot(real, imag, out=img)
    images *= np.float32(INTENSITY_SCALE)
    return RenderedStudy(
        images=images,
        instances=instances,
        vessel_mask=vessel_mask,
        brain_mask=brain,
        lesion_volume_mm3=rendered,
    )
