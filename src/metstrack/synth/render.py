"""Lesion and vessel geometry, rigid motion, and rendering of one study.

Each study is rendered directly on the patient's scanner grid: the clean
baseline anatomy is resampled through ``inverse(baseline_to_study)``, and
lesions and vessels are drawn analytically at their moved positions, so the
instance map and the images agree voxel for voxel. Lesions are lobulated
ellipsoids whose voxel count matches the planned volume; large ones have a
necrotic core and an enhancing rim on CT1; oedema spreads in white matter;
vessels are thin enhancing dots and tubes that never change and are never
labelled.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from metstrack.preprocess.spatial import resample_array
from metstrack.synth.anatomy import Anatomy, smooth_noise
from metstrack.types import MODALITIES

# Per-contrast intensities (MODALITIES order, T1 white matter = 1).
SOLID = np.array([0.62, 1.55, 0.95, 1.05], dtype=np.float32)
NECROSIS = np.array([0.30, 0.30, 1.45, 0.75], dtype=np.float32)
OEDEMA = np.array([0.62, 0.62, 1.30, 1.35], dtype=np.float32)
VESSEL = np.array([0.72, 1.65, 0.25, 0.45], dtype=np.float32)
#: Written intensity of T1 white matter.
INTENSITY_SCALE = 1000.0
#: Rician noise std relative to T1 white matter.
NOISE_STD = 0.025
#: Lesions with an equivalent radius at least this large (mm) may have a necrotic core.
NECROSIS_MIN_RADIUS_MM = 4.0


@dataclass(frozen=True, eq=False)
class Geometry:
    """Where a patient's lesions and vessels are, in baseline world coordinates (mm).

    Attributes:
        centres_mm: float64 (n_lesions, 3) lesion centres.
        orientations: float64 (n_lesions, 3, 3) lesion axes (columns).
        axes: float64 (n_lesions, 3) relative semi-axes (product 1).
        lobe_dirs: float64 (n_lesions, 4, 3) unit vectors of the lobulation terms.
        lobe_amp: float64 (n_lesions, 4) lobulation amplitudes.
        core_fraction: float64 (n_lesions,) necrotic core radius relative to the lesion.
        oedema_gain: float64 (n_lesions,) oedema extent relative to the lesion radius.
        oedema_lobe_amp: float64 (n_lesions, 4) lobulation of the oedema outline.
        vessel_start_mm, vessel_end_mm: float64 (n_vessels, 3) segment ends (equal for dots).
        vessel_radius_mm: float64 (n_vessels,).
    """

    centres_mm: np.ndarray
    orientations: np.ndarray
    axes: np.ndarray
    lobe_dirs: np.ndarray
    lobe_amp: np.ndarray
    core_fraction: np.ndarray
    oedema_gain: np.ndarray
    oedema_lobe_amp: np.ndarray
    vessel_start_mm: np.ndarray
    vessel_end_mm: np.ndarray
    vessel_radius_mm: np.ndarray


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
    """Place lesions (largest first, not overlapping) in brain parenchyma and vessels near them.

    Args:
        rng: The patient's image generator.
        anatomy: The baseline head.
        max_volume_mm3: float64 (n_lesions,) largest volume each lesion reaches.
        vessels: Place vessel-like bait.
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
    # Metastases favour the grey-white junction: weight by closeness to white matter.
    wm_near = anatomy.wm_fraction.ravel()[cand]
    weight = 0.3 + np.clip(wm_near, 0, 1) * (1 - np.clip(wm_near, 0, 1)) * 4

    r_max = equivalent_radius_mm(max_volume_mm3) * 1.35 + 0.5
    centres = np.zeros((n, 3))
    placed: list[int] = []
    for i in np.argsort(-r_max, kind="stable"):
        ok = cand_depth >= r_max[i] + 1.0
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

    orient = np.stack([_random_rotation(rng) for _ in range(n)]) if n else np.zeros((0, 3, 3))
    axes = rng.uniform(0.8, 1.2, (n, 3))
    axes /= np.cbrt(axes.prod(axis=1))[:, None]
    lobe_dirs = rng.standard_normal((n, 4, 3))
    lobe_dirs /= np.linalg.norm(lobe_dirs, axis=2, keepdims=True)
    lobe_amp = rng.normal(0.0, 0.06, (n, 4))
    core = np.where(rng.random(n) < 0.7, rng.uniform(0.35, 0.65, n), 0.0)
    oedema = rng.uniform(0.8, 2.5, n)
    oedema_lobes = rng.normal(0.0, 0.25, (n, 4))

    if vessels:
        vs, ve, vr = _place_vessels(rng, anatomy, centres, r_max)
    else:
        vs = ve = np.zeros((0, 3))
        vr = np.zeros(0)
    return Geometry(
        centres_mm=centres,
        orientations=orient,
        axes=axes,
        lobe_dirs=lobe_dirs,
        lobe_amp=lobe_amp,
        core_fraction=core,
        oedema_gain=oedema,
        oedema_lobe_amp=oedema_lobes,
        vessel_start_mm=vs,
        vessel_end_mm=ve,
        vessel_radius_mm=vr,
    )


