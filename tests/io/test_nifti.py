"""NIfTI I/O: validation at the boundary and atomic writes."""

from __future__ import annotations

import gzip

import nibabel as nib
import numpy as np
import pytest

from metstrack.errors import GeometryMismatchError, ImageReadError, InvalidImageError, LabelError
from metstrack.io.nifti import check_same_grid, read_label, read_volume, write_volume
from metstrack.types import Volume


def _aff(sp=(1.0, 1.0, 1.0)):
    a = np.diag([*sp, 1.0])
    a[:3, 3] = [-10.0, 5.0, 2.0]
    return a


def test_roundtrip_keeps_array_affine_and_spacing(tmp_path, rng):
    arr = rng.normal(size=(6, 7, 8)).astype(np.float32)
    p = write_volume(arr, tmp_path / "a.nii.gz", affine=_aff((0.5, 1.0, 3.0)))
    v = read_volume(p)
    np.testing.assert_array_equal(v.array, arr)
    np.testing.assert_allclose(v.affine, _aff((0.5, 1.0, 3.0)))
    assert v.spacing_mm == (0.5, 1.0, 3.0)
    assert v.voxel_volume_mm3 == pytest.approx(1.5)
    assert v.path == p


def test_plain_nii_is_accepted(tmp_path):
    p = write_volume(np.ones((3, 3, 3), np.float32), tmp_path / "a.nii", affine=_aff())
    assert read_volume(p).shape == (3, 3, 3)


def test_missing_file_names_the_file(tmp_path):
    with pytest.raises(ImageReadError, match="nope.nii.gz: file not found"):
        read_volume(tmp_path / "nope.nii.gz")


def test_truncated_gzip_is_an_image_read_error(tmp_path):
    p = write_volume(
        np.random.default_rng(0).normal(size=(20, 20, 20)), tmp_path / "t.nii.gz", affine=_aff()
    )
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError, match="t.nii.gz"):
        read_volume(p)


def test_garbage_file_is_an_image_read_error(tmp_path):
    p = tmp_path / "g.nii.gz"
    p.write_bytes(gzip.compress(b"not a nifti header at all" * 3))
    with pytest.raises(ImageReadError, match="g.nii.gz"):
        read_volume(p)


def test_wrong_dimensionality(tmp_path):
    p = tmp_path / "4d.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((3, 3, 3, 2), np.float32), _aff()), p)
    with pytest.raises(InvalidImageError, match="expected a 3D image, found 4D"):
        read_volume(p)


def test_nan_voxels_are_reported_with_position(tmp_path):
    arr = np.zeros((4, 4, 4), np.float32)
    arr[1, 2, 3] = np.nan
    p = tmp_path / "nan.nii.gz"
    nib.save(nib.Nifti1Image(arr, _aff()), p)
    with pytest.raises(InvalidImageError, match=r"1 voxel\(s\) are NaN.*\(1, 2, 3\)"):
        read_volume(p)


def test_singular_affine(tmp_path):
    aff = _aff()
    aff[:3, 2] = aff[:3, 0]  # two parallel axes
    p = tmp_path / "sing.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((3, 3, 3), np.float32), aff), p)
    with pytest.raises(InvalidImageError, match="singular affine"):
        read_volume(p)


def test_zero_spacing(tmp_path):
    img = nib.Nifti1Image(np.zeros((3, 3, 3), np.float32), _aff())
    img.set_sform(None, code=0)
    img.set_qform(_aff(), code=1)
    p = tmp_path / "zero.nii"
    nib.save(img, p)
    raw = bytearray(p.read_bytes())
    raw[88:92] = np.float32(0.0).tobytes()  # pixdim[3]: a broken header with zero slice spacing
    p.write_bytes(bytes(raw))
    with pytest.raises(InvalidImageError, match="zero or negative voxel spacing"):
        read_volume(p)


def test_label_must_be_binary(tmp_path):
    arr = np.zeros((4, 4, 4), np.uint8)
    arr[0, 0, 0] = 2
    p = write_volume(arr, tmp_path / "l.nii.gz", affine=_aff())
    with pytest.raises(LabelError, match="expected a binary mask"):
        read_label(p)
    assert read_label(p, binary=False).array.dtype == np.int32


def test_probability_map_is_not_a_label(tmp_path):
    p = write_volume(np.full((4, 4, 4), 0.3, np.float32), tmp_path / "prob.nii.gz", affine=_aff())
    with pytest.raises(LabelError, match="probability map"):
        read_label(p)


def test_label_grid_must_match_reference(tmp_path):
    ref = Volume(np.zeros((4, 4, 4), np.float32), _aff(), tmp_path / "img.nii.gz")
    p = write_volume(np.zeros((4, 4, 5), np.uint8), tmp_path / "l.nii.gz", affine=_aff())
    with pytest.raises(GeometryMismatchError, match=r"img.nii.gz has shape \(4, 4, 4\)"):
        read_label(p, reference=ref)


def test_same_grid_tolerance():
    a = Volume(np.zeros((2, 2, 2)), _aff())
    shifted = _aff()
    shifted[0, 3] += 0.5
    check_same_grid(a, Volume(np.zeros((2, 2, 2)), _aff() + 1e-5))
    with pytest.raises(GeometryMismatchError):
        check_same_grid(a, Volume(np.zeros((2, 2, 2)), shifted))


def test_failed_write_keeps_previous_file(tmp_path):
    p = write_volume(np.ones((3, 3, 3), np.float32), tmp_path / "keep.nii.gz", affine=_aff())
    before = p.read_bytes()
    bad = _aff()
    bad[:3, :3] = 0
    with pytest.raises(InvalidImageError):
        write_volume(np.zeros((3, 3, 3), np.float32), p, affine=bad)
    assert p.read_bytes() == before
    assert [f.name for f in tmp_path.iterdir()] == ["keep.nii.gz"]


def test_atomic_writes_get_ordinary_permissions(tmp_path):
    import os
    import stat

    p = write_volume(np.ones((2, 2, 2), np.float32), tmp_path / "perm.nii.gz", affine=_aff())
    mode = stat.S_IMODE(os.stat(p).st_mode)
    mask = os.umask(0)
    os.umask(mask)
    assert mode == 0o666 & ~mask
