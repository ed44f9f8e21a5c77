"""Tracked lesions out as DICOM: SEG + SR (+ RTSTRUCT) per study, read back and validated.

One patient, three studies on an oblique 1 x 1 x 2 mm series: lesion L1 (a
12 mm target) shrinks then grows, L2 resolves at the second study, L3 appears
at the second study and grows. The tracking run is the real ``metstrack
track`` on masks written on each study's ingested grid.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pydicom
import pytest
from pydicom.uid import generate_uid
from tests.pacs_tools import dciodvfy
from typer.testing import CliRunner

from metstrack.cli.main import app
from metstrack.io.dicom_series import read_dicom_series
from metstrack.io.dicom_synth import SECRET_BIRTH, SECRET_ID, SECRET_NAME, write_series
from metstrack.io.export import read_seg
from metstrack.io.ingest import ingest_dicom
from metstrack.io.nifti import read_volume, write_volume
from metstrack.io.rtstruct import read_rtstruct
from metstrack.io.tracked_dicom import read_seg_segments, read_tracked_sr
from metstrack.tracking.identity import tracking_uid
from metstrack.types import Volume

SHAPE = (24, 20, 12)
STUDIES = (
    {"A": ((7, 7, 5), 6.0), "B": ((18, 14, 6), 2.5)},
    {"A": ((7, 7, 5), 4.0), "C": ((4, 17, 7), 2.0)},
    {"A": ((7, 7, 5), 5.5), "C": ((4, 17, 7), 3.0)},
)
ROW = (math.cos(math.radians(15)), 0.0, -math.sin(math.radians(15)))


def _ball(centre, radius_mm):
    grid = np.indices(SHAPE).transpose(1, 2, 3, 0).astype(float)
    d = (grid - np.array(centre)) * np.array([1.0, 1.0, 2.0])
    return np.linalg.norm(d, axis=-1) <= radius_mm


def _run(*args):
    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)


def _export(root, *, tracking="tracking", dicom=None, mapping=None, out="out", extra=()):
    """Run ``metstrack export`` on the fixture's folders (any of them replaceable)."""
    return _run(
        "export",
        "--tracking",
        root / tracking,
        "--dicom",
        dicom or root / "export",
        "--mapping",
        mapping or root / "release-pseudonyms.json",
        "--out",
        root / out,
        *extra,
    )


def _track_again(root, name, masks):
    """Write one mask per study as predictions ``preds_<name>`` and track them into
    ``tracking_<name>`` (the studies, grids and mapping of the ``tracked`` fixture)."""
    release = root / "release" / "imaging" / "patientId" / "P0001" / "studyId"
    for sid, mask in zip(("S00001", "S00002", "S00003"), masks, strict=True):
        ct1 = read_volume(release / sid / "CT1.nii.gz")
        folder = root / f"preds_{name}" / "predictions" / "patientId" / "P0001" / "studyId"
        write_volume(Volume(mask, ct1.affine), folder / sid / "mask.nii.gz", dtype=np.uint8)
    res = _run(
        "track",
        "--data",
        root / "release",
        "--masks",
        root / f"preds_{name}",
        "--out",
        root / f"tracking_{name}",
        "--no-figures",
    )
    assert res.exit_code == 0, res.output


