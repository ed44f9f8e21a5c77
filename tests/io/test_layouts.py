"""BraTS-METS, BrainMetShare and BIDS-like readers, layout detection and the mask loader."""

from __future__ import annotations

import math

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from tests.dataset_factory import affine, image, write_release

from metstrack.errors import ConfigError, DatasetError, LabelError
from metstrack.io.layouts import LAYOUTS, detect_layout, load_lesion_mask, read_dataset
from metstrack.io.nifti import write_volume
from metstrack.io.validate import validate_dataset
from metstrack.types import LABEL_SEQUENCE, MODALITIES

BRATS_SUFFIXES = ("t1n", "t1c", "t2w", "t2f")


def _brats_seg() -> np.ndarray:
    seg = np.zeros((8, 8, 8), np.uint8)
    seg[1:3, 1:3, 1:3] = 1  # necrotic core: 8 voxels
    seg[4:6, 4:6, 4:6] = 3  # enhancing: 8 voxels
    seg[6:8, 0:2, 0:1] = 2  # oedema: 4 voxels
    return seg


def _write_brats_case(root, case, *, nested=True, seg=True, suffixes=BRATS_SUFFIXES):
    folder = root / case if nested else root
    for i, sfx in enumerate(suffixes):
        write_volume(image(i), folder / f"{case}-{sfx}.nii.gz", affine=affine())
    if seg:
        write_volume(_brats_seg(), folder / f"{case}-seg.nii.gz", affine=affine())


def test_brats_nested_and_flat_cases(tmp_path):
    _write_brats_case(tmp_path, "BraTS-MET-00002-000", nested=True)
    _write_brats_case(tmp_path, "BraTS-MET-00001-000", nested=False, seg=False)
    assert detect_layout(tmp_path) == "brats-mets"
    c = read_dataset(tmp_path)
    assert c.layout == "brats-mets" and c.label_classes == (1, 3)
    assert [p.patient_id for p in c.patients] == ["BraTS-MET-00001", "BraTS-MET-00002"]
    flat, nested = c.studies
    assert flat.study_id == "BraTS-MET-00001-000" and not flat.labelled
    assert flat.modalities_present == MODALITIES and flat.label_path is None
    assert flat.path("CT1").name == "BraTS-MET-00001-000-t1c.nii.gz"
    assert flat.path("FLAIR").name == "BraTS-MET-00001-000-t2f.nii.gz"
    assert flat.path("T2").name == "BraTS-MET-00001-000-t2w.nii.gz"
    assert flat.path("T1").name == "BraTS-MET-00001-000-t1n.nii.gz"
    assert nested.labelled and nested.label_path.parent.name == "BraTS-MET-00002-000"
    assert nested.days_from_baseline == 0.0 and nested.relative_timepoint == 1


def test_brats_mask_from_label_classes(tmp_path):
    _write_brats_case(tmp_path, "BraTS-MET-00003-000")
    c = read_dataset(tmp_path)
    m = load_lesion_mask(c.studies[0], c)
    assert m.array.dtype == np.uint8 and int(m.array.sum()) == 16
    np.testing.assert_array_equal(m.array, np.isin(_brats_seg(), (1, 3)))
    c3 = read_dataset(tmp_path, label_classes=(3,))
    assert int(load_lesion_mask(c3.studies[0], c3).array.sum()) == 8
    c_all = read_dataset(tmp_path, layout="brats-mets", label_classes=(1, 2, 3))
    assert int(load_lesion_mask(c_all.studies[0], c_all).array.sum()) == 20
    # Multi-class labels are not a validation error for this layout.
    assert validate_dataset(tmp_path).ok


@pytest.mark.parametrize("classes", [(), (4,), ("et",)])
def test_brats_bad_label_classes(tmp_path, classes):
    _write_brats_case(tmp_path, "BraTS-MET-00003-000")
    with pytest.raises(ConfigError, match="label_classes"):
        read_dataset(tmp_path, label_classes=classes)


def test_brats_timepoints_missing_modality_and_unknown_suffix(tmp_path):
    _write_brats_case(tmp_path, "BraTS-MET-00007-001", suffixes=("t1n", "t1c", "t2f"))
    _write_brats_case(tmp_path, "BraTS-MET-00007-000")
    write_volume(
        image(9),
        tmp_path / "BraTS-MET-00007-000" / "BraTS-MET-00007-000-t1ce.nii.gz",
        affine=affine(),
    )
    c = read_dataset(tmp_path)
    (p,) = c.patients
    assert [s.study_id for s in p.studies] == ["BraTS-MET-00007-000", "BraTS-MET-00007-001"]
    assert [s.relative_timepoint for s in p.studies] == [1, 2]
    assert p.studies[0].days_from_baseline == 0.0 and math.isnan(p.studies[1].days_from_baseline)
    assert p.studies[1].modalities_present == ("T1", "CT1", "FLAIR")
    report = validate_dataset(tmp_path)
    assert report.ok
    checks = {(pr.check, pr.file.name) for pr in report.problems}
    assert ("missing-sequence", "BraTS-MET-00007-001-t2w.nii.gz") in checks
    unknown = [pr for pr in report.problems if pr.check == "unknown-file"]
    assert len(unknown) == 1 and "did you mean 't1c'" in unknown[0].message


