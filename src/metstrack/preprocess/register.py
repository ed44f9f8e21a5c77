"""Rigid and affine registration with SimpleITK (Mattes mutual information).

Results are 4x4 world matrices (RAS+, mm) in :mod:`metstrack.core.spatial`'s
convention: the transform maps a point of the *fixed* image to the point of
the *moving* image holding the same anatomy (``baseline_to_study`` when the
baseline is fixed and the follow-up moves), so ``resample_array(moving, ...,
transform=T)`` brings the moving image onto the fixed grid.

Reruns are identical: metric sampling uses a fixed seed and the number of
threads ITK splits the work over is fixed by the config.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk  # noqa: N813

from metstrack.core.affine import spacing_array_mm
from metstrack.errors import ConfigError, InvalidImageError
from metstrack.types import Volume

log = logging.getLogger(__name__)

#: RAS <-> LPS: SimpleITK/DICOM world coordinates negate x and y.
_FLIP = np.diag([-1.0, -1.0, 1.0, 1.0])

INITIALISATIONS = ("identity", "geometry", "moments")


@dataclass(frozen=True)
class RegistrationConfig:
    """Settings of one registration (rigid, then optionally affine).

    Attributes:
        shrink_factors: Multi-resolution pyramid, coarse to fine (voxel shrink per level).
        smoothing_sigmas_mm: Gaussian smoothing per level, in mm.
        iterations: Optimiser iterations per level.
        learning_rate: Gradient-descent step (scaled by physical shift estimation).
        histogram_bins: Mattes mutual-information bins.
        sampling_percentage: Fraction of voxels sampled by the metric (0-1].
        seed: Seed of the metric's sampling (fixed so reruns are identical).
        threads: ITK threads for the whole registration (pyramid filters included).
            With 1 (default) reruns are bit-identical; more threads change the
            floating-point summation order (differences of ~1e-13 mm). Scale out
            with worker processes instead.
        init: Initial alignment: ``identity`` (scanner frames agree, e.g. within a
            study), ``geometry`` (image centres) or ``moments`` (centres of mass).
        affine: Run an affine stage after the rigid one.
        affine_iterations: Iterations per level of the affine stage.
    """

    shrink_factors: tuple[int, ...] = (4, 2, 1)
    smoothing_sigmas_mm: tuple[float, ...] = (2.0, 1.0, 0.0)
    iterations: int = 100
    learning_rate: float = 1.0
    histogram_bins: int = 32
    sampling_percentage: float = 0.25
    seed: int = 0
    threads: int = 1
    init: str = "identity"
    affine: bool = False
    affine_iterations: int = 50

    def __post_init__(self) -> None:
        if len(self.shrink_factors) != len(self.smoothing_sigmas_mm):
            raise ConfigError(
                f"registration: {len(self.shrink_factors)} shrink_factors but "
                f"{len(self.smoothing_sigmas_mm)} smoothing_sigmas_mm; give one per level"
            )
        if self.init not in INITIALISATIONS:
            raise ConfigError(
                f"registration.init: {self.init!r} is not one of {', '.join(INITIALISATIONS)}"
            )
        if not 0 < self.sampling_percentage <= 1:
            raise ConfigError(
                f"registration.sampling_percentage must be in (0, 1], found {self.sampling_percentage}"
            )


@dataclass(frozen=True, eq=False)
class RegistrationResult:
    """Outcome of :func:`register`.

    Attributes:
        transform: float64 (4, 4) fixed-world to moving-world matrix (RAS, mm).
        metric: Final Mattes MI value (lower is better; negative).
        iterations: Iterations run in the last stage.
        stop_condition: The optimiser's stop reason.
        seconds: Wall time.
        stages: Names of the stages run (``("rigid",)`` or ``("rigid", "affine")``).
    """

    transform: np.ndarray
    metric: float
    iterations: int
    stop_condition: str
    seconds: float
    stages: tuple[str, ...] = field(default=("rigid",))

    def to_dict(self) -> dict:
        """JSON-friendly form for provenance."""
        return {
            "transform": self.transform.tolist(),
            "metric": float(self.metric),
            "iterations": int(self.iterations),
            "stop_condition": self.stop_condition,
            "seconds": round(self.seconds, 3),
            "stages": list(self.stages),
        }


def to_sitk(vol: Volume, *, dtype: int = sitk.sitkFloat32) -> sitk.Image:
    """Convert a RAS (X, Y, Z) volume to a SimpleITK image (LPS physical space).

    Args:
        vol: The volume; its array is cast to ``dtype``.
        dtype: SimpleITK pixel type.
    """
    a = np.asarray(vol.affine, dtype=np.float64)
    spacing = spacing_array_mm(a)
    direction = (_FLIP[:3, :3] @ a[:3, :3]) / spacing
    origin = _FLIP[:3, :3] @ a[:3, 3]
    arr = np.asarray(vol.array)
    if dtype == sitk.sitkFloat32:
        arr = arr.astype(np.float32, copy=False)
    img = sitk.GetImageFromArray(np.ascontiguousarray(arr.transpose(2, 1, 0)))
    if img.GetPixelID() != dtype:
        img = sitk.Cast(img, dtype)
    img.SetSpacing([float(s) for s in spacing])
    img.SetDirection([float(d) for d in direction.ravel()])
    img.SetOrigin([float(o) for o in origin])
    return img


def from_sitk(img: sitk.Image) -> Volume:
    """Convert a SimpleITK image back to a RAS (X, Y, Z) volume."""
    arr = sitk.GetArrayFromImage(img).transpose(2, 1, 0)
    spacing = np.asarray(img.GetSpacing())
    direction = np.asarray(img.GetDirection()).reshape(3, 3)
    aff = np.eye(4)
    aff[:3, :3] = _FLIP[:3, :3] @ direction * spacing
    aff[:3, 3] = _FLIP[:3, :3] @ np.asarray(img.GetOrigin())
    return Volume(array=np.ascontiguousarray(arr), affine=aff)


def sitk_transform_to_ras(tx: sitk.Transform) -> np.ndarray:
    """4x4 RAS matrix of a linear SimpleITK transform (fixed LPS -> moving LPS)."""
    pts = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], dtype=np.float64)
    mapped = np.array([tx.TransformPoint(tuple(p)) for p in pts])
    m = np.eye(4)
    m[:3, 3] = mapped[0]
    m[:3, :3] = (mapped[1:] - mapped[0]).T
    return _FLIP @ m @ _FLIP


def ras_to_sitk_affine(transform: np.ndarray) -> sitk.AffineTransform:
    """A SimpleITK affine transform (LPS) equal to a 4x4 RAS world matrix."""
    m = _FLIP @ np.asarray(transform, dtype=np.float64) @ _FLIP
    tx = sitk.AffineTransform(3)
    tx.SetMatrix([float(v) for v in m[:3, :3].ravel()])
    tx.SetTranslation([float(v) for v in m[:3, 3]])
    return tx


def _initial_rigid(fixed: sitk.Image, moving: sitk.Image, init: str) -> sitk.Euler3DTransform:
    tx = sitk.Euler3DTransform()
    if init == "identity":
        centre = fixed.TransformContinuousIndexToPhysicalPoint(
            [(s - 1) / 2.0 for s in fixed.GetSize()]
        )
        tx.SetCenter(centre)
        return tx
    mode = (
        sitk.CenteredTransformInitializerFilter.MOMENTS
        if init == "moments"
        else sitk.CenteredTransformInitializerFilter.GEOMETRY
    )
    return sitk.Euler3DTransform(sitk.CenteredTransformInitializer(fixed, moving, tx, mode))


#: Fewest voxels along any axis a pyramid level keeps (ITK fails below a few voxels).
MIN_LEVEL_VOXELS = 8


def pyramid_shrink_factors(shrink_factors: tuple[int, ...], shape: tuple[int, ...]) -> list[int]:
    """The shrink factors actually used for an image of ``shape`` voxels.

    Each level is capped so that it keeps at least :data:`MIN_LEVEL_VOXELS` voxels
    along the shortest axis (1 for images smaller than that), so a small grid
    registers at full resolution instead of failing inside ITK.
    """
    cap = max(1, min(int(n) for n in shape) // MIN_LEVEL_VOXELS)
    return [max(1, min(int(s), cap)) for s in shrink_factors]


def _method(
    cfg: RegistrationConfig, iterations: int, shape: tuple[int, ...]
) -> sitk.ImageRegistrationMethod:
    r = sitk.ImageRegistrationMethod()
    r.SetNumberOfThreads(int(cfg.threads))
    r.SetMetricAsMattesMutualInformation(numberOfHistogramBins=int(cfg.histogram_bins))
    if cfg.sampling_percentage < 1:
        r.SetMetricSamplingStrategy(r.REGULAR)
        # seed 0 means "wall clock" to ITK, so shift user seeds by one.
        r.SetMetricSamplingPercentage(float(cfg.sampling_percentage), int(cfg.seed) + 1)
    else:
        r.SetMetricSamplingStrategy(r.NONE)
    r.SetInterpolator(sitk.sitkLinear)
    r.SetOptimizerAsRegularStepGradientDescent(
        learningRate=float(cfg.learning_rate),
        minStep=1e-4,
        numberOfIterations=int(iterations),
        relaxationFactor=0.5,
        gradientMagnitudeTolerance=1e-8,
    )
    r.SetOptimizerScalesFromPhysicalShift()
    r.SetShrinkFactorsPerLevel(pyramid_shrink_factors(cfg.shrink_factors, shape))
    r.SetSmoothingSigmasPerLevel([float(s) for s in cfg.smoothing_sigmas_mm])
    r.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    return r


def register(
    fixed: Volume,
    moving: Volume,
    cfg: RegistrationConfig | None = None,
    *,
    fixed_mask: np.ndarray | None = None,
    initial: np.ndarray | None = None,
) -> RegistrationResult:
    """Register ``moving`` to ``fixed``: rigid, then affine when ``cfg.affine``.

    Args:
        fixed: Reference volume (any grid, intensities float-castable).
        moving: Volume to align (any grid, may differ in shape and spacing).
        cfg: Registration settings (defaults when ``None``).
        fixed_mask: Optional boolean (X, Y, Z) mask on ``fixed``'s grid restricting
            the metric to a region (e.g. the brain).
        initial: Optional known fixed-to-moving 4x4 world transform (RAS, mm) to
            start from (any affine); the optimised rigid/affine correction is
            composed with it and ``cfg.init`` is ignored.

    Returns:
        A :class:`RegistrationResult` whose ``transform`` maps fixed world points
        (RAS, mm) to moving world points.

    Raises:
        InvalidImageError: An image is constant (nothing to register on), or ITK fails
            on the pair (one line naming both files).
    """
    cfg = cfg or RegistrationConfig()
    for name, v in (("fixed", fixed), ("moving", moving)):
        if float(np.ptp(v.array)) == 0.0:
            raise InvalidImageError(f"{v.path or name}: image is constant; cannot register it")
    prev_threads = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(int(cfg.threads))
    try:
        return _register(fixed, moving, cfg, fixed_mask, initial)
    except RuntimeError as exc:  # ITK's own failures: one line naming both files
        reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise InvalidImageError(
            f"{moving.path or 'moving'}: registration to {fixed.path or 'fixed'} failed "
            f"(grids {fixed.shape} and {moving.shape}; ITK: {reason}); check that both images "
            "show the head, or skip this registration in the preprocess settings"
        ) from None
    finally:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(prev_threads)


def _register(
    fixed: Volume,
    moving: Volume,
    cfg: RegistrationConfig,
    fixed_mask: np.ndarray | None,
    initial: np.ndarray | None,
) -> RegistrationResult:
    t0 = time.perf_counter()
    f = to_sitk(fixed)
    m = to_sitk(moving)
    pre = None
    if initial is not None:
        pre = ras_to_sitk_affine(initial)
        rigid = _initial_rigid(f, m, "identity")
    else:
        rigid = _initial_rigid(f, m, cfg.init)
    mask_img = None
    if fixed_mask is not None:
        mv = Volume(array=np.asarray(fixed_mask).astype(np.uint8), affine=fixed.affine)
        mask_img = to_sitk(mv, dtype=sitk.sitkUInt8)
    shape = tuple(min(a, b) for a, b in zip(fixed.shape, moving.shape, strict=True))
    r = _method(cfg, cfg.iterations, shape)
    if mask_img is not None:
        r.SetMetricFixedMask(mask_img)
    if pre is not None:
        r.SetMovingInitialTransform(pre)
    r.SetInitialTransform(rigid, inPlace=True)
    r.Execute(f, m)
    stages = ["rigid"]
    final: sitk.Transform = rigid
    if cfg.affine:
        aff = sitk.AffineTransform(3)
        aff.SetCenter(rigid.GetCenter())
        aff.SetMatrix(rigid.GetMatrix())
        aff.SetTranslation(rigid.GetTranslation())
        ra = _method(cfg, cfg.affine_iterations, shape)
        if mask_img is not None:
            ra.SetMetricFixedMask(mask_img)
        if pre is not None:
            ra.SetMovingInitialTransform(pre)
        ra.SetInitialTransform(aff, inPlace=True)
        ra.Execute(f, m)
        r = ra
        final = aff
        stages.append("affine")
    matrix = sitk_transform_to_ras(final)
    if initial is not None:
        # ITK applies the moving-initial transform after the optimised one.
        matrix = np.asarray(initial, dtype=np.float64) @ matrix
    result = RegistrationResult(
        transform=matrix,
        metric=float(r.GetMetricValue()),
        iterations=int(r.GetOptimizerIteration()),
        stop_condition=r.GetOptimizerStopConditionDescription(),
        seconds=time.perf_counter() - t0,
        stages=tuple(stages),
    )
    log.debug(
        "registered %s -> %s: %s, metric %.4f in %.2fs",
        moving.path,
        fixed.path,
        "+".join(stages),
        result.metric,
        result.seconds,
    )
    return result


def residual_mm(estimated: np.ndarray, truth: np.ndarray, points_mm: np.ndarray) -> np.ndarray:
    """Distances (mm) between where two transforms send the same points.

    Args:
        estimated: (4, 4) world transform.
        truth: (4, 4) world transform.
        points_mm: (N, 3) world points (e.g. brain voxel centres of the fixed image).

    Returns:
        float64 (N,) Euclidean distances in mm.
    """
    p = np.asarray(points_mm, dtype=np.float64)
    e = p @ np.asarray(estimated)[:3, :3].T + np.asarray(estimated)[:3, 3]
    t = p @ np.asarray(truth)[:3, :3].T + np.asarray(truth)[:3, 3]
    return np.linalg.norm(e - t, axis=1)
