"""Patient-sequence dataset: preprocessing, cache, windows, patches, labels."""

from __future__ import annotations

import logging
import os
from dataclasses import replace

import numpy as np
import pytest

from metstrack.errors import DatasetError, GeometryMismatchError
from metstrack.io.nifti import write_volume
from metstrack.train import cache as cache_mod
from metstrack.train.cache import StudyCache, preprocess_study
from metstrack.train.config import AugmentConfig, DataConfig
from metstrack.train.dataset import PatientSequenceDataset, collate_sequences
from metstrack.train.sampling import SequenceSampler, ShardSampler, choose_window
from metstrack.types import MODALITIES, Patient

from .conftest import write_tiny_cohort  # noqa: TID252

NO_AUG = AugmentConfig(enabled=False)


def _dataset(cohort, tmp_path, *, train=True, data=None, augment=NO_AUG, patch=(16, 16, 16)):
    data = data or DataConfig()
    cache = StudyCache(
        tmp_path / "cache",
        MODALITIES,
        missing_modality=data.missing_modality,
        use_all_labels=data.use_all_labels,
    )
    return PatientSequenceDataset(
        list(cohort.patients), cache, data, augment, train=train, patch_size_vox=patch
    )


def test_preprocess_zscores_each_channel_inside_the_head(tiny_cohort):
    study = tiny_cohort.patients[0].studies[0]
    arr = preprocess_study(study, MODALITIES)
    assert arr.image.shape == (4, 32, 32, 32) and arr.image.dtype == np.float32
    head = arr.image[0] != 0
    for c in range(4):
        vals = arr.image[c][head]
        assert abs(vals.mean()) < 1e-3
        assert abs(vals.std() - 1) < 1e-2
    assert set(np.unique(arr.label)) == {0, 1}
    assert len(arr.lesions) == 2
    # channels are normalised separately: CT1 holds the bright lesions, T1 does not
    lesion = arr.label.astype(bool)
    assert arr.image[1][lesion].mean() > arr.image[0][lesion].mean() + 1


def test_missing_modality_errors_or_zero_fills_loudly(tiny_cohort, caplog):
    study = tiny_cohort.patients[0].studies[0]
    gone = replace(study, series=tuple(s for s in study.series if s.sequence != "T2"))
    with pytest.raises(DatasetError, match=r"T2 missing.*missing_modality"):
        preprocess_study(gone, MODALITIES)
    with caplog.at_level(logging.WARNING):
        arr = preprocess_study(gone, MODALITIES, missing_modality="zero")
    assert np.all(arr.image[2] == 0)
    assert np.any(arr.image[1] != 0)
    assert arr.missing == ("T2",)
    assert "zero-filling missing modality T2" in caplog.text


def test_cache_hit_does_not_reread_nifti_and_edits_invalidate(fresh_cohort, tmp_path, monkeypatch):
    study = fresh_cohort.patients[0].studies[0]
    first = StudyCache(tmp_path / "c", MODALITIES).load(study)

    def boom(*a, **k):
        raise AssertionError("NIfTI re-read on a cache hit")

    monkeypatch.setattr(cache_mod, "read_volume", boom)
    monkeypatch.setattr(cache_mod, "read_label", boom)
    cache = StudyCache(tmp_path / "c", MODALITIES)
    again = cache.load(study)
    assert cache.hits == 1 and cache.misses == 0
    np.testing.assert_array_equal(np.asarray(again.image), first.image)
    np.testing.assert_array_equal(np.asarray(again.label), first.label)
    assert again.lesions == first.lesions
    # editing a source file changes the key: the cache misses and reads NIfTI again
    path = study.path("FLAIR")
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    with pytest.raises(AssertionError, match="re-read"):
        cache.load(study)


