"""Fixtures of the training tests: a tiny co-registered cohort written as NIfTI."""

from __future__ import annotations

import contextlib
import importlib
import sys
import types
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from metstrack.io.nifti import write_volume
from metstrack.types import LABEL_SEQUENCE, MODALITIES, Cohort, Patient, Series, Study


# ---- TEMPORARY stand-ins for modules other helpers are landing; removed once on main ----
def _missing(name: str) -> bool:
    try:
        importlib.import_module(name)
        return False
    except ImportError:
        return True


def _install(name: str, **attrs) -> None:
    mod = types.ModuleType(name)
    for k, v in attrs.items():
        setattr(mod, k, v)
        if hasattr(v, "__module__"):
            with contextlib.suppress(AttributeError, TypeError):
                v.__module__ = name
    sys.modules[name] = mod
    parent, _, child = name.rpartition(".")
    setattr(importlib.import_module(parent), child, mod)


def install_standins() -> None:
    import numpy as np
    import torch
    from torch import nn

    from metstrack.types import MODALITIES

    if _missing("metstrack.preprocess.intensity"):

        def zscore_in_brain(x, brain_mask=None):
            x = np.asarray(x, dtype=np.float32)
            out = np.zeros_like(x)
            for c in range(x.shape[0]):
                m = x[c] != 0
                if not m.any() or m.all():
                    m = np.ones(x[c].shape, bool)
                v = x[c][m]
                sd = v.std()
                out[c][m] = (v - v.mean()) / (sd if sd > 1e-6 else 1.0)
            return out

        _install("metstrack.preprocess.intensity", zscore_in_brain=zscore_in_brain)

    if _missing("metstrack.models.config"):

        @dataclass(frozen=True)
        class ModelConfig:
            name: str = "stt"
            in_channels: int = 4
            out_channels: int = 2
            features: tuple[int, ...] = (32, 32, 64, 128, 256, 32)
            width: float = 1.0
            prior_mask: bool = False
            modalities: tuple[str, ...] = MODALITIES
            roi_size: tuple[int, ...] = (96, 96, 96)
            dropout: float = 0.0

            @property
            def network_in_channels(self) -> int:
                return self.in_channels + int(self.prior_mask)

        class TinySeq(nn.Module):
            def __init__(self, cfg):
                super().__init__()
                self.config = cfg
                self.temporal = cfg.name == "stt"
                w = max(2, int(8 * cfg.width))
                self.enc = nn.Sequential(
                    nn.Conv3d(cfg.network_in_channels, w, 3, padding=1), nn.LeakyReLU(0.1)
                )
                self.mem = nn.Linear(w, w)
                self.head = nn.Conv3d(w, cfg.out_channels, 1)

            def forward(self, x):
                single = x.ndim == 5
                xb = x[None] if single else x
                state = torch.zeros(xb.shape[0], self.mem.in_features, device=x.device)
                outs = []
                for t in range(xb.shape[1]):
                    h = self.enc(xb[:, t])
                    if self.temporal:
                        state = torch.tanh(self.mem(state + h.mean(dim=(2, 3, 4))))
                        h = h + state[:, :, None, None, None]
                    outs.append(self.head(h))
                out = torch.stack(outs, 1)
                return out[0] if single else out

        def build_model(cfg):
            return TinySeq(cfg)

        def load_checkpoint(path, *, config=None, map_location="cpu"):
            from metstrack.config import from_dict

            payload = torch.load(path, map_location=map_location, weights_only=False)
            cfg = config or from_dict(ModelConfig, payload["hyper_parameters"]["model"])
            model = build_model(cfg)
            state = {k[4:]: v for k, v in payload["state_dict"].items() if k.startswith("net.")}
            model.load_state_dict(state)
            model.eval()
            return model, cfg

        _install("metstrack.models.config", ModelConfig=ModelConfig)
        _install("metstrack.models.registry", build_model=build_model)
        _install("metstrack.models.checkpoint", load_checkpoint=load_checkpoint)

    if _missing("metstrack.infer.sliding"):

        def predict_sequence(model, images, *, roi_size, overlap=0.25, **kw):
            with torch.no_grad():
                return torch.softmax(model(images), dim=1)

        _install("metstrack.infer.sliding", predict_sequence=predict_sequence)

    if _missing("metstrack.metrics.study"):
        from metstrack.metrics.lesions import label_components

        @dataclass(frozen=True)
        class _D:
            tp: int
            fp: int
            fn: int

        @dataclass(frozen=True)
        class _S:
            upper_mm3: float
            tp: int
            n_ref: int

        @dataclass(frozen=True)
        class _V:
            dice: float

        @dataclass(frozen=True)
        class _E:
            detection: _D
            strata: tuple
            voxel: _V

        def evaluate_study(pred, ref, *, spacing_mm=None, **kw):
            pred = np.asarray(pred) > 0
            ref = np.asarray(ref) > 0
            vv = float(np.prod(spacing_mm))
            rl, nr = label_components(ref)
            pl, npred = label_components(pred)
            tp = small_tp = small_n = 0
            for i in range(1, nr + 1):
                comp = rl == i
                hit = bool((comp & pred).any())
                tp += hit
                if comp.sum() * vv < 10:
                    small_n += 1
                    small_tp += hit
            fp = sum(1 for j in range(1, npred + 1) if not ((pl == j) & ref).any())
            den = pred.sum() + ref.sum()
            dice = float(2 * (pred & ref).sum() / den) if den else float("nan")
            return _E(_D(tp, fp, nr - tp), (_S(10.0, small_tp, small_n),), _V(dice))

        _install("metstrack.metrics.study", evaluate_study=evaluate_study)


