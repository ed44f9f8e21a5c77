"""The shipped model on two real scans, run the way a user would (figures printed; never a test).

CHECKS ONLY. The two real cases below are used to look at what the shipped
model does on real input. They are never used to train a model, to pick a
threshold or size filter, or to tune any setting: doing so would turn this
check into a flattering, overfitted figure. They live in ``../shared/realdata``
beside the repository and are never copied into it.

Cases:

* ``brats-met-00110``: a real BraTS-METS 2023 case (skull-stripped, zero
  background, 1 mm), one large cystic metastasis with an enhancing rim. There is
  no label, so the lesion reference is defined here, reproducibly, from the T1
  post image itself (located once by eye; see :data:`LESION_BOX`):

  - brain statistics: median and robust SD (1.4826 x MAD) of the non-zero T1c voxels;
  - cyst core: the largest 6-connected component of ``t1c < median - 1 SD``
    inside the box, after a one-voxel opening;
  - enhancing rim: voxels of ``t1c > median + 2 SD`` inside the box lying within
    :data:`RIM_MM` mm of the core;
  - lesion = core + rim. "Found" = a predicted component touches it; rim overlap
    = share of rim voxels predicted.

* ``tcga-fg-6692-raw``: a raw clinical study (skull on, 5.5 mm oblique slices, a
  glioma, not a metastasis): only the counts outside / inside the brain; the
  brain is the HD-BET mask shipped with it.

"Outside the brain": a predicted component (26-connected) with more than half
of its voxels outside the reference brain (BraTS: the non-zero voxels, holes
filled; TCGA: the HD-BET mask). Everything is measured on the grid of the
original T1-post file, where ``metstrack predict`` writes its outputs.

Pipelines (``--pipeline``):

* ``direct`` (default): ``metstrack predict --data <case folder>``, which
  recognises the layout and preprocesses on the way in;
* ``legacy``: what a user had to do before issue 14: ``metstrack preprocess``
  (``--no-brain-mask`` for the skull-stripped BraTS case; a hand-made release
  table for the TCGA study) and then ``metstrack predict`` on its output.

Wall time and peak memory (max RSS) are those of the metstrack subprocesses
(``os.wait4``). Usage::

    PYTHONPATH=src python benchmarks/real_scan.py --out /tmp/real_scan
    PYTHONPATH=src python benchmarks/real_scan.py --out /tmp/real_scan --cases brats

It writes ``<out>/<case>_overlay.png`` and ``<out>/real_scan.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import cc3d
import nibabel as nib
import numpy as np
from scipy import ndimage

REPO = Path(__file__).resolve().parents[1]
REALDATA = REPO.parent / "shared" / "realdata"
SHIPPED = REPO / "src" / "metstrack" / "data" / "stt_demo.pt"
#: Voxel index box (x, y, z slices on the stored BraTS-MET-00110 grid) holding
#: the cystic metastasis, located once by eye on axial T1c slices 52-107; it
#: stops at x=112, short of the superior sagittal sinus at x~120.
LESION_BOX = (slice(60, 113), slice(25, 101), slice(55, 101))
#: Enhancing voxels within this distance of the cyst core form the rim.
RIM_MM = 4.0
BRATS_CASE = "BraTS-MET-00110-000"


@dataclass(frozen=True)
class CaseFigures:
    """What one case's run gave (printed and saved as JSON)."""

    case: str
    pipeline: str
    wall_s: float
    peak_rss_gib: float
    n_components: int
    n_outside_brain: int
    n_inside_other: int
    n_inside_other_ge10: int
    lesion_found: bool | None
    rim_overlap: float | None
    lesion_voxels_predicted_share: float | None


