"""Export of lesion masks as RTSTRUCT and SEG, round-tripped through the readers."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from tests.pacs_tools import dciodvfy

from metstrack.errors import DicomSeriesError, GeometryMismatchError, LabelError
from metstrack.io.dicom import scan_dicom
from metstrack.io.dicom_series import read_dicom_series
from metstrack.io.dicom_synth import write_enhanced_series, write_series
from metstrack.io.export import lesion_instances, read_seg, write_rtstruct, write_seg
from metstrack.io.rtstruct import rasterize_rtstruct, read_rtstruct
from metstrack.types import Volume


@pytest.fixture
def src(tmp_path):
    a = np.deg2rad(15)
    row = (np.cos(a), 0.0, -np.sin(a))
    col = (0.0, 1.0, 0.0)
    write_series(
        tmp_path / "mr",
        np.zeros((20, 18, 8), np.uint16),
        row_dir=row,
        col_dir=col,
        pixel_spacing=(0.9, 1.2),
        step_mm=2.0,
    )
    return tmp_path / "mr", read_dicom_series(tmp_path / "mr")


def _lesions(shape):
    m = np.zeros(shape, np.uint8)
    x, y = np.mgrid[: shape[0], : shape[1]]
    ring = ((x - 6) ** 2 + (y - 6) ** 2 <= 16) & ((x - 6) ** 2 + (y - 6) ** 2 > 2)
    m[:, :, 2][ring] = 1  # a ring with a hole
    m[:, :, 3][ring] = 1
    m[12:16, 10:15, 1:6] = 1  # a box
    m[14, 2, 4] = 1  # one voxel
    m[0:3, 15:18, 6:8] = 1  # touching the grid's edge
    return m


def _dice(a, b):
    a, b = a.astype(bool), b.astype(bool)
    return 2 * (a & b).sum() / (a.sum() + b.sum())


def test_rtstruct_round_trip(tmp_path, src):
    folder, vol = src
    mask = vol.with_array(_lesions(vol.shape))
    out = write_rtstruct(mask, folder, tmp_path / "out" / "rs.dcm")
    ss = read_rtstruct(out)
    n = int(lesion_instances(mask.array).max())
    assert len(ss.rois) == n == 4
    assert all(r.interpreted_type == "GTV" for r in ss.rois)
    info = scan_dicom(folder).image_series[0]
    assert ss.referenced_series_uid == info.series_uid
    assert set(ss.referenced_sop_uids) == {i.sop_instance_uid for i in info.instances}
    back = rasterize_rtstruct(ss, vol)
    # contours run between voxel centres, so refilling them is exact here
    np.testing.assert_array_equal(back.binary.array, mask.array)
    assert back.problems == ()
    # the ring's hole survives the round trip
    assert back.binary.array[6, 6, 2] == 0 and mask.array[6, 6, 2] == 0
    # one ROI per lesion, each with the lesion's voxels
    inst = lesion_instances(mask.array)
    for rec in back.rois:
        sel = back.instances.array == rec.instance_id
        assert _dice(sel, inst == np.unique(inst[sel])[0]) > 0.99


def test_rtstruct_copies_study_context(tmp_path, src):
    folder, vol = src
    out = write_rtstruct(vol.with_array(_lesions(vol.shape)), folder, tmp_path / "rs.dcm")
    ds = pydicom.dcmread(out)
    ref = pydicom.dcmread(next(folder.iterdir()))
    assert ds.StudyInstanceUID == ref.StudyInstanceUID
    assert ds.FrameOfReferenceUID == ref.FrameOfReferenceUID
    assert ds.PatientID == ref.PatientID  # a TPS files it with the patient
    assert ds.SeriesInstanceUID != ref.SeriesInstanceUID


def test_seg_round_trip_exact(tmp_path, src):
    folder, vol = src
    mask = vol.with_array(_lesions(vol.shape))
    out = write_seg(mask, folder, tmp_path / "seg.dcm")
    back = read_seg(out, folder)
    inst = lesion_instances(mask.array)
    np.testing.assert_array_equal(back.array, inst)
    np.testing.assert_allclose(back.affine, vol.affine)


def test_instance_mask_keeps_ids(tmp_path, src):
    folder, vol = src
    m = np.zeros(vol.shape, np.int32)
    m[2:5, 2:5, 2:4] = 3
    m[5:8, 2:5, 2:4] = 7  # touching lesion 3 but a separate instance
    back = read_seg(write_seg(vol.with_array(m), folder, tmp_path / "seg.dcm"), folder)
    assert set(np.unique(back.array)) == {0, 1, 2}
    assert (back.array == 1).sum() == (m == 3).sum()


def test_wrong_grid_and_empty_mask(tmp_path, src):
    folder, vol = src
    shifted = Volume(array=_lesions(vol.shape), affine=vol.affine + np.eye(4) * 0)
    shifted.affine[0, 3] += 1.0
    with pytest.raises(GeometryMismatchError, match="native grid"):
        write_rtstruct(shifted, folder, tmp_path / "rs.dcm")
    assert not (tmp_path / "rs.dcm").exists()
    with pytest.raises(LabelError, match="no lesion"):
        write_seg(vol.with_array(np.zeros(vol.shape, np.uint8)), folder, tmp_path / "s.dcm")
    with pytest.raises(LabelError, match="non-integer"):
        lesion_instances(np.full((2, 2, 2), 0.5))


def test_rtstruct_from_enhanced_multiframe_source(tmp_path):
    write_enhanced_series(tmp_path / "e" / "enh.dcm", np.zeros((14, 12, 6), np.uint16))
    vol = read_dicom_series(tmp_path / "e")
    mask = np.zeros(vol.shape, np.uint8)
    mask[3:9, 2:7, 1:5] = 1
    out = write_rtstruct(vol.with_array(mask), tmp_path / "e", tmp_path / "rs.dcm")
    ds = pydicom.dcmread(out)
    frames = {
        int(c.ContourImageSequence[0].ReferencedFrameNumber)
        for c in ds.ROIContourSequence[0].ContourSequence
    }
    assert frames == {2, 3, 4, 5}
    back = rasterize_rtstruct(read_rtstruct(out), vol)
    np.testing.assert_array_equal(back.binary.array, mask)
    with pytest.raises(DicomSeriesError, match="multi-frame"):
        write_seg(vol.with_array(mask), tmp_path / "e", tmp_path / "seg.dcm")


def test_exported_objects_pass_dciodvfy(tmp_path, src):
    folder, vol = src
    mask = vol.with_array(_lesions(vol.shape))
    for path in (
        write_rtstruct(mask, folder, tmp_path / "rs.dcm"),
        write_seg(mask, folder, tmp_path / "seg.dcm"),
    ):
        errors, _ = dciodvfy(path)
        assert errors == [], f"{path.name}: {errors}"
