"""Fixtures of the preprocessing tests: a smooth head phantom with skull and brain."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from metstrack.types import Volume


def make_head(n: int = 40, spacing_mm: float = 2.0, seed: int = 0, contrast: str = "t1c"):
    """A head phantom: scalp, dark skull, textured brain with a bright blob.

    Returns (Volume, brain mask) on a centred isotropic grid.
    """
    rng = np.random.default_rng(seed)
    c = np.arange(n) - (n - 1) / 2.0
    x, y, z = np.meshgrid(c, c, c, indexing="ij")
    r = np.sqrt((x / 0.8) ** 2 + y**2 + (z / 0.9) ** 2)
    brain = r < n * 0.34
    skull = (r >= n * 0.36) & (r < n * 0.40)
    scalp = (r >= n * 0.40) & (r < n * 0.45)
    texture = ndimage.gaussian_filter(rng.normal(size=(n, n, n)), 2.0)
    texture = texture / texture.std()
    blob = (np.abs(x - 3) < 3) & (np.abs(y + 4) < 5) & (np.abs(z) < 4)
    if contrast == "t1c":
        img = np.where(brain, 300 + 20 * texture + 150 * blob, 0.0)
        img = img + np.where(skull, 20.0, 0.0) + np.where(scalp, 600.0, 0.0)
    else:  # inverted, T2-like contrast for multimodal registration
        img = np.where(brain, 500 - 40 * texture - 200 * blob, 0.0)
        img = img + np.where(skull, 10.0, 0.0) + np.where(scalp, 200.0, 0.0)
    img = ndimage.gaussian_filter(img, 0.7).astype(np.float32)
    aff = np.diag([spacing_mm] * 3 + [1.0])
    aff[:3, 3] = -spacing_mm * (n - 1) / 2.0
    return Volume(array=img, affine=aff), brain


@pytest.fixture
def head():
    """Callable building the head phantom (see :func:`make_head`)."""
    return make_head


def _moved(vol: Volume, baseline_to_study, shape, affine, order=3):
    from metstrack.core.spatial import resample_array

    arr = resample_array(
        vol.array,
        vol.affine,
        shape,
        affine,
        transform=np.linalg.inv(baseline_to_study),
        order=order,
    )
    return arr


def write_tiny_cohort(
    root,
    *,
    n_patients: int = 2,
    n_studies: int = 2,
    n: int = 48,
    spacing_mm: float = 2.5,
    seed: int = 0,
):
    """A release-layout cohort of head phantoms with misaligned follow-ups.

    Follow-ups are rigidly moved (up to ~6 deg, 4 mm) and stored on a flipped,
    anisotropic grid; T2 is moved within the study as well. Returns
    ``{StudyID: baseline_to_study}`` (the truth) and the baseline brain masks.
    """
    import pandas as pd

    from metstrack.core import schema
    from metstrack.core.spatial import rigid_transform
    from metstrack.io.nifti import write_volume
    from metstrack.types import SEQUENCES

    rng = np.random.default_rng(seed)
    truth, brains, rows = {}, {}, []
    for i in range(n_patients):
        pid = f"P{i:02d}"
        t1c, brain = make_head(n, spacing_mm, seed=seed + i)
        t2, _ = make_head(n, spacing_mm, seed=seed + i, contrast="t2")
        t1 = Volume(array=(0.6 * t1c.array).astype(np.float32), affine=t1c.affine)
        c = np.arange(n) - (n - 1) / 2.0
        x, y, z = np.meshgrid(c, c, c, indexing="ij")
        lesion = ((x - 5) ** 2 + (y - 3) ** 2 + (z + 2) ** 2 < 9).astype(np.uint8)
        brains[pid] = (brain, t1c.affine)
        for k in range(1, n_studies + 1):
            sid = f"{pid}S{k}"
            folder = schema.study_dir(root, pid, sid)
            if k == 1:
                b2s = np.eye(4)
                shape, aff = t1c.shape, t1c.affine
            else:
                ang = tuple(rng.uniform(-6, 6, 3))
                tr = tuple(rng.uniform(-4, 4, 3))
                b2s = rigid_transform(ang, tr, center_mm=tuple(rng.uniform(-10, 10, 3)))
                shape = (n, n, n // 2)
                aff = np.diag([-spacing_mm, spacing_mm, 2 * spacing_mm, 1.0])  # L-R flipped
                aff[:3, 3] = [
                    spacing_mm * (n - 1) / 2,
                    -spacing_mm * (n - 1) / 2,
                    -spacing_mm * (n - 1) / 2,
                ]
            truth[sid] = b2s
            motion = rigid_transform((0.0, 3.0, -2.0), (1.5, -1.0, 1.0)) if k > 1 else np.eye(4)
            write_volume(_moved(t1c, b2s, shape, aff), folder / "CT1.nii.gz", affine=aff)
            write_volume(_moved(t1, b2s, shape, aff), folder / "T1.nii.gz", affine=aff)
            write_volume(_moved(t2, motion @ b2s, shape, aff), folder / "T2.nii.gz", affine=aff)
            lab = _moved(Volume(lesion, t1c.affine), b2s, shape, aff, order=0)
            write_volume(lab, folder / "RTSTRUCT_segmentation.nii.gz", affine=aff)
            row = {"PatientID": pid, "StudyID": sid}
            row.update(
                {s: int(s in ("T1", "CT1", "T2", "RTSTRUCT_segmentation")) for s in SEQUENCES}
            )
            row.update(
                {
                    "ExpertAdjusted": 0,
                    "DaysFromBaselineScan": 90.0 * (k - 1),
                    "RelativeTimepoint": k,
                }
            )
            rows.append(row)
    tables = root / schema.TABLES_DIR
    tables.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(tables / schema.IMAGING_TABLE, index=False)
    return truth, brains


@pytest.fixture
def tiny_cohort(tmp_path):
    """(root, truth, brains) of a 2-patient, 2-study 48^3 phantom cohort."""
    root = tmp_path / "cohort"
    truth, brains = write_tiny_cohort(root)
    return root, truth, brains


@pytest.fixture(scope="module")
def shared_cohort(tmp_path_factory):
    """Like ``tiny_cohort`` but built once per module; tests must not modify it."""
    root = tmp_path_factory.mktemp("shared") / "cohort"
    truth, brains = write_tiny_cohort(root)
    return root, truth, brains


@pytest.fixture
def one_patient_cohort(tmp_path):
    """(root, truth, brains) of a 1-patient, 2-study 48^3 phantom cohort."""
    root = tmp_path / "cohort1"
    truth, brains = write_tiny_cohort(root, n_patients=1)
    return root, truth, brains
