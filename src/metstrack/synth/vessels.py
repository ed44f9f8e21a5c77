"""Enhancing vessels: a branching arterial tree in the sulci, sinuses, deep veins.

On real post-contrast T1 scans the vascular tree is the main source of false
positive metastases: bright, thin, tubular, and unchanged through time. The
template anatomy carries the large trunks (:class:`~metstrack.synth.anatomy.VesselTrunk`:
internal carotid, middle, anterior and posterior cerebral and basilar arteries,
internal cerebral veins, straight, superior sagittal and transverse sinuses).
:func:`grow_vessels` adds per patient a tree of cortical branches that leave the
arterial trunks and follow the CSF of the sulci and fissures, thinning as they
go, and bridging veins that run from the cortex to the superior sagittal sinus.
:func:`rasterize_vessels` draws every segment as a capsule with partial-volume
edges. The phantom anatomy (no trunks) gets the older bait instead: isolated
enhancing dots and short tubes near the cortex (:func:`place_bait`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from metstrack.synth.anatomy import Anatomy

#: Smallest radius (mm, adult head) a branch keeps growing at.
MIN_RADIUS_MM = 0.35


@dataclass(frozen=True, eq=False)
class VesselSegments:
    """Vessel segments in the patient's baseline world (mm).

    Attributes:
        start_mm, end_mm: float64 (n, 3) segment ends (equal for dots).
        radius_mm: float64 (n,) radius.
        kind: (n,) ``artery``, ``vein``, ``sinus`` or ``dot``/``tube`` (phantom bait).
    """

    start_mm: np.ndarray
    end_mm: np.ndarray
    radius_mm: np.ndarray
    kind: np.ndarray

    @staticmethod
    def empty() -> VesselSegments:
        """No vessels."""
        z = np.zeros((0, 3))
        return VesselSegments(z, z.copy(), np.zeros(0), np.zeros(0, dtype="<U6"))


def _polyline_segments(points: np.ndarray, radius: np.ndarray, step_mm: float):
    """Resample a polyline to about ``step_mm`` and return its segments."""
    starts, ends, radii = [], [], []
    for k in range(len(points) - 1):
        a, b = points[k], points[k + 1]
        n = max(1, int(np.ceil(np.linalg.norm(b - a) / step_mm)))
        for j in range(n):
            t0, t1 = j / n, (j + 1) / n
            starts.append(a + (b - a) * t0)
            ends.append(a + (b - a) * t1)
            radii.append(radius[k] + (radius[k + 1] - radius[k]) * (t0 + t1) / 2)
    return starts, ends, radii


class _Field:
    """Trilinear look-up of a map at world points."""

    def __init__(self, volume: np.ndarray, affine: np.ndarray) -> None:
        self.volume = volume
        self.inv = np.linalg.inv(affine)

    def __call__(self, pts: np.ndarray) -> np.ndarray:
        vox = np.atleast_2d(pts) @ self.inv[:3, :3].T + self.inv[:3, 3]
        return ndimage.map_coordinates(self.volume, vox.T, order=1, mode="constant", cval=0.0)


def grow_vessels(
    rng: np.random.Generator,
    anatomy: Anatomy,
    avoid_mm: np.ndarray,
    avoid_radius_mm: np.ndarray,
    *,
    n_branches: int | None = None,
) -> VesselSegments:
    """Trunks plus a per-patient tree of cortical branches and bridging veins.

    Args:
        rng: The patient's geometry generator.
        anatomy: A template anatomy (with trunks and ``sulcal_csf``).
        avoid_mm: float64 (m, 3) lesion centres; no vessel passes within
            ``avoid_radius_mm + 2 mm`` of one (a lesion is never drawn on a vessel).
        avoid_radius_mm: float64 (m,) largest lesion radii.
        n_branches: Cortical branches to grow (default: 110-170).

    Returns:
        The segments (baseline world mm).
    """
    s = anatomy.head_scale
    step = max(1.0 * s, 0.5 * float(np.linalg.norm(anatomy.affine[:3, 0])))
    starts: list[np.ndarray] = []
    ends: list[np.ndarray] = []
    radii: list[float] = []
    kinds: list[str] = []
    for trunk in anatomy.trunks:
        a, b, r = _polyline_segments(trunk.points_mm, trunk.radius_mm, step * 2)
        starts += a
        ends += b
        radii += r
        kinds += [trunk.kind] * len(a)
    if anatomy.sulcal_csf is None:
        raise ValueError("grow_vessels needs a template anatomy (sulcal_csf)")
    csf = _Field(anatomy.sulcal_csf, anatomy.affine)
    brain = _Field(anatomy.brain_mask.astype(np.float32), anatomy.affine)
    arteries = [t for t in anatomy.trunks if t.kind == "artery"]
    n = n_branches if n_branches is not None else int(rng.integers(110, 170))
    # Branch origins: points along the arterial trunks, weighted to their distal ends.
    origins, o_rad = [], []
    for t in arteries:
        for k in range(1, len(t.points_mm)):
            origins.append(t.points_mm[k])
            o_rad.append(float(t.radius_mm[k]))
    origins_arr = np.array(origins)
    o_rad_arr = np.array(o_rad)
    branch_pts: list[tuple[np.ndarray, float]] = []
    for _ in range(n):
        if branch_pts and rng.random() < 0.55:  # a sub-branch of a grown branch
            p0, r0 = branch_pts[int(rng.integers(len(branch_pts)))]
            r0 *= rng.uniform(0.6, 0.85)
        else:
            k = int(rng.integers(len(origins_arr)))
            p0, r0 = origins_arr[k], o_rad_arr[k] * rng.uniform(0.55, 0.8)
        if r0 < MIN_RADIUS_MM * s:
            continue
        pts, rs = _walk(rng, p0, r0, csf, brain, step, s)
        for j in range(len(pts) - 1):
            starts.append(pts[j])
            ends.append(pts[j + 1])
            radii.append(rs[j])
            kinds.append("artery")
            if j % 4 == 0:
                branch_pts.append((pts[j], rs[j]))
    # Bridging veins: from the superior sagittal sinus down over the convexity.
    sss = [t for t in anatomy.trunks if t.name == "superior_sagittal_sinus"]
    if sss:
        sp = sss[0].points_mm
        for _ in range(int(rng.integers(6, 11))):
            p0 = sp[int(rng.integers(len(sp)))]
            pts, rs = _walk(rng, p0, 0.9 * s, csf, brain, step, s, lateral=True)
            for j in range(len(pts) - 1):
                starts.append(pts[j])
                ends.append(pts[j + 1])
                radii.append(rs[j])
                kinds.append("vein")
    seg = VesselSegments(
        np.array(starts).reshape(-1, 3),
        np.array(ends).reshape(-1, 3),
        np.array(radii),
        np.array(kinds),
    )
    return _avoid(seg, avoid_mm, avoid_radius_mm)


def _walk(
    rng: np.random.Generator,
    p0: np.ndarray,
    r0: float,
    csf: _Field,
    brain: _Field,
    step: float,
    s: float,
    *,
    lateral: bool = False,
) -> tuple[list[np.ndarray], list[float]]:
    """A branch that follows sulcal CSF with some persistence, thinning as it goes."""
    direction = rng.standard_normal(3)
    if lateral:  # bridging veins start outwards and downwards from the midline
        direction = np.array([rng.choice([-1.0, 1.0]), rng.normal(0, 0.3), -0.6])
    direction /= np.linalg.norm(direction)
    pts, rs = [np.asarray(p0, dtype=np.float64)], [r0]
    length = rng.uniform(25.0, 70.0) * s
    p, r = pts[0], r0
    for _ in range(int(length / step)):
        cand = direction[None] + 0.65 * rng.standard_normal((10, 3))
        cand /= np.linalg.norm(cand, axis=1, keepdims=True)
        nxt = p[None] + step * cand
        score = 1.5 * csf(nxt) + 0.6 * (cand @ direction) + 0.3 * rng.random(10)
        score -= 3.0 * (brain(nxt) < 0.2)  # stay inside the head's CSF spaces
        k = int(np.argmax(score))
        direction = cand[k]
        p = nxt[k]
        r *= 0.985
        if r < MIN_RADIUS_MM * s:
            break
        pts.append(p)
        rs.append(r)
    return pts, rs


def _avoid(seg: VesselSegments, centres: np.ndarray, radius: np.ndarray) -> VesselSegments:
    if centres.size == 0 or seg.radius_mm.size == 0:
        return seg
    keep = np.ones(seg.radius_mm.size, dtype=bool)
    for c, r in zip(centres, radius, strict=True):
        ab = seg.end_mm - seg.start_mm
        denom = np.maximum((ab * ab).sum(axis=1), 1e-12)
        t = np.clip(((c - seg.start_mm) * ab).sum(axis=1) / denom, 0, 1)
        d = np.linalg.norm(seg.start_mm + t[:, None] * ab - c, axis=1)
        keep &= d > r + seg.radius_mm + 2.0
    return VesselSegments(seg.start_mm[keep], seg.end_mm[keep], seg.radius_mm[keep], seg.kind[keep])


def place_bait(
    rng: np.random.Generator, anatomy: Anatomy, centres: np.ndarray, r_max: np.ndarray
) -> VesselSegments:
    """Phantom bait: isolated enhancing dots and short tubes near the cortex."""
    s = anatomy.head_scale
    m = max(3, int(round(rng.uniform(12, 24) * max(s, 0.25))))
    aff = anatomy.affine
    sites = np.flatnonzero(anatomy.cortex_mask.ravel() & (anatomy.parenchyma_depth_mm.ravel() > 0))
    if sites.size == 0:
        return VesselSegments.empty()
    starts, ends, radii, kinds = [], [], [], []
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
        kinds.append("tube" if is_tube else "dot")
    return VesselSegments(
        np.array(starts).reshape(-1, 3),
        np.array(ends).reshape(-1, 3),
        np.array(radii),
        np.array(kinds, dtype="<U6"),
    )


def rasterize_vessels(
    seg: VesselSegments, affine: np.ndarray, shape: tuple[int, int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Partial-volume maps of the vessels on a grid.

    Args:
        seg: Segments (world mm of ``affine``).
        affine: float64 (4, 4) voxel-to-world of the grid.
        shape: Grid shape (X, Y, Z).

    Returns:
        ``(alpha, sinus)``: float32 (X, Y, Z) vessel fraction of each voxel (0..1),
        and bool (X, Y, Z) voxels where the vessel drawn is a sinus (brighter).
    """
    alpha = np.zeros(shape, dtype=np.float32)
    sinus = np.zeros(shape, dtype=bool)
    inv = np.linalg.inv(affine)
    spacing = float(np.linalg.norm(affine[:3, 0]))
    lin = affine[:3, :3].T
    for a, b, rad, kind in zip(seg.start_mm, seg.end_mm, seg.radius_mm, seg.kind, strict=True):
        mid = inv[:3, :3] @ ((a + b) / 2) + inv[:3, 3]
        half = (np.linalg.norm(b - a) / 2 + rad + 1.5) / spacing
        lo = np.maximum(np.floor(mid - half).astype(int), 0)
        hi = np.minimum(np.ceil(mid + half).astype(int) + 1, shape)
        if np.any(hi <= lo):
            continue
        axes = [np.arange(int(lo[i]), int(hi[i]), dtype=np.float64) for i in range(3)]
        idx = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1)
        p = idx @ lin + (affine[:3, 3] - a)
        ab = b - a
        denom = float(ab @ ab)
        t = np.clip((p @ ab) / denom, 0, 1) if denom > 0 else np.zeros(p.shape[:-1])
        dist = np.linalg.norm(p - t[..., None] * ab, axis=-1)
        al = np.clip((rad - dist) / spacing + 0.5, 0.0, 1.0).astype(np.float32)
        box = tuple(slice(int(lo[i]), int(hi[i])) for i in range(3))
        np.maximum(alpha[box], al, out=alpha[box])
        if kind == "sinus":
            sinus[box] |= al > 0
    return alpha, sinus
