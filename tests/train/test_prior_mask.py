"""Prior-mask mode: the previous study's reference mask as an extra channel, with dropout."""

from __future__ import annotations

import numpy as np
import torch

from metstrack.config import to_dict
from metstrack.train.cache import StudyCache
from metstrack.train.config import AugmentConfig, DataConfig, load_train_config
from metstrack.train.dataset import PatientSequenceDataset, collate_sequences, make_prior
from metstrack.train.module import SequenceSegmentationModule
from metstrack.types import MODALITIES


def test_make_prior_shifts_labels_by_one_study_and_drops_out():
    label = np.zeros((3, 4, 4, 4), np.uint8)
    label[0, 0, 0, 0] = 1
    label[1, 1, 1, 1] = 1
    has = np.array([True, False, True])
    prior = make_prior(label, has, dropout=0.0, rng=None)
    assert prior.shape == (3, 1, 4, 4, 4)
    assert not prior[0].any()  # first study: zeros
    np.testing.assert_array_equal(prior[1, 0], label[0])
    assert not prior[2].any()  # previous study has no label
    dropped = make_prior(
        label, np.array([True, True, True]), dropout=1.0, rng=np.random.default_rng(0)
    )
    assert not dropped.any()


def test_prior_mask_model_trains_one_step(tiny_cohort, tmp_path):
    cfg = load_train_config(
        None, ["model.width=0.0625", "model.roi_size=[32,32,32]", "model.prior_mask=true"]
    )
    cache = StudyCache(tmp_path / "c", MODALITIES)
    ds = PatientSequenceDataset(
        list(tiny_cohort.patients),
        cache,
        DataConfig(prior_mask_dropout=0.0),
        AugmentConfig(enabled=False),
        train=True,
        patch_size_vox=(32, 32, 32),
        prior_mask=True,
    )
    batch = collate_sequences([ds[(0, 1)]])
    assert batch.prior is not None and tuple(batch.prior.shape) == (1, 3, 1, 32, 32, 32)
    assert torch.equal(batch.prior[0, 1, 0], batch.label[0, 0, 0])
    module = SequenceSegmentationModule(to_dict(cfg.model), to_dict(cfg))
    x = module.network_input(batch)
    assert x.shape[2] == 5
    logits = module.net(x)
    assert logits.shape == (1, 3, 2, 32, 32, 32)
    # the prior channel matters: another prior changes the output of study 1
    other = x.clone()
    other[:, 1, 4] = 1 - other[:, 1, 4]
    module.net.eval()
    with torch.no_grad():
        assert not torch.allclose(module.net(x)[:, 1], module.net(other)[:, 1])
