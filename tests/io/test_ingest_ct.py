"""A CT series is never filed as an MRI sequence (CT1 is T1 post-contrast MRI)."""

from __future__ import annotations

import numpy as np
import pydicom

from metstrack.core import schema
from metstrack.io.dicom_synth import write_rtstruct, write_series
from metstrack.io.ingest import ingest_dicom


def _as_ct(paths):
    for p in paths:
        ds = pydicom.dcmread(p)
        ds.Modality = "CT"
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
        ds.save_as(p)
    return paths


def test_ct_series_and_ct_planning_scan_are_not_filed_as_ct1(tmp_path, rng):
    img = rng.integers(0, 400, size=(16, 16, 8)).astype(np.uint16)
    a = dict(study_uid=pydicom.uid.generate_uid(), study_date="20200101")
    root = tmp_path / "export"
    write_series(root / "t1", img, description="AX T1", series_number=1, **a)
    ct = _as_ct(
        write_series(root / "ct", img, description="T1 post contrast", series_number=2,
                     contrast_agent="Omnipaque", **a)
    )  # fmt: skip
    plan_ct = _as_ct(
        write_series(root / "plan", img, description="Planning CT", series_number=3, **a)
    )
    write_rtstruct(root / "rt" / "RS.dcm", plan_ct, [("GTV_1", "GTV", [])])
    report = ingest_dicom(root, tmp_path / "out")
    (study,) = report.studies
    folder = schema.study_dir(tmp_path / "out", study.patient_id, study.study_id)
    assert (folder / "T1.nii.gz").exists()
    assert not (folder / "CT1.nii.gz").exists()
    assert not (folder / "RTSTRUCT_MRI.nii.gz").exists()
    assert any("not MR" in p and "RS.dcm" in p for p in report.problems)
    assert any("unclassified" in u for u in report.unclassified)
    assert ct  # the contrast CT is reported unclassified, not guessed
