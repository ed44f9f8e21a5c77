"""RTSTRUCT reading, ROI selection and rasterisation accuracy."""

from __future__ import annotations

import logging

import nibabel as nib
import numpy as np
import pytest

from metstrack.errors import DicomSeriesError, LabelError
from metstrack.io.dicom import scan_dicom
from metstrack.io.dicom_series import read_dicom_series
from metstrack.io.dicom_synth import SECRET_ID, SECRET_NAME, write_rtstruct, write_series
from metstrack.io.rtstruct import (
    ALL_ROIS,
    RoiSelection,
    check_reference,
    rasterize_rtstruct,
    read_rtstruct,
)

ROW = np.array([np.cos(0.3), np.sin(0.3), 0.0])
COL = np.array([-np.sin(0.3) * np.cos(0.2), np.cos(0.3) * np.cos(0.2), np.sin(0.2)])
ORIGIN = np.array([-15.0, -20.0, 5.0])
SPACING = (0.8, 1.0)  # (row spacing, column spacing)
STEP = 2.0


def _circle(k: int, centre_xy, radius: float, n: int = 180) -> np.ndarray:
    """LPS points of a circle in slice ``k`` (in-plane mm offsets along row/col directions)."""
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    x = centre_xy[0] + radius * np.cos(t)
    y = centre_xy[1] + radius * np.sin(t)
    normal = np.cross(ROW, COL)
    return ORIGIN + normal * (k * STEP) + np.outer(x, ROW) + np.outer(y, COL)


@pytest.fixture
def series(tmp_path):
    arr = np.zeros((32, 36, 10), np.uint16)
    paths = write_series(
        tmp_path / "mr",
        arr,
        row_dir=ROW,
        col_dir=COL,
        origin_lps=ORIGIN,
        pixel_spacing=SPACING,
        step_mm=STEP,
    )
    return paths, read_dicom_series(tmp_path / "mr")


def test_circle_stack_gives_cylinder_volume(tmp_path, series):
    paths, vol = series
    radius, slices = 7.0, range(2, 8)
    contours = [_circle(k, (15.3, 16.1), radius) for k in slices]
    rt = write_rtstruct(tmp_path / "rs.dcm", paths, [("GTV_1", "GTV", contours)])
    masks = rasterize_rtstruct(read_rtstruct(rt), vol)
    expected = np.pi * radius**2 * STEP * len(slices)
    got = masks.binary.array.sum() * vol.voxel_volume_mm3
    # within half a voxel layer over the lateral surface
    layer = 2 * np.pi * radius * STEP * len(slices) * 0.5 * max(SPACING)
    assert abs(got - expected) < layer
    assert abs(got - expected) / expected < 0.05
    assert masks.rois[0].volume_mm3 == pytest.approx(got)
    assert masks.binary.array[:, :, [0, 1, 8, 9]].sum() == 0
    assert masks.problems == ()


def test_hole_by_even_odd_rule(tmp_path, series):
    paths, vol = series
    outer = [_circle(k, (15.0, 17.0), 9.0) for k in (3, 4)]
    inner = [_circle(k, (15.0, 17.0), 4.0) for k in (3, 4)]
    rt = write_rtstruct(tmp_path / "rs.dcm", paths, [("ring", "GTV", outer + inner)])
    masks = rasterize_rtstruct(read_rtstruct(rt), vol)
    got = masks.binary.array.sum() * vol.voxel_volume_mm3
    expected = np.pi * (81 - 16) * STEP * 2
    assert abs(got - expected) / expected < 0.06
    # the hole's centre is empty
    centre_lps = ORIGIN + np.cross(ROW, COL) * 3 * STEP + 15.0 * ROW + 17.0 * COL
    ijk = np.linalg.inv(vol.affine) @ np.r_[centre_lps * [-1, -1, 1], 1]
    i, j, k = np.round(ijk[:3]).astype(int)
    assert masks.binary.array[i, j, k] == 0


def _four_rois(paths, tmp_path):
    rois = [
        ("GTV_1", "GTV", [_circle(3, (10, 10), 3)]),
        ("PTV_1", "PTV", [_circle(3, (10, 10), 4.5)]),
        ("Brainstem", "ORGAN", [_circle(5, (20, 20), 3)]),
        ("met2", "", [_circle(6, (20, 10), 2.5)]),
    ]
    return read_rtstruct(write_rtstruct(tmp_path / "rs.dcm", paths, rois))


