"""Prediction on real-world input layouts, brain masking of predictions, plain-folder evaluation."""

from __future__ import annotations

import json
from pathlib import Path

import cc3d
import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch

from metstrack.infer.inputs import prepare_input
from metstrack.infer.predict import PredictOptions, StudyImages, output_paths, predict_patient
from metstrack.io.checkpoint import save_checkpoint
from metstrack.io.layouts import apply_intervals, read_dataset
from metstrack.models.base import SequenceModel
from metstrack.models.config import ModelConfig
from metstrack.models.registry import build_model
from metstrack.types import Volume

SHAPE = (32, 32, 24)


def _head(seed: int, shift_vox: int = 0) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """Skull-stripped phantom: four contrasts with zero background, the brain and a lesion."""
    rng = np.random.default_rng(seed)
    x, y, z = np.indices(SHAPE)
    c = np.array([16 + shift_vox, 16, 12])
    brain = ((x - c[0]) / 12.0) ** 2 + ((y - c[1]) / 13.0) ** 2 + ((z - c[2]) / 9.0) ** 2 <= 1.0
    lesion = (x - c[0] - 4) ** 2 + (y - c[1] + 3) ** 2 + (z - c[2]) ** 2 <= 9
    out = {}
    for name, level in (("t1n", 100.0), ("t1c", 110.0), ("t2w", 80.0), ("t2f", 90.0)):
        img = level + 5.0 * rng.standard_normal(SHAPE)
        if name == "t1c":
            img[lesion] = 320.0
        out[name] = np.where(brain, img, 0.0).astype(np.float32)
    return out, brain, lesion


def _write(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(arr, np.eye(4)), str(path))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    cfg = ModelConfig(width=0.25, roi_size=(32, 32, 32))
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.ckpt", build_model(cfg), cfg)


@pytest.fixture(scope="module")
def brats_patient(tmp_path_factory) -> Path:
    """A two-timepoint BraTS-METS patient (cases -000 and -001, follow-up moved 2 mm)."""
    root = tmp_path_factory.mktemp("brats")
    for tp, shift in (("000", 0), ("001", 2)):
        case = f"BraTS-MET-00042-{tp}"
        imgs, _, lesion = _head(int(tp) + 1, shift)
        for name, arr in imgs.items():
            _write(root / case / f"{case}-{name}.nii.gz", arr)
        _write(root / case / f"{case}-seg.nii.gz", (3 * lesion).astype(np.uint8))
    return root


class AllForeground(SequenceModel):
    """Test double: foreground probability ~1 at every voxel, background included."""

    temporal = False

    def __init__(self) -> None:
        super().__init__(ModelConfig(name="unet"))
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def step(self, x_t, state=None):
        fg = torch.full_like(x_t[:, :1], 10.0)
        return torch.cat([torch.zeros_like(fg), fg], dim=1), None


def test_no_component_outside_the_brain_of_a_skull_stripped_input(tmp_path) -> None:
    imgs, brain, _ = _head(7)
    vols = tuple(Volume(imgs[n], np.eye(4)) for n in ("t1n", "t1c", "t2w", "t2f"))
    # A window smaller than the volume: its edges lie in the zero background.
    opts = PredictOptions(roi_size=(16, 16, 16), overlap=0.25)
    res = predict_patient(AllForeground(), "P", [StudyImages("S", vols)], tmp_path, options=opts)
    mask = np.asarray(nib.load(output_paths(tmp_path, "P", "S")[0]).dataobj) > 0
    prob = np.asarray(nib.load(output_paths(tmp_path, "P", "S")[1]).dataobj)
    assert mask.any() and not (mask & ~brain).any()
    assert float(prob[~brain].max()) == 0.0
    assert res[0].n_lesions == cc3d.connected_components(mask.astype(np.uint8)).max() == 1


def test_a_given_brain_mask_bounds_the_prediction(tmp_path) -> None:
    imgs, brain, _ = _head(8)
    half = brain.copy()
    half[:16] = False
    vols = tuple(Volume(imgs[n], np.eye(4)) for n in ("t1n", "t1c", "t2w", "t2f"))
    predict_patient(AllForeground(), "P", [StudyImages("S", vols, brain_mask=half)], tmp_path)
    mask = np.asarray(nib.load(output_paths(tmp_path, "P", "S")[0]).dataobj) > 0
    assert mask.any() and not (mask & ~half).any()


