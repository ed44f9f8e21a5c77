"""Patient prediction onto native grids: oblique anisotropic inputs, one study, reruns, bad input."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch

from metstrack.core.spatial import (
    resample_array,
    rigid_transform,
    rotation_matrix,
    voxel_to_world,
)
from metstrack.errors import GeometryMismatchError, InvalidImageError
from metstrack.infer.predict import (
    LESION_COLUMNS,
    PredictOptions,
    StudyImages,
    is_finished,
    output_paths,
    predict_patient,
)
from metstrack.models.base import SequenceModel
from metstrack.models.config import ModelConfig
from metstrack.models.registry import build_model
from metstrack.types import Volume

#: The phantoms are boxes of noise, not heads: no brain to find, every voxel counts.
NO_MASK = PredictOptions(brain_method="none")


class BrightSpotOracle(SequenceModel):
    """Test double: foreground where the contrast-enhanced channel's z-score exceeds 2."""

    temporal = False

    def __init__(self) -> None:
        super().__init__(ModelConfig(name="unet"))
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def step(self, x_t, state=None):
        fg = 4.0 * (x_t[:, 1:2] - 2.0)
        return torch.cat([torch.zeros_like(fg), fg], dim=1), None


class FirstStudyOracle(BrightSpotOracle):
    """Test double with memory: every study gets the first study's bright spot."""

    temporal = True

    def step(self, x_t, state=None):
        if state is None:
            state = (4.0 * (x_t[:, 1:2] - 2.0),)
        fg = state[0]
        return torch.cat([torch.zeros_like(fg), fg], dim=1), state


def oblique_affine(angles_deg, spacing_mm, origin_mm) -> np.ndarray:
    a = np.eye(4)
    a[:3, :3] = rotation_matrix(angles_deg) @ np.diag(spacing_mm)
    a[:3, 3] = origin_mm
    return a


def phantom(shape, affine, centre_mm, radius_mm, rng) -> tuple[list[Volume], np.ndarray]:
    """Four modalities of a head-like box with a bright sphere on CT1, and the sphere mask."""
    idx = np.indices(shape).reshape(3, -1).T
    world = voxel_to_world(idx, affine).reshape(*shape, 3)
    sphere = np.linalg.norm(world - np.asarray(centre_mm), axis=-1) <= radius_mm
    vols = []
    for c in range(4):
        arr = (100.0 + 5.0 * rng.standard_normal(shape)).astype(np.float32)
        if c == 1:
            arr[sphere] = 400.0
        vols.append(Volume(array=arr, affine=affine, path=Path(f"/data/P/{c}.nii.gz")))
    return vols, sphere


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float((a & b).sum()) / float(a.sum() + b.sum())


def test_predictions_land_on_the_native_grid_of_oblique_anisotropic_studies(
    tmp_path: Path, rng
) -> None:
    base_aff = oblique_affine((12.0, -8.0, 20.0), (1.1, 0.9, 2.0), (-20.0, -15.0, -18.0))
    base_shape = (36, 40, 20)
    centre_b = voxel_to_world(np.array([[18.0, 20.0, 10.0]]), base_aff)[0]
    b_imgs, b_sphere = phantom(base_shape, base_aff, centre_b, 6.0, rng)
    # follow-up: another oblique anisotropic grid, rigidly moved anatomy
    t = rigid_transform((4.0, -3.0, 6.0), (6.0, -4.0, 3.0), center_mm=tuple(centre_b))
    centre_f = (t @ np.append(centre_b, 1.0))[:3]
    fu_aff = oblique_affine((-5.0, 10.0, -15.0), (0.8, 1.3, 1.7), (0.0, 0.0, 0.0))
    fu_aff[:3, 3] = centre_f - fu_aff[:3, :3] @ np.array(
        [21.0, 14.0, 11.0]
    )  # sphere inside the FOV
    fu_shape = (44, 30, 24)
    f_imgs, f_sphere = phantom(fu_shape, fu_aff, centre_f, 6.0, rng)
    studies = [
        StudyImages("S0", tuple(b_imgs)),
        StudyImages("S1", tuple(f_imgs), baseline_to_study=t),
    ]
    res = predict_patient(
        BrightSpotOracle(),
        "P",
        studies,
        tmp_path,
        options=PredictOptions(roi_size=(32, 32, 16), brain_method="none"),
    )
    assert [r.study_id for r in res] == ["S0", "S1"] and not any(r.skipped for r in res)
    for st, truth in ((studies[0], b_sphere), (studies[1], f_sphere)):
        mask_p, prob_p, les_p = output_paths(tmp_path, "P", st.study_id)
        mask_img, prob_img = nib.load(mask_p), nib.load(prob_p)
        native = st.images[0]
        assert mask_img.shape == native.shape and prob_img.shape == native.shape
        np.testing.assert_allclose(mask_img.affine, native.affine, atol=1e-5)
        np.testing.assert_allclose(prob_img.affine, native.affine, atol=1e-5)
        mask = np.asarray(mask_img.dataobj).astype(bool)
        assert dice(mask, truth) > 0.8
        frame = pd.read_csv(les_p)
        assert list(frame.columns) == list(LESION_COLUMNS) and len(frame) == 1
        np.testing.assert_allclose(
            frame[["centroid_x_mm", "centroid_y_mm", "centroid_z_mm"]].to_numpy()[0],
            centre_b if st.study_id == "S0" else centre_f,
            atol=1.0,
        )
    # without its transform the follow-up's prediction is misplaced
    wrong = predict_patient(
        FirstStudyOracle(), "Q", [studies[0], StudyImages("S1", tuple(f_imgs))], tmp_path / "w",
        options=NO_MASK,
    )  # fmt: skip
    mask_w = np.asarray(nib.load(output_paths(tmp_path / "w", "Q", "S1")[0]).dataobj).astype(bool)
    assert wrong[1].n_lesions == 1 and dice(mask_w, f_sphere) < 0.5


