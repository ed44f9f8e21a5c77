"""The release-layout reader: order, flags, splits, clinical tables and every bad table."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
from tests.dataset_factory import edit_table, write_release

from metstrack.core import schema
from metstrack.errors import DatasetError
from metstrack.io.release import read_release, scan_release
from metstrack.types import LABEL_SEQUENCE, MODALITIES


def test_reads_patients_sorted_and_studies_in_time_order(tmp_path):
    root = write_release(tmp_path, patients={"P02": [0, 91, 180], "P01": [0, 60]})
    # Shuffle the imaging table: the reader must order by days, not by file order.
    edit_table(root, schema.IMAGING_TABLE, lambda df: df.iloc[[4, 2, 0, 3, 1]])
    c = read_release(root)
    assert c.layout == "release"
    assert [p.patient_id for p in c.patients] == ["P01", "P02"]
    p2 = c.patient("P02")
    assert [s.study_id for s in p2.studies] == ["P02S1", "P02S2", "P02S3"]
    assert [s.days_from_baseline for s in p2.studies] == [0.0, 91.0, 180.0]
    assert [s.relative_timepoint for s in p2.studies] == [1, 2, 3]
    s1 = p2.studies[0]
    assert s1.modalities_present == MODALITIES
    assert s1.label_path == schema.study_dir(root, "P02", "P02S1") / "RTSTRUCT_segmentation.nii.gz"
    assert s1.labelled and s1.expert_adjusted
    assert not p2.studies[1].labelled and p2.studies[1].label_path is None
    assert set(s1.sequences_flagged) == {*MODALITIES, LABEL_SEQUENCE}
    for s in c.studies:
        for ser in s.series:
            assert ser.path.is_file()


def test_ties_in_days_are_broken_by_relative_timepoint(tmp_path):
    root = write_release(tmp_path, patients={"P01": [0, 30, 30]})
    edit_table(
        root,
        schema.IMAGING_TABLE,
        lambda df: df.assign(RelativeTimepoint=["1", "3", "2"]),
    )
    c = read_release(root)
    assert [s.study_id for s in c.patients[0].studies] == ["P01S1", "P01S3", "P01S2"]


def test_splits_are_per_patient(tmp_path):
    root = write_release(tmp_path, splits={"P02": "val", "P01": "test"})
    c = read_release(root)
    assert c.patient("P01").split == "test"
    assert c.patient("P02").split == "val"
    assert {s.split for s in c.patient("P02").studies} == {"val"}
    assert [p.patient_id for p in c.split("val")] == ["P02"]


def test_clinical_tables_are_parsed(tmp_path):
    c = read_release(write_release(tmp_path))
    assert [r.patient_id for r in c.clinical_patients] == ["P01", "P02"]
    p1 = c.clinical_patients[0]
    assert p1.age_years == 61 and p1.sex == "F" and p1.kps == 80
    assert p1.death is True and p1.extracranial_disease is True
    assert p1.days_to_death_or_followup == 410 and p1.first_srs_days_from_baseline_scan == 7
    assert len(c.clinical_events) == 4
    image_events = [e for e in c.clinical_events if e.visit_class == 3]
    assert {e.study_id for e in image_events} == {"P01S1", "P02S1"}
    assert all(e.study_id is None for e in c.clinical_events if e.visit_class == 2)
    t = c.radiosurgery_targets[0]
    assert (t.target_id, t.dose_gy, t.target_volume_mm3) == (1, 20.0, 8.0)
    assert t.centroid_mm == (0.5, -0.5, 1.0)


def test_absent_optional_tables_give_empty_records(tmp_path):
    c = read_release(write_release(tmp_path, clinical=False, with_split=False))
    assert c.clinical_patients == () and c.clinical_events == () and c.radiosurgery_targets == ()
    assert all(p.split is None for p in c.patients)
    assert all(s.split is None for s in c.studies)


def test_plain_nii_and_extra_columns_are_accepted(tmp_path):
    root = write_release(tmp_path, ext=".nii")
    edit_table(root, schema.IMAGING_TABLE, lambda df: df.assign(ScannerModel="x", Notes="y"))
    edit_table(root, schema.SPLIT_TABLE, lambda df: df.assign(fold="1"))
    c = read_release(root)
    s = c.studies[0]
    assert s.path("T1").name == "T1.nii"
    assert s.label_path.name == "RTSTRUCT_segmentation.nii"


def test_missing_sequence_is_recorded_not_fatal(tmp_path):
    root = write_release(tmp_path)
    (schema.study_dir(root, "P01", "P01S2") / "FLAIR.nii.gz").unlink()
    edit_table(
        root,
        schema.IMAGING_TABLE,
        lambda df: df.assign(FLAIR=np.where(df.StudyID == "P01S2", "0", df.FLAIR)),
    )
    c = read_release(root, strict=True)
    s = c.patient("P01").studies[1]
    assert s.modalities_present == ("T1", "CT1", "T2")
    assert "FLAIR" not in s.sequences_flagged
    probs = scan_release(root).problems
    assert [(p.severity, p.check) for p in probs] == [("warning", "missing-sequence")]
    assert probs[0].file.name == "FLAIR.nii.gz" and "P01S2" in str(probs[0].file)


def test_flag_without_file_is_recorded_and_fatal_only_when_strict(tmp_path):
    root = write_release(tmp_path)
    (schema.study_dir(root, "P02", "P02S2") / "T2.nii.gz").unlink()
    c = read_release(root)  # lenient
    s = c.patient("P02").studies[1]
    assert "T2" in s.sequences_flagged and s.path("T2") is None
    probs = scan_release(root).problems
    assert [(p.severity, p.check) for p in probs] == [("error", "table-vs-files")]
    assert "line 3" in probs[0].message and "T2=1" in probs[0].message
    with pytest.raises(DatasetError, match=r"T2.nii.gz: imaging.csv line 3 flags T2=1"):
        read_release(root, strict=True)


def test_file_with_flag_zero_is_recorded(tmp_path):
    root = write_release(tmp_path, labelled={"P01S1"})
    edit_table(
        root,
        schema.IMAGING_TABLE,
        lambda df: df.assign(
            RTSTRUCT_segmentation=np.where(df.StudyID == "P01S1", "0", df.RTSTRUCT_segmentation)
        ),
    )
    c = read_release(root)
    s = c.patient("P01").studies[0]
    assert not s.labelled and s.label_path is not None
    probs = scan_release(root).problems
    assert [(p.severity, p.check) for p in probs] == [("warning", "table-vs-files")]
    with pytest.raises(DatasetError, match="flags RTSTRUCT_segmentation=0"):
        read_release(root, strict=True)


def test_unlisted_study_folder_is_recorded(tmp_path):
    root = write_release(tmp_path)
    edit_table(root, schema.IMAGING_TABLE, lambda df: df[df.StudyID != "P02S3"])
    edit_table(root, schema.SPLIT_TABLE, lambda df: df[df.StudyID != "P02S3"])
    assert len(read_release(root).patient("P02").studies) == 2
    probs = scan_release(root).problems
    assert [(p.check, p.file.name) for p in probs] == [("unlisted-study", "P02S3")]


def test_days_disagreeing_with_relative_timepoint_is_recorded(tmp_path):
    root = write_release(tmp_path, patients={"P01": [0, 30, 60]})
    edit_table(root, schema.IMAGING_TABLE, lambda df: df.assign(RelativeTimepoint=["1", "3", "2"]))
    probs = scan_release(root).problems
    assert [(p.severity, p.check) for p in probs] == [("error", "timepoints")]
    assert "P01" in probs[0].message
    with pytest.raises(DatasetError, match="disagree on the order"):
        read_release(root, strict=True)


# ---------------------------------------------------------------- table errors (always fatal)


def _set(df: pd.DataFrame, row: int, col: str, value: str) -> pd.DataFrame:
    df = df.copy()
    df.loc[df.index[row], col] = value
    return df


@pytest.mark.parametrize(
    ("table", "row", "col", "value", "pattern"),
    [
        (
            schema.IMAGING_TABLE,
            1,
            "DaysFromBaselineScan",
            "soon",
            "expected a number, found text of 4 character",
        ),
        (schema.IMAGING_TABLE, 2, "RelativeTimepoint", "2.5", "expected an integer"),
        (schema.IMAGING_TABLE, 0, "T1", "2", "expected 0 or 1, found '2'"),
        (
            schema.IMAGING_TABLE,
            3,
            "StudyID",
            "P02S1",
            "duplicate StudyID 'P02S1' \\(first on line 2\\)",
        ),
        (schema.EVENTS_TABLE, 2, "visit_class", "9", "unknown visit_class 9"),
        (schema.EVENTS_TABLE, 1, "days_from_first_srs", "", "expected a number, found ''"),
        (schema.PATIENTS_TABLE, 1, "kps", "180", "outside the valid range"),
        (schema.PATIENTS_TABLE, 0, "death", "maybe", "expected 0 or 1, found text"),
        (schema.PATIENTS_TABLE, 0, "age_years", "n/a", "expected a number, found 'n/a'"),
        (schema.TARGETS_TABLE, 1, "dose_gy", "twenty", "expected a number"),
        (schema.TARGETS_TABLE, 1, "StudyID", "P02S1", "belongs to another patient"),
        (schema.EVENTS_TABLE, 0, "PatientID", "P99", "unknown patient 'P99'"),
        (schema.PATIENTS_TABLE, 1, "PatientID", "P03", "unknown patient 'P03'"),
        (schema.TARGETS_TABLE, 1, "PatientID", "P7", "unknown patient 'P7'"),
    ],
)
def test_bad_row_names_file_line_and_column(tmp_path, table, row, col, value, pattern):
    root = write_release(tmp_path)
    path = edit_table(root, table, lambda df: _set(df, row, col, value))
    with pytest.raises(DatasetError) as exc:
        read_release(root)
    msg = str(exc.value)
    assert msg.startswith(f"{path}: line {row + 2}, column {col!r}: ")
    assert re.search(pattern, msg), msg


def test_free_text_in_a_bad_cell_is_never_repeated(tmp_path):
    root = write_release(tmp_path)
    edit_table(root, schema.PATIENTS_TABLE, lambda df: _set(df, 0, "kps", "Jane Doe"))
    with pytest.raises(DatasetError, match="line 2, column 'kps'") as exc:
        read_release(root)
    assert "Jane" not in str(exc.value) and "text of 8 character(s)" in str(exc.value)


def test_every_bad_row_is_collected(tmp_path):
    root = write_release(tmp_path)
    edit_table(root, schema.IMAGING_TABLE, lambda df: df.assign(DaysFromBaselineScan="x"))
    scan = scan_release(root)
    assert len(scan.table_errors) == 5
    assert [int(re.search(r"line (\d+)", p.message).group(1)) for p in scan.table_errors] == [
        2,
        3,
        4,
        5,
        6,
    ]
    with pytest.raises(DatasetError, match=r"and 4 more problem\(s\)"):
        read_release(root)


def test_blank_lines_keep_line_numbers_exact(tmp_path):
    root = write_release(tmp_path)
    path = edit_table(
        root, schema.IMAGING_TABLE, lambda df: _set(df, 2, "DaysFromBaselineScan", "x")
    )
    lines = path.read_text().splitlines()
    lines.insert(2, "")  # the bad row moves from line 4 to line 5
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DatasetError, match=r"imaging.csv: line 5, column 'DaysFromBaselineScan'"):
        read_release(root)


def test_missing_required_column_suggests_the_close_name(tmp_path):
    root = write_release(tmp_path)
    edit_table(root, schema.IMAGING_TABLE, lambda df: df.rename(columns={"StudyID": "StudyId"}))
    with pytest.raises(
        DatasetError,
        match=r"imaging.csv: missing required column\(s\) StudyID.*did you mean 'StudyId'",
    ):
        read_release(root)


def test_unparsable_csv_is_a_dataset_error(tmp_path):
    root = write_release(tmp_path)
    schema.table_path(root, schema.EVENTS_TABLE).write_text('a,b\n"unclosed,1\n')
    with pytest.raises(DatasetError, match="clinical_events.csv: "):
        read_release(root)


def test_patient_in_two_splits_is_refused(tmp_path):
    root = write_release(tmp_path, splits={"P02": "train", "P01": "test"})
    path = edit_table(
        root,
        schema.SPLIT_TABLE,
        lambda df: _set(_set(df, 2, "train", "0"), 2, "val", "1"),  # P02S3 -> val
    )
    with pytest.raises(DatasetError) as exc:
        read_release(root)
    msg = str(exc.value)
    assert msg.startswith(f"{path}: patient 'P02' has studies in 2 splits")
    assert "train: P02S1, P02S2; val: P02S3" in msg


@pytest.mark.parametrize(
    ("flags", "pattern"),
    [(("0", "0", "0"), "is in no split"), (("1", "0", "1"), "is in 2 splits")],
)
def test_study_in_no_or_two_splits_is_refused(tmp_path, flags, pattern):
    root = write_release(tmp_path)
    path = edit_table(
        root,
        schema.SPLIT_TABLE,
        lambda df: _set(
            _set(_set(df, 1, "train", flags[0]), 1, "val", flags[1]), 1, "test", flags[2]
        ),
    )
    with pytest.raises(DatasetError, match=re.escape(f"{path}: line 3, column ")):
        read_release(root)
    with pytest.raises(DatasetError, match=pattern):
        read_release(root)


def test_study_without_split_row_is_refused(tmp_path):
    root = write_release(tmp_path)
    edit_table(root, schema.SPLIT_TABLE, lambda df: df[df.StudyID != "P01S2"])
    with pytest.raises(DatasetError, match=r"study 'P01S2' \(imaging.csv line \d\) has no row"):
        read_release(root)


def test_missing_root_or_imaging_table(tmp_path):
    with pytest.raises(DatasetError, match="dataset folder not found"):
        read_release(tmp_path / "nope")
    with pytest.raises(DatasetError, match=r"tables/imaging.csv: imaging table not found"):
        read_release(tmp_path)
