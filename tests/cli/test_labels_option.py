"""Multi-class references are refused unless ``--labels`` says which values are lesion."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from tests.dataset_factory import affine, write_release

from metstrack.core import schema
from metstrack.errors import ConfigError, LabelError
from metstrack.io.labels import LABEL_PRESETS, lesion_mask, parse_label_values
from metstrack.io.nifti import write_volume
from metstrack.types import LABEL_SEQUENCE


def test_presets_and_values_parse():
    assert parse_label_values("brats-tc") == (1, 3) == LABEL_PRESETS["brats-tc"]
    assert parse_label_values("brats-et") == (3,)
    assert parse_label_values("3, 2") == (2, 3)
    for bad in ("brats-tx", "0", "a,b", ""):
        with pytest.raises(ConfigError, match="brats-tc"):
            parse_label_values(bad)


def test_lesion_mask_refuses_multiclass_without_a_choice():
    arr = np.array([0, 2, 3, 3])
    with pytest.raises(LabelError, match=r"seg.nii.gz: a multi-class label \(values 2, 3"):
        lesion_mask(arr, "seg.nii.gz")
    np.testing.assert_array_equal(lesion_mask(arr, "seg.nii.gz", (3,)), [0, 0, 1, 1])
    np.testing.assert_array_equal(lesion_mask(np.array([0, 1]), "m.nii.gz"), [0, 1])


@pytest.fixture
def brats_like(tmp_path: Path) -> tuple[Path, Path]:
    """A release dataset whose label holds oedema (2) around enhancing tumour (3)."""
    ref = write_release(tmp_path / "data", patients={"P01": [0.0]}, labelled={"P01S1"})
    seg = np.zeros((8, 8, 8), np.uint8)
    seg[1:7, 1:7, 1:7] = 2  # oedema
    seg[3:5, 3:5, 3:5] = 3  # enhancing tumour
    seg[0, 0, 0] = 3  # a one-voxel tumour the prediction misses
    label = schema.study_dir(ref, "P01", "P01S1") / f"{LABEL_SEQUENCE}.nii.gz"
    write_volume(seg, label, affine=affine())
    pred = tmp_path / "preds"
    p = np.zeros((8, 8, 8), np.uint8)
    p[3:5, 3:5, 3:5] = 1
    write_volume(p, schema.prediction_dir(pred, "P01", "P01S1") / "mask.nii.gz", affine=affine())
    return ref, pred


def _evaluate(cli, ref, pred, out, *extra):
    return cli("evaluate", "--pred", pred, "--ref", ref, "--out", out, "--bootstrap", "0", *extra)


def test_evaluate_refuses_a_multiclass_reference(cli, brats_like, tmp_path):
    ref, pred = brats_like
    res = _evaluate(cli, ref, pred, tmp_path / "out")
    assert res.exit_code == 1
    (line,) = [ln for ln in res.output.splitlines() if ln.startswith("error:")]
    assert "RTSTRUCT_segmentation.nii.gz" in line and "--labels" in line
    assert "Traceback" not in res.output
    assert not (tmp_path / "out").exists()


def test_evaluate_with_labels_scores_the_chosen_classes(cli, brats_like, tmp_path):
    ref, pred = brats_like
    res = _evaluate(cli, ref, pred, tmp_path / "et", "--labels", "brats-et")
    assert res.exit_code == 0, res.output
    studies = pd.read_csv(tmp_path / "et" / "studies.csv")
    # two tumour lesions (the 8-voxel cube and the lone voxel), one found
    assert studies.loc[0, "n_ref"] == 2 and studies.loc[0, "tp"] == 1
    res = _evaluate(cli, ref, pred, tmp_path / "bad", "--labels", "brats-tcc")
    assert res.exit_code == 2 and "did you mean 'brats-tc'" in res.output


def test_preprocess_refuses_a_multiclass_label_unless_chosen(cli, tmp_path):
    data = write_release(tmp_path / "data", patients={"P01": [0.0]}, labelled={"P01S1"})
    label = schema.study_dir(data, "P01", "P01S1") / f"{LABEL_SEQUENCE}.nii.gz"
    seg = np.zeros((8, 8, 8), np.uint8)
    seg[2:4, 2:4, 2:4] = 1
    seg[5, 5, 5] = 2
    write_volume(seg, label, affine=affine())
    args = ("preprocess", "--data", data, "--no-brain-mask")
    res = cli(*args, "--out", tmp_path / "out")
    assert res.exit_code == 1
    assert str(label) in res.output and "--labels" in res.output
    assert not (schema.study_dir(tmp_path / "out", "P01", "P01S1") / "CT1.nii.gz").exists()
    res = cli(*args, "--out", tmp_path / "ok", "--labels", "1")
    assert res.exit_code == 0, res.output