def test_random_windows_vary_and_keep_time_order(tmp_path):
    cohort = write_tiny_cohort(
        tmp_path, n_patients=1, n_studies=6, shape=(16, 16, 16), splits=("train",)
    )
    ds = _dataset(cohort, tmp_path, data=DataConfig(max_studies=3, lesion_fraction=0.0))
    starts = set()
    for seed in range(12):
        item = ds[(0, seed)]
        assert len(item.study_ids) == 3
        idx = [int(s[-1]) for s in item.study_ids]
        assert idx == list(range(idx[0], idx[0] + 3))
        starts.add(idx[0])
    assert len(starts) >= 3  # not always the first studies
    first = _dataset(cohort, tmp_path, data=DataConfig(max_studies=3, window="first"))
    assert {first[(0, s)].study_ids[0] for s in range(5)} == {"P000S0"}


def test_window_prefers_labelled_studies():
    rng = np.random.default_rng(0)
    labelled = [False] * 9 + [True]
    for _ in range(20):
        start, stop = choose_window(10, 4, labelled=labelled, rng=rng)
        assert start <= 9 < stop
    assert choose_window(3, 8, labelled=[True] * 3, rng=rng) == (0, 3)


def test_unlabelled_studies_are_flagged_and_all_labels_option(tmp_path):
    cohort = write_tiny_cohort(
        tmp_path, n_patients=1, n_studies=3, labelled="first", splits=("train",)
    )
    item = _dataset(cohort, tmp_path)[(0, 1)]
    assert item.has_label.tolist() == [True, False, False]
    assert not item.label[1:].any()
    every = _dataset(cohort, tmp_path, data=DataConfig(use_all_labels=True))[(0, 1)]
    assert every.has_label.tolist() == [True, True, True]


def test_flagged_label_without_file_is_an_error(tiny_cohort):
    study = tiny_cohort.patients[0].studies[0]
    gone = replace(study, series=tuple(s for s in study.series if s.sequence in MODALITIES))
    with pytest.raises(DatasetError, match="flags a label"):
        preprocess_study(gone, MODALITIES)


def test_lesion_centred_patches(tiny_cohort, tmp_path):
    on = _dataset(tiny_cohort, tmp_path, data=DataConfig(lesion_fraction=1.0))
    for seed in range(8):
        item = on[(seed % 2, seed)]
        assert item.on_lesion
        assert item.label.any()
    off = _dataset(tiny_cohort, tmp_path, data=DataConfig(lesion_fraction=0.0))
    assert not any(off[(0, s)].on_lesion for s in range(8))


def test_whole_patient_items_cover_all_studies_padded_to_16(tiny_cohort, tmp_path):
    ds = _dataset(
        tiny_cohort, tmp_path, train=False, data=DataConfig(max_studies=2), patch=(32, 32, 32)
    )
    item = ds[2]
    assert item.image.shape[0] == 3  # every study, not a window
    assert all(s % 16 == 0 and s >= 32 for s in item.image.shape[2:])
    assert item.label.sum() == sum(
        int(np.asarray(ds.cache.load(s).label).sum()) for s in tiny_cohort.patients[2].studies
    )


def test_studies_on_different_grids_are_refused(tmp_path):
    cohort = write_tiny_cohort(tmp_path, n_patients=1, n_studies=2, splits=("train",))
    moved = cohort.patients[0].studies[1]
    for s in moved.series:
        vol = (
            np.zeros((32, 32, 30), np.float32)
            if s.sequence in MODALITIES
            else np.zeros((32, 32, 30), np.uint8)
        )
        vol[10:20, 10:20, 10:20] = 1
        write_volume(vol, s.path, affine=np.eye(4))
    ds = _dataset(cohort, tmp_path)
    with pytest.raises(GeometryMismatchError, match="metstrack preprocess"):
        ds[(0, 0)]