def test_roi_selection_by_type_and_name(tmp_path, series):
    paths, vol = series
    ss = _four_rois(paths, tmp_path)
    assert ss.roi_names() == ("GTV_1", "PTV_1", "Brainstem", "met2")
    default = rasterize_rtstruct(ss, vol, selection=RoiSelection())
    assert [r.name for r in default.rois] == ["GTV_1", "met2"]
    assert set(np.unique(default.instances.array)) == {0, 1, 2}
    ptv = rasterize_rtstruct(ss, vol, selection=RoiSelection(types=("ptv",), name_pattern=""))
    assert [r.name for r in ptv.rois] == ["PTV_1"]
    named = rasterize_rtstruct(
        ss, vol, selection=RoiSelection(types=(), name_pattern="stem", exclude_pattern="")
    )
    assert [r.name for r in named.rois] == ["Brainstem"]
    everything = rasterize_rtstruct(ss, vol, selection=ALL_ROIS)
    assert len(everything.rois) == 4
    # PTV drawn after the GTV covers it: overlap reported, later ROI wins
    assert any("overlaps" in p for p in everything.problems)
    assert everything.binary.array.sum() == (everything.instances.array > 0).sum()
    with pytest.raises(LabelError, match="GTV_1"):
        rasterize_rtstruct(ss, vol, selection=RoiSelection(types=("CTV",), name_pattern="xyz"))


def test_off_grid_and_off_plane_contours_reported(tmp_path, series, caplog):
    paths, vol = series
    normal = np.cross(ROW, COL)
    tilted = _circle(4, (16, 16), 4) + np.outer(np.linspace(0, 6, 180), normal)
    rois = [
        ("GTV_far", "GTV", [_circle(14, (16, 16), 4)]),  # beyond the last slice
        ("GTV_tilt", "GTV", [tilted]),
        ("GTV_edge", "GTV", [_circle(4, (1.0, 16), 4)]),  # crosses the grid's edge
        ("GTV_ok", "GTV", [_circle(4, (16, 16), 4)]),
    ]
    rt = write_rtstruct(tmp_path / "rs.dcm", paths, rois)
    with caplog.at_level(logging.WARNING):
        masks = rasterize_rtstruct(read_rtstruct(rt), vol)
    text = "\n".join(masks.problems)
    assert "GTV_far" in text and "off the grid" in text
    assert "GTV_tilt" in text and "off the slice planes" in text
    assert "GTV_edge" in text and "clipped" in text
    assert masks.rois[3].voxel_count > 0
    for s in (SECRET_ID, SECRET_NAME):
        assert s not in caplog.text and s not in text


def test_reference_check(tmp_path, series):
    paths, _ = series
    rt = write_rtstruct(
        tmp_path / "rs.dcm", paths, [("GTV", "GTV", [_circle(3, (9, 9), 3)])], series_uid="1.2.3.9"
    )
    info = scan_dicom(tmp_path / "mr").image_series[0]
    sops = {i.sop_instance_uid for i in info.instances}
    with pytest.raises(DicomSeriesError, match="references series"):
        check_reference(read_rtstruct(rt), info.series_uid, sops)


def test_not_an_rtstruct(tmp_path, series):
    paths, _ = series
    with pytest.raises(DicomSeriesError, match="expected an RTSTRUCT"):
        read_rtstruct(paths[0])
    (tmp_path / "junk.dcm").write_text("nope")
    with pytest.raises(DicomSeriesError, match="not a readable DICOM"):
        read_rtstruct(tmp_path / "junk.dcm")


def _dice(a, b):
    a, b = a.astype(bool), b.astype(bool)
    return 2 * (a & b).sum() / (a.sum() + b.sum())


@pytest.mark.realdata
def test_real_rtstruct_against_reference_converter(realdata):
    folder = realdata / "rtstruct-visible-human-ct"
    vol = read_dicom_series(folder / "ct")
    ss = read_rtstruct(folder / "RS_Body_SpinalCord.dcm")
    info = scan_dicom(folder / "ct").image_series[0]
    check_reference(ss, info.series_uid, {i.sop_instance_uid for i in info.instances})
    assert set(ss.roi_names()) == {"BODY", "SpinalCord"}
    masks = rasterize_rtstruct(ss, vol)
    ref = nib.load(folder / "reference_nifti" / "Mask.nii.gz")
    np.testing.assert_allclose(ref.affine, vol.affine, atol=1e-3)
    ref_arr = np.asarray(ref.dataobj)
    ids = {r.name: r.instance_id for r in masks.rois}
    cord = masks.instances.array == ids["SpinalCord"]
    body = masks.instances.array == ids["BODY"]
    # the reference labels BODY without the cord (cord=1, body=2)
    assert _dice(cord, ref_arr == 1) > 0.9
    assert _dice(body | cord, ref_arr > 0) > 0.98
    # the cord lies inside BODY: that overlap is the only problem reported
    assert len(masks.problems) == 1 and "'SpinalCord' overlaps" in masks.problems[0]