install_standins()
# ---- end of stand-ins ----


def _sphere(shape, centre, radius):
    g = np.ogrid[tuple(slice(0, s) for s in shape)]
    d2 = sum((g[i] - centre[i]) ** 2 for i in range(3))
    return d2 <= radius**2


def write_tiny_cohort(
    root: Path,
    *,
    n_patients: int = 3,
    n_studies: int = 3,
    shape: tuple[int, int, int] = (32, 32, 32),
    seed: int = 0,
    labelled: str = "all",
    splits: tuple[str, ...] | None = None,
) -> Cohort:
    """Write a tiny cohort (head ellipsoid, bright spheres as lesions) and return its records.

    Args:
        root: Folder to write into.
        n_patients: Patients.
        n_studies: Studies per patient (same grid).
        shape: Volume shape.
        seed: Random seed.
        labelled: ``"all"`` or ``"first"`` (only the first study flagged labelled;
            label files are written for every study).
        splits: Split per patient (default: all ``"train"`` except the last ``"val"``).
    """
    rng = np.random.default_rng(seed)
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    c = np.array(shape) / 2
    g = np.ogrid[tuple(slice(0, s) for s in shape)]
    head = sum(((g[i] - c[i]) / (0.42 * shape[i])) ** 2 for i in range(3)) <= 1
    if splits is None:
        splits = tuple(["train"] * (n_patients - 1) + ["val"])
    patients = []
    for p in range(n_patients):
        pid = f"P{p:03d}"
        lo = np.array(shape) // 3
        centres = [rng.integers(lo, np.array(shape) - lo) for _ in range(2)]
        radii = [1.0, 3.0]
        studies = []
        for s in range(n_studies):
            sid = f"{pid}S{s}"
            folder = root / "imaging" / "patientId" / pid / "studyId" / sid
            lab = np.zeros(shape, bool)
            for cen, r in zip(centres, radii, strict=True):
                lab |= _sphere(shape, cen, r + 0.5 * s)
            lab &= head
            series = []
            for m_i, m in enumerate(MODALITIES):
                img = head * (100.0 + 20 * m_i) + rng.normal(0, 5, shape) * head
                if m == "CT1":
                    img = img + 120.0 * lab
                elif m in ("T2", "FLAIR"):
                    img = img + 40.0 * lab
                path = write_volume(img.astype(np.float32), folder / f"{m}.nii.gz", affine=affine)
                series.append(Series(m, path))
            lpath = write_volume(
                lab.astype(np.uint8), folder / f"{LABEL_SEQUENCE}.nii.gz", affine=affine
            )
            series.append(Series(LABEL_SEQUENCE, lpath))
            is_lab = labelled == "all" or s == 0
            studies.append(
                Study(
                    study_id=sid,
                    patient_id=pid,
                    days_from_baseline=90.0 * s,
                    relative_timepoint=s + 1,
                    series=tuple(series),
                    sequences_flagged=(*MODALITIES, LABEL_SEQUENCE),
                    labelled=is_lab,
                    split=splits[p],
                )
            )
        patients.append(Patient(pid, tuple(studies), splits[p]))
    return Cohort(root=root, patients=tuple(patients))


@pytest.fixture(scope="session")
def tiny_cohort(tmp_path_factory) -> Cohort:
    """Three patients (two train, one val) of three 32^3 studies, every study labelled."""
    return write_tiny_cohort(tmp_path_factory.mktemp("tiny_cohort"))


@pytest.fixture
def fresh_cohort(tmp_path) -> Cohort:
    """A tiny cohort in the test's own folder (for tests that edit files)."""
    return write_tiny_cohort(tmp_path / "cohort", n_patients=2, n_studies=2)