def _place_vessels(
    rng: np.random.Generator, anatomy: Anatomy, centres: np.ndarray, r_max: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    s = anatomy.head_scale
    m = max(3, int(round(rng.uniform(12, 24) * max(s, 0.25))))
    aff = anatomy.affine
    sites = np.flatnonzero(anatomy.cortex_mask.ravel() & (anatomy.parenchyma_depth_mm.ravel() > 0))
    if sites.size == 0:
        return np.zeros((0, 3)), np.zeros((0, 3)), np.zeros(0)
    starts, ends, radii = [], [], []
    tries = 0
    while len(starts) < m and tries < 50 * m:
        tries += 1
        k = int(sites[rng.integers(sites.size)])
        p = np.array(np.unravel_index(k, anatomy.cortex_mask.shape), dtype=np.float64)
        p = aff[:3, :3] @ p + aff[:3, 3]
        is_tube = rng.random() < 0.6
        length = rng.uniform(3.0, 12.0) * max(s, 0.5) if is_tube else 0.0
        d = rng.standard_normal(3)
        d /= np.linalg.norm(d)
        a, b = p - d * length / 2, p + d * length / 2
        if centres.size:
            dist = np.minimum(
                np.linalg.norm(centres - a, axis=1), np.linalg.norm(centres - b, axis=1)
            )
            mid = np.linalg.norm(centres - p, axis=1)
            if np.any(np.minimum(dist, mid) < r_max + 3.0 + length / 2):
                continue
        starts.append(a)
        ends.append(b)
        radii.append(rng.uniform(0.7, 1.2))
    return np.array(starts).reshape(-1, 3), np.array(ends).reshape(-1, 3), np.array(radii)


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


def _legendre4(x: np.ndarray) -> np.ndarray:
    x2 = x * x
    return (35 * x2 * x2 - 30 * x2 + 3) / 8


@dataclass(frozen=True, eq=False)
class RenderedStudy:
    """One rendered study on the patient's grid.

    Attributes:
        images: float32 (4, X, Y, Z) T1, CT1, T2, FLAIR (T1 white matter ~1000).
        instances: int16 (X, Y, Z) lesion IDs (1-based, patient-wide), 0 background.
        vessel_mask: bool (X, Y, Z) voxels mostly inside a vessel (never labelled).
        lesion_volume_mm3: float64 (n_lesions,) rendered volume of each lesion.
    """

    images: np.ndarray
    instances: np.ndarray
    vessel_mask: np.ndarray
    lesion_volume_mm3: np.ndarray


def render_study(
    anatomy: Anatomy,
    geometry: Geometry,
    volumes_mm3: np.ndarray,
    baseline_to_study: np.ndarray,
    rng: np.random.Generator,
) -> RenderedStudy:
    """Render one study (see the module docstring).

    Args:
        anatomy: Baseline head.
        geometry: Lesion and vessel placement (baseline world, mm).
        volumes_mm3: float64 (n_lesions,) planned lesion volumes at this study.
        baseline_to_study: float64 (4, 4) rigid world transform of this study.
        rng: Generator for this study's bias field and noise.
    """
    aff = anatomy.affine
    shape = anatomy.labels.shape
    t = np.asarray(baseline_to_study, dtype=np.float64)
    rot = t[:3, :3]
    if np.allclose(t, np.eye(4)):
        images = anatomy.contrasts.copy()
        wm = anatomy.wm_fraction
    else:
        inv = np.linalg.inv(t)
        images = np.stack(
            [resample_array(c, aff, shape, aff, transform=inv, order=1) for c in anatomy.contrasts]
        )
        wm = resample_array(anatomy.wm_fraction, aff, shape, aff, transform=inv, order=1)
    inv_aff = np.linalg.inv(aff)
    spacing = float(np.linalg.norm(aff[:3, 0]))
    vox_mm3 = float(abs(np.linalg.det(aff[:3, :3])))
    instances = np.zeros(shape, dtype=np.int16)
    n = int(volumes_mm3.size)
    rendered = np.zeros(n)
    oedema = np.zeros(shape, dtype=np.float32)
    lesion_alpha: list[tuple[tuple[slice, ...], np.ndarray, np.ndarray]] = []

    for i in range(n):
        v = float(volumes_mm3[i])
        n_vox = int(round(v / vox_mm3))
        if n_vox < 1:
            continue
        r = float(equivalent_radius_mm(v))
        c_study = rot @ geometry.centres_mm[i] + t[:3, 3]
        c_vox = inv_aff[:3, :3] @ c_study + inv_aff[:3, 3]
        r_oed = r * (1 + geometry.oedema_gain[i]) + 2.0 if v >= 30.0 else 0.0
        box = _box(c_vox, (r * 1.6 + 2 * spacing) / spacing + 1, shape)
        if box is None:
            continue
        q = _box_offsets(box, aff, c_study)
        d = q @ rot  # baseline-frame offsets: R^T q for each voxel
        e = (d @ geometry.orientations[i]) / geometry.axes[i]
        norm = np.linalg.norm(e, axis=-1)
        u = e / np.maximum(norm, 1e-9)[..., None]
        lobes = 1.0 + np.tensordot(
            _legendre4(u @ geometry.lobe_dirs[i].T), geometry.lobe_amp[i], axes=([-1], [0])
        )
        rho = norm / (r * np.maximum(lobes, 0.5))
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
        necro = np.zeros_like(alpha)
        if geometry.core_fraction[i] > 0 and r >= NECROSIS_MIN_RADIUS_MM:
            core = geometry.core_fraction[i] * rho_thr
            necro = np.clip((core - rho) * r / spacing + 0.5, 0.0, 1.0).astype(np.float32)
        lesion_alpha.append((box, alpha, necro))
        if r_oed > 0:
            # Oedema spreads irregularly, only in white matter; float32 in its own
            # (larger) box to bound memory.
            ebox = _box(c_vox, r_oed * 1.3 / spacing + 1, shape)
            qe = _box_offsets(ebox, aff, c_study, np.float32)
            de = qe @ rot.astype(np.float32)
            dn = np.linalg.norm(de, axis=-1)
            de /= np.maximum(dn, np.float32(1e-6))[..., None]
            outline = 1.0 + np.tensordot(
                _legendre4(de @ geometry.lobe_dirs[i].T.astype(np.float32)),
                geometry.oedema_lobe_amp[i].astype(np.float32),
                axes=([-1], [0]),
            )
            dist = dn / (np.float32(r_oed) * np.clip(outline, 0.5, 1.8))
            strength = np.float32(min(1.0, v / 400.0) * 0.9)
            ed = strength * np.exp(-(dist**4))
            ed *= np.clip(wm[ebox] * np.float32(1.15), 0, 1)
            np.maximum(oedema[ebox], ed, out=oedema[ebox])

    if oedema.any():
        images *= 1.0 - oedema[None]
        images += oedema[None] * OEDEMA[:, None, None, None]
    for box, alpha, necro in lesion_alpha:
        val = SOLID[:, None, None, None] * (1 - necro) + NECROSIS[:, None, None, None] * necro
        sub = images[(slice(None), *box)]
        images[(slice(None), *box)] = sub * (1 - alpha) + alpha * val

    vessel_mask = np.zeros(shape, dtype=bool)
    for a, b, rad in zip(
        geometry.vessel_start_mm, geometry.vessel_end_mm, geometry.vessel_radius_mm, strict=True
    ):
        a_s = rot @ a + t[:3, 3]
        b_s = rot @ b + t[:3, 3]
        mid_vox = inv_aff[:3, :3] @ ((a_s + b_s) / 2) + inv_aff[:3, 3]
        half = (np.linalg.norm(b_s - a_s) / 2 + rad + 2) / spacing
        box = _box(mid_vox, half, shape)
        if box is None:
            continue
        p = _box_offsets(box, aff, a_s)
        ab = b_s - a_s
        denom = float(ab @ ab)
        s = np.clip((p @ ab) / denom, 0, 1) if denom > 0 else np.zeros(p.shape[:-1])
        dist = np.linalg.norm(p - s[..., None] * ab, axis=-1)
        alpha = np.clip((rad - dist) / spacing + 0.5, 0.0, 1.0).astype(np.float32)
        alpha[instances[box] > 0] = 0.0
        sub = images[(slice(None), *box)]
        images[(slice(None), *box)] = sub * (1 - alpha) + alpha * VESSEL[:, None, None, None]
        vessel_mask[box] |= alpha >= 0.5

    # Bias field and Rician noise, one contrast at a time to bound peak memory.
    bias_sigma = 45.0 / spacing
    sd = np.float32(NOISE_STD)
    for c in range(len(MODALITIES)):
        img = images[c]
        img *= np.exp(np.float32(0.1) * smooth_noise(rng, shape, bias_sigma))
        real = rng.standard_normal(shape, dtype=np.float32)
        real *= sd
        real += img
        imag = rng.standard_normal(shape, dtype=np.float32)
        imag *= sd
        np.hypot(real, imag, out=img)
    images *= np.float32(INTENSITY_SCALE)
    return RenderedStudy(
        images=images, instances=instances, vessel_mask=vessel_mask, lesion_volume_mm3=rendered
    )
