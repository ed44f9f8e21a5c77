"""Print DICOMweb round-trip figures: STOW-RS store, QIDO-RS + WADO-RS pull.

Usage:
    PYTHONPATH=src python benchmarks/pacs_round_trip.py --orthanc [--size 256] [--slices 64] [--studies 2]
    PYTHONPATH=src python benchmarks/pacs_round_trip.py --pacs URL   (credentials from the environment)

``--orthanc`` starts a local Orthanc (Debian ``orthanc`` + ``orthanc-dicomweb``)
in a temporary folder, as the tests do. A synthetic export (T1, T1 post, T2,
FLAIR per study, uint16) is stored with ``metstrack.io.dicomweb.push_files``
and pulled back with ``pull_studies``. Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pydicom

from metstrack.io.dicom_synth import SECRET_ID, write_series
from metstrack.io.dicomweb import ENV_PASSWORD, ENV_USER, dicom_files, pull_studies, push_files


def make_export(root: Path, size: int, slices: int, studies: int) -> None:
    rng = np.random.default_rng(0)
    img = rng.integers(0, 1000, size=(size, size, slices)).astype(np.uint16)
    for s in range(studies):
        common = dict(study_uid=pydicom.uid.generate_uid(), study_date=f"2021{s + 1:02d}01")
        for i, desc in enumerate(("T1", "T1 post", "T2", "FLAIR")):
            write_series(
                root / f"study{s}" / desc.replace(" ", "_"),
                img,
                description=desc,
                series_number=i,
                **common,
            )


def run(url: str, args, tmp: Path) -> None:
    make_export(tmp / "export", args.size, args.slices, args.studies)
    files = dicom_files([tmp / "export"])
    mb = sum(f.stat().st_size for f in files) / 1e6
    t0 = time.perf_counter()
    pushed = push_files(url, files)
    t_push = time.perf_counter() - t0
    t0 = time.perf_counter()
    pulled = pull_studies(url, tmp / "pulled", patient_id=SECRET_ID)
    t_pull = time.perf_counter() - t0
    n = sum(p.n_instances for p in pulled)
    print(f"export: {len(files)} instances, {mb:.1f} MB, {args.studies} studies")
    print(
        f"push (STOW-RS):        {t_push:.2f} s  {pushed.n_stored / t_push:.0f} inst/s  {mb / t_push:.1f} MB/s"
    )
    print(f"pull (QIDO+WADO-RS):   {t_pull:.2f} s  {n / t_pull:.0f} inst/s  {mb / t_pull:.1f} MB/s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pacs", help="DICOMweb base URL of a running server")
    ap.add_argument("--orthanc", action="store_true", help="start a local Orthanc")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--slices", type=int, default=64)
    ap.add_argument("--studies", type=int, default=2)
    args = ap.parse_args()
    if not args.pacs and not args.orthanc:
        ap.error("give --pacs URL or --orthanc")
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        if args.pacs:
            run(args.pacs, args, tmp)
            return
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        from tests.pacs_tools import PASSWORD, USER, run_orthanc

        os.environ[ENV_USER], os.environ[ENV_PASSWORD] = USER, PASSWORD
        with run_orthanc(tmp / "orthanc") as server:
            run(server.dicomweb, args, tmp)


if __name__ == "__main__":
    main()
