"""DICOM series discovery, geometry checks and the LPS->RAS affine."""

from __future__ import annotations

import logging

import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk  # noqa: N813

from metstrack.errors import DicomSeriesError
from metstrack.io.dicom import scan_dicom
from metstrack.io.dicom_series import load_series, read_dicom_series, series_geometry
from metstrack.io.dicom_synth import (
    SECRET_BIRTH,
    SECRET_ID,
    SECRET_NAME,
    write_enhanced_series,
    write_series,
)

SECRETS = (SECRET_NAME, SECRET_ID, SECRET_BIRTH, "Doe", "Jane")


def _oblique():
    # rotate the axial frame by 20 deg about an axis mixing L and S
    a = np.deg2rad(20.0)
    row = np.array([np.cos(a), 0.0, np.sin(a)])
    col = np.array([0.0, 1.0, 0.0])
    b = np.deg2rad(10.0)
    rot = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    return rot @ row, rot @ col


def _no_secrets(text: str) -> None:
    for s in SECRETS:
        assert s not in text


def test_oblique_anisotropic_shuffled_affine(tmp_path, rng):
    row, col = _oblique()
    arr = rng.integers(0, 1000, size=(16, 12, 8)).astype(np.uint16)
    geo = dict(
        row_dir=row,
        col_dir=col,
        origin_lps=(-31.5, 12.25, 40.0),
        pixel_spacing=(0.9, 1.3),
        step_mm=2.5,
    )
    write_series(tmp_path / "s", arr, slope=2.0, intercept=-100.0, shuffle_seed=7, **geo)
    vol = read_dicom_series(tmp_path / "s")
    assert vol.shape == (16, 12, 8)
    np.testing.assert_allclose(vol.affine, expected_affine(**geo), atol=1e-5)
    np.testing.assert_allclose(vol.array, arr * 2.0 - 100.0)
    np.testing.assert_allclose(vol.spacing_mm, (1.3, 0.9, 2.5), atol=1e-6)


def test_affine_agrees_with_simpleitk(tmp_path, rng):
    row, col = _oblique()
    arr = rng.integers(0, 500, size=(10, 14, 6)).astype(np.uint16)
    write_series(
        tmp_path / "s", arr, row_dir=row, col_dir=col, pixel_spacing=(1.1, 0.7), step_mm=3.0
    )
    vol = read_dicom_series(tmp_path / "s")
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(tmp_path / "s")))
    img = reader.Execute()
    d = np.array(img.GetDirection()).reshape(3, 3) * np.array(img.GetSpacing())
    lps = np.eye(4)
    lps[:3, :3] = d
    lps[:3, 3] = img.GetOrigin()
    np.testing.assert_allclose(vol.affine, np.diag([-1, -1, 1, 1]) @ lps, atol=1e-4)
    np.testing.assert_allclose(vol.array, sitk.GetArrayFromImage(img).transpose(2, 1, 0))


def test_sorted_by_position_not_instance_number(tmp_path, rng):
    arr = np.stack([np.full((6, 5), k * 10, np.uint16) for k in range(5)], axis=2)
    paths = write_series(tmp_path / "s", arr, shuffle_seed=3)
    # scramble InstanceNumber so only positions give the order
    for p, n in zip(paths, (5, 1, 4, 2, 3), strict=True):
        ds = pydicom.dcmread(p)
        ds.InstanceNumber = n
        ds.save_as(p)
    vol = read_dicom_series(tmp_path / "s")
    np.testing.assert_array_equal(vol.array[0, 0, :], [0, 10, 20, 30, 40])


def test_missing_slice_is_error_naming_folder(tmp_path, caplog):
    arr = np.zeros((8, 8, 6), np.uint16)
    paths = write_series(tmp_path / "pat" / "ser", arr, shuffle_seed=None)
    paths[3].unlink()
    with caplog.at_level(logging.DEBUG), pytest.raises(DicomSeriesError) as exc:
        read_dicom_series(tmp_path / "pat" / "ser")
    msg = str(exc.value)
    assert "missing slice" in msg and str(tmp_path / "pat" / "ser") in msg
    _no_secrets(msg + caplog.text)