def test_realdata_brats_case(realdata):
    root = realdata / "brats-met-00110"
    assert detect_layout(root) == "brats-mets"
    c = read_dataset(root)
    (s,) = c.studies
    assert (s.patient_id, s.study_id) == ("BraTS-MET-00110", "BraTS-MET-00110-000")
    assert s.modalities_present == MODALITIES
    assert not s.labelled and s.label_path is None  # the real case ships no label
    # The file's affine is kept as stored (RAS, not the usual BraTS LPS-like flip): no silent
    # reorientation at read time.
    img = nib.load(str(s.path("CT1")))
    assert nib.aff2axcodes(img.affine) == ("R", "A", "S")
    assert img.shape == (240, 240, 155)
    report = validate_dataset(root, workers=2)
    assert report.ok and report.n_files == 4 and report.problems == ()


def _write_bms_case(folder, *, stems=("t1_pre", "t1_gd", "flair", "bravo"), seg_value=1):
    for i, stem in enumerate(stems):
        write_volume(image(i), folder / f"{stem}.nii.gz", affine=affine())
    seg = np.zeros((8, 8, 8), np.uint8)
    seg[2:4, 2:4, 2:4] = seg_value
    write_volume(seg, folder / "seg.nii.gz", affine=affine())


def test_brainmetshare_cases_and_splits(tmp_path):
    _write_bms_case(tmp_path / "train" / "Mets_005")
    _write_bms_case(tmp_path / "test" / "Mets_010", stems=("t1_pre", "bravo"))
    assert detect_layout(tmp_path) == "brainmetshare"
    c = read_dataset(tmp_path)
    assert c.layout == "brainmetshare"
    assert [(p.patient_id, p.split) for p in c.patients] == [
        ("Mets_005", "train"),
        ("Mets_010", "test"),
    ]
    s = c.studies[0]
    assert s.path("CT1").name == "bravo.nii.gz" and s.path("T1").name == "t1_pre.nii.gz"
    assert s.path("T2") is None and s.labelled
    assert int(load_lesion_mask(s, c).array.sum()) == 8
    c2 = read_dataset(tmp_path, post_contrast="t1_gd")
    assert c2.studies[0].path("CT1").name == "t1_gd.nii.gz"
    assert c2.studies[1].path("CT1") is None
    with pytest.raises(ConfigError, match="did you mean 't1_gd'"):
        read_dataset(tmp_path, post_contrast="t1gd")
    report = validate_dataset(tmp_path)
    assert report.ok
    missing = sorted(p.file.name for p in report.problems if p.check == "missing-sequence")
    assert missing == ["flair.nii.gz"]  # no per-study warning for the absent T2


def test_brainmetshare_255_masks_need_label_classes(tmp_path):
    _write_bms_case(tmp_path / "Mets_001", seg_value=255)
    c = read_dataset(tmp_path)
    with pytest.raises(LabelError, match="binary"):
        load_lesion_mask(c.studies[0], c)
    assert not validate_dataset(tmp_path).ok
    c255 = read_dataset(tmp_path, label_classes=(255,))
    assert int(load_lesion_mask(c255.studies[0], c255).array.sum()) == 8


def test_brainmetshare_png_original_is_refused(tmp_path):
    from PIL import Image

    for sub in ("0", "1", "2", "3", "seg"):
        (tmp_path / "Mets_001" / sub).mkdir(parents=True)
        Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "Mets_001" / sub / "0.png")
    assert detect_layout(tmp_path) == "brainmetshare"
    with pytest.raises(DatasetError, match="PNG slices carry no voxel spacing"):
        read_dataset(tmp_path)


def _write_bids_session(root, sub, ses, *, ce=True, mask_pipelines=("lesions",)):
    anat = root / sub / ses / "anat"
    names = ["T1w", "T2w", "FLAIR"] + (["ce-gd_T1w"] if ce else [])
    for i, n in enumerate(names):
        write_volume(image(i), anat / f"{sub}_{ses}_{n}.nii.gz", affine=affine())
    m = np.zeros((8, 8, 8), np.uint8)
    m[1:3, 1:3, 1:3] = 1
    for pipe in mask_pipelines:
        d = root / "derivatives" / pipe / sub / ses / "anat"
        write_volume(m, d / f"{sub}_{ses}_desc-metastases_mask.nii.gz", affine=affine())