def test_one_study_patient_with_stt(tmp_path: Path, rng) -> None:
    torch.manual_seed(0)
    net = build_model(ModelConfig(width=0.25, roi_size=(32, 32, 32)))
    aff = oblique_affine((0.0, 0.0, 10.0), (1.0, 1.0, 1.5), (0.0, 0.0, 0.0))
    imgs, _ = phantom((30, 34, 20), aff, (15.0, 15.0, 15.0), 4.0, rng)
    res = predict_patient(net, "P1", [StudyImages("S", tuple(imgs))], tmp_path, options=NO_MASK)
    assert len(res) == 1 and is_finished(tmp_path, "P1", "S")
    prob = nib.load(output_paths(tmp_path, "P1", "S")[1])
    data = np.asarray(prob.dataobj)
    assert prob.shape == (30, 34, 20) and data.dtype == np.float32
    assert data.min() >= 0.0 and data.max() <= 1.0


def test_rerun_skips_finished_studies(tmp_path: Path, rng) -> None:
    aff = np.diag([1.0, 1.0, 1.0, 1.0])
    studies = []
    for s in ("S0", "S1"):
        imgs, _ = phantom((32, 32, 32), aff, (16.0, 16.0, 16.0), 4.0, rng)
        studies.append(StudyImages(s, tuple(imgs)))
    oracle = BrightSpotOracle()
    first = predict_patient(oracle, "P", studies, tmp_path, options=NO_MASK)
    paths = [output_paths(tmp_path, "P", s.study_id) for s in studies]
    stamps = [[p.stat().st_mtime_ns for p in ps] for ps in paths]
    again = predict_patient(oracle, "P", studies, tmp_path, options=NO_MASK)
    assert all(r.skipped for r in again)
    assert [r.n_lesions for r in again] == [r.n_lesions for r in first] == [1, 1]
    assert [[p.stat().st_mtime_ns for p in ps] for ps in paths] == stamps
    paths[1][2].unlink()  # an interrupted run: S1 unfinished
    third = predict_patient(oracle, "P", studies, tmp_path, options=NO_MASK)
    assert [r.skipped for r in third] == [True, False]
    assert [p.stat().st_mtime_ns for p in paths[0]] == stamps[0]
    assert is_finished(tmp_path, "P", "S1")
    assert not list(tmp_path.rglob(".*tmp*"))


