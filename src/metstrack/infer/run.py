"""Predict a whole dataset: the library function behind ``metstrack predict``.

:func:`predict_dataset` takes one typed :class:`PredictRequest` and

1. loads the checkpoint (spacing, threshold and minimum lesion volume default
   to the values recorded in its provenance),
2. checks the sliding window against the network before any work,
3. makes the input ready (:func:`metstrack.infer.inputs.prepare_input`: DICOM
   ingested, foreign layouts preprocessed),
4. records the run (``predict_config.json``, with the fingerprint that lets a
   rerun keep finished studies, :mod:`metstrack.infer.resume`),
5. segments each patient's studies with memory carried through time
   (:func:`metstrack.infer.predict.predict_patient`); a patient that fails is
   reported and the others go on. The patients run on an executor
   (:mod:`metstrack.execution.executor`: this process, a process pool or a Dask
   cluster); each worker process loads the model once, keyed by the
   checkpoint's SHA-256, and reuses it for every patient it is given.

It returns a :class:`PredictDatasetResult`; the CLI only renders it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from metstrack.config import save_config, to_dict
from metstrack.core.atomic import sweep_stale_temps
from metstrack.errors import ConfigError, DatasetError, MetstrackError, did_you_mean
from metstrack.execution.executor import Executor, LocalExecutor
from metstrack.infer.inputs import (
    PREPROCESS_CHOICES,
    PreparedInput,
    PreprocessChoice,
    prepare_input,
)
from metstrack.infer.predict import PredictOptions, load_patient_studies, predict_patient
from metstrack.infer.resume import (
    FINGERPRINT_KEY,
    PREDICT_CONFIG,
    prepare_prediction_root,
    run_fingerprint,
    saved_fingerprint,
)
from metstrack.infer.sliding import (
    MEMORY_FORMATS,
    PRECISIONS,
    InferMemoryFormat,
    InferPrecision,
    resolve_memory_format,
    resolve_precision,
)
from metstrack.io.checkpoint import (
    MIN_VOLUME_KEY,
    THRESHOLD_KEY,
    load_checkpoint,
    provenance_number,
    training_spacing_mm,
)
from metstrack.io.fingerprint import file_sha256
from metstrack.models.base import SequenceModel
from metstrack.models.config import ModelConfig
from metstrack.preprocess.brain import BRAIN_METHODS, BrainMethod
from metstrack.types import Patient

log = logging.getLogger(__name__)

#: Resolved settings written beside the predictions.
CONFIG_FILE = PREDICT_CONFIG
#: Sub-folder of the output holding the ingested / preprocessed copy of the input.
INPUT_DIR = "input"


@dataclass(frozen=True)
class PredictRequest:
    """What to predict and how (the options of ``metstrack predict``).

    Attributes:
        checkpoint: Trained network (``.ckpt`` / ``.pt``).
        data: Input: a release dataset, a preprocess output, BraTS-METS, BIDS,
            a study folder or DICOM.
        out: Prediction root folder.
        patients: PatientIDs to predict (empty: all).
        tta: Average over the 8 mirror flips.
        overlap: Sliding-window overlap in [0, 0.95].
        roi_size: Window size (X, Y, Z) in voxels; ``None``: the checkpoint's.
        threshold: Lesion probability threshold; ``None``: the checkpoint's
            operating point (0.5 when it records none).
        min_volume_mm3: Smallest predicted lesion kept; ``None``: the checkpoint's (0).
        sw_batch_size: Windows per network call (2: on CPU one window per call runs
            PyTorch's slow single-sample 3D convolution; see :mod:`metstrack.infer.sliding`).
        device: Torch device name (``cpu``, ``cuda``, ``cuda:1``).
        layout: Input layout (``auto``, ``dicom`` or a layout name).
        intervals: CSV of ``StudyID, DaysFromBaselineScan`` for inputs without dates.
        preprocess: ``auto``, ``always`` or ``never``.
        brain_method: Brain mask: ``auto``, ``deepbet``, ``heuristic``, ``nonzero`` or ``none``.
        spacing_mm: Isotropic voxel size of preprocessing; ``None``: the
            checkpoint's training spacing.
        native: Write masks on each study's native grid (when the input was preprocessed).
        overwrite: Replace an output folder that holds another run.
        precision: Network arithmetic: ``fp32``, ``bf16``, ``fp16`` or ``auto`` (the default:
            bf16 where the device computes it natively); recorded resolved.
        memory_format: The network's memory format: ``ncdhw``, ``channels-last`` or
            ``auto`` (the default: the faster one measured; see
            :func:`metstrack.infer.sliding.resolve_memory_format`); recorded resolved.
    """

    checkpoint: Path
    data: Path
    out: Path
    patients: tuple[str, ...] = ()
    tta: bool = False
    overlap: float = 0.5
    roi_size: tuple[int, int, int] | None = None
    threshold: float | None = None
    min_volume_mm3: float | None = None
    sw_batch_size: int = 2
    device: str = "cpu"
    layout: str = "auto"
    intervals: Path | None = None
    preprocess: PreprocessChoice = "auto"
    brain_method: BrainMethod = "auto"
    spacing_mm: float | None = None
    native: bool = True
    overwrite: bool = False
    precision: InferPrecision = "auto"
    memory_format: InferMemoryFormat = "auto"

    def __post_init__(self) -> None:
        for value, choices, name in (
            (self.preprocess, PREPROCESS_CHOICES, "preprocess"),
            (self.brain_method, BRAIN_METHODS, "brain_method"),
            (self.precision, PRECISIONS, "precision"),
            (self.memory_format, MEMORY_FORMATS, "memory_format"),
        ):
            if value not in choices:
                raise ConfigError(f"{name} {value!r}; {did_you_mean(value, choices)}")


@dataclass(frozen=True)
class PredictRun:
    """What a prediction run used (saved as ``predict_config.json``)."""

    checkpoint: str
    data: str
    patients: tuple[str, ...]
    roi_size: tuple[int, ...]
    overlap: float
    tta_flips: bool
    threshold: float
    sw_batch_size: int
    device: str
    output_grid: str
    input_layout: str
    preprocessed_input: str
    brain_method: str
    spacing_mm: float = 1.0
    min_volume_mm3: float = 0.0
    precision: str = "fp32"
    memory_format: str = "ncdhw"


@dataclass(frozen=True)
class PatientPrediction:
    """One patient's outcome.

    Attributes:
        patient_id: Release PatientID.
        n_studies: Studies of the patient in the input.
        n_lesions: Lesions predicted over its studies (0 when it failed).
        n_kept: Studies kept from a previous run of the same settings.
        error: The failure's message, or ``None``.
    """

    patient_id: str
    n_studies: int
    n_lesions: int = 0
    n_kept: int = 0
    error: str | None = None


@dataclass
class PredictDatasetResult:
    """What :func:`predict_dataset` did.

    Attributes:
        run: The recorded settings.
        prepared: The input as predicted (layout, preprocessed copy).
        patients: One outcome per patient, in input order.
    """

    run: PredictRun
    prepared: PreparedInput
    patients: list[PatientPrediction] = field(default_factory=list)

    @property
    def failed(self) -> list[str]:
        """PatientIDs whose prediction failed."""
        return [p.patient_id for p in self.patients if p.error is not None]


#: Models loaded in this process, by (checkpoint SHA-256, device): a worker loads a
#: checkpoint once and predicts every patient it is given with it.
_MODELS: dict[tuple[str, str], tuple[SequenceModel, ModelConfig]] = {}
_MODELS_LOCK = threading.Lock()
_MAX_MODELS = 2
#: How many times this process loaded a checkpoint from disk (read by the tests).
_LOADS = [0]


def worker_model(checkpoint: Path, digest: str, device: str) -> tuple[SequenceModel, ModelConfig]:
    """The model of ``checkpoint`` on ``device``, loaded once per process.

    Args:
        checkpoint: The checkpoint file (read on the first call only).
        digest: Its SHA-256 (the cache key, so a changed file is loaded again).
        device: Torch device name.
    """
    key = (digest, device)
    with _MODELS_LOCK:
        if key not in _MODELS:
            if len(_MODELS) >= _MAX_MODELS:  # a long-lived worker keeps the latest few
                _MODELS.pop(next(iter(_MODELS)))
            model, cfg = load_checkpoint(checkpoint, map_location=torch.device(device))
            model.to(torch.device(device))
            _MODELS[key] = (model, cfg)
            _LOADS[0] += 1
        return _MODELS[key]


def model_loads() -> int:
    """Checkpoints this process has loaded from disk (one per checkpoint and device)."""
    return _LOADS[0]


@dataclass(frozen=True)
class PatientTask:
    """What a worker needs to predict one patient (everything but the patient).

    Attributes:
        checkpoint: The checkpoint file.
        digest: Its SHA-256 (the worker's model cache key).
        device: Torch device name.
        out: Prediction root.
        options: Inference settings.
        transforms_root: Preprocess output whose transforms map back to native grids.
    """

    checkpoint: Path
    digest: str
    device: str
    out: Path
    options: PredictOptions
    transforms_root: Path | None = None


def predict_one_patient(patient: Patient, task: PatientTask) -> PatientPrediction:
    """Predict one patient's studies on this worker (its model loaded once per process).

    A :class:`MetstrackError` is the patient's outcome, not a failure of the run.
    """
    pid = patient.patient_id
    model, cfg = worker_model(task.checkpoint, task.digest, task.device)
    try:
        studies = load_patient_studies(
            patient, cfg.modalities, transforms_root=task.transforms_root
        )
        results = predict_patient(model, pid, studies, task.out, options=task.options)
    except MetstrackError as exc:
        log.info("patient %s failed: %s", pid, exc)
        return PatientPrediction(pid, len(patient.studies), error=str(exc))
    return PatientPrediction(
        pid,
        len(results),
        n_lesions=sum(r.n_lesions for r in results),
        n_kept=sum(r.skipped for r in results),
    )


def predict_dataset(
    request: PredictRequest,
    *,
    on_input_start: Callable[[int], None] | None = None,
    on_input_study: Callable[[object], None] | None = None,
    on_input_ready: Callable[[PreparedInput], None] | None = None,
    on_start: Callable[[int], None] | None = None,
    on_patient: Callable[[PatientPrediction], None] | None = None,
    executor: Executor | None = None,
) -> PredictDatasetResult:
    """Segment every study of each patient of a dataset (see the module docstring).

    Args:
        request: What to predict and how.
        on_input_start: Called with the number of studies to preprocess, when the
            input needs preprocessing.
        on_input_study: Called with each preprocessed study.
        on_input_ready: Called once the input is ready.
        on_start: Called with the number of patients once the run is recorded,
            before the first patient.
        on_patient: Called with each patient's outcome (in completion order; the
            result lists them in input order).
        executor: Where the patients (and a preprocessing of the input) run;
            ``None``: one after the other in this process.

    Returns:
        The run record and one outcome per patient; patients that failed are
        listed in ``failed`` (their finished studies are kept for a rerun).

    Raises:
        CheckpointError: The checkpoint does not load.
        InputShapeError: ``roi_size`` does not fit the network (before any work).
        DatasetError: No patient to predict, or an unknown PatientID.
        MetstrackError: The input cannot be read or the output folder holds another run.
    """
    req = request
    dev = torch.device(req.device)
    precision = resolve_precision(req.precision, dev)  # recorded resolved: it changes outputs
    digest = file_sha256(req.checkpoint)
    model, cfg = worker_model(req.checkpoint, digest, str(dev))
    memory_format = resolve_memory_format(req.memory_format, model, precision, dev)  # recorded too
    spacing_mm = (
        req.spacing_mm if req.spacing_mm is not None else training_spacing_mm(req.checkpoint)
    )
    threshold = req.threshold
    if threshold is None:
        threshold = provenance_number(req.checkpoint, THRESHOLD_KEY, 0.5)
    min_volume = req.min_volume_mm3
    if min_volume is None:
        min_volume = provenance_number(req.checkpoint, MIN_VOLUME_KEY, 0.0)
    if req.roi_size is not None:
        model.check_spatial(req.roi_size)  # a window the network cannot take is refused first
    prepared = prepare_input(
        req.data,
        req.out / INPUT_DIR,
        layout=req.layout,
        intervals=req.intervals,
        preprocess=req.preprocess,
        brain_method=req.brain_method,
        spacing_mm=spacing_mm,
        on_start=on_input_start,
        on_study=on_input_study,
        executor=executor,
    )
    if on_input_ready:
        on_input_ready(prepared)
    cohort = prepared.cohort
    selected = [cohort.patient(p) for p in req.patients] if req.patients else list(cohort.patients)
    if not selected:
        raise DatasetError(f"{req.data}: no patients to predict")
    transforms_root = prepared.root if req.native and prepared.preprocessed else None
    options = PredictOptions(
        brain_method=req.brain_method,
        roi_size=req.roi_size,
        overlap=req.overlap,
        tta_flips=req.tta,
        threshold=threshold,
        min_volume_mm3=min_volume,
        sw_batch_size=req.sw_batch_size,
        precision=precision,
        memory_format=memory_format,
    )
    run = PredictRun(
        checkpoint=str(req.checkpoint),
        data=str(req.data),
        patients=tuple(p.patient_id for p in selected),
        roi_size=tuple(req.roi_size or cfg.roi_size),
        overlap=req.overlap,
        tta_flips=req.tta,
        threshold=threshold,
        sw_batch_size=req.sw_batch_size,
        device=str(dev),
        output_grid="native" if transforms_root is not None else "input",
        input_layout=prepared.source_layout,
        preprocessed_input=str(prepared.root) if prepared.preprocessed else "",
        brain_method=req.brain_method,
        spacing_mm=spacing_mm,
        min_volume_mm3=min_volume,
        precision=precision,
        memory_format=memory_format,
    )
    # Everything that changes a study's outputs; device and batch size do not. The
    # dataset is not part of it: a study is its StudyID, so a follow-up added to
    # the dataset later is predicted alone on a rerun (its patient's memory rerun).
    fingerprint = run_fingerprint(
        digest,
        {
            "roi_size": run.roi_size,
            "overlap": req.overlap,
            "tta_flips": req.tta,
            "threshold": threshold,
            "output_grid": run.output_grid,
            "brain_method": req.brain_method,
            "spacing_mm": spacing_mm,
            "min_volume_mm3": min_volume,
            # fp32 runs keep the fingerprint they had before the option existed
            **({"precision": precision} if precision != "fp32" else {}),
            **({"memory_format": memory_format} if memory_format != "ncdhw" else {}),
        },
    )
    prepare_prediction_root(req.out, fingerprint, overwrite=req.overwrite)
    if saved_fingerprint(req.out) != fingerprint:  # a resumed run keeps the record it resumes
        save_config(
            run, req.out / CONFIG_FILE, model=to_dict(cfg), **{FINGERPRINT_KEY: fingerprint}
        )
    result = PredictDatasetResult(run=run, prepared=prepared)
    if on_start:
        on_start(len(selected))
    task = PatientTask(req.checkpoint, digest, str(dev), req.out, options, transforms_root)
    outcomes: list[PatientPrediction | None] = [None] * len(selected)
    pool = executor if executor is not None else LocalExecutor(1)
    for i, outcome in pool.map_unordered(predict_one_patient, selected, task):
        outcomes[i] = outcome
        if on_patient:
            on_patient(outcome)
    sweep_stale_temps(req.out)  # a killed worker's temporaries (its patient was rerun)
    result.patients.extend(o for o in outcomes if o is not None)
    return result