def test_bids_sessions_order_masks_and_splits(tmp_path):
    _write_bids_session(tmp_path, "sub-01", "ses-b")
    _write_bids_session(tmp_path, "sub-01", "ses-a", mask_pipelines=())
    _write_bids_session(tmp_path, "sub-02", "ses-1", ce=False)
    pd.DataFrame(
        {"session_id": ["ses-a", "ses-b"], "acq_time": ["2020-03-01", "2020-01-01"]}
    ).to_csv(tmp_path / "sub-01" / "sub-01_sessions.tsv", sep="\t", index=False)
    pd.DataFrame({"participant_id": ["sub-01", "sub-02"], "split": ["train", "test"]}).to_csv(
        tmp_path / "participants.tsv", sep="\t", index=False
    )
    assert detect_layout(tmp_path) == "bids"
    c = read_dataset(tmp_path)
    p1 = c.patient("sub-01")
    assert [s.study_id for s in p1.studies] == ["sub-01_ses-b", "sub-01_ses-a"]
    assert [s.days_from_baseline for s in p1.studies] == [0.0, 60.0]
    assert [s.relative_timepoint for s in p1.studies] == [1, 2]
    b = p1.studies[0]
    assert b.path("CT1").name == "sub-01_ses-b_ce-gd_T1w.nii.gz"
    assert b.path("T1").name == "sub-01_ses-b_T1w.nii.gz"
    assert b.labelled and "derivatives" in str(b.label_path)
    assert not p1.studies[1].labelled
    assert (p1.split, c.patient("sub-02").split) == ("train", "test")
    assert c.patient("sub-02").studies[0].path("CT1") is None
    report = validate_dataset(tmp_path)
    assert report.ok
    assert [(p.check, p.file.name) for p in report.problems] == [
        ("missing-sequence", "sub-02_ses-1_ce-gd_T1w.nii.gz")
    ]


def test_bids_several_pipelines_and_derivative_option(tmp_path):
    _write_bids_session(tmp_path, "sub-01", "ses-1", mask_pipelines=("b-pipe", "a-pipe"))
    c = read_dataset(tmp_path)
    assert "a-pipe" in str(c.studies[0].label_path)
    assert read_dataset(tmp_path, derivative="b-pipe").studies[0].label_path.parts[-5] == "b-pipe"
    with pytest.raises(DatasetError, match="did you mean 'b-pipe'"):
        read_dataset(tmp_path, derivative="b-pipes")
    assert any(p.check == "duplicate-file" for p in validate_dataset(tmp_path).problems)


def test_bids_without_session_times_and_bad_times(tmp_path):
    _write_bids_session(tmp_path, "sub-01", "ses-10")
    _write_bids_session(tmp_path, "sub-01", "ses-2")
    c = read_dataset(tmp_path)
    assert [s.study_id for s in c.studies] == ["sub-01_ses-2", "sub-01_ses-10"]  # natural order
    assert all(math.isnan(s.days_from_baseline) for s in c.studies)
    tsv = tmp_path / "sub-01" / "sub-01_sessions.tsv"
    pd.DataFrame(
        {"session_id": ["ses-2", "ses-10"], "acq_time": ["2020-01-01", "yesterday"]}
    ).to_csv(tsv, sep="\t", index=False)
    with pytest.raises(DatasetError, match=r"sub-01_sessions.tsv: line 3, column 'acq_time'"):
        read_dataset(tmp_path)


def test_bad_layout_name_and_option(tmp_path):
    write_release(tmp_path)
    with pytest.raises(ConfigError, match="did you mean 'brats-mets'"):
        read_dataset(tmp_path, layout="brats-met")
    with pytest.raises(ConfigError, match="valid: .*bids.*brainmetshare.*release"):
        read_dataset(tmp_path, layout="nyu")
    with pytest.raises(ConfigError, match="does not apply to the release layout"):
        read_dataset(tmp_path, label_classes=(1,))


def test_undetectable_folder_lists_layouts(tmp_path):
    (tmp_path / "random.txt").write_text("x")
    with pytest.raises(DatasetError, match="no known dataset layout") as exc:
        detect_layout(tmp_path)
    for name in LAYOUTS:
        assert name in str(exc.value)


def test_release_through_read_dataset_and_mask_loader(tmp_path):
    write_release(tmp_path)
    c = read_dataset(tmp_path)
    assert c.layout == "release" and c.label_classes == ()
    s = c.patient("P01").studies[0]
    ref = write_volume(image(0), tmp_path / "ref.nii.gz", affine=affine())
    from metstrack.io.nifti import read_volume

    m = load_lesion_mask(s, c, reference=read_volume(ref))
    assert m.array.dtype == np.uint8 and int(m.array.sum()) == 8
    with pytest.raises(LabelError, match="P01S2 .*has no label file"):
        load_lesion_mask(c.patient("P01").studies[1], c)
    assert LABEL_SEQUENCE in s.sequences_flagged