def test_predict_a_two_timepoint_brats_patient(cli, brats_patient, checkpoint, tmp_path) -> None:
    out = tmp_path / "preds"
    res = cli("predict", "--checkpoint", checkpoint, "--data", brats_patient, "--out", out)
    assert res.exit_code == 0, res.output
    assert res.output.count("intervals between studies are unknown") == 1
    for tp in ("000", "001"):
        case = f"BraTS-MET-00042-{tp}"
        folder = out / "predictions" / "patientId" / "BraTS-MET-00042" / "studyId" / case
        mask = nib.load(folder / "mask.nii.gz")
        native = nib.load(brats_patient / case / f"{case}-t1c.nii.gz")
        assert mask.shape == native.shape
        np.testing.assert_allclose(mask.affine, native.affine, atol=1e-4)
        assert not ((np.asarray(mask.dataobj) > 0) & (np.asarray(native.dataobj) == 0)).any()
    table = pd.read_csv(out / "input" / "preprocessed" / "tables" / "imaging.csv")
    assert table["DaysFromBaselineScan"].tolist()[0] == 0.0
    assert np.isnan(table["DaysFromBaselineScan"].tolist()[1])
    saved = json.loads((out / "predict_config.json").read_text())["config"]
    assert saved["input_layout"] == "brats-mets" and saved["preprocessed_input"]
    # a rerun keeps the finished studies and the preprocessed copy
    again = cli("predict", "--checkpoint", checkpoint, "--data", brats_patient, "--out", out)
    assert again.exit_code == 0 and "kept from a previous run" in again.output


def test_intervals_table_sets_the_days(brats_patient, tmp_path) -> None:
    table = tmp_path / "intervals.csv"
    table.write_text(
        "StudyID,DaysFromBaselineScan\nBraTS-MET-00042-000,0\nBraTS-MET-00042-001,91\n"
    )
    cohort = apply_intervals(read_dataset(brats_patient), table)
    assert [s.days_from_baseline for s in cohort.studies] == [0.0, 91.0]
    bad = tmp_path / "bad.csv"
    bad.write_text("StudyID,DaysFromBaselineScan\nBraTS-MET-00042-002,3\n")
    with pytest.raises(Exception, match=r"bad.csv: line 2: StudyID 'BraTS-MET-00042-002'"):
        apply_intervals(read_dataset(brats_patient), bad)


def test_predict_a_single_study_folder(cli, checkpoint, tmp_path) -> None:
    study = tmp_path / "study_2024"
    imgs, brain, _ = _head(3)
    for src, name in (("t1n", "t1"), ("t1c", "t1c"), ("t2w", "t2"), ("t2f", "flair")):
        _write(study / f"{name}.nii.gz", imgs[src])
    _write(study / "t1c_brainmask_hdbet.nii.gz", brain.astype(np.uint8))  # ignored, warned
    out = tmp_path / "preds"
    res = cli("predict", "--checkpoint", checkpoint, "--data", study, "--out", out)
    assert res.exit_code == 0, res.output
    folder = out / "predictions" / "patientId" / "study_2024" / "studyId" / "study_2024"
    mask = np.asarray(nib.load(folder / "mask.nii.gz").dataobj) > 0
    assert mask.shape == SHAPE and not (mask & ~brain).any()
    prepared = prepare_input(study, tmp_path / "w", preprocess="never")
    assert prepared.source_layout == "study" and not prepared.preprocessed


def test_bad_choices_are_usage_errors(cli, checkpoint, tmp_path) -> None:
    res = cli("predict", "--checkpoint", checkpoint, "--data", tmp_path, "--out", tmp_path / "o",
              "--brain-mask", "deepbett")  # fmt: skip
    assert res.exit_code == 2 and "deepbet" in res.output
    res = cli("predict", "--checkpoint", checkpoint, "--data", tmp_path, "--out", tmp_path / "o")
    assert res.exit_code == 1 and "no known dataset layout" in res.output


def test_evaluate_two_plain_folders_of_masks(cli, tmp_path) -> None:
    pred, ref = tmp_path / "pred", tmp_path / "ref"
    lesion = np.zeros(SHAPE, np.uint8)
    lesion[10:14, 10:14, 10:14] = 1
    _write(ref / "case1-seg.nii.gz", lesion)
    _write(pred / "case1.nii.gz", lesion)  # found
    _write(ref / "case2-seg.nii.gz", lesion)
    _write(pred / "case2.nii.gz", np.zeros(SHAPE, np.uint8))  # missed
    _write(ref / "case3-seg.nii.gz", lesion)  # no prediction: counted missed
    out = tmp_path / "eval"
    res = cli("evaluate", "--pred", pred, "--ref", ref, "--out", out, "--bootstrap", "10")
    assert res.exit_code == 0, res.output
    studies = pd.read_csv(out / "studies.csv")
    assert sorted(studies["study_id"]) == ["case1", "case2", "case3"]
    assert studies.set_index("study_id")["prediction_missing"].to_dict() == {
        "case1": False,
        "case2": False,
        "case3": True,
    }
    summary = json.loads((out / "summary.json").read_text())
    sens = summary["metrics"]["lesion_sensitivity"]["value"]
    assert sens == pytest.approx(1 / 3)