def test_uneven_spacing_is_error(tmp_path):
    arr = np.zeros((8, 8, 5), np.uint16)
    write_series(tmp_path / "s", arr, positions_mm=[0, 2, 4, 6.6, 8.6])
    with pytest.raises(DicomSeriesError, match="uneven slice spacing"):
        read_dicom_series(tmp_path / "s")


def test_small_jitter_in_spacing_is_tolerated(tmp_path):
    arr = np.zeros((8, 8, 5), np.uint16)
    write_series(tmp_path / "s", arr, positions_mm=[0, 2.001, 4, 5.999, 8])
    assert read_dicom_series(tmp_path / "s").shape == (8, 8, 5)


def test_duplicate_positions_is_error(tmp_path):
    arr = np.zeros((8, 8, 4), np.uint16)
    write_series(tmp_path / "s", arr, positions_mm=[0, 2, 2, 4])
    with pytest.raises(DicomSeriesError, match="same position"):
        read_dicom_series(tmp_path / "s")


def test_mixed_orientation_in_one_series_is_error(tmp_path):
    arr = np.zeros((8, 8, 4), np.uint16)
    paths = write_series(tmp_path / "s", arr)
    ds = pydicom.dcmread(paths[0])
    ds.ImageOrientationPatient = [0, 1, 0, 0, 0, -1]  # a sagittal localizer in the same UID
    ds.save_as(paths[0])
    with pytest.raises(DicomSeriesError, match="different orientations"):
        read_dicom_series(tmp_path / "s")


def test_mixed_series_in_one_folder(tmp_path, caplog):
    arr = np.zeros((8, 8, 4), np.uint16)
    write_series(tmp_path / "s", arr, description="T2 TSE")
    for p in write_series(tmp_path / "tmp", arr, description="FLAIR"):
        p.rename(tmp_path / "s" / f"b_{p.name}")
    scan = scan_dicom(tmp_path / "s")
    assert len(scan.image_series) == 2
    assert len(scan.notes) == 1 and "mixed series" in scan.notes[0]
    with caplog.at_level(logging.DEBUG), pytest.raises(DicomSeriesError) as exc:
        read_dicom_series(tmp_path / "s")
    assert "mixed series" in str(exc.value) and str(tmp_path / "s") in str(exc.value)
    _no_secrets(str(exc.value) + caplog.text)
    uid = scan.image_series[0].series_uid
    assert read_dicom_series(tmp_path / "s", series_uid=uid).shape == (8, 8, 4)


def test_non_dicom_files_skipped_with_warning(tmp_path, caplog):
    arr = np.zeros((8, 8, 4), np.uint16)
    write_series(tmp_path / "s", arr)
    (tmp_path / "s" / "notes.txt").write_text("hello")
    (tmp_path / "s" / "thumb.jpg").write_bytes(b"\xff\xd8\xff\xe0garbage")
    with caplog.at_level(logging.WARNING):
        vol = read_dicom_series(tmp_path / "s")
    assert vol.shape == (8, 8, 4)
    assert "skipped 2 file(s)" in caplog.text and str(tmp_path / "s") in caplog.text


def test_headers_hold_geometry_without_pixels(tmp_path):
    arr = np.zeros((8, 6, 3), np.uint16)
    write_series(tmp_path / "s", arr, step_mm=1.5)
    info = scan_dicom(tmp_path / "s").image_series[0]
    geo = series_geometry(info.instances)
    assert geo.shape == (8, 6, 3)
    assert geo.slice_step_mm == pytest.approx(1.5)
    assert SECRET_ID not in repr(info) and SECRET_NAME not in repr(info)
    assert load_series(info).shape == (8, 6, 3)