@pytest.fixture(scope="module")
def tracked(tmp_path_factory):
    """(root, tracking folder) of a tracked three-study patient ingested from DICOM."""
    root = tmp_path_factory.mktemp("tracked")
    img = np.random.default_rng(0).integers(50, 400, size=SHAPE).astype(np.uint16)
    for i, date in enumerate(("20210104", "20210405", "20210705")):
        common = dict(
            study_uid=generate_uid(),
            study_date=date,
            origin_lps=(-12.0, -10.0, 0.0),
            step_mm=2.0,
            row_dir=ROW,
        )
        base = root / "export" / f"study{i + 1}"
        write_series(
            base / "t1post",
            img,
            description="AX T1 MPRAGE",
            contrast_agent="Gadobutrol",
            series_number=2,
            **common,
        )
        write_series(base / "t1", img, description="AX T1 MPRAGE", series_number=1, **common)
    report = ingest_dicom(root / "export", root / "release")
    for outcome, spec in zip(report.studies, STUDIES, strict=True):
        folder = root / "release" / "imaging" / "patientId" / outcome.patient_id / "studyId"
        ct1 = read_volume(folder / outcome.study_id / "CT1.nii.gz")
        mask = np.zeros(SHAPE, np.uint8)
        for centre, radius in spec.values():
            mask |= _ball(centre, radius)
        write_volume(
            Volume(mask, ct1.affine),
            root
            / "preds"
            / "predictions"
            / "patientId"
            / outcome.patient_id
            / "studyId"
            / outcome.study_id
            / "mask.nii.gz",
            dtype=np.uint8,
        )
    res = _run(
        "track",
        "--data",
        root / "release",
        "--masks",
        root / "preds",
        "--out",
        root / "tracking",
        "--no-figures",
    )
    assert res.exit_code == 0, res.output
    return root


@pytest.fixture(scope="module")
def exported(tracked):
    root = tracked
    res = _export(root, extra=("--rtstruct",))
    assert res.exit_code == 0, res.output
    table = pd.read_csv(root / "out" / "lesions.csv", dtype={"study_id": str})
    return root, table


def _files(root):
    return sorted((root / "out").rglob("*.dcm"))


def test_objects_written_per_study(exported):
    root, table = exported
    for sid in ("S00001", "S00002", "S00003"):
        names = sorted(p.name for p in (root / "out" / "P0001" / sid).iterdir())
        assert names == ["RTSTRUCT.dcm", "SEG.dcm", "SR.dcm"]
    assert set(table["study_id"]) == {"S00001", "S00002", "S00003"}


def test_dciodvfy_finds_no_error(exported):
    root, _ = exported
    files = _files(root)
    assert len(files) == 9
    for f in files:
        errors, _warnings = dciodvfy(f)
        assert errors == [], f"{f}: {errors}"


def test_statuses_and_identities_follow_the_tracking_rules(exported):
    _, table = exported
    got = {(r.study_id, r.tracking_id): r.status for r in table.itertuples()}
    assert got == {
        ("S00001", "L1"): "new",
        ("S00001", "L2"): "new",
        ("S00002", "L1"): "shrinking",
        ("S00002", "L2"): "resolved",
        ("S00002", "L3"): "new",
        ("S00003", "L1"): "growing",
        ("S00003", "L2"): "resolved",
        ("S00003", "L3"): "growing",
    }
    # one TrackingUID per lesion, the same in every study
    per_lesion = table.groupby("tracking_id")["tracking_uid"].nunique()
    assert (per_lesion == 1).all()
    assert table.drop_duplicates("tracking_id")["tracking_uid"].nunique() == 3
    # resolved lesions have no segment
    assert table.loc[table["status"] == "resolved", "present"].eq(False).all()


def test_seg_read_back_matches_the_table(exported):
    root, table = exported
    uids = {}
    for sid, rows in table.groupby("study_id"):
        seg_path = root / "out" / "P0001" / sid / "SEG.dcm"
        src = read_dicom_series(_source_folder(root, sid))
        segs = read_seg_segments(seg_path)
        arr = read_seg(seg_path, _source_folder(root, sid)).array
        present = rows[rows["present"]].sort_values("segment_number")
        assert [s.tracking_id for s in segs] == present["tracking_id"].tolist()
        assert [s.tracking_uid for s in segs] == present["tracking_uid"].tolist()
        for s, row in zip(segs, present.itertuples(), strict=True):
            vol = float((arr == s.segment_number).sum()) * src.voxel_volume_mm3
            assert vol == pytest.approx(row.volume_mm3, rel=1e-12)
            uids.setdefault(s.tracking_id, set()).add(s.tracking_uid)
    assert all(len(v) == 1 for v in uids.values())


