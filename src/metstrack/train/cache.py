"""On-disk cache of preprocessed studies, so an epoch never re-reads NIfTI.

Each study is read once (modalities stacked in the configured order, z-scored
per channel inside the brain, label binarised) and written as
``<cache>/<PatientID>/<StudyID>/<key>/{image.npy,label.npy,meta.json}``. The
key hashes the preprocessing settings and the size and modification time of
every source file, so an edited file or a changed setting misses the cache and
is recomputed; stale entries are simply never read again. Entries are written
to a temporary folder and renamed into place, so an interrupted run never
leaves a half-written entry. Arrays are memory-mapped on read.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from metstrack.core.affine import spacing_from_affine
from metstrack.core.lesions import label_components
from metstrack.errors import DatasetError, GeometryMismatchError
from metstrack.io.nifti import read_label, read_volume
from metstrack.preprocess.intensity import zscore_in_brain
from metstrack.train.config import MissingModality
from metstrack.types import Patient, Study

log = logging.getLogger(__name__)

#: Bump when the cached representation changes.
CACHE_VERSION = 1


@dataclass(frozen=True)
class CachedLesion:
    """One reference lesion of a cached study, for lesion-centred patch sampling.

    Attributes:
        centroid_vox: Centroid in voxel indices (X, Y, Z).
        bbox_vox: Half-open box (x0, y0, z0, x1, y1, z1) in voxels.
        voxel_count: Size in voxels.
    """

    centroid_vox: tuple[float, float, float]
    bbox_vox: tuple[int, int, int, int, int, int]
    voxel_count: int


@dataclass(frozen=True)
class StudyArrays:
    """One preprocessed study.

    Attributes:
        image: float32/float16 (C, X, Y, Z) z-scored modalities in config order.
        label: uint8 (X, Y, Z) binary mask, or ``None`` when the study has no label.
        affine: float64 (4, 4) voxel-to-world matrix (RAS, mm).
        foreground_bbox: Half-open (x0, y0, z0, x1, y1, z1) box of non-zero voxels.
        lesions: Reference lesions (empty without a label).
        missing: Modalities that were zero-filled.
    """

    image: np.ndarray
    label: np.ndarray | None
    affine: np.ndarray
    foreground_bbox: tuple[int, int, int, int, int, int]
    lesions: tuple[CachedLesion, ...]
    missing: tuple[str, ...] = ()

    @property
    def has_label(self) -> bool:
        """True when the study carries a label used for the loss."""
        return self.label is not None

    @property
    def spacing_mm(self) -> tuple[float, float, float]:
        """Voxel spacing (X, Y, Z) in mm."""
        return spacing_from_affine(self.affine)


def study_label_path(study: Study, *, use_all_labels: bool) -> Path | None:
    """The label file that trains this study, or ``None``.

    With ``use_all_labels`` any label on disk is used (the release file, else a
    synthetic cohort's ground-truth label of a study the release hides);
    otherwise only studies the release flags as ``labelled``.

    Raises:
        DatasetError: The release flags the study as labelled but no label file exists.
    """
    if use_all_labels:
        return study.any_label_path
    path = study.label_path
    if not study.labelled:
        return None
    if path is None:
        raise DatasetError(
            f"study {study.patient_id}/{study.study_id}: the imaging table flags a label but "
            "RTSTRUCT_segmentation.nii.gz is missing; restore the file or fix the table"
        )
    return path


def _file_stat(path: Path | None) -> list[object]:
    if path is None:
        return [None]
    st = path.stat()
    return [str(path.resolve()), st.st_size, st.st_mtime_ns]


def study_key(
    study: Study,
    modalities: tuple[str, ...],
    *,
    missing_modality: MissingModality,
    use_all_labels: bool,
    float16: bool,
) -> str:
    """Cache key of a study: preprocessing settings plus size and mtime of every file."""
    label = study_label_path(study, use_all_labels=use_all_labels)
    payload = {
        "v": CACHE_VERSION,
        "modalities": list(modalities),
        "missing": missing_modality,
        "float16": float16,
        "files": [_file_stat(study.path(m)) for m in modalities],
        "label": _file_stat(label),
    }
    text = json.dumps(payload, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def data_fingerprint(patients: tuple[Patient, ...] | list[Patient]) -> str:
    """A short hash of a cohort's files (names, sizes, modification times) and flags."""
    h = hashlib.sha256()
    for p in patients:
        for s in p.studies:
            h.update(f"{p.patient_id}|{s.study_id}|{s.labelled}|{p.split}|".encode())
            for ser in s.series:
                st = ser.path.stat() if ser.path.exists() else None
                size = st.st_size if st else -1
                mtime = st.st_mtime_ns if st else -1
                h.update(f"{ser.sequence}:{ser.path.name}:{size}:{mtime};".encode())
    return h.hexdigest()[:16]


def preprocess_study(
    study: Study,
    modalities: tuple[str, ...],
    *,
    missing_modality: MissingModality = "error",
    use_all_labels: bool = False,
) -> StudyArrays:
    """Read one study from NIfTI and preprocess it (no cache).

    Args:
        study: The study (its series paths are read).
        modalities: Channel order, e.g. ``("T1", "CT1", "T2", "FLAIR")``.
        missing_modality: ``"error"`` or ``"zero"`` (zero-fill, logged).
        use_all_labels: Train on any label on disk, ignoring the ``labelled`` flag.

    Returns:
        The study's arrays: image float32 (C, X, Y, Z) z-scored per channel
        inside the brain (non-zero voxels), label uint8 (X, Y, Z) or ``None``.

    Raises:
        DatasetError: A modality is missing and ``missing_modality == "error"``,
            or every modality is missing.
        GeometryMismatchError: Modalities or the label disagree in grid.
        ImageReadError, InvalidImageError, LabelError: From the NIfTI readers.
    """
    where = f"study {study.patient_id}/{study.study_id}"
    vols = {}
    missing = []
    for m in modalities:
        path = study.path(m)
        if path is None:
            missing.append(m)
            continue
        vols[m] = read_volume(path)
    if missing and missing_modality == "error":
        raise DatasetError(
            f"{where}: modality {', '.join(missing)} missing; restore the file, drop it from "
            'data.modalities, or set data.missing_modality = "zero" to zero-fill it'
        )
    if not vols:
        raise DatasetError(f"{where}: none of the modalities {', '.join(modalities)} is present")
    if missing:
        log.warning("%s: zero-filling missing modality %s", where, ", ".join(missing))
    ref = next(iter(vols.values()))
    for v in vols.values():
        if not ref.same_grid(v):
            raise GeometryMismatchError(
                f"{where}: {ref.path} has {ref.describe_grid()} but {v.path} has "
                f"{v.describe_grid()}; run `metstrack preprocess` to co-register the modalities"
            )
    stack = np.zeros((len(modalities), *ref.shape), dtype=np.float32)
    for i, m in enumerate(modalities):
        if m in vols:
            stack[i] = vols[m].array
    present = [i for i, m in enumerate(modalities) if m in vols]
    head = np.any(stack[present] != 0, axis=0)
    image = zscore_in_brain(stack)
    for i, m in enumerate(modalities):
        if m in missing:
            image[i] = 0.0
    label = None
    lesions: tuple[CachedLesion, ...] = ()
    label_path = study_label_path(study, use_all_labels=use_all_labels)
    if label_path is not None:
        lab = read_label(label_path, binary=False, reference=ref)
        label = (lab.array > 0).astype(np.uint8)
        lesions = _lesions(label)
    return StudyArrays(
        image=image,
        label=label,
        affine=np.asarray(ref.affine, dtype=np.float64),
        foreground_bbox=_bbox(head),
        lesions=lesions,
        missing=tuple(missing),
    )


def _bbox(mask: np.ndarray) -> tuple[int, int, int, int, int, int]:
    if not mask.any():
        return (0, 0, 0, *mask.shape)  # type: ignore[return-value]
    out = []
    for ax in range(3):
        other = tuple(a for a in range(3) if a != ax)
        nz = np.flatnonzero(mask.any(axis=other))
        out.append((int(nz[0]), int(nz[-1]) + 1))
    return (out[0][0], out[1][0], out[2][0], out[0][1], out[1][1], out[2][1])


def _lesions(label: np.ndarray) -> tuple[CachedLesion, ...]:
    comps, n = label_components(label)
    if n == 0:
        return ()
    from scipy import ndimage

    idx = np.arange(1, n + 1)
    centroids = ndimage.center_of_mass(np.ones_like(comps, dtype=np.uint8), comps, idx)
    counts = ndimage.sum_labels(np.ones_like(comps, dtype=np.uint8), comps, idx)
    slices = ndimage.find_objects(comps)
    out = []
    for c, k, sl in zip(centroids, counts, slices, strict=True):
        bbox = (sl[0].start, sl[1].start, sl[2].start, sl[0].stop, sl[1].stop, sl[2].stop)
        out.append(
            CachedLesion(
                centroid_vox=(float(c[0]), float(c[1]), float(c[2])),
                bbox_vox=tuple(int(b) for b in bbox),  # type: ignore[arg-type]
                voxel_count=int(k),
            )
        )
    return tuple(out)


class StudyCache:
    """Preprocessed studies on disk, computed on first use.

    Args:
        root: Cache folder (created).
        modalities: Channel order.
        missing_modality: ``"error"`` or ``"zero"``.
        use_all_labels: Train on any label on disk.
        float16: Store images as float16.

    Attributes:
        hits: Studies served from the cache by this instance.
        misses: Studies read from NIfTI by this instance.
    """

    def __init__(
        self,
        root: str | Path,
        modalities: tuple[str, ...],
        *,
        missing_modality: MissingModality = "error",
        use_all_labels: bool = False,
        float16: bool = False,
    ) -> None:
        self.root = Path(root)
        self.modalities = tuple(modalities)
        self.missing_modality = missing_modality
        self.use_all_labels = use_all_labels
        self.float16 = float16
        self.hits = 0
        self.misses = 0

    def entry_dir(self, study: Study) -> Path:
        """Folder of ``study``'s current cache entry."""
        key = study_key(
            study,
            self.modalities,
            missing_modality=self.missing_modality,
            use_all_labels=self.use_all_labels,
            float16=self.float16,
        )
        return self.root / study.patient_id / study.study_id / key

    def load(self, study: Study) -> StudyArrays:
        """Return the preprocessed study, from the cache when its entry is current."""
        entry = self.entry_dir(study)
        if (entry / "meta.json").exists():
            try:
                arrays = _read_entry(entry)
                self.hits += 1
                return arrays
            except (OSError, ValueError, KeyError) as exc:
                log.warning("cache entry %s unreadable (%s); recomputing", entry, exc)
        arrays = preprocess_study(
            study,
            self.modalities,
            missing_modality=self.missing_modality,
            use_all_labels=self.use_all_labels,
        )
        self.misses += 1
        _write_entry(entry, arrays, float16=self.float16)
        return arrays

    def check_patient_grid(self, patient: Patient, studies: list[StudyArrays]) -> None:
        """Raise GeometryMismatchError unless every study of a patient shares one grid."""
        ref = studies[0]
        for s, arr in zip(patient.studies[1:], studies[1:], strict=False):
            if arr.image.shape != ref.image.shape or not np.allclose(
                arr.affine, ref.affine, atol=1e-3
            ):
                raise GeometryMismatchError(
                    f"patient {patient.patient_id}: study {s.study_id} is not on the grid of "
                    f"study {patient.studies[0].study_id} (shapes {arr.image.shape[1:]} vs "
                    f"{ref.image.shape[1:]}); training needs studies co-registered through "
                    "time: run `metstrack preprocess` first"
                )


def _write_entry(entry: Path, arrays: StudyArrays, *, float16: bool) -> None:
    entry.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{entry.name}.", dir=entry.parent))
    try:
        img = arrays.image.astype(np.float16 if float16 else np.float32)
        np.save(tmp / "image.npy", img)
        if arrays.label is not None:
            np.save(tmp / "label.npy", arrays.label.astype(np.uint8))
        meta = {
            "affine": arrays.affine.tolist(),
            "foreground_bbox": list(arrays.foreground_bbox),
            "has_label": arrays.label is not None,
            "missing": list(arrays.missing),
            "lesions": [
                {
                    "centroid_vox": list(les.centroid_vox),
                    "bbox_vox": list(les.bbox_vox),
                    "voxel_count": les.voxel_count,
                }
                for les in arrays.lesions
            ],
        }
        (tmp / "meta.json").write_text(json.dumps(meta), encoding="utf-8")
        try:
            os.replace(tmp, entry)
        except OSError:
            # another process wrote the same entry first; theirs is equivalent
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _read_entry(entry: Path) -> StudyArrays:
    meta = json.loads((entry / "meta.json").read_text(encoding="utf-8"))
    image = np.load(entry / "image.npy", mmap_mode="r")
    label = np.load(entry / "label.npy", mmap_mode="r") if meta["has_label"] else None
    return StudyArrays(
        image=image,
        label=label,
        affine=np.asarray(meta["affine"], dtype=np.float64),
        foreground_bbox=tuple(int(v) for v in meta["foreground_bbox"]),  # type: ignore[arg-type]
        lesions=tuple(
            CachedLesion(
                centroid_vox=tuple(les["centroid_vox"]),  # type: ignore[arg-type]
                bbox_vox=tuple(int(v) for v in les["bbox_vox"]),  # type: ignore[arg-type]
                voxel_count=int(les["voxel_count"]),
            )
            for les in meta["lesions"]
        ),
        missing=tuple(meta["missing"]),
    )