def test_modalities_on_different_grids_name_the_files(tmp_path: Path, rng) -> None:
    imgs, _ = phantom((32, 32, 32), np.eye(4), (16.0, 16.0, 16.0), 4.0, rng)
    shifted = np.eye(4)
    shifted[0, 3] = 5.0
    bad = Volume(array=imgs[2].array, affine=shifted, path=Path("/data/P/T2.nii.gz"))
    with pytest.raises(GeometryMismatchError, match="T2.nii.gz"):
        predict_patient(
            BrightSpotOracle(), "P", [StudyImages("S", (imgs[0], imgs[1], bad, imgs[3]))], tmp_path
        )
    with pytest.raises(InvalidImageError, match="baseline_to_study"):
        predict_patient(
            BrightSpotOracle(),
            "P",
            [StudyImages("S", tuple(imgs), baseline_to_study=np.zeros((4, 4)))],
            tmp_path,
        )
    assert not (tmp_path / "predictions").exists()


def test_preprocessed_studies_map_back_to_their_original_grid(tmp_path: Path, rng) -> None:
    """Studies already on the baseline grid (metstrack preprocess) write on output_grid."""
    base_aff = oblique_affine((0.0, 0.0, 0.0), (1.0, 1.0, 1.0), (-16.0, -16.0, -16.0))
    b_imgs, _ = phantom((32, 32, 32), base_aff, (0.0, 0.0, 0.0), 6.0, rng)
    t = rigid_transform((5.0, 0.0, -4.0), (5.0, -3.0, 2.0))
    native_aff = oblique_affine((8.0, -6.0, 3.0), (0.9, 1.2, 1.8), (0.0, 0.0, 0.0))
    centre_f = t[:3, 3]
    native_aff[:3, 3] = centre_f - native_aff[:3, :3] @ np.array([18.0, 14.0, 9.0])
    f_native, f_sphere = phantom((36, 28, 18), native_aff, centre_f, 6.0, rng)
    on_baseline = tuple(
        Volume(
            array=resample_array(v.array, v.affine, (32, 32, 32), base_aff, transform=t),
            affine=base_aff,
        )
        for v in f_native
    )
    studies = [
        StudyImages("S0", tuple(b_imgs)),
        StudyImages("S1", on_baseline, output_grid=((36, 28, 18), native_aff), output_transform=t),
    ]
    predict_patient(BrightSpotOracle(), "P", studies, tmp_path, options=NO_MASK)
    img = nib.load(output_paths(tmp_path, "P", "S1")[0])
    assert img.shape == (36, 28, 18)
    np.testing.assert_allclose(img.affine, native_aff, atol=1e-5)
    assert dice(np.asarray(img.dataobj).astype(bool), f_sphere) > 0.8


def test_memory_off_segments_every_study_alone(tmp_path: Path, rng) -> None:
    """``memory=False`` (the ablation) drops exactly what the state carries, nothing else."""
    aff = np.eye(4)
    studies, spheres = [], []
    for s, centre in (("S0", (10.0, 16.0, 16.0)), ("S1", (22.0, 16.0, 16.0))):
        imgs, sphere = phantom((32, 32, 32), aff, centre, 4.0, rng)
        studies.append(StudyImages(s, tuple(imgs)))
        spheres.append(sphere)
    off = replace(NO_MASK, memory=False)

    def masks(model, root, options):
        predict_patient(model, "P", studies, root, options=options)
        return [
            np.asarray(nib.load(output_paths(root, "P", s)[0]).dataobj) > 0 for s in ("S0", "S1")
        ]

    # the oracle with memory repeats the first study's spot; alone, each study shows its own
    with_memory = masks(FirstStudyOracle(), tmp_path / "on", NO_MASK)
    alone = masks(FirstStudyOracle(), tmp_path / "off", off)
    assert dice(with_memory[1], spheres[0]) > 0.8 and dice(with_memory[1], spheres[1]) == 0.0
    assert dice(alone[1], spheres[1]) > 0.8
    assert np.array_equal(with_memory[0], alone[0])
    # a real STT: the first study's probabilities are identical, later ones move
    torch.manual_seed(0)
    net = build_model(ModelConfig(width=0.25, roi_size=(32, 32, 32)))
    probs = {}
    for name, options in (("on", NO_MASK), ("off", off)):
        predict_patient(net, "P", studies, tmp_path / f"stt-{name}", options=options)
        probs[name] = [
            np.asarray(nib.load(output_paths(tmp_path / f"stt-{name}", "P", s)[1]).dataobj)
            for s in ("S0", "S1")
        ]
    assert np.abs(probs["on"][0] - probs["off"][0]).max() <= 1e-6
    assert np.abs(probs["on"][1] - probs["off"][1]).max() > 1e-4