def test_volumes_equal_the_tracking_csv_on_a_shared_grid(exported):
    root, table = exported
    traj = pd.read_csv(root / "tracking" / "trajectories.csv", dtype={"study_id": str})
    merged = table.merge(traj, on=["study_id", "lesion_id"], suffixes=("", "_traj"))
    assert len(merged) == len(table)
    # the same voxels; the tracking run's voxel size comes from the float32 NIfTI affine
    np.testing.assert_allclose(merged["volume_mm3"], merged["volume_mm3_traj"], rtol=1e-6)


def test_sr_read_back_matches_the_table(exported):
    root, table = exported
    response = pd.read_csv(root / "tracking" / "response.csv", dtype={"study_id": str})
    for sid, rows in table.groupby("study_id"):
        folder = root / "out" / "P0001" / sid
        rep = read_tracked_sr(folder / "SR.dcm")
        seg = pydicom.dcmread(folder / "SEG.dcm", stop_before_pixels=True)
        assert rep.seg_sop_uid == seg.SOPInstanceUID
        assert rep.study_uid == seg.StudyInstanceUID
        got = {les.tracking_id: les for les in rep.lesions}
        assert set(got) == set(rows["tracking_id"])
        for row in rows.itertuples():
            les = got[row.tracking_id]
            assert les.tracking_uid == row.tracking_uid
            assert les.status == row.status
            # DS values hold 16 characters: equal to ~1e-12 relative
            assert les.volume_mm3 == pytest.approx(row.volume_mm3, rel=1e-9)
            assert les.long_axis_mm == pytest.approx(row.long_axis_mm, rel=1e-9, abs=1e-9)
            assert les.short_axis_mm == pytest.approx(row.short_axis_mm, rel=1e-9, abs=1e-9)
            if row.present:
                assert les.segment_number == int(row.segment_number)
                ends = les.long_axis_lps_mm
                assert np.linalg.norm(ends[1] - ends[0]) == pytest.approx(
                    row.long_axis_mm, rel=1e-6
                )
                short = les.short_axis_lps_mm
                assert np.linalg.norm(short[1] - short[0]) == pytest.approx(
                    row.short_axis_mm, rel=1e-6, abs=1e-6
                )
                if row.short_axis_mm > 0:  # drawn at a right angle
                    cos = np.dot(ends[1] - ends[0], short[1] - short[0])
                    assert abs(cos) < 1e-6 * row.long_axis_mm * row.short_axis_mm
            else:
                assert les.segment_number is None
        resp = response[response["study_id"] == sid]
        if sid == "S00001":
            assert rep.response is None
            continue
        r = resp.iloc[0]
        assert rep.response.rano_bm == r["rano_bm"]
        assert rep.response.volumetric == r["volumetric"]
        v = rep.response.values
        assert v["sum_diameters_mm"] == pytest.approx(r["sum_diameters_mm"], rel=1e-9)
        assert v["nadir_sum_diameters_mm"] == pytest.approx(r["nadir_sum_diameters_mm"], rel=1e-9)
        assert v["change_from_baseline_percent"] == pytest.approx(
            100 * r["change_from_baseline_fraction"], rel=1e-9
        )
        assert v["target_volume_mm3"] == pytest.approx(r["target_volume_mm3"], rel=1e-9)


def test_long_axis_end_points_lie_on_lesion_voxels(exported):
    root, table = exported
    src = read_dicom_series(_source_folder(root, "S00001"))
    arr = read_seg(root / "out" / "P0001" / "S00001" / "SEG.dcm", _source_folder(root, "S00001"))
    rep = read_tracked_sr(root / "out" / "P0001" / "S00001" / "SR.dcm")
    inv = np.linalg.inv(src.affine)
    for les in rep.lesions:
        for p in les.long_axis_lps_mm:
            ras = p * np.array([-1.0, -1.0, 1.0])
            ijk = inv[:3, :3] @ ras + inv[:3, 3]
            assert np.allclose(ijk, np.round(ijk), atol=1e-4)
            assert arr.array[tuple(np.round(ijk).astype(int))] == les.segment_number


def test_rtstruct_names_rois_by_tracking_id(exported):
    root, table = exported
    for sid, rows in table.groupby("study_id"):
        ss = read_rtstruct(root / "out" / "P0001" / sid / "RTSTRUCT.dcm")
        assert list(ss.roi_names()) == rows[rows["present"]]["tracking_id"].tolist()