@pytest.mark.realdata
@pytest.mark.slow
def test_brain_mask_on_the_real_skull_on_thick_slice_scan(realdata) -> None:
    from metstrack.io.nifti import read_volume
    from metstrack.metrics.voxel import compute_dice
    from metstrack.preprocess.brain import estimate_brain_mask

    case = realdata / "tcga-fg-6692-raw"
    mask, used = estimate_brain_mask(read_volume(case / "t1c.nii.gz"))
    ref = read_volume(case / "t1c_brainmask_hdbet.nii.gz").array > 0
    assert used == "deepbet"
    assert compute_dice(mask, ref) > 0.95


@pytest.mark.parametrize(
    ("name", "sequence"),
    [
        ("t1.nii.gz", "T1"),
        ("T1w.nii", "T1"),
        ("t1c.nii.gz", "CT1"),
        ("sub-01_T1CE.nii.gz", "CT1"),
        ("CT1.nii.gz", "CT1"),
        ("t2w.nii.gz", "T2"),
        ("BraTS-MET-00110-000-t2f.nii.gz", "FLAIR"),
        ("seg.nii.gz", "RTSTRUCT_segmentation"),
        ("t1c_brainmask_hdbet.nii.gz", None),
    ],
)
def test_study_folder_file_names(name, sequence) -> None:
    from metstrack.io.study_folder import sequence_of

    assert sequence_of(name) == sequence


@pytest.mark.realdata
def test_the_real_clinical_study_folder_reads_as_one_study(realdata) -> None:
    cohort = read_dataset(realdata / "tcga-fg-6692-raw")
    assert cohort.layout == "study"
    (study,) = cohort.studies
    assert study.modalities_present == ("T1", "CT1", "T2", "FLAIR")
    assert study.path("CT1").name == "t1c.nii.gz" and study.label_path is None


def test_predict_and_evaluate_a_dicom_folder(cli, checkpoint, tmp_path) -> None:
    from pydicom.uid import generate_uid

    from metstrack.io.dicom_synth import write_rtstruct, write_series

    export = tmp_path / "export"
    for s, date in ((1, "20210104"), (2, "20210405")):
        imgs, _, _ = _head(s)
        common = dict(study_uid=generate_uid(), study_date=date, origin_lps=(-16.0, -16.0, 0.0))
        base = export / "patient1" / f"study{s}"
        for n, (key, desc, agent) in enumerate(
            (
                ("t1n", "AX T1", None),
                ("t1c", "AX T1", "Gadobutrol"),
                ("t2w", "AX T2 FSE", None),
                ("t2f", "AX T2 FLAIR", None),
            ),  # fmt: skip
            start=1,
        ):
            arr = np.round(imgs[key][:, :, ::2]).astype(np.uint16)  # 2 mm slices
            paths = write_series(base / key, arr, description=desc, contrast_agent=agent,
                                 series_number=n, **common)  # fmt: skip
        if s == 1:
            t = np.linspace(0, 2 * np.pi, 60, endpoint=False)
            ring = [np.column_stack([-16 + 20 + 3 * np.cos(t), -16 + 13 + 3 * np.sin(t),
                                     np.full_like(t, 2.0 * k)]) for k in (5, 6, 7)]  # fmt: skip
            write_rtstruct(base / "rtstruct" / "RS.dcm", paths, [("GTV_1", "GTV", ring)])
    out = tmp_path / "preds"
    args = ("--checkpoint", checkpoint, "--data", export, "--out", out)
    res = cli("predict", *args, "--preprocess", "never", "--brain-mask", "none")
    assert res.exit_code == 0, res.output
    assert (
        json.loads((out / "predict_config.json").read_text())["config"]["input_layout"] == "dicom"
    )
    masks = sorted((out / "predictions").rglob("mask.nii.gz"))
    assert len(masks) == 2  # two studies, pseudonymised IDs
    ev = cli(
        "evaluate", "--pred", out, "--ref", export, "--out", tmp_path / "ev", "--bootstrap", "5"
    )
    assert ev.exit_code == 0, ev.output
    assert len(pd.read_csv(tmp_path / "ev" / "studies.csv")) == 1  # the study with an RTSTRUCT


def test_rates_are_undefined_when_the_intervals_are_unknown() -> None:
    from metstrack.tracking.trajectory import BURDEN_COLUMNS, patient_rates

    rows = [
        {c: 0 for c in BURDEN_COLUMNS}
        | {
            "patient_id": "P",
            "days_from_baseline": d,
            "total_volume_mm3": v,
            "lesion_count": 1,
        }  # fmt: skip
        for d, v in ((0.0, 100.0), (float("nan"), 200.0))
    ]
    rates = patient_rates(pd.DataFrame(rows, columns=list(BURDEN_COLUMNS)))
    (row,) = rates.to_dict("records")
    assert not row["defined"] and "unknown" in row["reason"] and row["n_studies"] == 2
    assert np.isnan(row["rate_volume_cm3_per_month"])
