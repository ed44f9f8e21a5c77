"""Evaluate a folder of predictions against a reference dataset or a folder of masks.

The reference is a dataset root in any layout
:func:`metstrack.io.layouts.read_dataset` reads (release, BraTS-METS, BIDS,
BrainMetShare, one study folder; a multi-class BraTS ``seg`` is reduced to
``--labels``, else to the layout's ``label_classes``);
every study with a reference label is evaluated: its label file
(``RTSTRUCT_segmentation.nii[.gz]`` in the release layout), else, in a synthetic cohort, its
ground-truth label (``ground_truth/labels/<P>/<S>.nii.gz``, present also for the
studies the release flags unlabelled). The prediction of a study is looked up, in order, at

1. ``<pred>/predictions/patientId/<P>/studyId/<S>/mask.nii[.gz]``
   (:func:`metstrack.core.schema.prediction_dir`, what ``metstrack predict`` writes),
2. ``<pred>/patientId/<P>/studyId/<S>/mask.nii[.gz]`` (the same tree without
   the ``predictions/`` level),
3. ``<pred>/imaging/patientId/<P>/studyId/<S>/RTSTRUCT_segmentation.nii[.gz]``
   (predictions saved as a dataset),

and, with a probability threshold only, ``prob.nii[.gz]`` beside a missing mask.
A study without a prediction is evaluated as an empty prediction (every lesion
missed) and flagged ``prediction_missing``; it is never skipped.

Two plain folders of masks (``--pred`` holding NIfTI files directly) are paired
by file name instead (:func:`plan_pair_jobs`), each file its own study.

New lesions are decided against the patient's previous labelled study. When the
dataset carries ground-truth identities (synthetic cohorts:
``<ref>/ground_truth/instances/<P>/<S>.nii.gz``, the same ID for the same lesion
in every study) for both studies, a lesion is new when its ID is absent from the
previous study. Otherwise the two labels are compared by overlap when they share
a grid (shape and affine within ``affine_atol_mm``); else the status is unknown
and the new-lesion sensitivity of that pair is NaN.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np

from metstrack.config import save_config
from metstrack.core import schema
from metstrack.core.atomic import write_csv_atomic, write_json_atomic
from metstrack.errors import DatasetError, LabelError
from metstrack.execution.executor import Executor, LocalExecutor
from metstrack.infer.inputs import prepare_input
from metstrack.io.labels import lesion_mask
from metstrack.io.layouts import read_dataset
from metstrack.io.nifti import check_same_grid, find_nifti, read_label, read_volume
from metstrack.metrics.cohort import CohortSummary, summarize_cohort
from metstrack.metrics.detection import BRATS_HD95_PENALTY_MM, DEFAULT_VOLUME_BINS_MM3
from metstrack.metrics.longitudinal import StudyPairChange, compute_longitudinal
from metstrack.metrics.matching import (
    BRATS_METS_DILATION_VOXELS,
    Criterion,
    MatchMode,
    Objective,
)
from metstrack.metrics.study import StudyEvaluation, StudyOptions, evaluate_study
from metstrack.types import AFFINE_ATOL_MM, LABEL_SEQUENCE, Volume

log = logging.getLogger(__name__)

#: Folder of ground-truth instance maps under ``<root>/ground_truth`` (synthetic cohorts).
INSTANCES_DIR = "instances"


@dataclass(frozen=True)
class EvaluationConfig:
    """Settings of a cohort evaluation (saved as ``config.json`` beside the outputs).

    Attributes:
        mode: Matching mode, ``"overlap"`` or ``"brats"``.
        criterion: Overlap score of the ``overlap`` mode, ``"iou"`` or ``"ior"``.
        match_threshold: Candidate pairs need a score strictly above this.
        match_objective: ``overlap`` mode: ``"overlap"`` (largest total score,
            default) or ``"pairs"`` (most pairs first).
        dilation_voxels: Reference dilation of the ``brats`` mode.
        min_ref_volume_mm3: ``brats`` mode: reference lesions at or below are ignored.
        connectivity: 6, 18 or 26.
        tolerance_mm: Surface Dice tolerance.
        volume_bins_mm3: Stratum edges (10 mm3 is always an edge).
        beta: Beta of the F-beta score.
        hd95_penalty_mm: HD95 of missed and false lesions in the penalised score.
        prob_threshold: Threshold probability maps at this value (voxels >= it are
            lesion); ``None`` makes a probability map an error.
        new_lesion_margin_voxels: Dilation of the previous reference for new lesions.
        affine_atol_mm: Tolerance when comparing prediction and reference grids.
        n_bootstrap: Patient-level bootstrap resamples.
        confidence: Coverage of the bootstrap interval.
        seed: Bootstrap seed.
        label_values: Reference label values that are lesion (``--labels``); empty
            requires binary reference files, so a multi-class file is refused
            rather than read as "anything non-zero" (see :mod:`metstrack.io.labels`).
    """

    mode: MatchMode = "overlap"
    criterion: Criterion = "iou"
    match_threshold: float = 0.0
    match_objective: Objective = "overlap"
    dilation_voxels: int = BRATS_METS_DILATION_VOXELS
    min_ref_volume_mm3: float = 0.0
    connectivity: int = 26
    tolerance_mm: float = 1.0
    volume_bins_mm3: tuple[float, ...] = DEFAULT_VOLUME_BINS_MM3
    beta: float = 2.0
    hd95_penalty_mm: float = BRATS_HD95_PENALTY_MM
    prob_threshold: float | None = None
    new_lesion_margin_voxels: int = 0
    affine_atol_mm: float = AFFINE_ATOL_MM
    n_bootstrap: int = 1000
    confidence: float = 0.95
    seed: int = 0
    label_values: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        self.study_options().matching()  # validates the matching settings
        if self.connectivity not in (6, 18, 26):
            raise ValueError(f"connectivity must be 6, 18 or 26, got {self.connectivity}")
        if self.prob_threshold is not None and not 0.0 < self.prob_threshold <= 1.0:
            raise ValueError(f"prob_threshold must be in (0, 1], got {self.prob_threshold}")

    def study_options(self) -> StudyOptions:
        """The per-study part of these settings (:func:`metstrack.metrics.study.evaluate_study`)."""
        return StudyOptions(**{f.name: getattr(self, f.name) for f in fields(StudyOptions)})


@dataclass(frozen=True)
class StudyJob:
    """One study to evaluate (paths only, so it pickles cheaply to a worker)."""

    patient_id: str
    study_id: str
    ref_path: Path
    pred_path: Path | None
    previous_ref_path: Path | None
    instances_path: Path | None = None
    previous_instances_path: Path | None = None
    label_classes: tuple[int, ...] = ()


@dataclass(frozen=True)
class CohortEvaluation:
    """Everything a cohort evaluation produced.

    Attributes:
        studies: One evaluation per labelled study, patients in order, time order within.
        pairs: Longitudinal changes between consecutive labelled studies.
        summary: Cohort estimates with bootstrap intervals.
        config: The settings used.
    """

    studies: tuple[StudyEvaluation, ...]
    pairs: tuple[StudyPairChange, ...]
    summary: CohortSummary
    config: EvaluationConfig


def find_prediction(
    pred_root: Path, patient_id: str, study_id: str, *, allow_prob: bool
) -> Path | None:
    """The prediction file of one study (see the module docstring), or ``None``."""
    folders = (
        schema.prediction_dir(pred_root, patient_id, study_id),
        pred_root / "patientId" / patient_id / "studyId" / study_id,
    )
    for folder in folders:
        p = find_nifti(folder, schema.PREDICTION_MASK)
        if p is not None:
            return p
    p = find_nifti(schema.study_dir(pred_root, patient_id, study_id), LABEL_SEQUENCE)
    if p is not None:
        return p
    for folder in folders:
        p = find_nifti(folder, schema.PREDICTION_PROB)
        if p is not None:
            if allow_prob:
                return p
            raise LabelError(
                f"{p}: only a probability map exists for study {study_id} (no mask); "
                "pass --threshold (e.g. 0.5) to binarise it"
            )
    return None


def plan_jobs(
    pred_root: str | Path, ref_root: str | Path, config: EvaluationConfig
) -> list[StudyJob]:
    """One job per labelled study of the reference dataset.

    Raises:
        DatasetError: The reference is not a readable release dataset, it has no
            labelled study, or the prediction folder does not exist.
    """
    pred_root = Path(pred_root)
    if not pred_root.is_dir():
        raise DatasetError(f"{pred_root}: prediction folder not found")
    if is_mask_folder(pred_root):
        return plan_pair_jobs(pred_root, Path(ref_root))
    cohort = read_dataset(ref_root)
    classes = tuple(int(c) for c in cohort.label_classes)
    jobs: list[StudyJob] = []
    for patient in cohort.patients:
        prev: Path | None = None
        prev_inst: Path | None = None
        for study in patient.studies:
            lab = study.any_label_path
            if lab is None:
                continue
            pred = find_prediction(
                pred_root,
                patient.patient_id,
                study.study_id,
                allow_prob=config.prob_threshold is not None,
            )
            inst = find_nifti(
                Path(ref_root) / schema.GROUND_TRUTH_DIR / INSTANCES_DIR / patient.patient_id,
                study.study_id,
            )
            jobs.append(
                StudyJob(
                    patient.patient_id,
                    study.study_id,
                    Path(lab),
                    pred,
                    prev,
                    inst,
                    prev_inst if inst is not None else None,
                    classes,
                )
            )
            prev, prev_inst = Path(lab), inst
    if not jobs:
        raise DatasetError(
            f"{ref_root}: no study has a reference label ({LABEL_SEQUENCE}.nii.gz); "
            "nothing to evaluate"
        )
    return jobs


#: Name endings dropped when pairing plain mask files (``case-seg`` pairs with ``case``).
_PAIR_SUFFIXES: tuple[str, ...] = ("-seg", "_seg", "-label", "_label", "-mask", "_mask")


def _nifti_files(folder: Path) -> list[Path]:
    return sorted(
        f for f in folder.iterdir() if f.is_file() and f.name.lower().endswith((".nii", ".nii.gz"))
    )


def is_mask_folder(root: Path) -> bool:
    """True when ``root`` is a plain folder of mask files (NIfTI files directly in it,
    no ``predictions/``, ``patientId/`` or ``imaging/`` tree)."""
    trees = ("predictions", "patientId", schema.IMAGING_DIR)
    return not any((root / t).is_dir() for t in trees) and bool(_nifti_files(root))


def pair_key(name: str) -> str:
    """The name two paired mask files share: the stem without ``-seg``-like endings."""
    stem = name[: -len(".nii.gz")] if name.lower().endswith(".nii.gz") else name[: -len(".nii")]
    for suffix in _PAIR_SUFFIXES:
        if stem.lower().endswith(suffix):
            return stem[: -len(suffix)]
    return stem


def plan_pair_jobs(pred_dir: Path, ref_dir: Path) -> list[StudyJob]:
    """One job per reference file of a plain folder, paired with the prediction of the same name.

    Files pair by name (``case.nii.gz`` with ``case.nii.gz``, or ``case-seg.nii.gz``
    with ``case.nii.gz``, as the BraTS evaluator and panoptica pair them). Each file
    is its own patient and study (named by the shared stem); a reference without a
    prediction is evaluated as an empty prediction; a prediction without a reference
    is logged and ignored.

    Raises:
        DatasetError: ``ref_dir`` is missing or holds no NIfTI file, or two files of
            one folder pair to the same name.
    """
    if not ref_dir.is_dir() or not _nifti_files(ref_dir):
        raise DatasetError(
            f"{ref_dir}: no reference mask files (NIfTI) in this folder; with a plain "
            "folder of predicted masks, --ref must be a folder of reference masks"
        )

    def keyed(folder: Path) -> dict[str, Path]:
        out: dict[str, Path] = {}
        for f in _nifti_files(folder):
            k = pair_key(f.name)
            if k in out:
                raise DatasetError(
                    f"{f}: pairs to the same name {k!r} as {out[k].name}; rename one of them"
                )
            out[k] = f
        return out

    refs, preds = keyed(ref_dir), keyed(pred_dir)
    extra = sorted(set(preds) - set(refs))
    if extra:
        log.warning("%d prediction file(s) without a reference ignored: %s", len(extra), extra[:5])
    return [StudyJob(k, k, refs[k], preds.get(k), None) for k in sorted(refs)]


def _binary(vol: Volume, threshold: float | None) -> np.ndarray:
    arr = vol.array
    if threshold is not None:
        return arr >= threshold
    if not np.all(np.equal(np.mod(arr, 1), 0)):
        raise LabelError(
            f"{vol.path}: prediction holds non-integer values "
            f"(range {arr.min():.3g}..{arr.max():.3g}); is it a probability map? "
            "pass --threshold (e.g. 0.5) to binarise it"
        )
    if arr.min() < 0:
        raise LabelError(f"{vol.path}: prediction holds negative values (min {arr.min():.0f})")
    return arr != 0


def evaluate_job(job: StudyJob, config: EvaluationConfig) -> StudyEvaluation:
    """Read one study's files and evaluate it (runs in a worker process).

    Raises:
        ImageReadError: A file is missing, unreadable or corrupt (named).
        LabelError: A probability map without a threshold, or a bad reference label.
        GeometryMismatchError: Prediction and reference grids differ (both named).
    """
    ref = read_label(job.ref_path, binary=False)
    # --labels first; else a multi-class layout's classes (BraTS-METS seg: NETC + ET).
    values = config.label_values or job.label_classes
    ref = ref.with_array(lesion_mask(ref.array, job.ref_path, values))
    pred_arr = None
    if job.pred_path is not None:
        pred = read_volume(job.pred_path, dtype=np.float32)
        check_same_grid(ref, pred, atol_mm=config.affine_atol_mm)
        pred_arr = _binary(pred, config.prob_threshold)
    inst = prev_inst = prev_arr = None
    if job.instances_path is not None and job.previous_instances_path is not None:
        inst = read_label(job.instances_path, binary=False, reference=ref).array
        prev_inst = read_label(job.previous_instances_path, binary=False).array
    elif job.previous_ref_path is not None:
        prev = read_label(job.previous_ref_path, binary=False)
        prev = prev.with_array(lesion_mask(prev.array, job.previous_ref_path, values))
        if prev.same_grid(ref, atol_mm=config.affine_atol_mm):
            prev_arr = prev.array != 0
        else:
            log.info("%s: previous study on another grid; new-lesion status unknown", job.study_id)
    return evaluate_study(
        pred_arr,
        ref.array != 0,
        affine=ref.affine,
        previous_ref=prev_arr,
        ref_instances=inst,
        previous_ref_instances=prev_inst,
        patient_id=job.patient_id,
        study_id=job.study_id,
        options=config.study_options(),
    )


def run_jobs(
    jobs: Sequence[StudyJob],
    config: EvaluationConfig,
    *,
    workers: int = 1,
    executor: Executor | None = None,
    on_done: Callable[[StudyEvaluation], None] | None = None,
) -> list[StudyEvaluation]:
    """Evaluate jobs on ``executor``, else in parallel across ``workers`` processes when > 1.

    Results come back in the order of ``jobs``; the first error stops the run
    (pending jobs are cancelled) and is raised.
    """
    results: list[StudyEvaluation | None] = [None] * len(jobs)
    pool = executor if executor is not None else LocalExecutor(workers, mp_context="spawn")
    for i, study in pool.map_unordered(evaluate_job, list(jobs), config):
        results[i] = study
        if on_done:
            on_done(study)
    return results  # type: ignore[return-value]


def evaluate_cohort(
    pred_root: str | Path,
    ref_root: str | Path,
    config: EvaluationConfig | None = None,
    *,
    workers: int = 1,
    executor: Executor | None = None,
    patients: Collection[str] | None = None,
    on_start: Callable[[int], None] | None = None,
    on_done: Callable[[StudyEvaluation], None] | None = None,
) -> CohortEvaluation:
    """Evaluate every labelled study of a release dataset against a prediction folder.

    Args:
        pred_root: Prediction folder (see the module docstring for the lookup).
        ref_root: Reference dataset root in the release layout.
        config: Settings (defaults: one-to-one IoU > 0 matching, 1000 bootstrap resamples).
        workers: Worker processes (without ``executor``).
        executor: Where the studies run (:mod:`metstrack.execution.executor`).
        patients: Evaluate only these PatientIDs (``None``: all); the benchmark
            passes its test patients.
        on_start: Called with the number of studies before work starts.
        on_done: Called with each finished study (for progress bars).

    Returns:
        A :class:`CohortEvaluation`.

    Raises:
        DatasetError: ``patients`` given and none of them has a labelled study.
    """
    config = config or EvaluationConfig()
    jobs = plan_jobs(pred_root, ref_root, config)
    if patients is not None:
        wanted = set(patients)
        jobs = [j for j in jobs if j.patient_id in wanted]
        if not jobs:
            raise DatasetError(f"{ref_root}: no labelled study among the test patients")
    if on_start:
        on_start(len(jobs))
    studies = run_jobs(jobs, config, workers=workers, executor=executor, on_done=on_done)
    pairs = compute_longitudinal(studies)
    summary = summarize_cohort(
        studies,
        pairs=pairs,
        n_bootstrap=config.n_bootstrap,
        confidence=config.confidence,
        seed=config.seed,
    )
    n_missing = sum(s.prediction_missing for s in studies)
    if n_missing:
        log.warning(
            "%d of %d studies had no prediction (counted as all missed)", n_missing, len(studies)
        )
    return CohortEvaluation(tuple(studies), pairs, summary, config)


#: Output files of :func:`write_outputs`, by role.
OUTPUT_FILES: dict[str, str] = {
    "studies": "studies.csv",
    "lesions": "lesions.csv",
    "longitudinal": "longitudinal.csv",
    "summary_csv": "summary.csv",
    "summary_json": "summary.json",
    "config": "config.json",
}


def summary_dict(summary: CohortSummary) -> dict[str, object]:
    """JSON-ready form of a :class:`CohortSummary` (NaN becomes ``null`` when written)."""
    return {
        "n_patients": summary.n_patients,
        "n_studies": summary.n_studies,
        "n_missing_predictions": summary.n_missing_predictions,
        "n_bootstrap": summary.n_bootstrap,
        "confidence": summary.confidence,
        "seed": summary.seed,
        "headline": asdict(summary.headline),
        "metrics": {
            m.name: {k: v for k, v in asdict(m).items() if k != "name"} for m in summary.metrics
        },
    }


def write_outputs(
    result: CohortEvaluation, out_dir: str | Path, **provenance: str
) -> dict[str, Path]:
    """Write the per-study, per-lesion, longitudinal and summary tables atomically.

    Args:
        result: What :func:`evaluate_cohort` returned.
        out_dir: Output folder (created).
        provenance: Extra values stored in ``config.json`` (e.g. the input folders).

    Returns:
        Paths written, keyed as :data:`OUTPUT_FILES`.
    """
    import pandas as pd

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {k: out / v for k, v in OUTPUT_FILES.items()}
    lesion_cols = [
        "patient_id", "study_id", "lesion_index", "kind", "ref_labels", "pred_labels",
        "ref_volume_mm3", "pred_volume_mm3", "intersection_mm3", "dice", "hd95_mm",
        "match_score", "stratum", "centroid_x_mm", "centroid_y_mm", "centroid_z_mm", "is_new",
    ]  # fmt: skip
    pair_cols = [f.name for f in fields(StudyPairChange)]
    studies = pd.DataFrame([s.row() for s in result.studies])
    lesions = pd.DataFrame(
        [r for s in result.studies for r in s.lesion_rows()], columns=lesion_cols
    )
    pairs = pd.DataFrame([asdict(c) for c in result.pairs], columns=pair_cols)
    summary = pd.DataFrame([asdict(m) for m in result.summary.metrics])
    write_csv_atomic(paths["studies"], studies)
    write_csv_atomic(paths["lesions"], lesions)
    write_csv_atomic(paths["longitudinal"], pairs)
    write_csv_atomic(paths["summary_csv"], summary)
    write_json_atomic(paths["summary_json"], summary_dict(result.summary))
    save_config(result.config, paths["config"], **provenance)
    return paths


def evaluate_predictions(
    pred: str | Path,
    ref: str | Path,
    out: str | Path,
    config: EvaluationConfig | None = None,
    *,
    workers: int = 1,
    executor: Executor | None = None,
    on_start: Callable[[int], None] | None = None,
    on_done: Callable[[StudyEvaluation], None] | None = None,
) -> tuple[CohortEvaluation, dict[str, Path]]:
    """``metstrack evaluate`` as a function: evaluate, then write every table to ``out``.

    Args:
        pred: What ``metstrack predict`` wrote, or a plain folder of mask files
            (then paired by file name with the plain folder ``ref``).
        ref: Reference dataset in any layout; DICOM is ingested (RTSTRUCT
            rasterised) into ``<out>/input`` first.
        out: Output folder.
        config: Settings.
        workers: Worker processes (without ``executor``).
        executor: Where the studies run (:mod:`metstrack.execution.executor`).
        on_start: Called with the number of studies before work starts.
        on_done: Called with each finished study.

    Returns:
        The evaluation and the paths written (keys of :data:`OUTPUT_FILES`).
    """
    pred, ref, out = Path(pred), Path(ref), Path(out)
    ref_root = ref
    if pred.is_dir() and not is_mask_folder(pred):
        ref_root = prepare_input(ref, out / "input", preprocess="never").root
    result = evaluate_cohort(
        pred,
        ref_root,
        config,
        workers=workers,
        executor=executor,
        on_start=on_start,
        on_done=on_done,
    )
    return result, write_outputs(result, out, pred=str(pred), ref=str(ref))
