"""Predict a patient's studies and write masks, probabilities and lesion tables on native grids.

Flow for one patient (studies in time order)::

    native study grids --resample (baseline_to_study)--> baseline grid
        --brain mask (given, or estimated on the T1 post)--> z-score in the brain
        --crop to the brains' bounding box--> (T, C, x, y, z)
        --predict_sequence--> (T, K, x, y, z)
        --foreground probability, 0 outside the brain, resample (inverse transform)-->
        each study's native grid --threshold--> mask.nii.gz, prob.nii.gz, lesions.csv

No lesion lies outside the brain: the probability is set to 0 outside each
study's brain mask (on the baseline grid and again on the output grid), and the
network only sees the brains' bounding box plus a margin, so sliding-window
edges in the empty background cannot create components.

Transform convention (:mod:`metstrack.core.spatial`): ``baseline_to_study``
maps a baseline world point (RAS, mm) to the same anatomy in the study; the
first study's grid is the baseline grid. Without a transform the studies are
taken as already aligned in world coordinates. Native voxels that fall
outside the baseline field of view get probability 0.

Studies already put on the baseline grid by ``metstrack preprocess`` give
their original file's grid and transform as ``output_grid`` /
``output_transform`` (from :mod:`metstrack.core.mapping`), so the
outputs still land on the native grid of the original files.

Outputs go under :func:`metstrack.core.schema.prediction_dir`, each file written
atomically; ``lesions.csv`` is written last, so a study is finished when it
exists, and a rerun skips finished studies (a patient whose studies are all
finished is not run at all).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cc3d
import numpy as np
import pandas as pd
import torch

from metstrack.core import schema
from metstrack.core.atomic import write_csv_atomic
from metstrack.core.lesions import lesion_table
from metstrack.core.mapping import load_transform
from metstrack.core.spatial import resample_array
from metstrack.errors import DatasetError, InvalidImageError
from metstrack.infer.sliding import BlendMode, InferMemoryFormat, InferPrecision, predict_sequence
from metstrack.io.nifti import check_same_grid, read_label, read_volume, write_volume
from metstrack.models.base import SequenceModel
from metstrack.preprocess.brain import BrainMethod, estimate_brain_mask
from metstrack.preprocess.intensity import zscore_in_brain
from metstrack.preprocess.outputs import brain_mask_path
from metstrack.types import Patient, Volume

#: The sequence a brain mask is estimated on (T1 post).
REFERENCE_SEQUENCE = "CT1"

log = logging.getLogger(__name__)

#: Columns of each study's ``lesions.csv`` (one row per predicted lesion).
LESION_COLUMNS: tuple[str, ...] = (
    "PatientID",
    "StudyID",
    "label",
    "voxel_count",
    "volume_mm3",
    "centroid_x_mm",
    "centroid_y_mm",
    "centroid_z_mm",
    "longest_diameter_mm",
    "bbox_x0",
    "bbox_y0",
    "bbox_z0",
    "bbox_x1",
    "bbox_y1",
    "bbox_z1",
)


@dataclass(frozen=True, eq=False)
class StudyImages:
    """One study to predict.

    Attributes:
        study_id: Release StudyID (names the output folder).
        images: One volume per modality in the network's channel order
            (``model.config.modalities``), all on the study's native grid.
        baseline_to_study: float64 (4, 4) world transform from the baseline
            (first study) to this study's images; ``None`` means identity.
        output_grid: ``(shape, affine)`` of the grid the outputs are written on;
            ``None``: the images' own grid.
        output_transform: float64 (4, 4) baseline-world to output-grid-world
            transform used with ``output_grid``; ``None`` means identity.
        brain_mask: bool (X, Y, Z) brain mask on the images' grid; ``None``: estimated
            from the T1 post image (:func:`metstrack.preprocess.brain.estimate_brain_mask`
            with ``PredictOptions.brain_method``).
        output_brain_mask: bool brain mask on the output grid (``output_grid``), e.g. the
            one ``metstrack preprocess`` made on the original file; ``None``: the images'
            brain mask (mapped there when the grids differ).
    """

    study_id: str
    images: tuple[Volume, ...]
    baseline_to_study: np.ndarray | None = None
    output_grid: tuple[tuple[int, int, int], np.ndarray] | None = None
    output_transform: np.ndarray | None = None
    brain_mask: np.ndarray | None = None
    output_brain_mask: np.ndarray | None = None

    def output_geometry(self) -> tuple[tuple[int, int, int], np.ndarray, np.ndarray | None]:
        """``(shape, affine, baseline_to_output)`` of the grid the outputs go on."""
        if self.output_grid is None:
            return self.images[0].shape, np.asarray(self.images[0].affine), self.baseline_to_study
        shape, affine = self.output_grid
        return tuple(int(v) for v in shape), np.asarray(affine, np.float64), self.output_transform


@dataclass(frozen=True)
class PredictOptions:
    """Settings of sequence inference.

    Attributes:
        roi_size: Sliding-window size (X, Y, Z) in voxels; ``None`` uses
            ``model.config.roi_size``.
        overlap: Window overlap fraction in [0, 1).
        mode: Window blending, ``"gaussian"`` or ``"constant"``.
        sw_batch_size: Windows per network call (2 is 5x faster than 1 for the
            shipped network on CPU; see :mod:`metstrack.infer.sliding`).
        tta_flips: Average over the 8 mirror flips.
        threshold: Foreground probability at or above which a voxel is lesion.
        min_volume_mm3: Predicted components (26-connected) smaller than this are
            dropped from the mask (0 keeps all).
        skip_existing: Keep finished studies (all three outputs present) as they are.
        brain_method: How a study without a given brain mask gets one (one of
            :data:`metstrack.preprocess.brain.BRAIN_METHODS`).
        crop_margin_mm: Margin kept around the brains' bounding box before the
            sliding window runs.
        precision: Network arithmetic, ``"fp32"``, ``"bf16"``, ``"fp16"`` or ``"auto"`` (the
            default: bf16 where the device computes it natively;
            :func:`metstrack.infer.sliding.resolve_precision`).
        memory_format: The network's memory format, ``"ncdhw"``, ``"channels-last"``
            or ``"auto"`` (the default: the faster one measured;
            :func:`metstrack.infer.sliding.resolve_memory_format`). ``precision="fp32",
            memory_format="ncdhw"`` is the reference path, the network exactly as trained.
        memory: ``True`` (the model) carries the memory from study to study. ``False``
            segments every study as a sequence of one, with the same crop, normalisation
            and windows: an ablation that shows what the memory contributes (the first
            study's output is the same either way).
    """

    roi_size: tuple[int, int, int] | None = None
    overlap: float = 0.5
    mode: BlendMode = "gaussian"
    sw_batch_size: int = 2
    tta_flips: bool = False
    threshold: float = 0.5
    min_volume_mm3: float = 0.0
    skip_existing: bool = True
    brain_method: BrainMethod = "auto"
    crop_margin_mm: float = 8.0
    precision: InferPrecision = "auto"
    memory_format: InferMemoryFormat = "auto"
    memory: bool = True


@dataclass(frozen=True)
class StudyPrediction:
    """Where one study's outputs are and what they hold.

    Attributes:
        patient_id: Release PatientID.
        study_id: Release StudyID.
        folder: The study's prediction folder.
        n_lesions: Predicted lesions (read back from ``lesions.csv`` when skipped).
        total_volume_mm3: Sum of the predicted lesion volumes.
        skipped: True when the outputs already existed and were kept.
    """

    patient_id: str
    study_id: str
    folder: Path
    n_lesions: int
    total_volume_mm3: float
    skipped: bool


def output_paths(out_root: str | Path, patient_id: str, study_id: str) -> tuple[Path, Path, Path]:
    """``(mask.nii.gz, prob.nii.gz, lesions.csv)`` paths of one study's predictions."""
    d = schema.prediction_dir(out_root, patient_id, study_id)
    return (
        d / f"{schema.PREDICTION_MASK}.nii.gz",
        d / f"{schema.PREDICTION_PROB}.nii.gz",
        d / schema.PREDICTION_LESIONS,
    )


def is_finished(out_root: str | Path, patient_id: str, study_id: str) -> bool:
    """True when all three outputs of a study exist."""
    return all(p.is_file() for p in output_paths(out_root, patient_id, study_id))


def lesion_frame(
    mask: np.ndarray, affine: np.ndarray, patient_id: str, study_id: str
) -> pd.DataFrame:
    """One row per lesion of ``mask`` (:data:`LESION_COLUMNS`), measured on its own grid.

    Args:
        mask: (X, Y, Z) binary mask.
        affine: (4, 4) voxel-to-world matrix (RAS, mm).
        patient_id: Written in every row.
        study_id: Written in every row.
    """
    rows = [
        (
            patient_id,
            study_id,
            les.label,
            les.voxel_count,
            les.volume_mm3,
            *les.centroid_mm,
            les.longest_diameter_mm,
            *les.bbox,
        )  # fmt: skip
        for les in lesion_table(mask, affine)
    ]
    return pd.DataFrame(rows, columns=list(LESION_COLUMNS))


def _check_inputs(model: SequenceModel, patient_id: str, studies: Sequence[StudyImages]) -> None:
    cfg = model.config
    if not studies:
        raise DatasetError(f"patient {patient_id}: no studies to predict")
    for st in studies:
        if len(st.images) != cfg.in_channels:
            raise DatasetError(
                f"patient {patient_id} study {st.study_id}: {len(st.images)} images for a "
                f"network taking {cfg.in_channels} ({', '.join(cfg.modalities)})"
            )
        for vol in st.images[1:]:
            check_same_grid(st.images[0], vol)
        if st.brain_mask is not None and np.shape(st.brain_mask) != st.images[0].shape:
            raise InvalidImageError(
                f"patient {patient_id} study {st.study_id}: brain mask of shape "
                f"{np.shape(st.brain_mask)} for images of shape {st.images[0].shape}; "
                "give the mask on the images' grid"
            )
        for name in ("baseline_to_study", "output_transform"):
            t = getattr(st, name)
            if t is None:
                continue
            t = np.asarray(t, dtype=np.float64)
            bad = t.shape != (4, 4) or not np.all(np.isfinite(t))
            if bad or abs(np.linalg.det(t[:3, :3])) < 1e-6:
                raise InvalidImageError(
                    f"patient {patient_id} study {st.study_id}: {name} must be a "
                    f"finite invertible 4x4 world transform, found {t!r}"
                )


def _to_baseline(st: StudyImages, ref: Volume) -> np.ndarray:
    """(C, X, Y, Z) float32 images of one study on the baseline grid."""
    t = None if st.baseline_to_study is None else np.asarray(st.baseline_to_study, np.float64)
    same = st.images[0].same_grid(ref) and (t is None or np.allclose(t, np.eye(4), atol=1e-9))
    if same:
        return np.stack([v.array.astype(np.float32, copy=False) for v in st.images])
    return np.stack(
        [
            resample_array(v.array, v.affine, ref.shape, ref.affine, transform=t, order=1)
            for v in st.images
        ]
    )


def _to_native(prob: np.ndarray, ref: Volume, st: StudyImages) -> np.ndarray:
    """Baseline-grid probability (X, Y, Z) -> the study's output grid (float32, in [0, 1])."""
    shape, affine, t = st.output_geometry()
    t = None if t is None else np.asarray(t, np.float64)
    same = tuple(shape) == ref.shape and np.allclose(affine, ref.affine, atol=1e-3, rtol=0)
    if same and (t is None or np.allclose(t, np.eye(4), atol=1e-9)):
        out = prob.astype(np.float32, copy=True)
    else:
        inv = None if t is None else np.linalg.inv(t)
        out = resample_array(prob, ref.affine, shape, affine, transform=inv, order=1)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def predict_patient(
    model: SequenceModel,
    patient_id: str,
    studies: Sequence[StudyImages],
    out_root: str | Path,
    *,
    options: PredictOptions = PredictOptions(),
) -> list[StudyPrediction]:
    """Predict every study of one patient and write the outputs on each native grid.

    Args:
        model: A network (eval mode is set; it runs on its parameters' device).
        patient_id: Release PatientID (names the output folders).
        studies: The patient's studies in time order; the first is the baseline.
        out_root: Prediction root; outputs go to
            ``<out_root>/predictions/patientId/<P>/studyId/<S>/``.
        options: Inference settings.

    Returns:
        One :class:`StudyPrediction` per study, in the given order.

    Raises:
        DatasetError: No studies, or a study with the wrong number of images.
        GeometryMismatchError: A study's modalities do not share one grid (names the files).
        InvalidImageError: A transform is not a finite invertible 4x4 matrix.
    """
    _check_inputs(model, patient_id, studies)
    done = [
        options.skip_existing and is_finished(out_root, patient_id, s.study_id) for s in studies
    ]
    results: list[StudyPrediction | None] = [None] * len(studies)
    for i, st in enumerate(studies):
        if done[i]:
            results[i] = _read_back(out_root, patient_id, st.study_id)
    if all(done):
        log.info("patient %s: all %d studies already predicted; skipped", patient_id, len(studies))
        return results  # type: ignore[return-value]
    ref = studies[0].images[0]
    channels = [_to_baseline(st, ref) for st in studies]
    masks = [_study_brain(model, st, options) for st in studies]
    brains = [_brain_to_baseline(m, st, ref) for m, st in zip(masks, studies, strict=True)]
    box = _crop_box(np.any(brains, axis=0), ref, options.crop_margin_mm)
    x = np.stack(
        [zscore_in_brain(c, b)[(slice(None), *box)] for c, b in zip(channels, brains, strict=True)]
    )
    del channels
    roi = options.roi_size if options.roi_size is not None else model.config.roi_size
    roi = tuple(min(int(r), _fit(model, s)) for r, s in zip(roi, x.shape[2:], strict=True))
    settings = {
        "roi_size": roi,
        "overlap": options.overlap,
        "mode": options.mode,
        "sw_batch_size": options.sw_batch_size,
        "tta_flips": options.tta_flips,
        "precision": options.precision,
        "memory_format": options.memory_format,
    }
    images = torch.from_numpy(x)
    if options.memory:
        probs = predict_sequence(model, images, **settings)
    else:  # every study alone: no state (and no prior mask) from an earlier study
        probs = torch.cat(
            [predict_sequence(model, images[i : i + 1], **settings) for i in range(len(x))]
        )
    for i, st in enumerate(studies):
        if done[i]:
            continue
        foreground = np.zeros(ref.shape, np.float32)
        foreground[box] = (1.0 - probs[i, 0]).numpy()
        foreground[~brains[i]] = 0.0
        prob = _to_native(foreground, ref, st) * _output_brain(masks[i], brains[i], ref, st)
        results[i] = _write_study(out_root, patient_id, st, prob, options)
    return results  # type: ignore[return-value]


def _study_brain(model: SequenceModel, st: StudyImages, options: PredictOptions) -> np.ndarray:
    """bool brain mask of one study on its images' grid (given, or estimated on the T1 post)."""
    if st.brain_mask is not None:
        return np.asarray(st.brain_mask).astype(bool)
    mods = tuple(model.config.modalities)
    c = mods.index(REFERENCE_SEQUENCE) if REFERENCE_SEQUENCE in mods else 0
    mask, used = estimate_brain_mask(st.images[c], options.brain_method)
    log.info("study %s: brain mask estimated (%s), %d voxels", st.study_id, used, int(mask.sum()))
    return mask


def _brain_to_baseline(mask: np.ndarray, st: StudyImages, ref: Volume) -> np.ndarray:
    """A study's brain mask carried onto the baseline grid (linear, >= 0.5)."""
    t = None if st.baseline_to_study is None else np.asarray(st.baseline_to_study, np.float64)
    src = st.images[0]
    if src.same_grid(ref) and (t is None or np.allclose(t, np.eye(4), atol=1e-9)):
        return mask
    m = resample_array(mask.astype(np.float32), src.affine, ref.shape, ref.affine, transform=t)
    return m >= 0.5


def _output_brain(
    mask: np.ndarray, baseline_mask: np.ndarray, ref: Volume, st: StudyImages
) -> np.ndarray:
    """float32 0/1 brain mask on the study's output grid."""
    shape, affine, t = st.output_geometry()
    if st.output_brain_mask is not None:
        out = np.asarray(st.output_brain_mask).astype(bool)
        if out.shape != tuple(shape):
            raise InvalidImageError(
                f"study {st.study_id}: output brain mask of shape {out.shape} for an output "
                f"grid of shape {tuple(shape)}"
            )
        return out.astype(np.float32)
    if st.output_grid is None:
        return mask.astype(np.float32)
    t = None if t is None else np.asarray(t, np.float64)
    same = tuple(shape) == ref.shape and np.allclose(affine, ref.affine, atol=1e-3, rtol=0)
    if same and (t is None or np.allclose(t, np.eye(4), atol=1e-9)):
        return baseline_mask.astype(np.float32)
    inv = None if t is None else np.linalg.inv(t)
    m = resample_array(
        baseline_mask.astype(np.uint8), ref.affine, shape, affine, transform=inv, order=0
    )
    return (m > 0).astype(np.float32)


def _crop_box(brain: np.ndarray, ref: Volume, margin_mm: float) -> tuple[slice, slice, slice]:
    """Bounding box of ``brain`` grown by ``margin_mm`` (clipped to the grid)."""
    idx = np.nonzero(brain)
    if idx[0].size == 0:
        return tuple(slice(0, n) for n in ref.shape)  # type: ignore[return-value]
    pad = [int(np.ceil(margin_mm / s)) for s in ref.spacing_mm]
    return tuple(
        slice(max(0, int(i.min()) - p), min(n, int(i.max()) + 1 + p))
        for i, p, n in zip(idx, pad, ref.shape, strict=True)
    )  # type: ignore[return-value]


def _fit(model: SequenceModel, size: int) -> int:
    """Largest window along an axis of ``size`` voxels: the size rounded up to the divisor."""
    if model.fixed_size is not None:
        return 10**9
    d = model.size_divisor
    return max(-(-int(size) // d) * d, model.min_size)


def drop_small_components(
    mask: np.ndarray, affine: np.ndarray, min_volume_mm3: float
) -> np.ndarray:
    """Remove 26-connected components of ``mask`` under ``min_volume_mm3`` (uint8 out).

    Args:
        mask: (X, Y, Z) binary mask.
        affine: float64 (4, 4) voxel-to-world (volumes from its voxel size, mm3).
        min_volume_mm3: Smallest component volume kept.
    """
    labels = cc3d.connected_components(mask.astype(np.uint8), connectivity=26)
    counts = np.bincount(labels.ravel())
    voxel_mm3 = float(abs(np.linalg.det(np.asarray(affine)[:3, :3])))
    keep = counts * voxel_mm3 >= min_volume_mm3 * (1 - 1e-9)  # float det of the affine
    keep[0] = False
    return keep[labels].astype(np.uint8)


def _write_study(
    out_root: str | Path,
    patient_id: str,
    st: StudyImages,
    prob: np.ndarray,
    options: PredictOptions,
) -> StudyPrediction:
    _, affine, _ = st.output_geometry()
    mask = (prob >= options.threshold).astype(np.uint8)
    if options.min_volume_mm3 > 0 and mask.any():
        mask = drop_small_components(mask, affine, options.min_volume_mm3)
    mask_path, prob_path, lesions_path = output_paths(out_root, patient_id, st.study_id)
    write_volume(prob, prob_path, affine=affine, dtype=np.float32)
    write_volume(mask, mask_path, affine=affine, dtype=np.uint8)
    frame = lesion_frame(mask, affine, patient_id, st.study_id)
    write_csv_atomic(lesions_path, frame)  # last: marks the study finished
    log.info("patient %s study %s: %d lesions", patient_id, st.study_id, len(frame))
    return StudyPrediction(
        patient_id,
        st.study_id,
        lesions_path.parent,
        len(frame),
        float(frame["volume_mm3"].sum()),
        False,
    )


def _read_back(out_root: str | Path, patient_id: str, study_id: str) -> StudyPrediction:
    path = output_paths(out_root, patient_id, study_id)[2]
    frame = pd.read_csv(path)
    vol = float(frame["volume_mm3"].sum()) if "volume_mm3" in frame else float("nan")
    return StudyPrediction(patient_id, study_id, path.parent, len(frame), vol, True)


def load_patient_studies(
    patient: Patient, modalities: tuple[str, ...], *, transforms_root: Path | None = None
):
    """Read every study of a patient as :class:`~metstrack.infer.predict.StudyImages`.

    Args:
        patient: The patient (studies in time order).
        modalities: Sequences to stack, in the network's channel order.
        transforms_root: A ``metstrack preprocess`` output root: its studies are on
            the baseline grid and ``transforms/<P>/<S>.json`` gives each original
            file's grid, onto which the outputs are mapped back; the brain mask it
            wrote (``preprocess/brain_masks/<P>/<S>.nii.gz``) is used when present.

    Raises:
        DatasetError: A modality the network needs has no file (names the study
            folder), or a transform file is missing or malformed.
        ImageReadError, InvalidImageError: A file is missing or corrupt (names the file).
    """
    out = []
    for st in patient.studies:
        vols = []
        for m in modalities:
            path = st.path(m)
            if path is None:
                raise DatasetError(
                    f"patient {patient.patient_id} study {st.study_id}: no {m} image, which the "
                    f"network needs ({', '.join(modalities)}); add the file or drop the study"
                )
            vols.append(read_volume(path))
        if transforms_root is None:
            out.append(StudyImages(study_id=st.study_id, images=tuple(vols)))
            continue
        tr = load_transform(transforms_root, patient.patient_id, st.study_id)
        out.append(
            StudyImages(
                study_id=st.study_id,
                images=tuple(vols),
                output_grid=(tr.native_grid.shape, tr.native_grid.affine),
                output_transform=tr.baseline_to_study,
                brain_mask=_preprocessed_brain(
                    transforms_root, patient.patient_id, st.study_id, vols[0]
                ),
                output_brain_mask=_preprocessed_brain(
                    transforms_root, patient.patient_id, st.study_id, None, native=True
                ),
            )
        )
    return out


def _preprocessed_brain(
    root: Path, patient_id: str, study_id: str, image: Volume | None, *, native: bool = False
):
    """A brain mask ``metstrack preprocess`` wrote for a study (bool array), or None.

    Without ``native`` the baseline-grid mask (checked against ``image``'s grid);
    with it the mask on the original CT1 file's grid.
    """
    path = brain_mask_path(root, patient_id, study_id, native=native)
    if not path.is_file():
        return None
    mask = read_label(path, binary=True)
    if image is not None:
        check_same_grid(image, mask)
    return mask.array > 0
