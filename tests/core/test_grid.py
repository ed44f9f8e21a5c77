"""Reorientation to RAS and isotropic resampling (labels keep dtype and volume)."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from metstrack.core.grid import Grid, isotropic_grid, obliquity_deg, reorient_to_ras
from metstrack.core.spatial import resample_array, rigid_transform, voxel_to_world
from metstrack.io.nifti import read_volume
from metstrack.types import Volume


def _world_of_max(vol: Volume) -> np.ndarray:
    idx = np.array(np.unravel_index(np.argmax(vol.array), vol.shape))[None]
    return voxel_to_world(idx, vol.affine)[0]


@pytest.mark.realdata
def test_reorient_real_brats_flipped_in_two_axes(realdata):
    """The BraTS-METS case stored as usual (x and y flipped, LPS-like) comes back to RAS."""
    src = read_volume(realdata / "brats-met-00110" / "BraTS-MET-00110-000-t1c.nii.gz")
    assert nib.aff2axcodes(src.affine) == ("R", "A", "S")
    flip = src.affine @ np.array([[-1, 0, 0, 239], [0, -1, 0, 239], [0, 0, 1, 0], [0, 0, 0, 1.0]])
    flipped = Volume(array=src.array[::-1, ::-1, :].copy(), affine=flip)
    assert nib.aff2axcodes(flipped.affine) == ("L", "P", "S")
    ras, rec = reorient_to_ras(flipped)
    assert rec.changed and rec.source_axcodes == ("L", "P", "S")
    assert nib.aff2axcodes(ras.affine) == ("R", "A", "S")
    assert np.allclose(ras.affine, src.affine)
    assert np.array_equal(ras.array, src.array)
    same, rec2 = reorient_to_ras(src)
    assert not rec2.changed and np.array_equal(same.array, src.array)


@pytest.mark.realdata
def test_reorient_real_oblique_tcga_keeps_world_positions(realdata):
    src = read_volume(realdata / "tcga-fg-6692-raw" / "t2.nii.gz")
    ras, rec = reorient_to_ras(src)
    assert rec.source_axcodes == ("L", "A", "S") and rec.oblique_deg > 10
    assert nib.aff2axcodes(ras.affine) == ("R", "A", "S")
    assert np.allclose(_world_of_max(ras), _world_of_max(src))
    grid = isotropic_grid(ras, 1.0)
    assert np.allclose(grid.affine[:3, :3], np.eye(3)) and obliquity_deg(grid.affine) == 0
    # the isotropic grid covers the oblique field of view: every input corner is inside it
    corners = voxel_to_world(
        np.array(
            [
                [i, j, k]
                for i in (0, src.shape[0] - 1)
                for j in (0, src.shape[1] - 1)
                for k in (0, src.shape[2] - 1)
            ]
        ),
        src.affine,
    )
    inside = (corners - grid.affine[:3, 3]) / 1.0
    assert np.all(inside >= -0.5) and np.all(inside <= np.array(grid.shape) - 0.5)


def test_anisotropic_label_resampled_keeps_dtype_and_volume():
    shape = (40, 40, 12)
    aff = np.diag([1.0, 1.0, 5.0, 1.0])
    c = np.array(shape) / 2.0
    idx = np.indices(shape).transpose(1, 2, 3, 0)
    mm = (idx - c) * np.array([1.0, 1.0, 5.0])
    lab = np.zeros(shape, np.int16)
    lab[np.linalg.norm(mm, axis=-1) < 14] = 3  # a sphere of radius 14 mm, label value 3
    vol = Volume(array=lab, affine=aff)
    grid = isotropic_grid(vol, 1.0)
    assert grid.shape == (40, 40, 60)
    out = resample_array(lab, aff, grid.shape, grid.affine, order=0)
    assert out.dtype == np.int16 and set(np.unique(out)) == {0, 3}
    v_in = (lab > 0).sum() * 5.0
    v_out = (out > 0).sum() * 1.0
    assert abs(v_out - v_in) / v_in < 0.02
    img = resample_array(lab.astype(np.float32), aff, grid.shape, grid.affine, order=1)
    assert img.dtype == np.float32


def test_grid_round_trips_through_dict():
    g = Grid(shape=(3, 4, 5), affine=rigid_transform((1, 2, 3), (4, 5, 6)))
    assert g.same_as(Grid.from_dict(g.to_dict()))
    with pytest.raises(ValueError, match="positive"):
        isotropic_grid(g, 0.0)
