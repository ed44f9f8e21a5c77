"""Messages stay one line: grid mismatches name the axis codes, a corrupt frame no traceback."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from pydicom.uid import RLELossless

from metstrack.errors import GeometryMismatchError
from metstrack.io.dicom_synth import write_series
from metstrack.io.nifti import check_same_grid
from metstrack.types import Volume


def test_a_grid_differing_only_in_orientation_names_the_axis_codes():
    ras = Volume(np.zeros((4, 4, 4), np.float32), np.eye(4), path="a.nii.gz")
    flipped = np.eye(4)
    flipped[0, 0] = -1.0  # same shape, spacing and origin; the first axis runs R->L
    las = Volume(np.zeros((4, 4, 4), np.float32), flipped, path="b.nii.gz")
    with pytest.raises(GeometryMismatchError) as exc:
        check_same_grid(ras, las)
    msg = str(exc.value)
    assert "axes RAS" in msg and "axes LAS" in msg and "\n" not in msg


def test_an_oblique_difference_says_what_differs():
    a = Volume(np.zeros((4, 4, 4), np.float32), np.eye(4), path="a.nii.gz")
    tilt = np.eye(4)
    tilt[0, 1] = 0.05  # a small shear: same codes, spacing and origin to 3 digits
    b = Volume(np.zeros((4, 4, 4), np.float32), tilt, path="b.nii.gz")
    with pytest.raises(GeometryMismatchError, match=r"differing by up to 0\.05 \(direction\)"):
        check_same_grid(a, b)


def test_a_corrupt_compressed_frame_is_one_warning_without_traceback(cli, tmp_path, rng):
    img = rng.integers(0, 400, size=(8, 8, 4)).astype(np.uint16)
    paths = write_series(tmp_path / "export" / "s1", img, description="AX T1", shuffle_seed=None)
    bad = paths[2]
    ds = pydicom.dcmread(bad)
    ds.compress(RLELossless)
    ds.PixelData = ds.PixelData[:40] + b"\xff" * 20  # a broken RLE header
    ds.save_as(bad)
    res = cli("ingest", tmp_path / "export", "--out", tmp_path / "out")
    assert "Traceback" not in res.output, res.output
    named = [ln for ln in res.output.splitlines() if bad.name in ln]
    assert len(named) == 1 and "cannot decode pixel data" in named[0], res.output
    assert "RLE" in named[0]  # the decoder's reason, in the same line
