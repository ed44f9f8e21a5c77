"""How close is the synthetic world to a real scan? Figures side by side, and a PNG.

Compares, with the same estimators (``metstrack.synth.realism``, none of which
reads the synthetic ground truth), three worlds:

- the real BraTS-METS case in ``../shared/realdata/brats-met-00110`` (skull-stripped,
  1 mm, one cystic metastasis); it is a check only, never used to tune the generator;
- the synthetic world (template anatomy, clinical contrasts, skull-stripped so the
  brain masks agree);
- the older procedural phantom (``anatomy = "phantom"``), the toy world it replaces.

Printed figures: skew of z-scored T1-post intensities in the brain and the
fraction of brain voxels > 3 SD; T1 white/grey ratio and grey-matter fraction of
the brain (3-class Gaussian mixture); the share of bright T1-post voxels in
tubular structures; lesion sphericity and the lesion-volume distribution
(synthetic worlds, from their instance maps); the time to generate N patients at
K^3 (default 20 at 192^3, 1 mm). The PNG shows matching axial and sagittal
T1-post slices. Usage::

    python benchmarks/realism.py --patients 20 --shape 192 --out realism.png
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import nibabel as nib
import numpy as np

from metstrack.synth.cohort import make_patient
from metstrack.synth.config import SynthConfig
from metstrack.synth.realism import (
    sphericity,
    tissue_classes,
    tubular_bright_fraction,
    zscore_stats,
)

REAL = Path(__file__).resolve().parents[2] / "shared" / "realdata" / "brats-met-00110"


def _row(name: str, ct1: np.ndarray, t1: np.ndarray, brain: np.ndarray, spacing) -> dict:
    z = zscore_stats(ct1, brain)
    tc = tissue_classes(t1, brain)
    return {
        "world": name,
        "ct1_skew": z.skew,
        "ct1_bright_frac": z.bright_fraction,
        "t1_white_grey": tc.white_grey_ratio,
        "grey_frac": tc.grey_fraction,
        "tubular_bright": tubular_bright_fraction(ct1, brain, spacing),
    }


def _lesion_stats(patients) -> tuple[float, np.ndarray]:
    sph, vols = [], []
    for p in patients:
        for st in p.studies:
            sp = st.acquisition.spacing_mm
            vox = float(np.prod(sp))
            ids, counts = np.unique(st.instances[st.instances > 0], return_counts=True)
            vols += list(counts * vox)
            if st is p.studies[0]:
                for k, c in zip(ids, counts, strict=True):
                    if c >= 100:
                        sph.append(sphericity(st.instances == k, sp))
    return (float(np.mean(sph)) if sph else float("nan")), np.asarray(vols)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--patients", type=int, default=20, help="patients per synthetic world")
    ap.add_argument("--shape", type=int, default=192, help="grid edge K (1 mm, K^3)")
    ap.add_argument("--studies", type=int, default=2, help="studies per patient")
    ap.add_argument("--out", type=Path, default=Path("realism.png"))
    args = ap.parse_args()

    rows = []
    real_ct1 = real_t1 = None
    if REAL.is_dir():
        real_ct1 = np.asarray(nib.load(REAL / "BraTS-MET-00110-000-t1c.nii.gz").dataobj, np.float32)
        real_t1 = np.asarray(nib.load(REAL / "BraTS-MET-00110-000-t1n.nii.gz").dataobj, np.float32)
        brain = (real_ct1 > 0) & (real_t1 > 0)
        rows.append(_row("real BraTS-MET-00110", real_ct1, real_t1, brain, (1.0, 1.0, 1.0)))
    else:
        print(f"(real case absent: {REAL}; printing synthetic figures only)")

    worlds = {
        "synthetic (template)": SynthConfig(skull="stripped"),
        "toy (phantom)": SynthConfig(anatomy="phantom", acquisition="fixed", skull="stripped"),
    }
    shown = {}
    timing = {}
    lesions = {}
    for name, cfg in worlds.items():
        t0 = time.perf_counter()
        pts = [
            make_patient(
                seed=s, shape=args.shape, n_studies=args.studies, config=replace(cfg), index=0
            )
            for s in range(args.patients)
        ]
        timing[name] = time.perf_counter() - t0
        st = pts[0].studies[0]
        rows.append(
            _row(name, st.image("CT1"), st.image("T1"), st.brain_mask, st.acquisition.spacing_mm)
        )
        lesions[name] = _lesion_stats(pts)
        shown[name] = st.image("CT1")
        del pts

    cols = ["ct1_skew", "ct1_bright_frac", "t1_white_grey", "grey_frac", "tubular_bright"]
    print(f"{'world':24s} " + " ".join(f"{c:>16s}" for c in cols))
    for r in rows:
        print(f"{r['world']:24s} " + " ".join(f"{r[c]:16.3f}" for c in cols))
    print()
    for name in worlds:
        sph, vols = lesions[name]
        q = np.percentile(vols, [10, 50, 90]) if vols.size else [np.nan] * 3
        print(
            f"{name:24s} lesion sphericity (>=100 vox) {sph:.3f}; lesion volumes mm3 "
            f"p10 {q[0]:.1f} median {q[1]:.1f} p90 {q[2]:.1f} max {vols.max() if vols.size else 0:.0f}; "
            f"<10 mm3 {np.mean(vols < 10) if vols.size else 0:.2f}; "
            f"{args.patients} patients x {args.studies} studies at {args.shape}^3: {timing[name]:.1f} s"
        )

    n = len(shown) + (real_ct1 is not None)
    fig, ax = plt.subplots(2, n, figsize=(5 * n, 10))
    panels = ([("real BraTS-MET-00110 t1c", real_ct1)] if real_ct1 is not None else []) + [
        (k + " CT1", v) for k, v in shown.items()
    ]
    for i, (title, img) in enumerate(panels):
        c = np.array(img.shape) // 2
        lim = np.percentile(img[img > 0], 99.5)
        ax[0, i].imshow(img[:, :, c[2] + 10].T, origin="lower", cmap="gray", vmax=lim)
        ax[1, i].imshow(img[c[0], :, :].T, origin="lower", cmap="gray", vmax=lim)
        ax[0, i].set_title(title)
        for a in ax[:, i]:
            a.axis("off")
    fig.tight_layout()
    fig.savefig(args.out, dpi=80)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
