"""Patient-sequence datasets: one item is one patient's studies in time order.

Training items are a window of at most ``max_studies`` consecutive studies,
cropped to one random patch location shared by all of them and augmented with
one shared draw (:mod:`metstrack.train.augment`). Validation items are the
patient's whole sequence (every study), cropped to the head and padded to a
multiple of 16, so the memory runs through the entire timeline.

Studies without a label (the release's ``labelled`` flag, or no file) still
appear in the sequence, with ``has_label`` False so the loss skips them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import Dataset

from metstrack.core.affine import crop_affine
from metstrack.train.augment import SequenceAugment
from metstrack.train.cache import StudyArrays, StudyCache, study_label_path
from metstrack.train.config import AugmentConfig, DataConfig
from metstrack.train.sampling import (
    choose_patch_start,
    choose_window,
    extract,
    union_bbox,
    whole_volume_region,
)
from metstrack.types import Patient


@dataclass
class SequenceBatch:
    """A batch of patient sequences (mutable so Lightning can move it between devices).

    Attributes:
        image: float32 (B, T, C, X, Y, Z) z-scored modalities.
        label: float32 (B, T, 1, X, Y, Z) binary masks (zeros where no label).
        has_label: bool (B, T); True where the study's label trains the model.
        valid: bool (B, T); False for time steps padded to batch patients of
            different lengths (always after the real studies).
        prior: float32 (B, T, 1, X, Y, Z) previous study's mask (prior-mask
            mode) or ``None``.
        spacing_mm: float64 (B, 3) voxel spacing (X, Y, Z).
        count: bool (B,); False for validation repeats added to even out DDP shards.
        patient_ids: B patient IDs.
        study_ids: B lists of study IDs (real studies only).
    """

    image: torch.Tensor
    label: torch.Tensor
    has_label: torch.Tensor
    valid: torch.Tensor
    spacing_mm: torch.Tensor
    count: torch.Tensor
    prior: torch.Tensor | None = None
    patient_ids: list[str] = field(default_factory=list)
    study_ids: list[list[str]] = field(default_factory=list)


@dataclass
class SequenceItem:
    """One patient's sequence before batching (arrays without the batch axis).

    ``affine`` is the voxel-to-world matrix (RAS, mm) of a whole-volume item's
    arrays (the cached study grid moved to the crop's corner); training patches,
    which augmentation may rotate or scale, carry only ``spacing_mm``.
    """

    image: np.ndarray
    label: np.ndarray
    has_label: np.ndarray
    spacing_mm: tuple[float, float, float]
    patient_id: str
    study_ids: list[str]
    prior: np.ndarray | None = None
    count: bool = True
    on_lesion: bool = False
    affine: np.ndarray | None = None


def make_prior(
    label: np.ndarray, has_label: np.ndarray, *, dropout: float, rng: np.random.Generator | None
) -> np.ndarray:
    """Previous study's mask for each study (prior-mask mode).

    Args:
        label: uint8 (T, X, Y, Z) masks.
        has_label: bool (T,).
        dropout: Probability that a prior is blanked (training only).
        rng: Generator for the dropout; ``None`` disables it.

    Returns:
        float32 (T, 1, X, Y, Z): zeros for the first study and wherever the
        previous study has no label or was dropped.
    """
    prior = np.zeros((label.shape[0], 1, *label.shape[1:]), dtype=np.float32)
    for t in range(1, label.shape[0]):
        if has_label[t - 1] and not (rng is not None and rng.random() < dropout):
            prior[t, 0] = label[t - 1]
    return prior


class PatientSequenceDataset(Dataset):
    """Sequences of co-registered studies of each patient.

    Args:
        patients: Patients (studies in time order, one grid per patient).
        cache: Preprocessed-study cache.
        data: Data settings.
        augment: Augmentation settings (training only).
        train: Training items (window + patch + augmentation) when True,
            whole-patient validation items when False.
        patch_size_vox: Training patch (X, Y, Z), multiples of 16 (``model.roi_size``).
        prior_mask: Add the previous study's mask (see :func:`make_prior`).
        min_size_vox: Smallest whole-volume size of validation items (the
            sliding-window size).

    Items are indexed by ``(patient index, sample seed)`` during training (see
    :class:`~metstrack.train.sampling.SequenceSampler`) and by
    ``(patient index, count)`` or a plain index for validation.
    """

    def __init__(
        self,
        patients: list[Patient] | tuple[Patient, ...],
        cache: StudyCache,
        data: DataConfig,
        augment: AugmentConfig | None = None,
        *,
        train: bool,
        patch_size_vox: tuple[int, ...] = (96, 96, 96),
        prior_mask: bool = False,
        min_size_vox: tuple[int, int, int] | None = None,
    ) -> None:
        self.patients = list(patients)
        self.cache = cache
        self.data = data
        self.train = train
        self.prior_mask = prior_mask
        self.augment = SequenceAugment(augment) if (train and augment is not None) else None
        self.patch_size_vox = tuple(int(v) for v in patch_size_vox)
        self.min_size_vox = tuple(min_size_vox) if min_size_vox else self.patch_size_vox

    def __len__(self) -> int:
        return len(self.patients)

    def load_patient(
        self, patient: Patient, start: int = 0, stop: int | None = None
    ) -> list[StudyArrays]:
        """Preprocessed studies ``start:stop`` of ``patient`` (checked to share one grid)."""
        studies = list(patient.studies[start:stop])
        arrays = [self.cache.load(s) for s in studies]
        sub = Patient(patient.patient_id, tuple(studies), patient.split)
        self.cache.check_patient_grid(sub, arrays)
        return arrays

    def __getitem__(self, item: int | tuple[int, int] | tuple[int, bool]) -> SequenceItem:
        if self.train:
            idx, seed = item if isinstance(item, tuple) else (int(item), int(item))
            return self._train_item(self.patients[idx], int(seed))
        idx, count = item if isinstance(item, tuple) else (int(item), True)
        out = self._whole_item(self.patients[idx])
        out.count = bool(count)
        return out

    def _labelled_flags(self, patient: Patient) -> list[bool]:
        return [
            study_label_path(s, use_all_labels=self.data.use_all_labels) is not None
            for s in patient.studies
        ]

    def _train_item(self, patient: Patient, seed: int) -> SequenceItem:
        rng = np.random.default_rng(seed)
        start, stop = choose_window(
            len(patient.studies),
            self.data.max_studies,
            labelled=self._labelled_flags(patient),
            rng=rng,
            mode=self.data.window,
        )
        arrays = self.load_patient(patient, start, stop)
        shape = arrays[0].image.shape[1:]
        patch = self.patch_size_vox
        fg = union_bbox([a.foreground_bbox for a in arrays])
        lesions = [les for a in arrays if a.has_label for les in a.lesions]
        corner, on_lesion = choose_patch_start(
            shape,
            patch,
            foreground_bbox=fg,
            lesions=lesions,
            lesion_fraction=self.data.lesion_fraction,
            rng=rng,
        )
        image = np.stack([extract(np.asarray(a.image), corner, patch) for a in arrays]).astype(
            np.float32
        )
        label = np.stack(
            [
                extract(a.label, corner, patch)
                if a.label is not None
                else np.zeros(patch, dtype=np.uint8)
                for a in arrays
            ]
        )
        has_label = np.array([a.has_label for a in arrays], dtype=bool)
        if self.augment is not None:
            image, label = self.augment(image, label, seed=int(rng.integers(2**31 - 1)))
        prior = (
            make_prior(label, has_label, dropout=self.data.prior_mask_dropout, rng=rng)
            if self.prior_mask
            else None
        )
        return SequenceItem(
            image=image,
            label=label,
            has_label=has_label,
            spacing_mm=arrays[0].spacing_mm,
            patient_id=patient.patient_id,
            study_ids=[s.study_id for s in patient.studies[start:stop]],
            prior=prior,
            on_lesion=on_lesion,
        )

    def _whole_item(self, patient: Patient) -> SequenceItem:
        arrays = self.load_patient(patient)
        shape = arrays[0].image.shape[1:]
        fg = union_bbox([a.foreground_bbox for a in arrays]) if self.data.crop_foreground else None
        corner, size = whole_volume_region(
            shape, fg, multiple=self.data.pad_multiple, min_size=self.min_size_vox
        )
        image = np.stack([extract(np.asarray(a.image), corner, size) for a in arrays]).astype(
            np.float32
        )
        label = np.stack(
            [
                extract(a.label, corner, size)
                if a.label is not None
                else np.zeros(size, dtype=np.uint8)
                for a in arrays
            ]
        )
        has_label = np.array([a.has_label for a in arrays], dtype=bool)
        prior = make_prior(label, has_label, dropout=0.0, rng=None) if self.prior_mask else None
        return SequenceItem(
            image=image,
            label=label,
            has_label=has_label,
            spacing_mm=arrays[0].spacing_mm,
            patient_id=patient.patient_id,
            study_ids=[s.study_id for s in patient.studies],
            prior=prior,
            affine=crop_affine(arrays[0].affine, corner),
        )


def collate_sequences(items: list[SequenceItem]) -> SequenceBatch:
    """Stack items into a :class:`SequenceBatch`, padding shorter sequences at the end.

    Padded time steps hold zeros with ``has_label`` and ``valid`` False; since
    they come after the real studies they cannot change a causal memory's
    outputs for the real ones.

    Raises:
        ValueError: Items have different spatial sizes (use batch_size 1 for
            whole-volume validation items).
    """
    T = max(it.image.shape[0] for it in items)
    sizes = {it.image.shape[2:] for it in items}
    if len(sizes) != 1:
        raise ValueError(f"cannot batch sequences of different spatial sizes {sorted(sizes)}")
    B = len(items)
    C = items[0].image.shape[1]
    spatial = items[0].image.shape[2:]
    image = torch.zeros((B, T, C, *spatial), dtype=torch.float32)
    label = torch.zeros((B, T, 1, *spatial), dtype=torch.float32)
    has_label = torch.zeros((B, T), dtype=torch.bool)
    valid = torch.zeros((B, T), dtype=torch.bool)
    prior = (
        torch.zeros((B, T, 1, *spatial), dtype=torch.float32)
        if items[0].prior is not None
        else None
    )
    for b, it in enumerate(items):
        n = it.image.shape[0]
        image[b, :n] = torch.from_numpy(it.image)
        label[b, :n, 0] = torch.from_numpy(it.label.astype(np.float32))
        has_label[b, :n] = torch.from_numpy(it.has_label)
        valid[b, :n] = True
        if prior is not None and it.prior is not None:
            prior[b, :n] = torch.from_numpy(it.prior)
    return SequenceBatch(
        image=image,
        label=label,
        has_label=has_label,
        valid=valid,
        spacing_mm=torch.tensor([it.spacing_mm for it in items], dtype=torch.float64),
        count=torch.tensor([it.count for it in items], dtype=torch.bool),
        prior=prior,
        patient_ids=[it.patient_id for it in items],
        study_ids=[list(it.study_ids) for it in items],
    )