def test_source_identifiers_kept_by_default(exported):
    root, _ = exported
    ds = pydicom.dcmread(root / "out" / "P0001" / "S00002" / "SR.dcm")
    assert ds.PatientID == SECRET_ID
    src = pydicom.dcmread(next(_source_folder(root, "S00002").glob("*.dcm")))
    assert ds.StudyInstanceUID == src.StudyInstanceUID


def test_pseudonymised_export_carries_no_identifier(tracked):
    root = tracked
    res = _export(
        root,
        out="pseudo",
        extra=(
            "--rtstruct",
            "--pseudonymise",
        ),
    )
    assert res.exit_code == 0, res.output
    files = sorted((root / "pseudo").rglob("*.dcm"))
    assert len(files) == 9
    for f in files:
        raw = f.read_bytes()
        for secret in (SECRET_ID, SECRET_NAME, SECRET_BIRTH):
            assert secret.encode() not in raw, f"{f} holds {secret}"
        ds = pydicom.dcmread(f)
        assert ds.PatientID == "P0001"
        assert ds.StudyID == f.parent.name
        assert dciodvfy(f)[0] == []


def _sop_uids(folder):
    return {
        p.relative_to(folder): pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID
        for p in folder.rglob("*.dcm")
    }


def test_the_same_result_exported_again_is_the_same_instances(exported):
    root, _ = exported
    assert _export(root, out="again", extra=("--rtstruct",)).exit_code == 0
    first, again = _sop_uids(root / "out"), _sop_uids(root / "again")
    assert first == again and len(first) == 9
    seg = pydicom.dcmread(root / "again" / "P0001" / "S00002" / "SEG.dcm", stop_before_pixels=True)
    sr = read_tracked_sr(root / "again" / "P0001" / "S00002" / "SR.dcm")
    assert sr.seg_sop_uid == seg.SOPInstanceUID
    # pseudonymised objects are other instances in other series
    pseudo = root / "pseudo" / "P0001" / "S00002" / "SEG.dcm"
    if not pseudo.exists():  # written by the pseudonymisation test when it ran first
        assert _export(root, out="pseudo", extra=("--pseudonymise",)).exit_code == 0
    other = pydicom.dcmread(pseudo, stop_before_pixels=True)
    assert other.SOPInstanceUID != seg.SOPInstanceUID
    assert other.SeriesInstanceUID != seg.SeriesInstanceUID


def test_tracking_uid_is_reproducible_across_exports(exported, tracked):
    root, table = exported
    mapping = pd.read_json(root / "release-pseudonyms.json", typ="series")
    baseline_uid = next(uid for uid, e in mapping["studies"].items() if e["study_id"] == "S00001")
    for row in table.itertuples():
        assert row.tracking_uid == tracking_uid(baseline_uid, row.lesion_id)


def test_missing_mapping_is_one_line(tracked, tmp_path):
    root = tracked
    res = _export(root, mapping=tmp_path / "nope.json", out=tmp_path / "o")
    assert res.exit_code == 1
    assert "pseudonym mapping not found" in res.output
    assert len(res.output.strip().splitlines()) == 1


def test_not_a_tracking_folder_is_one_line(tracked, tmp_path):
    root = tracked
    res = _export(root, tracking=tmp_path, out=tmp_path / "o")  # root / absolute = absolute
    assert res.exit_code == 1
    assert "trajectories.csv not found" in res.output


def test_source_series_absent_is_one_line(tracked, tmp_path):
    root = tracked
    other = tmp_path / "other"
    write_series(other / "x", np.zeros((4, 4, 3), np.uint16))
    res = _export(root, dicom=other, out=tmp_path / "o")
    assert res.exit_code == 1
    assert "is not there; point --dicom at the export that was ingested" in res.output
    assert SECRET_ID not in res.output
    assert not (tmp_path / "o").exists()  # checked before anything was written