def _run(cmd: list[str]) -> tuple[float, int]:
    """Run a command; return (wall seconds, max RSS in bytes); stop on failure."""
    print("$", " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"command failed with exit code {proc.returncode}: {' '.join(cmd)}")
    return wall, int(usage.ru_maxrss) * 1024


def _metstrack(*args: str) -> list[str]:
    return [sys.executable, "-m", "metstrack.cli.main", *args]


def _legacy_tcga_release(src: Path, root: Path) -> Path:
    """The hand-made release layout a user needed before (one patient, one study)."""
    import pandas as pd

    study = root / "imaging" / "patientId" / "TCGA-FG-6692" / "studyId" / "S1"
    study.mkdir(parents=True, exist_ok=True)
    for seq, name in (("T1", "t1"), ("CT1", "t1c"), ("T2", "t2"), ("FLAIR", "flair")):
        shutil.copy(src / f"{name}.nii.gz", study / f"{seq}.nii.gz")
    (root / "tables").mkdir(exist_ok=True)
    row = {"PatientID": "TCGA-FG-6692", "StudyID": "S1", "T1": 1, "CT1": 1, "T2": 1, "FLAIR": 1}
    row.update(
        RTSTRUCT_MRI=0,
        RTSTRUCT_segmentation=0,
        ExpertAdjusted=0,
        DaysFromBaselineScan=0,
        RelativeTimepoint=1,
    )
    pd.DataFrame([row]).to_csv(root / "tables" / "imaging.csv", index=False)
    return root


def run_case(case: str, pipeline: str, checkpoint: Path, work: Path) -> tuple[Path, float, int]:
    """Run metstrack on a case; return (prediction mask file, wall s, peak RSS bytes)."""
    src = REALDATA / case
    preds = work / "preds"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    runs: list[tuple[float, int]] = []
    if pipeline == "direct":
        runs.append(
            _run(
                _metstrack(
                    "predict",
                    "--checkpoint",
                    str(checkpoint),
                    "--data",
                    str(src),
                    "--out",
                    str(preds),
                )
            )  # fmt: skip
        )
    else:
        if case == "brats-met-00110":
            data, extra = src, ["--layout", "brats-mets", "--no-brain-mask"]
        else:
            data, extra = _legacy_tcga_release(src, work / "release"), []
        prep = work / "prep"
        runs.append(_run(_metstrack("preprocess", "--data", str(data), "--out", str(prep), *extra)))
        runs.append(
            _run(
                _metstrack(
                    "predict",
                    "--checkpoint",
                    str(checkpoint),
                    "--data",
                    str(prep),
                    "--out",
                    str(preds),
                )
            )  # fmt: skip
        )
    masks = sorted((preds / "predictions").rglob("mask.nii.gz"))
    if len(masks) != 1:
        raise SystemExit(f"{preds}: expected one predicted study, found {len(masks)} mask files")
    return masks[0], sum(r[0] for r in runs), max(r[1] for r in runs)


def brats_reference(t1c: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(brain, lesion, rim)`` boolean masks of BraTS-MET-00110 on its stored grid."""
    brain = ndimage.binary_fill_holes(t1c != 0)
    vals = t1c[brain & (t1c != 0)]
    med = float(np.median(vals))
    sd = 1.4826 * float(np.median(np.abs(vals - med)))
    sub = t1c[LESION_BOX]
    dark = ndimage.binary_opening((sub < med - 1.0 * sd) & (sub != 0))
    lab = cc3d.connected_components(dark.astype(np.uint8), connectivity=6)
    counts = np.bincount(lab.ravel())
    counts[0] = 0
    core = lab == counts.argmax()
    near = ndimage.distance_transform_edt(~core) <= RIM_MM  # 1 mm voxels
    rim_sub = (sub > med + 2.0 * sd) & near & ~core
    lesion, rim = np.zeros(t1c.shape, bool), np.zeros(t1c.shape, bool)
    lesion[LESION_BOX] = core | rim_sub
    rim[LESION_BOX] = rim_sub
    return brain, lesion, rim


def measure(
    case: str, pipeline: str, pred: np.ndarray, brain: np.ndarray, lesion: np.ndarray | None,
    rim: np.ndarray | None, wall_s: float, peak: int,
) -> CaseFigures:  # fmt: skip
    """Count the predicted components against the reference brain (and lesion)."""
    lab = cc3d.connected_components(pred.astype(np.uint8), connectivity=26)
    n = int(lab.max())
    sizes = np.bincount(lab.ravel(), minlength=n + 1)
    inside = np.bincount(lab[brain].ravel(), minlength=n + 1)
    hit = (
        np.bincount(lab[lesion].ravel(), minlength=n + 1) > 0
        if lesion is not None
        else np.zeros(n + 1, bool)
    )
    outside = [c for c in range(1, n + 1) if inside[c] * 2 < sizes[c]]
    other = [c for c in range(1, n + 1) if c not in set(outside) and not hit[c]]
    found = None if lesion is None else bool(hit[1:].any())
    rim_ov = None if rim is None else float((pred & rim).sum() / max(1, rim.sum()))
    les_share = None if lesion is None else float((pred & lesion).sum() / max(1, lesion.sum()))
    return CaseFigures(
        case=case,
        pipeline=pipeline,
        wall_s=round(wall_s, 1),
        peak_rss_gib=round(peak / 1024**3, 2),
        n_components=n,
        n_outside_brain=len(outside),
        n_inside_other=len(other),
        n_inside_other_ge10=sum(int(sizes[c] >= 10) for c in other),
        lesion_found=found,
        rim_overlap=None if rim_ov is None else round(rim_ov, 3),
        lesion_voxels_predicted_share=None if les_share is None else round(les_share, 3),
    )


def overlay(
    path: Path, t1c: np.ndarray, brain: np.ndarray, pred: np.ndarray, rim: np.ndarray | None,
    title: str,
) -> None:  # fmt: skip
    """Three axial slices: T1c, brain outline (blue), prediction (red), rim reference (green)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    focus = rim if rim is not None and rim.any() else pred if pred.any() else brain
    zs = np.nonzero(focus.any(axis=(0, 1)))[0]
    zc = int(np.median(zs))
    span = max(1, (zs.max() - zs.min()) // 4) if zs.size > 1 else 1
    picks = sorted({max(0, zc - span), zc, min(t1c.shape[2] - 1, zc + span)})
    fig, axes = plt.subplots(1, len(picks), figsize=(5 * len(picks), 5))
    for ax, z in zip(np.atleast_1d(axes), picks, strict=True):
        ax.imshow(t1c[:, :, z].T, origin="lower", cmap="gray")
        ax.contour(brain[:, :, z].T, levels=[0.5], colors="deepskyblue", linewidths=0.7)
        if rim is not None:
            ax.contour(rim[:, :, z].T, levels=[0.5], colors="lime", linewidths=0.7)
        ax.contour(pred[:, :, z].T.astype(float), levels=[0.5], colors="red", linewidths=0.9)
        ax.set_title(f"z={z}")
        ax.axis("off")
    fig.suptitle(title)
    fig.savefig(path, dpi=80, bbox_inches="tight")
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="Working and output folder.")
    ap.add_argument("--cases", default="brats,tcga", help="brats, tcga or both (comma list).")
    ap.add_argument("--pipeline", choices=("direct", "legacy"), default="direct")
    ap.add_argument("--checkpoint", type=Path, default=SHIPPED, help="Default: the shipped one.")
    args = ap.parse_args(argv)
    if not REALDATA.is_dir():
        print(f"{REALDATA} not found: the real cases are not available here; nothing to do")
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    results = []
    for key in [c.strip() for c in args.cases.split(",") if c.strip()]:
        case = {"brats": "brats-met-00110", "tcga": "tcga-fg-6692-raw"}[key]
        mask_file, wall, peak = run_case(case, args.pipeline, args.checkpoint, args.out / case)
        pred_img = nib.load(mask_file)
        pred = np.asarray(pred_img.dataobj) > 0
        if key == "brats":
            t1c_img = nib.load(REALDATA / case / f"{BRATS_CASE}-t1c.nii.gz")
            t1c = np.asarray(t1c_img.dataobj, dtype=np.float32)
            brain, lesion, rim = brats_reference(t1c)
        else:
            t1c_img = nib.load(REALDATA / case / "t1c.nii.gz")
            t1c = np.asarray(t1c_img.dataobj, dtype=np.float32)
            brain = np.asarray(nib.load(REALDATA / case / "t1c_brainmask_hdbet.nii.gz").dataobj) > 0
            lesion = rim = None
        if pred.shape != t1c.shape or not np.allclose(pred_img.affine, t1c_img.affine, atol=1e-3):
            raise SystemExit(f"{mask_file}: prediction is not on the T1c file's grid")
        fig = measure(case, args.pipeline, pred, brain, lesion, rim, wall, peak)
        results.append(asdict(fig))
        png = args.out / f"{key}_overlay.png"
        overlay(png, t1c, brain, pred, rim, f"{case} ({args.pipeline}): red prediction")
        print(json.dumps(asdict(fig), indent=2), flush=True)
        print(f"overlay: {png}", flush=True)
    (args.out / "real_scan.json").write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
