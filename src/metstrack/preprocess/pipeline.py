"""Preprocess a release-layout dataset into a canonical, co-registered one.

For each patient (the unit of work, so a worker owns the baseline it registers
to), every study is put on the baseline T1 post's isotropic RAS grid:

1. read each series as stored and reorient it to RAS (lossless, recorded);
2. the baseline grid is an axis-aligned RAS grid of ``spacing_mm`` covering the
   baseline T1 post (CT1); the baseline CT1 is resampled onto it;
3. through time: each follow-up CT1 is registered to the baseline CT1 (rigid,
   then optional affine; Mattes MI, multi-resolution, fixed seed), giving
   ``baseline_to_study``; the baseline's own transform is the identity;
4. within the study: every other sequence (T1, T2, FLAIR, the planning T1 post)
   is registered to the study's CT1 on the baseline grid, starting from
   ``baseline_to_study`` (the sequences share the study's scanner frame);
5. every image is resampled once, straight from its native file onto the
   baseline grid (linear or B-spline); the lesion label with nearest
   neighbour, its dtype kept;
6. brain mask (heuristic on the CT1, or the non-zero voxels for skull-stripped
   data), optional N4 bias correction, per-channel z-score inside the brain
   (voxels outside the brain become 0).

Outputs (``out_root``): the same release layout and tables, plus
``transforms/<PatientID>/<StudyID>.json`` (:mod:`metstrack.core.mapping`)
and ``preprocess/`` (resolved config, per-study provenance, brain masks, the
run report). A study is finished when its transform JSON exists (written last,
atomically), so a rerun skips it.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from pathlib import Path

from metstrack.catalog import Catalog, OutputRecord
from metstrack.config import config_fingerprint, save_config
from metstrack.core import schema
from metstrack.core.atomic import (
    sweep_stale_temps,
    write_bytes_atomic,
    write_csv_atomic,
    write_json_atomic,
)
from metstrack.core.mapping import (
    TRANSFORMS_DIR,
)
from metstrack.errors import DatasetError, MetstrackError
from metstrack.execution.executor import Executor, LocalExecutor
from metstrack.io.layouts import LAYOUTS, apply_intervals, read_dataset
from metstrack.io.release import read_release
from metstrack.preprocess.config import (
    PREPROCESS_DIR,
    PreprocessConfig,
    PreprocessReport,
    StudyOutcome,
)
from metstrack.preprocess.patient import preprocess_patient
from metstrack.types import (
    LABEL_SEQUENCE,
    SEQUENCES,
    Cohort,
)

log = logging.getLogger(__name__)


def _check_same_config(out_root: Path, cfg: PreprocessConfig) -> None:
    """Refuse to resume into a folder preprocessed with another configuration."""
    import json

    saved = out_root / PREPROCESS_DIR / "config.json"
    if not saved.is_file() or not any((out_root / TRANSFORMS_DIR).rglob("*.json")):
        return
    try:
        old = json.loads(saved.read_text(encoding="utf-8")).get("config_fingerprint")
    except ValueError:
        old = None
    if old != config_fingerprint(cfg):
        raise DatasetError(
            f"{out_root}: already holds studies preprocessed with another configuration "
            f"(see {saved}); rerun with the same settings to resume, or choose a new --out"
        )


def _output_kind(rel_path: str) -> str:
    parts = Path(rel_path).parts
    if parts[0] == TRANSFORMS_DIR:
        return "transform"
    if parts[0] == PREPROCESS_DIR:
        return "brain_mask" if parts[1] == "brain_masks" else parts[1]
    if parts[0] == schema.GROUND_TRUTH_DIR:
        return "truth_label"
    return "label" if Path(rel_path).name.startswith(LABEL_SEQUENCE) else "image"


def _copy_tables(src_root: Path, out_root: Path) -> list[str]:
    src = src_root / schema.TABLES_DIR
    copied = []
    for f in sorted(src.glob("*.csv")):
        write_bytes_atomic(out_root / schema.TABLES_DIR / f.name, f.read_bytes())
        copied.append(f.name)
    return copied


def _write_imaging_tables(cohort: Cohort, out_root: Path) -> list[str]:
    """Imaging (and split) tables of a cohort read from another layout."""
    import pandas as pd

    rows, split_rows = [], []
    for p in cohort.patients:
        for st in p.studies:
            have = {s.sequence for s in st.series}
            row = {"PatientID": p.patient_id, "StudyID": st.study_id}
            row.update({seq: int(seq in have) for seq in SEQUENCES})
            row.update(
                {
                    "ExpertAdjusted": int(st.expert_adjusted),
                    "DaysFromBaselineScan": st.days_from_baseline,
                    "RelativeTimepoint": st.relative_timepoint,
                }
            )
            rows.append(row)
            split = st.split or p.split
            if split is not None:
                split_rows.append(
                    {
                        "StudyID": st.study_id,
                        **{k: int(split == k) for k in ("train", "val", "test")},
                    }
                )
    written = [schema.IMAGING_TABLE]
    write_csv_atomic(
        schema.table_path(out_root, schema.IMAGING_TABLE),
        pd.DataFrame(rows, columns=list(schema.IMAGING_COLUMNS)),
    )
    if split_rows:
        write_csv_atomic(
            schema.table_path(out_root, schema.SPLIT_TABLE),
            pd.DataFrame(split_rows, columns=list(schema.SPLIT_COLUMNS)),
        )
        written.append(schema.SPLIT_TABLE)
    return written


def _tables_fingerprint(root: Path) -> str:
    h = hashlib.sha256()
    for f in sorted((root / schema.TABLES_DIR).glob("*.csv")):
        h.update(f.name.encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def preprocess_dataset(
    src_root: str | Path,
    out_root: str | Path,
    cfg: PreprocessConfig | None = None,
    workers: int = 1,
    *,
    layout: str = "auto",
    catalog_path: str | Path | None = None,
    on_study: Callable[[StudyOutcome], None] | None = None,
    on_start: Callable[[int], None] | None = None,
    label_values: tuple[int, ...] | None = None,
    intervals: str | Path | None = None,
    executor: Executor | None = None,
) -> PreprocessReport:
    """Preprocess a release-layout dataset into a new one (see the module docstring).

    Args:
        src_root: Input dataset in any layout ``metstrack.io.layouts.read_dataset``
            reads (release, BraTS-METS, BrainMetShare, BIDS-like).
        out_root: Output folder (created; must differ from ``src_root``).
        cfg: Settings (defaults when ``None``).
        workers: Worker processes (patients run in parallel); 1 runs in-process.
        layout: Input layout name, or ``auto`` to detect it. A release dataset's
            tables are copied unchanged; for other layouts the imaging (and split)
            table is written from the cohort, and multi-class labels become the
            binary metastasis mask of the cohort's ``label_classes``.
        catalog_path: Optional cohort catalog (SQLite) to register the run and
            every finished study in (one transaction per study).
        on_study: Called in the parent process after each study (progress bars).
        on_start: Called once with the number of studies before work starts.
        label_values: Label values that are lesion (``--labels``), replacing the
            layout's ``label_classes``; ``None`` keeps the layout's (empty for
            the release layout: label files must be binary, a multi-class file
            fails its study with the fix named).
        intervals: Optional CSV of ``StudyID, DaysFromBaselineScan``
            (:func:`metstrack.io.layouts.apply_intervals`); without it, studies whose
            layout carries no dates keep their timepoint order and an empty
            ``DaysFromBaselineScan`` (interval unknown).
        executor: Where the patients run (:mod:`metstrack.execution.executor`, e.g. a
            Dask cluster); ``None``: this process or a pool of ``workers`` processes.
            Only this process writes the catalog and the run's tables.

    Returns:
        The :class:`PreprocessReport` (also written to ``preprocess/report.json``).

    Raises:
        DatasetError: Unreadable input tables, or ``out_root`` equal to ``src_root``.
    """
    cfg = cfg or PreprocessConfig()
    src_root, out_root = Path(src_root), Path(out_root)
    if src_root.resolve() == out_root.resolve():
        raise DatasetError(f"{out_root}: the output folder must differ from the input dataset")
    t0 = time.perf_counter()
    cohort = read_dataset(src_root, layout)
    if intervals is not None:
        cohort = apply_intervals(cohort, intervals)
    classes = tuple(
        int(c) for c in (cohort.label_classes if label_values is None else label_values)
    )
    _check_same_config(out_root, cfg)
    # An unusable catalog is refused before anything is written.
    catalog = Catalog.open(catalog_path) if catalog_path is not None else None
    out_root.mkdir(parents=True, exist_ok=True)
    sweep_stale_temps(out_root)  # temporary files of a killed run
    if cohort.layout == "release" and intervals is None:
        tables = _copy_tables(src_root, out_root)
    else:
        tables = _write_imaging_tables(cohort, out_root)
    fingerprint = _tables_fingerprint(out_root)
    cfg_path = save_config(
        cfg,
        out_root / PREPROCESS_DIR / "config.json",
        source=str(src_root),
        source_layout=cohort.layout,
        label_classes=list(classes),
        tables_fingerprint=fingerprint,
        tables_copied=tables,
        workers=int(workers),
        executor=executor.name if executor is not None else "local",
        config_fingerprint=config_fingerprint(cfg),
    )
    run_id = None
    if catalog is not None:
        catalog.register_dataset(cohort)
        run_id = catalog.begin_run("preprocess", cfg, source=str(src_root), output=str(out_root))

    outcomes: list[StudyOutcome] = []
    if on_start is not None:
        on_start(len(cohort.studies))

    def collect(batch: list[StudyOutcome]) -> None:
        for o in batch:
            outcomes.append(o)
            if catalog is not None and o.status in ("done", "skipped"):
                catalog.record_study_done(
                    run_id,
                    o.patient_id,
                    o.study_id,
                    outputs=[OutputRecord(p, o.study_id, _output_kind(p)) for p in o.outputs],
                    seconds=o.seconds,
                )
            if on_study is not None:
                on_study(o)

    try:
        pool = executor if executor is not None else LocalExecutor(workers)
        for _, batch in pool.map_unordered(
            preprocess_patient,
            list(cohort.patients),
            out_root,
            cfg,
            label_classes=classes,
            coregistered_input=getattr(LAYOUTS.get(cohort.layout), "coregistered", False),
        ):
            collect(batch)
        sweep_stale_temps(out_root)  # a killed worker's temporaries (its patient was rerun)
        if catalog is not None and not any(o.status == "failed" for o in outcomes):
            # The output is a dataset of its own: same studies, its own files.
            try:
                catalog.register_dataset(read_release(out_root))
            except MetstrackError as exc:
                log.warning("%s: output dataset not registered in the catalog: %s", out_root, exc)
    finally:
        if catalog is not None:
            status = "failed" if any(o.status == "failed" for o in outcomes) else "finished"
            catalog.finish_run(run_id, status=status)
            catalog.close()
    order = {(s.patient_id, s.study_id): i for i, s in enumerate(cohort.studies)}
    outcomes.sort(key=lambda o: order.get((o.patient_id, o.study_id), 0))
    report = PreprocessReport(
        out_root=out_root,
        outcomes=tuple(outcomes),
        seconds=time.perf_counter() - t0,
        config_path=cfg_path,
    )
    write_json_atomic(out_root / PREPROCESS_DIR / "report.json", report.to_dict())
    log.info(
        "preprocessed %s: %d done, %d skipped, %d failed in %.1fs",
        src_root,
        report.count("done"),
        report.count("skipped"),
        report.count("failed"),
        report.seconds,
    )
    return report


__all__ = ["preprocess_dataset"]
