"""Preprocess a release-layout dataset into a canonical, co-registered one.

For each patient (the unit of work, so a worker owns the baseline it registers
to), every study is put on the baseline T1 post's isotropic RAS grid:

1. read each series as stored and reorient it to RAS (lossless, recorded);
2. the baseline grid is an axis-aligned RAS grid of ``spacing_mm`` covering the
   baseline T1 post (CT1); the baseline CT1 is resampled onto it;
3. through time: each follow-up CT1 is registered to the baseline CT1 (rigid,
   then optional affine; Mattes MI, multi-resolution, fixed seed), giving
   ``baseline_to_study``; the baseline's own transform is the identity;
4. within the study: every other sequence (T1, T2, FLAIR, the planning T1 post)
   is registered to the study's CT1 on the baseline grid, starting from
   ``baseline_to_study`` (the sequences share the study's scanner frame);
5. every image is resampled once, straight from its native file onto the
   baseline grid (linear or B-spline); the lesion label with nearest
   neighbour, its dtype kept;
6. brain mask (heuristic on the CT1, or the non-zero voxels for skull-stripped
   data), optional N4 bias correction, per-channel z-score inside the brain
   (voxels outside the brain become 0).

Outputs (``out_root``): the same release layout and tables, plus
``transforms/<PatientID>/<StudyID>.json`` (:mod:`metstrack.core.mapping`)
and ``preprocess/`` (resolved config, per-study provenance, brain masks, the
run report). A study is finished when its transform JSON exists (written last,
atomically), so a rerun skips it.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage

from metstrack.catalog import Catalog, OutputRecord
from metstrack.config import config_fingerprint, save_config, to_dict
from metstrack.core import schema
from metstrack.core.atomic import (
    sweep_stale_temps,
    write_bytes_atomic,
    write_csv_atomic,
    write_json_atomic,
)
from metstrack.core.grid import Grid, isotropic_grid, reorient_to_ras
from metstrack.core.mapping import (
    TRANSFORMS_DIR,
    StudyTransform,
    save_transform,
    transform_path,
)
from metstrack.core.spatial import resample_array
from metstrack.errors import ConfigError, DatasetError, LabelError, MetstrackError, did_you_mean
from metstrack.io.fingerprint import file_sha256
from metstrack.io.labels import lesion_mask
from metstrack.io.layouts import apply_intervals, read_dataset
from metstrack.io.nifti import read_volume, write_volume
from metstrack.io.release import read_release
from metstrack.preprocess.brain import (
    BRAIN_METHODS,
    BrainMaskConfig,
    estimate_brain_mask,
    nonzero_mask,
)
from metstrack.preprocess.intensity import n4_correct, zscore_in_brain
from metstrack.preprocess.register import RegistrationConfig, register
from metstrack.types import (
    LABEL_SEQUENCE,
    MODALITIES,
    PLANNING_SEQUENCE,
    SEQUENCES,
    Cohort,
    Patient,
    Study,
    Volume,
)

log = logging.getLogger(__name__)

#: Folder of the preprocessing records inside the output dataset.
PREPROCESS_DIR = "preprocess"
REFERENCE_SEQUENCE = "CT1"
INTERPOLATIONS = {"linear": 1, "bspline": 3}
NORMALISATIONS = ("zscore", "none")


def _within_default() -> RegistrationConfig:
    return RegistrationConfig(
        shrink_factors=(4, 2),
        smoothing_sigmas_mm=(2.0, 1.0),
        iterations=60,
        sampling_percentage=0.1,
    )


def _through_default() -> RegistrationConfig:
    return RegistrationConfig(
        shrink_factors=(4, 2, 1),
        smoothing_sigmas_mm=(2.0, 1.0, 0.0),
        iterations=100,
        sampling_percentage=0.05,
        init="geometry",
    )


@dataclass(frozen=True)
class PreprocessConfig:
    """Settings of ``metstrack preprocess`` (TOML sections ``[within_study]``,
    ``[through_time]``, ``[brain]``).

    Attributes:
        spacing_mm: Isotropic output voxel size.
        image_interpolation: ``linear`` or ``bspline`` (images; labels always nearest).
        brain_mask: Estimate the brain mask with ``brain_method``; False for
            skull-stripped data (the brain is then the CT1's non-zero voxels).
        brain_method: ``auto`` (non-zero voxels of a skull-stripped, zero-background
            CT1, else deepbet's CNN), ``deepbet``, ``heuristic`` or ``nonzero``
            (:func:`metstrack.preprocess.brain.estimate_brain_mask`).
        n4: Run N4 bias-field correction on every image (inside the head).
        n4_shrink_factor: Downsampling of N4's fitting grid.
        normalize: ``zscore`` (per channel inside the brain, 0 outside) or ``none``.
        register_within_study: Register each sequence to the study's CT1 (else the
            scanner frame is trusted and only ``baseline_to_study`` is applied).
        metric_mask_mm: When > 0 and a brain mask exists, restrict the through-time
            metric to the baseline brain dilated by this many mm (0: whole image).
        within_study: Registration settings sequence -> CT1.
        through_time: Registration settings follow-up CT1 -> baseline CT1
            (``through_time.affine`` adds the affine stage).
        brain: Brain-mask heuristic parameters.
    """

    spacing_mm: float = 1.0
    image_interpolation: str = "linear"
    brain_mask: bool = True
    brain_method: str = "auto"
    n4: bool = False
    n4_shrink_factor: int = 4
    normalize: str = "zscore"
    register_within_study: bool = True
    metric_mask_mm: float = 0.0
    within_study: RegistrationConfig = field(default_factory=_within_default)
    through_time: RegistrationConfig = field(default_factory=_through_default)
    brain: BrainMaskConfig = field(default_factory=BrainMaskConfig)

    def __post_init__(self) -> None:
        if self.image_interpolation not in INTERPOLATIONS:
            raise ConfigError(
                f"image_interpolation: {self.image_interpolation!r} is not one of "
                f"{', '.join(INTERPOLATIONS)}"
            )
        if self.normalize not in NORMALISATIONS:
            raise ConfigError(
                f"normalize: {self.normalize!r} is not one of {', '.join(NORMALISATIONS)}"
            )
        if self.spacing_mm <= 0:
            raise ConfigError(f"spacing_mm must be positive, found {self.spacing_mm}")
        if self.brain_method not in BRAIN_METHODS:
            raise ConfigError(
                f"brain_method: {self.brain_method!r}; "
                + did_you_mean(self.brain_method, BRAIN_METHODS)
            )


@dataclass(frozen=True)
class StudyOutcome:
    """What happened to one study.

    Attributes:
        patient_id: Release PatientID.
        study_id: Release StudyID.
        status: ``done`` (processed now), ``skipped`` (already finished) or ``failed``.
        message: The error for a failed study, else empty.
        seconds: Wall time spent on the study.
        outputs: Files written (relative to the output root).
    """

    patient_id: str
    study_id: str
    status: str
    message: str = ""
    seconds: float = 0.0
    outputs: tuple[str, ...] = ()


@dataclass(frozen=True)
class PreprocessReport:
    """Result of :func:`preprocess_dataset`.

    Attributes:
        out_root: The output dataset.
        outcomes: One entry per study, patients in order.
        seconds: Total wall time.
        config_path: The resolved config written beside the outputs.
    """

    out_root: Path
    outcomes: tuple[StudyOutcome, ...]
    seconds: float
    config_path: Path

    def count(self, status: str) -> int:
        """Number of studies with ``status``."""
        return sum(o.status == status for o in self.outcomes)

    @property
    def failed(self) -> tuple[StudyOutcome, ...]:
        """The failed studies."""
        return tuple(o for o in self.outcomes if o.status == "failed")

    def to_dict(self) -> dict:
        """JSON-friendly form."""
        return {
            "out_root": str(self.out_root),
            "seconds": round(self.seconds, 3),
            "done": self.count("done"),
            "skipped": self.count("skipped"),
            "failed": self.count("failed"),
            "studies": [
                {
                    "PatientID": o.patient_id,
                    "StudyID": o.study_id,
                    "status": o.status,
                    "message": o.message,
                    "seconds": round(o.seconds, 3),
                }
                for o in self.outcomes
            ],
        }


def study_fingerprint(study: Study) -> str:
    """SHA-256 over the study's input files (names and bytes), first 16 hex digits."""
    h = hashlib.sha256()
    for s in sorted(study.series, key=lambda s: s.sequence):
        h.update(s.sequence.encode())
        h.update(file_sha256(s.path).encode())
    if study.truth_label is not None:
        h.update(b"truth_label")
        h.update(file_sha256(study.truth_label).encode())
    return h.hexdigest()[:16]


def provenance_path(out_root: Path, patient_id: str, study_id: str) -> Path:
    """``<out>/preprocess/provenance/<PatientID>/<StudyID>.json``."""
    return Path(out_root) / PREPROCESS_DIR / "provenance" / patient_id / f"{study_id}.json"


def brain_mask_path(
    out_root: Path, patient_id: str, study_id: str, *, native: bool = False
) -> Path:
    """``<out>/preprocess/brain_masks/<PatientID>/<StudyID>.nii.gz`` (on the baseline grid),
    or with ``native`` ``<StudyID>.native.nii.gz`` (on the grid of the original CT1 file)."""
    name = f"{study_id}.native.nii.gz" if native else f"{study_id}.nii.gz"
    return Path(out_root) / PREPROCESS_DIR / "brain_masks" / patient_id / name


def is_study_done(out_root: Path, patient_id: str, study_id: str) -> bool:
    """True when the study's transform JSON (its last output) exists."""
    return transform_path(out_root, patient_id, study_id).is_file()


def _read_ras(path: Path, *, label: bool = False) -> tuple[Volume, Volume, dict]:
    """Read a file; return (native volume, RAS-reoriented volume, orientation record)."""
    native = read_volume(path, dtype=None if label else np.float32)
    if label and not np.issubdtype(native.array.dtype, np.integer):
        arr = native.array
        if not np.all(np.mod(arr, 1) == 0):
            raise LabelError(
                f"{path}: label holds non-integer values; threshold the probability map first"
            )
    ras, rec = reorient_to_ras(native)
    return native, ras, rec.to_dict()


def _dilate_mm(mask: np.ndarray, radius_mm: float, spacing_mm: float) -> np.ndarray:
    r = radius_mm / spacing_mm
    n = max(1, int(np.ceil(r)))
    x, y, z = np.mgrid[-n : n + 1, -n : n + 1, -n : n + 1]
    return ndimage.binary_dilation(mask, x * x + y * y + z * z <= r * r + 1e-9)


@dataclass(frozen=True, eq=False)
class BaselineReference:
    """What every study of a patient is registered and resampled to.

    Attributes:
        study_id: The baseline StudyID (the patient's first study).
        grid: The isotropic RAS output grid of the patient.
        ct1: The baseline T1 post resampled onto ``grid`` (float32 (X, Y, Z)).
        brain: bool (X, Y, Z) brain mask of ``ct1`` for the through-time metric mask,
            or ``None`` when that mask is off.
    """

    study_id: str
    grid: Grid
    ct1: Volume
    brain: np.ndarray | None


def prepare_baseline(patient: Patient, cfg: PreprocessConfig) -> BaselineReference:
    """Build the baseline reference of a patient from its first study's CT1.

    Raises:
        DatasetError: The baseline study has no CT1.
    """
    base = patient.studies[0]
    path = base.path(REFERENCE_SEQUENCE)
    if path is None:
        raise DatasetError(
            f"patient {patient.patient_id}: baseline study {base.study_id} has no "
            f"{REFERENCE_SEQUENCE} (T1 post) file; every patient's first study needs one as "
            "the registration reference"
        )
    _, ras, _ = _read_ras(path)
    grid = isotropic_grid(ras, cfg.spacing_mm)
    ct1 = resample_array(
        ras.array,
        ras.affine,
        grid.shape,
        grid.affine,
        order=INTERPOLATIONS[cfg.image_interpolation],
    )
    vol = Volume(array=ct1, affine=grid.affine.copy(), path=path)
    # Only the through-time metric mask needs it here; each study masks its own CT1.
    brain = None
    if cfg.brain_mask and cfg.metric_mask_mm > 0:
        brain, _ = estimate_brain_mask(vol, cfg.brain_method, cfg.brain)
    return BaselineReference(study_id=base.study_id, grid=grid, ct1=vol, brain=brain)


def preprocess_study(
    patient: Patient,
    study: Study,
    baseline: BaselineReference,
    out_root: Path,
    cfg: PreprocessConfig,
    *,
    label_classes: tuple[int, ...] = (),
) -> tuple[str, ...]:
    """Preprocess one study onto its patient's baseline grid and write every output.

    Args:
        patient: The study's patient.
        study: The study (its CT1 is required).
        baseline: From :func:`prepare_baseline`.
        out_root: Output dataset root.
        cfg: Settings.
        label_classes: For multi-class label files (``Cohort.label_classes``), the
            values whose union is the metastasis mask (written as uint8 0/1); empty
            keeps the label as it is, dtype included.

    Returns:
        Output paths relative to ``out_root`` (the transform JSON, written last, included).

    Raises:
        MetstrackError: Unreadable or invalid input (a typed subclass naming the file).
    """
    pid, sid = patient.patient_id, study.study_id
    order = INTERPOLATIONS[cfg.image_interpolation]
    grid = baseline.grid
    steps: list[dict] = []
    ct1_path = study.path(REFERENCE_SEQUENCE)
    if ct1_path is None:
        raise DatasetError(
            f"patient {pid} study {sid}: no {REFERENCE_SEQUENCE} (T1 post) file; the study "
            "cannot be registered (add the T1 post or drop the study from the imaging table)"
        )
    ct1_native, ct1_ras, ct1_rec = _read_ras(ct1_path)
    steps.append({"step": "reorient", "sequence": REFERENCE_SEQUENCE, **ct1_rec})

    # Through time.
    if sid == baseline.study_id:
        b2s = np.eye(4)
        steps.append({"step": "register_through_time", "baseline": True, "transform": b2s.tolist()})
    else:
        mask = None
        if baseline.brain is not None and cfg.metric_mask_mm > 0:
            mask = _dilate_mm(baseline.brain, cfg.metric_mask_mm, cfg.spacing_mm)
        res = register(baseline.ct1, ct1_ras, cfg.through_time, fixed_mask=mask)
        b2s = res.transform
        steps.append(
            {
                "step": "register_through_time",
                "fixed": f"{baseline.study_id}/{REFERENCE_SEQUENCE}",
                "moving": f"{sid}/{REFERENCE_SEQUENCE}",
                "params": to_dict(cfg.through_time),
                "metric_mask_mm": cfg.metric_mask_mm if mask is not None else 0.0,
                **res.to_dict(),
            }
        )
    ct1 = resample_array(
        ct1_ras.array, ct1_ras.affine, grid.shape, grid.affine, transform=b2s, order=order
    )
    steps.append(
        {
            "step": "resample",
            "sequence": REFERENCE_SEQUENCE,
            "interpolation": cfg.image_interpolation,
            "grid": grid.to_dict(),
        }
    )
    ct1_vol = Volume(array=ct1, affine=grid.affine.copy())

    images: dict[str, np.ndarray] = {REFERENCE_SEQUENCE: ct1}
    for seq in (*MODALITIES, PLANNING_SEQUENCE):
        if seq == REFERENCE_SEQUENCE:
            continue
        p = study.path(seq)
        if p is None:
            if seq in MODALITIES:
                steps.append({"step": "missing", "sequence": seq})
            continue
        _, ras, rec = _read_ras(p)
        steps.append({"step": "reorient", "sequence": seq, **rec})
        if cfg.register_within_study:
            res = register(ct1_vol, ras, cfg.within_study, initial=b2s)
            t = res.transform
            steps.append(
                {
                    "step": "register_within_study",
                    "fixed": f"{sid}/{REFERENCE_SEQUENCE}",
                    "moving": f"{sid}/{seq}",
                    "params": to_dict(cfg.within_study),
                    "study_ct1_to_sequence": (t @ np.linalg.inv(b2s)).tolist(),
                    **res.to_dict(),
                }
            )
        else:
            t = b2s
        images[seq] = resample_array(
            ras.array, ras.affine, grid.shape, grid.affine, transform=t, order=order
        )
        steps.append(
            {"step": "resample", "sequence": seq, "interpolation": cfg.image_interpolation}
        )

    # Brain mask on this study's CT1 as stored (so it holds exactly on the grid the
    # predictions are written on), carried onto the baseline grid (linear >= 0.5).
    if cfg.brain_mask:
        native_brain, used = estimate_brain_mask(ct1_ras, cfg.brain_method, cfg.brain)
        steps.append(
            {
                "step": "brain_mask",
                "method": used,
                "requested": cfg.brain_method,
                **({"params": to_dict(cfg.brain)} if used == "heuristic" else {}),
                "voxels_native": int(native_brain.sum()),
            }
        )
    else:
        native_brain = nonzero_mask(ct1_ras)
        steps.append(
            {
                "step": "brain_mask",
                "method": "nonzero (skull-stripped input)",
                "voxels_native": int(native_brain.sum()),
            }
        )
    brain = (
        resample_array(
            native_brain.astype(np.float32),
            ct1_ras.affine,
            grid.shape,
            grid.affine,
            transform=b2s,
            order=1,
        )
        >= 0.5
    )
    steps[-1]["voxels"] = int(brain.sum())
    native_brain = resample_array(
        native_brain.astype(np.uint8),
        ct1_ras.affine,
        ct1_native.shape,
        ct1_native.affine,
        order=0,
    ).astype(bool)
    if not brain.any():
        raise DatasetError(f"{ct1_path}: empty brain mask; check the image or use --no-brain-mask")

    if cfg.n4:
        head = _dilate_mm(brain, 5.0, cfg.spacing_mm)
        for seq in images:
            images[seq] = n4_correct(
                Volume(array=images[seq], affine=grid.affine),
                head,
                shrink_factor=cfg.n4_shrink_factor,
            ).array
        steps.append(
            {
                "step": "n4",
                "shrink_factor": cfg.n4_shrink_factor,
                "mask": "brain dilated 5 mm",
                "sequences": list(images),
            }
        )

    if cfg.normalize == "zscore":
        names = list(images)
        z = zscore_in_brain(np.stack([images[n] for n in names]), brain)
        images = {n: z[i] for i, n in enumerate(names)}
        steps.append(
            {
                "step": "normalize",
                "method": "zscore_in_brain",
                "outside_brain": 0.0,
                "sequences": names,
            }
        )

    # The release label, and a synthetic cohort's ground-truth label (also of the
    # studies the release hides), each mapped the same way; read and checked
    # before anything of the study is written. The release label must be binary
    # unless ``label_classes`` says which values are lesion.
    folder = schema.study_dir(out_root, pid, sid)
    labels_out = []
    for lab_path, target, step_name, values in (
        (study.label_path, folder / f"{LABEL_SEQUENCE}.nii.gz", "label", label_classes),
        (study.truth_label, schema.truth_label_path(out_root, pid, sid), "truth_label", ()),
    ):
        if lab_path is None:
            continue
        _, lab_ras, rec = _read_ras(lab_path, label=True)
        lab_ras = lab_ras.with_array(lesion_mask(lab_ras.array, lab_path, values))
        if values:
            rec = {**rec, "label_classes": [int(c) for c in values]}
        lab = resample_array(
            lab_ras.array, lab_ras.affine, grid.shape, grid.affine, transform=b2s, order=0
        )
        labels_out.append((lab, target, step_name, rec))

    outputs: list[str] = []
    for seq, arr in images.items():
        p = write_volume(arr.astype(np.float32), folder / f"{seq}.nii.gz", affine=grid.affine)
        outputs.append(str(p.relative_to(out_root)))
    for lab, target, step_name, rec in labels_out:
        p = write_volume(lab, target, affine=grid.affine)
        outputs.append(str(p.relative_to(out_root)))
        steps.append(
            {
                "step": step_name,
                "reorient": rec,
                "interpolation": "nearest",
                "dtype": str(lab.dtype),
                "transform": "baseline_to_study",
            }
        )
    bp = write_volume(
        brain.astype(np.uint8), brain_mask_path(out_root, pid, sid), affine=grid.affine
    )
    outputs.append(str(bp.relative_to(out_root)))
    nbp = write_volume(
        native_brain.astype(np.uint8),
        brain_mask_path(out_root, pid, sid, native=True),
        affine=ct1_native.affine,
    )
    outputs.append(str(nbp.relative_to(out_root)))
    pp = provenance_path(out_root, pid, sid)
    tp = transform_path(out_root, pid, sid)
    outputs += [str(pp.relative_to(out_root)), str(tp.relative_to(out_root))]
    prov = {
        "PatientID": pid,
        "StudyID": sid,
        "baseline_StudyID": baseline.study_id,
        "input_fingerprint": study_fingerprint(study),
        "config_fingerprint": config_fingerprint(cfg),
        "steps": steps,
        "outputs": outputs,
    }
    write_json_atomic(pp, prov)
    st = StudyTransform(
        patient_id=pid,
        study_id=sid,
        baseline_study_id=baseline.study_id,
        baseline_to_study=b2s,
        native_grid=Grid.of(ct1_native),
        baseline_grid=grid,
    )
    save_transform(out_root, st)  # last: marks the study finished
    return tuple(outputs)


def _recorded_outputs(out_root: Path, patient_id: str, study_id: str) -> tuple[str, ...]:
    """Outputs of a finished study, as listed in its provenance (for catalog resume)."""
    import json

    try:
        prov = json.loads(provenance_path(out_root, patient_id, study_id).read_text("utf-8"))
        return tuple(str(p) for p in prov.get("outputs", ()))
    except (OSError, ValueError):
        return ()


def preprocess_patient(
    patient: Patient,
    out_root: str | Path,
    cfg: PreprocessConfig,
    *,
    label_classes: tuple[int, ...] = (),
) -> list[StudyOutcome]:
    """Preprocess every unfinished study of one patient (the unit of parallel work).

    This is the function to map over patients with another engine (Dask, Ray):
    it only reads the patient's input files and writes under ``out_root``.

    Args:
        patient: The patient (studies in time order; the first is the baseline).
        out_root: Output dataset root.
        cfg: Preprocessing settings.
        label_classes: ``Cohort.label_classes`` of the patient's cohort (multi-class labels).

    Returns:
        One :class:`StudyOutcome` per study. Errors of one study are caught and
        reported as ``failed``; a failing baseline fails every study of the patient.
    """
    out_root = Path(out_root)
    todo = [
        s for s in patient.studies if not is_study_done(out_root, patient.patient_id, s.study_id)
    ]
    outcomes = [
        StudyOutcome(
            patient.patient_id,
            s.study_id,
            "skipped",
            outputs=_recorded_outputs(out_root, patient.patient_id, s.study_id),
        )
        for s in patient.studies
        if s not in todo
    ]
    if not todo:
        return outcomes
    t0 = time.perf_counter()
    try:
        baseline = prepare_baseline(patient, cfg)
    except MetstrackError as exc:
        log.info("patient %s failed: %s", patient.patient_id, exc)
        return outcomes + [
            StudyOutcome(
                patient.patient_id, s.study_id, "failed", str(exc), time.perf_counter() - t0
            )
            for s in todo
        ]
    for study in todo:
        ts = time.perf_counter()
        try:
            outs = preprocess_study(
                patient, study, baseline, out_root, cfg, label_classes=label_classes
            )
            outcomes.append(
                StudyOutcome(
                    patient.patient_id, study.study_id, "done", "", time.perf_counter() - ts, outs
                )
            )
        except MetstrackError as exc:
            log.info("study %s/%s failed: %s", patient.patient_id, study.study_id, exc)
            outcomes.append(
                StudyOutcome(
                    patient.patient_id, study.study_id, "failed", str(exc), time.perf_counter() - ts
                )
            )
    order = {s.study_id: i for i, s in enumerate(patient.studies)}
    return sorted(outcomes, key=lambda o: order[o.study_id])


def _check_same_config(out_root: Path, cfg: PreprocessConfig) -> None:
    """Refuse to resume into a folder preprocessed with another configuration."""
    import json

    saved = out_root / PREPROCESS_DIR / "config.json"
    if not saved.is_file() or not any((out_root / TRANSFORMS_DIR).rglob("*.json")):
        return
    try:
        old = json.loads(saved.read_text(encoding="utf-8")).get("config_fingerprint")
    except ValueError:
        old = None
    if old != config_fingerprint(cfg):
        raise DatasetError(
            f"{out_root}: already holds studies preprocessed with another configuration "
            f"(see {saved}); rerun with the same settings to resume, or choose a new --out"
        )


def _output_kind(rel_path: str) -> str:
    parts = Path(rel_path).parts
    if parts[0] == TRANSFORMS_DIR:
        return "transform"
    if parts[0] == PREPROCESS_DIR:
        return "brain_mask" if parts[1] == "brain_masks" else parts[1]
    if parts[0] == schema.GROUND_TRUTH_DIR:
        return "truth_label"
    return "label" if Path(rel_path).name.startswith(LABEL_SEQUENCE) else "image"


def _copy_tables(src_root: Path, out_root: Path) -> list[str]:
    src = src_root / schema.TABLES_DIR
    copied = []
    for f in sorted(src.glob("*.csv")):
        write_bytes_atomic(out_root / schema.TABLES_DIR / f.name, f.read_bytes())
        copied.append(f.name)
    return copied


def _write_imaging_tables(cohort: Cohort, out_root: Path) -> list[str]:
    """Imaging (and split) tables of a cohort read from another layout."""
    import pandas as pd

    rows, split_rows = [], []
    for p in cohort.patients:
        for st in p.studies:
            have = {s.sequence for s in st.series}
            row = {"PatientID": p.patient_id, "StudyID": st.study_id}
            row.update({seq: int(seq in have) for seq in SEQUENCES})
            row.update(
                {
                    "ExpertAdjusted": int(st.expert_adjusted),
                    "DaysFromBaselineScan": st.days_from_baseline,
                    "RelativeTimepoint": st.relative_timepoint,
                }
            )
            rows.append(row)
            split = st.split or p.split
            if split is not None:
                split_rows.append(
                    {
                        "StudyID": st.study_id,
                        **{k: int(split == k) for k in ("train", "val", "test")},
                    }
                )
    written = [schema.IMAGING_TABLE]
    write_csv_atomic(
        schema.table_path(out_root, schema.IMAGING_TABLE),
        pd.DataFrame(rows, columns=list(schema.IMAGING_COLUMNS)),
    )
    if split_rows:
        write_csv_atomic(
            schema.table_path(out_root, schema.SPLIT_TABLE),
            pd.DataFrame(split_rows, columns=list(schema.SPLIT_COLUMNS)),
        )
        written.append(schema.SPLIT_TABLE)
    return written


def _tables_fingerprint(root: Path) -> str:
    h = hashlib.sha256()
    for f in sorted((root / schema.TABLES_DIR).glob("*.csv")):
        h.update(f.name.encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def preprocess_dataset(
    src_root: str | Path,
    out_root: str | Path,
    cfg: PreprocessConfig | None = None,
    workers: int = 1,
    *,
    layout: str = "auto",
    catalog_path: str | Path | None = None,
    on_study: Callable[[StudyOutcome], None] | None = None,
    on_start: Callable[[int], None] | None = None,
    label_values: tuple[int, ...] | None = None,
    intervals: str | Path | None = None,
) -> PreprocessReport:
    """Preprocess a release-layout dataset into a new one (see the module docstring).

    Args:
        src_root: Input dataset in any layout ``metstrack.io.layouts.read_dataset``
            reads (release, BraTS-METS, BrainMetShare, BIDS-like).
        out_root: Output folder (created; must differ from ``src_root``).
        cfg: Settings (defaults when ``None``).
        workers: Worker processes (patients run in parallel); 1 runs in-process.
        layout: Input layout name, or ``auto`` to detect it. A release dataset's
            tables are copied unchanged; for other layouts the imaging (and split)
            table is written from the cohort, and multi-class labels become the
            binary metastasis mask of the cohort's ``label_classes``.
        catalog_path: Optional cohort catalog (SQLite) to register the run and
            every finished study in (one transaction per study).
        on_study: Called in the parent process after each study (progress bars).
        on_start: Called once with the number of studies before work starts.
        label_values: Label values that are lesion (``--labels``), replacing the
            layout's ``label_classes``; ``None`` keeps the layout's (empty for
            the release layout: label files must be binary, a multi-class file
            fails its study with the fix named).
        intervals: Optional CSV of ``StudyID, DaysFromBaselineScan``
            (:func:`metstrack.io.layouts.apply_intervals`); without it, studies whose
            layout carries no dates keep their timepoint order and an empty
            ``DaysFromBaselineScan`` (interval unknown).

    Returns:
        The :class:`PreprocessReport` (also written to ``preprocess/report.json``).

    Raises:
        DatasetError: Unreadable input tables, or ``out_root`` equal to ``src_root``.
    """
    cfg = cfg or PreprocessConfig()
    src_root, out_root = Path(src_root), Path(out_root)
    if src_root.resolve() == out_root.resolve():
        raise DatasetError(f"{out_root}: the output folder must differ from the input dataset")
    t0 = time.perf_counter()
    cohort = read_dataset(src_root, layout)
    if intervals is not None:
        cohort = apply_intervals(cohort, intervals)
    classes = tuple(
        int(c) for c in (cohort.label_classes if label_values is None else label_values)
    )
    _check_same_config(out_root, cfg)
    # An unusable catalog is refused before anything is written.
    catalog = Catalog.open(catalog_path) if catalog_path is not None else None
    out_root.mkdir(parents=True, exist_ok=True)
    sweep_stale_temps(out_root)  # temporary files of a killed run
    if cohort.layout == "release" and intervals is None:
        tables = _copy_tables(src_root, out_root)
    else:
        tables = _write_imaging_tables(cohort, out_root)
    fingerprint = _tables_fingerprint(out_root)
    cfg_path = save_config(
        cfg,
        out_root / PREPROCESS_DIR / "config.json",
        source=str(src_root),
        source_layout=cohort.layout,
        label_classes=list(classes),
        tables_fingerprint=fingerprint,
        tables_copied=tables,
        workers=int(workers),
        config_fingerprint=config_fingerprint(cfg),
    )
    run_id = None
    if catalog is not None:
        catalog.register_dataset(cohort)
        run_id = catalog.begin_run("preprocess", cfg, source=str(src_root), output=str(out_root))

    outcomes: list[StudyOutcome] = []
    if on_start is not None:
        on_start(len(cohort.studies))

    def collect(batch: list[StudyOutcome]) -> None:
        for o in batch:
            outcomes.append(o)
            if catalog is not None and o.status in ("done", "skipped"):
                catalog.record_study_done(
                    run_id,
                    o.patient_id,
                    o.study_id,
                    outputs=[OutputRecord(p, o.study_id, _output_kind(p)) for p in o.outputs],
                    seconds=o.seconds,
                )
            if on_study is not None:
                on_study(o)

    try:
        if workers <= 1:
            for p in cohort.patients:
                collect(preprocess_patient(p, out_root, cfg, label_classes=classes))
        else:
            with ProcessPoolExecutor(max_workers=int(workers)) as pool:
                futs = [
                    pool.submit(preprocess_patient, p, out_root, cfg, label_classes=classes)
                    for p in cohort.patients
                ]
                for fut in as_completed(futs):
                    collect(fut.result())
        if catalog is not None and not any(o.status == "failed" for o in outcomes):
            # The output is a dataset of its own: same studies, its own files.
            try:
                catalog.register_dataset(read_release(out_root))
            except MetstrackError as exc:
                log.warning("%s: output dataset not registered in the catalog: %s", out_root, exc)
    finally:
        if catalog is not None:
            status = "failed" if any(o.status == "failed" for o in outcomes) else "finished"
            catalog.finish_run(run_id, status=status)
            catalog.close()
    order = {(s.patient_id, s.study_id): i for i, s in enumerate(cohort.studies)}
    outcomes.sort(key=lambda o: order.get((o.patient_id, o.study_id), 0))
    report = PreprocessReport(
        out_root=out_root,
        outcomes=tuple(outcomes),
        seconds=time.perf_counter() - t0,
        config_path=cfg_path,
    )
    write_json_atomic(out_root / PREPROCESS_DIR / "report.json", report.to_dict())
    log.info(
        "preprocessed %s: %d done, %d skipped, %d failed in %.1fs",
        src_root,
        report.count("done"),
        report.count("skipped"),
        report.count("failed"),
        report.seconds,
    )
    return report


__all__ = [
    "PreprocessConfig",
    "PreprocessReport",
    "StudyOutcome",
    "preprocess_dataset",
    "preprocess_patient",
    "preprocess_study",
    "prepare_baseline",
    "BaselineReference",
]