def test_collate_pads_time_and_masks_padding(tmp_path):
    a = write_tiny_cohort(tmp_path / "a", n_patients=1, n_studies=3, splits=("train",))
    b = write_tiny_cohort(tmp_path / "b", n_patients=1, n_studies=1, splits=("train",))
    ds = _dataset(a, tmp_path)
    ds.patients = [a.patients[0], b.patients[0]]
    batch = collate_sequences([ds[(0, 0)], ds[(1, 0)]])
    assert tuple(batch.image.shape) == (2, 3, 4, 16, 16, 16)
    assert batch.valid.tolist() == [[True, True, True], [True, False, False]]
    assert batch.has_label.tolist() == [[True, True, True], [True, False, False]]
    assert float(batch.image[1, 1:].abs().sum()) == 0.0


def test_sampler_shuffles_per_epoch_and_shards_evenly():
    s = SequenceSampler(5, seed=3)
    e0 = list(s)
    assert list(s) == e0  # same epoch, same order and seeds
    s.set_epoch(1)
    e1 = list(s)
    assert sorted(i for i, _ in e0) == sorted(i for i, _ in e1) == list(range(5))
    assert e0 != e1
    ranks = [list(SequenceSampler(5, seed=3, rank=r, world_size=2)) for r in range(2)]
    assert len(ranks[0]) == len(ranks[1]) == 3
    v = [list(ShardSampler(3, rank=r, world_size=2)) for r in range(2)]
    assert len(v[0]) == len(v[1]) == 2
    counted = sorted(i for shard in v for i, keep in shard if keep)
    assert counted == [0, 1, 2]


def test_patient_with_one_study(tmp_path):
    cohort = write_tiny_cohort(tmp_path, n_patients=1, n_studies=1, splits=("train",))
    item = _dataset(cohort, tmp_path)[(0, 5)]
    assert item.image.shape == (1, 4, 16, 16, 16)


def test_same_seed_same_sample(tiny_cohort, tmp_path):
    ds = _dataset(tiny_cohort, tmp_path, augment=AugmentConfig())
    a, b = ds[(0, 42)], ds[(0, 42)]
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.label, b.label)
    assert isinstance(tiny_cohort.patients[0], Patient)


def test_datasets_pickle_for_loader_workers(tiny_cohort, tmp_path):
    import pickle

    ds = _dataset(tiny_cohort, tmp_path, augment=AugmentConfig())
    clone = pickle.loads(pickle.dumps(ds))
    np.testing.assert_array_equal(clone[(0, 3)].image, ds[(0, 3)].image)


def test_whole_patient_items_carry_the_crop_affine_and_metrics_match_the_spacing(
    tiny_cohort, tmp_path
):
    """A whole item knows its real affine (the cached grid moved to the crop corner);
    scoring with it or with the spacing alone gives the same lesion-wise metrics."""
    from metstrack.core.affine import spacing_from_affine
    from metstrack.metrics.study import evaluate_study

    ds = _dataset(tiny_cohort, tmp_path, train=False, patch=(32, 32, 32))
    item = ds[2]
    cached = ds.cache.load(tiny_cohort.patients[2].studies[0])
    assert item.affine is not None
    np.testing.assert_allclose(item.affine[:3, :3], cached.affine[:3, :3])
    assert spacing_from_affine(item.affine) == pytest.approx(item.spacing_mm)
    # the voxel under the item's (0, 0, 0) sits where the affines say it does
    shift = np.linalg.solve(cached.affine[:3, :3], item.affine[:3, 3] - cached.affine[:3, 3])
    np.testing.assert_allclose(shift, np.round(shift), atol=1e-6)
    t = int(np.flatnonzero(item.has_label)[0])
    ref = item.label[t] > 0
    pred = np.roll(ref, 1, axis=0)
    by_affine = evaluate_study(pred, ref, affine=item.affine)
    by_spacing = evaluate_study(pred, ref, spacing_mm=item.spacing_mm)
    assert by_affine.detection == by_spacing.detection
    assert by_affine.voxel.dice == pytest.approx(by_spacing.voxel.dice)
    assert ds[0].affine is not None and _dataset(tiny_cohort, tmp_path / "t")[0].affine is None
