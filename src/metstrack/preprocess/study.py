"""Preprocessing of one study and one patient onto the patient's baseline grid.

:func:`prepare_baseline` builds the baseline reference, then
:func:`preprocess_study` runs the named steps on each study (see
:mod:`metstrack.preprocess.pipeline` for the whole method and the outputs);
:func:`metstrack.preprocess.patient.preprocess_patient` runs them over one
patient, the unit of parallel work.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from metstrack.config import config_fingerprint, to_dict
from metstrack.core import schema
from metstrack.core.atomic import (
    write_json_atomic,
)
from metstrack.core.grid import Grid, isotropic_grid, reorient_to_ras, shares_grid
from metstrack.core.mapping import (
    StudyTransform,
    save_transform,
    transform_path,
)
from metstrack.core.spatial import resample_array
from metstrack.errors import DatasetError, LabelError
from metstrack.io.labels import lesion_mask
from metstrack.io.nifti import read_volume, write_volume
from metstrack.preprocess.brain import (
    estimate_brain_mask,
    nonzero_mask,
)
from metstrack.preprocess.config import (
    INTERPOLATIONS,
    REFERENCE_SEQUENCE,
    PreprocessConfig,
)
from metstrack.preprocess.intensity import n4_correct, zscore_in_brain
from metstrack.preprocess.outputs import (
    brain_mask_path,
    provenance_path,
    study_fingerprint,
)
from metstrack.preprocess.register import register
from metstrack.types import (
    LABEL_SEQUENCE,
    MODALITIES,
    PLANNING_SEQUENCE,
    Patient,
    Study,
    Volume,
)

log = logging.getLogger(__name__)


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


#: One provenance entry of a study (``steps`` in its provenance JSON).
StepRecord = dict[str, object]


def register_through_time(
    study_id: str, ct1_ras: Volume, baseline: BaselineReference, cfg: PreprocessConfig
) -> tuple[np.ndarray, StepRecord]:
    """Step 1: ``baseline_to_study`` of a study's CT1 (the identity for the baseline).

    Returns:
        The 4x4 transform (baseline world mm -> study world mm) and its provenance entry.
    """
    if study_id == baseline.study_id:
        b2s = np.eye(4)
        return b2s, {"step": "register_through_time", "baseline": True, "transform": b2s.tolist()}
    mask = None
    if baseline.brain is not None and cfg.metric_mask_mm > 0:
        mask = _dilate_mm(baseline.brain, cfg.metric_mask_mm, cfg.spacing_mm)
    res = register(baseline.ct1, ct1_ras, cfg.through_time, fixed_mask=mask)
    return res.transform, {
        "step": "register_through_time",
        "fixed": f"{baseline.study_id}/{REFERENCE_SEQUENCE}",
        "moving": f"{study_id}/{REFERENCE_SEQUENCE}",
        "params": to_dict(cfg.through_time),
        "metric_mask_mm": cfg.metric_mask_mm if mask is not None else 0.0,
        **res.to_dict(),
    }


def resample_sequences(
    study: Study,
    ct1_ras: Volume,
    b2s: np.ndarray,
    grid: Grid,
    cfg: PreprocessConfig,
    *,
    coregistered_input: bool = False,
) -> tuple[dict[str, np.ndarray], list[StepRecord]]:
    """Step 2: every sequence of the study on the baseline grid, each resampled once.

    The CT1 goes through ``b2s``; every other sequence (and the planning T1 post)
    is registered to the study's CT1 on the grid, starting from ``b2s``, unless
    ``cfg.register_within_study`` is off (the scanner frame is then trusted) or
    the sequence is stored on the CT1's own grid (:func:`shares_grid`) and
    ``cfg.shared_grid`` is ``skip``, or ``auto`` with ``coregistered_input``.

    Args:
        study: The study.
        ct1_ras: Its CT1, reoriented to RAS.
        b2s: ``baseline_to_study`` of the CT1.
        grid: The baseline grid.
        cfg: Settings.
        coregistered_input: The input layout's provider co-registers the
            sequences (:attr:`metstrack.io.layouts.Layout.coregistered`).

    Returns:
        Sequence name -> float (X, Y, Z) array on ``grid``, and the provenance entries.
    """
    order = INTERPOLATIONS[cfg.image_interpolation]
    sid = study.study_id
    skip_shared = cfg.shared_grid == "skip" or (cfg.shared_grid == "auto" and coregistered_input)
    ct1 = resample_array(
        ct1_ras.array, ct1_ras.affine, grid.shape, grid.affine, transform=b2s, order=order
    )
    steps: list[StepRecord] = [
        {
            "step": "resample",
            "sequence": REFERENCE_SEQUENCE,
            "interpolation": cfg.image_interpolation,
            "grid": grid.to_dict(),
        }
    ]
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
        if cfg.register_within_study and skip_shared and shares_grid(ras, ct1_ras):
            t = b2s
            steps.append(
                {
                    "step": "register_within_study",
                    "fixed": f"{sid}/{REFERENCE_SEQUENCE}",
                    "moving": f"{sid}/{seq}",
                    "skipped": "stored on the CT1's grid: co-registered by the provider "
                    f"(shared_grid = {cfg.shared_grid!r})",
                }
            )
        elif cfg.register_within_study:
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
    return images, steps


def study_brain_masks(
    ct1_path: Path,
    ct1_native: Volume,
    ct1_ras: Volume,
    b2s: np.ndarray,
    grid: Grid,
    cfg: PreprocessConfig,
) -> tuple[np.ndarray, np.ndarray, StepRecord]:
    """Step 3: the brain mask on this study's CT1 as stored, carried onto the baseline grid.

    Estimated on the stored CT1 (so it holds exactly on the grid predictions are
    written on), then mapped onto the baseline grid (linear >= 0.5).

    Returns:
        bool masks on the baseline grid and on the CT1 file's own grid, and the
        provenance entry.

    Raises:
        DatasetError: The mask is empty.
    """
    if cfg.brain_mask:
        native_brain, used = estimate_brain_mask(ct1_ras, cfg.brain_method, cfg.brain)
        step: StepRecord = {
            "step": "brain_mask",
            "method": used,
            "requested": cfg.brain_method,
            **({"params": to_dict(cfg.brain)} if used == "heuristic" else {}),
            "voxels_native": int(native_brain.sum()),
        }
    else:
        native_brain = nonzero_mask(ct1_ras)
        step = {
            "step": "brain_mask",
            "method": "nonzero (skull-stripped input)",
            "voxels_native": int(native_brain.sum()),
        }
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
    step["voxels"] = int(brain.sum())
    native_brain = resample_array(
        native_brain.astype(np.uint8),
        ct1_ras.affine,
        ct1_native.shape,
        ct1_native.affine,
        order=0,
    ).astype(bool)
    if not brain.any():
        raise DatasetError(f"{ct1_path}: empty brain mask; check the image or use --no-brain-mask")
    return brain, native_brain, step


def correct_and_normalise(
    images: dict[str, np.ndarray], brain: np.ndarray, grid: Grid, cfg: PreprocessConfig
) -> tuple[dict[str, np.ndarray], list[StepRecord]]:
    """Step 4: optional N4 bias correction (inside the head), then z-score inside the brain.

    Returns:
        The corrected images (voxels outside the brain 0 after z-scoring) and the
        provenance entries.
    """
    steps: list[StepRecord] = []
    if cfg.n4:
        head = _dilate_mm(brain, 5.0, cfg.spacing_mm)
        images = {
            seq: n4_correct(
                Volume(array=arr, affine=grid.affine), head, shrink_factor=cfg.n4_shrink_factor
            ).array
            for seq, arr in images.items()
        }
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
    return images, steps


@dataclass(frozen=True, eq=False)
class MappedLabel:
    """A label mapped onto the baseline grid, waiting to be written.

    Attributes:
        array: (X, Y, Z) label on the baseline grid (nearest neighbour, dtype kept).
        target: Output file.
        step: Provenance step name (``label`` or ``truth_label``).
        reorient: Orientation record of the source file.
    """

    array: np.ndarray
    target: Path
    step: str
    reorient: dict


def map_labels(
    study: Study,
    out_root: Path,
    b2s: np.ndarray,
    grid: Grid,
    *,
    label_classes: tuple[int, ...] = (),
) -> list[MappedLabel]:
    """Step 5: the release label and a synthetic cohort's ground-truth label on the grid.

    Both are read and checked before anything of the study is written. The
    release label must be binary unless ``label_classes`` says which values are lesion.
    """
    pid, sid = study.patient_id, study.study_id
    folder = schema.study_dir(out_root, pid, sid)
    labels: list[MappedLabel] = []
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
        labels.append(MappedLabel(lab, target, step_name, rec))
    return labels


def write_study_outputs(
    study: Study,
    baseline: BaselineReference,
    out_root: Path,
    cfg: PreprocessConfig,
    *,
    images: dict[str, np.ndarray],
    labels: list[MappedLabel],
    brain: np.ndarray,
    native_brain: np.ndarray,
    ct1_native: Volume,
    b2s: np.ndarray,
    steps: list[StepRecord],
) -> tuple[str, ...]:
    """Step 6: write images, labels, brain masks, provenance, and the transform last.

    Returns:
        Output paths relative to ``out_root`` (the transform JSON included).
    """
    pid, sid = study.patient_id, study.study_id
    grid = baseline.grid
    folder = schema.study_dir(out_root, pid, sid)
    outputs: list[str] = []
    for seq, arr in images.items():
        p = write_volume(arr.astype(np.float32), folder / f"{seq}.nii.gz", affine=grid.affine)
        outputs.append(str(p.relative_to(out_root)))
    for lab in labels:
        p = write_volume(lab.array, lab.target, affine=grid.affine)
        outputs.append(str(p.relative_to(out_root)))
        steps.append(
            {
                "step": lab.step,
                "reorient": lab.reorient,
                "interpolation": "nearest",
                "dtype": str(lab.array.dtype),
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


def preprocess_study(
    patient: Patient,
    study: Study,
    baseline: BaselineReference,
    out_root: Path,
    cfg: PreprocessConfig,
    *,
    label_classes: tuple[int, ...] = (),
    coregistered_input: bool = False,
) -> tuple[str, ...]:
    """Preprocess one study onto its patient's baseline grid and write every output.

    The named steps, each recorded in the study's provenance: reorient the CT1,
    :func:`register_through_time`, :func:`resample_sequences`,
    :func:`study_brain_masks`, :func:`correct_and_normalise`, :func:`map_labels`,
    :func:`write_study_outputs`.

    Args:
        patient: The study's patient.
        study: The study (its CT1 is required).
        baseline: From :func:`prepare_baseline`.
        out_root: Output dataset root.
        cfg: Settings.
        label_classes: For multi-class label files (``Cohort.label_classes``), the
            values whose union is the metastasis mask (written as uint8 0/1); empty
            keeps the label as it is, dtype included.
        coregistered_input: The input layout co-registers a study's sequences
            (:func:`resample_sequences`).

    Returns:
        Output paths relative to ``out_root`` (the transform JSON, written last, included).

    Raises:
        MetstrackError: Unreadable or invalid input (a typed subclass naming the file).
    """
    pid, sid = patient.patient_id, study.study_id
    ct1_path = study.path(REFERENCE_SEQUENCE)
    if ct1_path is None:
        raise DatasetError(
            f"patient {pid} study {sid}: no {REFERENCE_SEQUENCE} (T1 post) file; the study "
            "cannot be registered (add the T1 post or drop the study from the imaging table)"
        )
    ct1_native, ct1_ras, ct1_rec = _read_ras(ct1_path)
    steps: list[StepRecord] = [{"step": "reorient", "sequence": REFERENCE_SEQUENCE, **ct1_rec}]
    b2s, step = register_through_time(sid, ct1_ras, baseline, cfg)
    steps.append(step)
    images, more = resample_sequences(
        study, ct1_ras, b2s, baseline.grid, cfg, coregistered_input=coregistered_input
    )
    steps += more
    brain, native_brain, step = study_brain_masks(
        ct1_path, ct1_native, ct1_ras, b2s, baseline.grid, cfg
    )
    steps.append(step)
    images, more = correct_and_normalise(images, brain, baseline.grid, cfg)
    steps += more
    labels = map_labels(study, out_root, b2s, baseline.grid, label_classes=label_classes)
    return write_study_outputs(
        study,
        baseline,
        out_root,
        cfg,
        images=images,
        labels=labels,
        brain=brain,
        native_brain=native_brain,
        ct1_native=ct1_native,
        b2s=b2s,
        steps=steps,
    )
