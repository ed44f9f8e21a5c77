"""Print DICOM ingest figures: header scan, volume build, RTSTRUCT rasterisation, whole ingest.

Usage: PYTHONPATH=src python benchmarks/dicom_ingest.py [--size 256] [--slices 64] [--studies 2]

Writes a synthetic export (4 sequences + planning scan + RTSTRUCT per study)
to a temporary folder, then times each stage. Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pydicom

from metstrack.io.dicom import scan_dicom
from metstrack.io.dicom_series import load_series
from metstrack.io.dicom_synth import write_rtstruct, write_series
from metstrack.io.ingest import ingest_dicom
from metstrack.io.rtstruct import rasterize_rtstruct, read_rtstruct


def make_export(root: Path, size: int, slices: int, studies: int) -> None:
    rng = np.random.default_rng(0)
    # a head-like phantom (bright ellipsoid, mild noise): compresses like real MR
    x, y, z = np.meshgrid(
        *(np.linspace(-1, 1, n) for n in (size, size, slices)), indexing="ij", sparse=True
    )
    head = (x**2 + y**2 + (0.8 * z) ** 2) < 0.8
    img = (600 * head + rng.integers(0, 40, size=(size, size, slices))).astype(np.uint16)
    t = np.linspace(0, 2 * np.pi, 200, endpoint=False)
    for s in range(studies):
        common = dict(study_uid=pydicom.uid.generate_uid(), study_date=f"2021{s + 1:02d}01")
        base = root / f"study{s}"
        for i, desc in enumerate(("T1", "T1 post", "T2", "FLAIR")):
            write_series(
                base / desc.replace(" ", "_"), img, description=desc, series_number=i, **common
            )
        plan = write_series(
            base / "plan", img, description="Stealth T1 post", series_number=9, **common
        )
        rois = []
        for n in range(10):  # ten spherical lesions as circle stacks
            c = rng.uniform(40, size - 40, 2)
            z0 = rng.integers(5, slices - 10)
            r = rng.uniform(2, 12)
            contours = []
            for k in range(z0, z0 + 5):
                ring = np.column_stack(
                    [
                        -20 + c[0] + r * np.cos(t),
                        -30 + c[1] + r * np.sin(t),
                        np.full_like(t, 10 + 2.0 * k),
                    ]
                )
                contours.append(ring)
            rois.append((f"GTV_{n}", "GTV", contours))
        write_rtstruct(base / "rt" / "RS.dcm", plan, rois)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--slices", type=int, default=64)
    ap.add_argument("--studies", type=int, default=2)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "export"
        make_export(root, a.size, a.slices, a.studies)
        n_files = sum(1 for p in root.rglob("*") if p.is_file())
        t0 = time.perf_counter()
        scan = scan_dicom(root)
        t_scan = time.perf_counter() - t0
        series = scan.image_series[0]
        t0 = time.perf_counter()
        vol = load_series(series)
        t_load = time.perf_counter() - t0
        rs = next(root.rglob("RS.dcm"))
        t0 = time.perf_counter()
        masks = rasterize_rtstruct(read_rtstruct(rs), vol)
        t_rt = time.perf_counter() - t0
        t0 = time.perf_counter()
        report = ingest_dicom(root, Path(tmp) / "release")
        t_ingest = time.perf_counter() - t0
    print(f"export: {a.studies} studies, {n_files} files, series {a.size}x{a.size}x{a.slices}")
    print(f"header scan: {t_scan:.2f} s ({1e3 * t_scan / n_files:.2f} ms/file)")
    print(f"volume build (one series): {t_load:.2f} s")
    print(f"RTSTRUCT rasterisation ({len(masks.rois)} ROIs): {t_rt:.3f} s")
    print(
        f"ingest: {t_ingest:.2f} s total, {t_ingest / a.studies:.2f} s/study "
        f"({report.count('written')} written)"
    )


if __name__ == "__main__":
    main()