def test_enhanced_multiframe_matches_single_frame(tmp_path, rng):
    row, col = _oblique()
    arr = rng.integers(0, 1000, size=(12, 10, 6)).astype(np.uint16)
    geo = dict(
        row_dir=row, col_dir=col, origin_lps=(5.0, -7.0, 3.0), pixel_spacing=(1.1, 0.8), step_mm=1.5
    )
    write_enhanced_series(
        tmp_path / "e" / "enh.dcm",
        arr,
        frame_order=[3, 0, 5, 1, 4, 2],
        slope=0.5,
        intercept=7,
        **geo,
    )
    vol = read_dicom_series(tmp_path / "e")
    np.testing.assert_allclose(vol.affine, expected_affine(**geo), atol=1e-5)
    np.testing.assert_allclose(vol.array, arr * 0.5 + 7)


def test_enhanced_multiframe_missing_frame_names_it(tmp_path):
    arr = np.zeros((8, 8, 5), np.uint16)
    write_enhanced_series(tmp_path / "e" / "enh.dcm", arr, frame_order=[0, 1, 3, 4])
    with pytest.raises(DicomSeriesError, match=r"missing slice.*enh.dcm\[frame 2\]"):
        read_dicom_series(tmp_path / "e")


@pytest.mark.realdata
def test_real_ct_matches_reference_nifti(realdata):
    folder = realdata / "rtstruct-visible-human-ct"
    vol = read_dicom_series(folder / "ct")
    ref = nib.load(folder / "reference_nifti" / "Image.nii.gz")
    assert vol.shape == ref.shape == (512, 512, 4)
    np.testing.assert_allclose(vol.affine, ref.affine, atol=1e-3)
    np.testing.assert_allclose(vol.array, ref.get_fdata(), atol=0.5)


def expected_affine(*, row_dir, col_dir, origin_lps, pixel_spacing, step_mm) -> np.ndarray:
    """The RAS affine a correct reader must produce, from first principles."""
    r = np.asarray(row_dir, float) / np.linalg.norm(row_dir)
    c = np.asarray(col_dir, float) / np.linalg.norm(col_dir)
    lps = np.eye(4)
    lps[:3, 0] = r * pixel_spacing[1]  # moving along X (columns) steps one column spacing
    lps[:3, 1] = c * pixel_spacing[0]  # moving along Y (rows) steps one row spacing
    lps[:3, 2] = np.cross(r, c) * step_mm
    lps[:3, 3] = origin_lps
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps


def test_gantry_tilt_gives_sheared_affine_and_warning(tmp_path, caplog):
    arr = np.zeros((8, 8, 4), np.uint16)
    paths = write_series(tmp_path / "s", arr, step_mm=2.0, shuffle_seed=None)
    for k, p in enumerate(paths):  # shift each slice along the column direction (tilt)
        ds = pydicom.dcmread(p)
        ipp = [float(v) for v in ds.ImagePositionPatient]
        ds.ImagePositionPatient = [ipp[0], ipp[1] + 0.5 * k, ipp[2]]
        ds.save_as(p)
    with caplog.at_level(logging.WARNING):
        vol = read_dicom_series(tmp_path / "s")
    assert "gantry tilt" in caplog.text
    # voxel (0, 0, 3) sits where the 4th file says (LPS y + 1.5 -> RAS y - 1.5)
    last = pydicom.dcmread(paths[3]).ImagePositionPatient
    np.testing.assert_allclose(
        (vol.affine @ [0, 0, 3, 1])[:3], [-float(last[0]), -float(last[1]), float(last[2])]
    )


def test_bare_dataset_without_preamble_is_read(tmp_path, rng):
    arr = rng.integers(0, 100, size=(6, 5, 3)).astype(np.uint16)
    paths = write_series(tmp_path / "s", arr, shuffle_seed=None)
    ds = pydicom.dcmread(paths[1])
    bare = pydicom.Dataset(ds)  # no file meta, no 'DICM' preamble (older exports)
    paths[1].unlink()
    pydicom.dcmwrite(
        tmp_path / "s" / "raw1",
        bare,
        implicit_vr=True,
        little_endian=True,
        enforce_file_format=False,
    )
    vol = read_dicom_series(tmp_path / "s")
    np.testing.assert_allclose(vol.array, arr)