def _source_folder(root, sid):
    return root / "export" / f"study{int(sid[1:])}" / "t1post"


@pytest.fixture(scope="module")
def split_merge(tracked):
    """The same studies tracked again with a bar that splits in two, then merges back."""
    root = tracked
    bar = np.zeros(SHAPE, np.uint8)
    bar[4:17, 9:12, 4:7] = 1
    halves = bar.copy()
    halves[9:12] = 0  # a gap: two pieces, each inside the bar's old extent
    _track_again(root, "sm", [bar, halves, bar])
    res = _export(root, tracking="tracking_sm", out="out_sm")
    assert res.exit_code == 0, res.output
    return root, pd.read_csv(root / "out_sm" / "lesions.csv", dtype={"study_id": str})


def test_split_fragment_gets_its_own_identity_and_names_its_parent(split_merge):
    root, table = split_merge
    s2 = table[table["study_id"] == "S00002"].set_index("tracking_id")
    assert sorted(s2.index) == ["L1", "L2"]
    assert s2.loc["L2", "split_from"] == 1
    assert s2.loc["L1", "tracking_uid"] != s2.loc["L2", "tracking_uid"]
    segs = read_seg_segments(root / "out_sm" / "P0001" / "S00002" / "SEG.dcm")
    assert [s.tracking_id for s in segs] == ["L1", "L2"]
    for f in sorted((root / "out_sm").rglob("*.dcm")):
        assert dciodvfy(f)[0] == [], f


def test_merged_lesion_keeps_the_linked_identity(split_merge):
    root, table = split_merge
    traj = pd.read_csv(root / "tracking_sm" / "trajectories.csv", dtype={"study_id": str})
    merged = traj[(traj["study_id"] == "S00003") & (traj["event"].fillna("").str.contains("merge"))]
    assert len(merged) == 1  # the tracker linked one source; the other's track ended
    kept = f"L{int(merged['lesion_id'].iloc[0])}"
    segs = read_seg_segments(root / "out_sm" / "P0001" / "S00003" / "SEG.dcm")
    assert [s.tracking_id for s in segs] == [kept]
    s2 = table[table["study_id"] == "S00002"].set_index("tracking_id")
    assert segs[0].tracking_uid == s2.loc[kept, "tracking_uid"]  # same UID as before the merge
    s3 = table[table["study_id"] == "S00003"]
    assert s3.loc[s3["present"], "tracking_id"].tolist() == [kept]
    rep = read_tracked_sr(root / "out_sm" / "P0001" / "S00003" / "SR.dcm")
    assert {les.tracking_id for les in rep.lesions} == set(s3["tracking_id"])
    assert rep.lesions[0].segment_number == 1


def test_a_study_with_every_lesion_resolved_gets_an_sr_and_no_seg(tracked):
    root = tracked
    ball = _ball((7, 7, 5), 6.0).astype(np.uint8)
    _track_again(root, "cr", [ball, ball, 0 * ball])
    res = _export(root, tracking="tracking_cr", out="out_cr", extra=("--rtstruct",))
    assert res.exit_code == 0, res.output
    last = root / "out_cr" / "P0001" / "S00003"
    assert sorted(p.name for p in last.iterdir()) == ["SR.dcm"]
    rep = read_tracked_sr(last / "SR.dcm")
    assert [(les.tracking_id, les.status, les.volume_mm3) for les in rep.lesions] == [
        ("L1", "resolved", 0.0)
    ]
    assert rep.seg_sop_uid == "" and rep.response.rano_bm == "CR"
    assert dciodvfy(last / "SR.dcm")[0] == []


def test_unknown_patient_or_sequence_is_one_line_with_a_hint(tracked, tmp_path):
    root = tracked
    res = _export(root, out=tmp_path / "o", extra=("--patient", "P0010"))
    assert res.exit_code == 1 and "did you mean 'P0001'" in res.output
    res = _export(root, out=tmp_path / "o", extra=("--sequence", "CT2"))
    assert res.exit_code == 1 and "has no ingested CT2" in res.output and "CT1" in res.output
    assert not (tmp_path / "o" / "lesions.csv").exists()
