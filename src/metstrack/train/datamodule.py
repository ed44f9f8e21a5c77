"""The Lightning data module: patient splits, the study cache, samplers and loaders."""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as pl
import numpy as np
from torch.utils.data import DataLoader

from metstrack.errors import DatasetError
from metstrack.train.cache import StudyCache
from metstrack.train.config import TrainConfig
from metstrack.train.dataset import PatientSequenceDataset, collate_sequences
from metstrack.train.sampling import SequenceSampler, ShardSampler
from metstrack.types import Cohort, Patient

log = logging.getLogger(__name__)


def split_patients(
    cohort: Cohort, cfg: TrainConfig, *, need_val: bool = True
) -> tuple[list[Patient], list[Patient]]:
    """Training and validation patients.

    The release split table decides (patients whose split is ``"train"`` and
    ``"val"``; ``"test"`` patients are never touched). A cohort without any
    split is divided by patient: a seeded shuffle puts
    ``data.val_fraction`` of the patients (at least one) in validation.

    Args:
        cohort: The cohort.
        cfg: Training config (``data.val_fraction``, ``data.max_val_patients``,
            ``trainer.seed``).
        need_val: Raise when no validation patient is found.

    Raises:
        DatasetError: No training patient, or no validation patient while
            validation is enabled.
    """
    patients = [p for p in cohort.patients if p.studies]
    if any(p.split is not None for p in patients):
        train = [p for p in patients if p.split == "train"]
        val = [p for p in patients if p.split == "val"]
    else:
        rng = np.random.default_rng(cfg.trainer.seed)
        order = rng.permutation(len(patients))
        n_val = max(1, round(cfg.data.val_fraction * len(patients))) if need_val else 0
        if len(patients) - n_val < 1:
            raise DatasetError(
                f"{cohort.root}: {len(patients)} patient(s) cannot be split into training and "
                "validation; add patients or set validation.enabled = false"
            )
        val = [patients[i] for i in sorted(order[:n_val])]
        train = [patients[i] for i in sorted(order[n_val:])]
        log.info("no split table: %d training and %d validation patients", len(train), len(val))
    if not train:
        raise DatasetError(
            f"{cohort.root}: no training patient (split 'train' is empty); check tables/split.csv"
        )
    if need_val and not val:
        raise DatasetError(
            f"{cohort.root}: no validation patient (split 'val' is empty); add validation "
            "patients to tables/split.csv or set validation.enabled = false"
        )
    if cfg.data.max_val_patients > 0:
        val = val[: cfg.data.max_val_patients]
    return train, val


class SequenceDataModule(pl.LightningDataModule):
    """Loaders of training windows and whole validation patients.

    Args:
        cfg: Training config.
        cohort: The cohort (studies co-registered through time).
        cache_dir: Preprocessed-array cache folder.
    """

    def __init__(self, cfg: TrainConfig, cohort: Cohort, cache_dir: str | Path) -> None:
        super().__init__()
        self.cfg = cfg
        self.cohort = cohort
        self.cache_dir = Path(cache_dir)
        self.train_patients, self.val_patients = split_patients(
            cohort, cfg, need_val=cfg.validation.enabled
        )
        self.train_set: PatientSequenceDataset | None = None
        self.val_set: PatientSequenceDataset | None = None

    def make_cache(self) -> StudyCache:
        """The study cache with this run's preprocessing settings."""
        d = self.cfg.data
        return StudyCache(
            self.cache_dir,
            tuple(self.cfg.model.modalities),
            missing_modality=d.missing_modality,
            use_all_labels=d.use_all_labels,
            float16=d.cache_float16,
        )

    def prepare_data(self) -> None:
        """Fill the cache once (on the first process of each node) and fail early on bad data."""
        cache = self.make_cache()
        patients = self.train_patients + self.val_patients
        n = sum(len(p.studies) for p in patients)
        log.info("preparing %d studies of %d patients in %s", n, len(patients), self.cache_dir)
        for p in patients:
            arrays = [cache.load(s) for s in p.studies]
            cache.check_patient_grid(p, arrays)
        log.info("cache ready: %d read from NIfTI, %d already cached", cache.misses, cache.hits)

    def setup(self, stage: str | None = None) -> None:
        """Build the training (windows, patches, augmentation) and validation (whole) datasets."""
        cache = self.make_cache()
        m = self.cfg.model
        self.train_set = PatientSequenceDataset(
            self.train_patients,
            cache,
            self.cfg.data,
            self.cfg.augment,
            train=True,
            patch_size_vox=tuple(m.roi_size),
            prior_mask=m.prior_mask,
        )
        self.val_set = PatientSequenceDataset(
            self.val_patients,
            cache,
            self.cfg.data,
            None,
            train=False,
            patch_size_vox=tuple(m.roi_size),
            prior_mask=m.prior_mask,
        )

    def _rank(self) -> tuple[int, int]:
        trainer = self.trainer
        if trainer is None:
            return 0, 1
        return int(trainer.global_rank), int(trainer.world_size)

    def train_dataloader(self) -> DataLoader:
        """Shuffled training sequences; this process's share under DDP."""
        assert self.train_set is not None
        rank, world = self._rank()
        d = self.cfg.data
        sampler = SequenceSampler(
            len(self.train_set),
            num_samples=d.samples_per_epoch,
            seed=self.cfg.trainer.seed,
            shuffle=True,
            rank=rank,
            world_size=world,
        )
        return DataLoader(
            self.train_set,
            batch_size=d.batch_size,
            sampler=sampler,
            num_workers=d.num_workers,
            collate_fn=collate_sequences,
            persistent_workers=False,
            drop_last=False,
        )

    def val_dataloader(self) -> DataLoader:
        """Whole validation patients, one per batch; this process's share under DDP."""
        assert self.val_set is not None
        rank, world = self._rank()
        return DataLoader(
            self.val_set,
            batch_size=1,
            sampler=ShardSampler(len(self.val_set), rank=rank, world_size=world),
            num_workers=self.cfg.data.num_workers,
            collate_fn=collate_sequences,
        )
