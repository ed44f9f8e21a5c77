"""``metstrack ingest`` and ``metstrack dicom-scan``: hospital DICOM exports in."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from metstrack.cli.common import EXIT_DATA_ERROR, console, err_console, guarded, progress
from metstrack.config import load_config
from metstrack.errors import DicomSeriesError


def ingest(
    src: Annotated[Path, typer.Argument(help="Folder of the DICOM export (any layout).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Dataset root to write.")],
    config: Annotated[
        Path | None,
        typer.Option("--config", "-c", help="IngestConfig TOML ([classify], [rois] ...)."),
    ] = None,
    rules: Annotated[
        Path | None,
        typer.Option("--rules", help="Classification rule table TOML ([[rules]], exclude ...)."),
    ] = None,
    overrides: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override a config key, e.g. rois.types=['GTV','PTV']."),
    ] = None,
    mapping: Annotated[
        Path | None,
        typer.Option(
            "--mapping", help="Private pseudonym mapping file [default: <out>-pseudonyms.json]."
        ),
    ] = None,
    catalog: Annotated[
        Path | None,
        typer.Option("--catalog", help="Cohort catalog (SQLite) to register the run in."),
    ] = None,
    strict: Annotated[
        bool,
        typer.Option("--strict", help="Exit 1 when any study failed or any problem was found."),
    ] = False,
) -> None:
    """Convert a DICOM export into the release layout with pseudonymised IDs."""
    from metstrack.io.dicom_classify import load_rules  # lazy: pandas, pydicom
    from metstrack.io.ingest import IngestConfig, StudyOutcome, ingest_dicom

    with guarded():
        cfg = load_config(IngestConfig, config, tuple(overrides or ()))
        if rules is not None:
            cfg = dataclasses.replace(cfg, classify=load_rules(rules))
        with progress() as bar:
            task = bar.add_task("ingest", total=None)

            def tick(outcome: StudyOutcome) -> None:
                bar.advance(task)

            report = ingest_dicom(
                src, out, config=cfg, mapping_path=mapping, catalog_path=catalog, on_study=tick
            )
    table = Table(title=f"ingest {src} -> {out}")
    for col in ("PatientID", "StudyID", "status", "sequences"):
        table.add_column(col)
    for s in report.studies:
        table.add_row(s.patient_id, s.study_id, s.status, " ".join(s.sequences) or s.message)
    console.print(table)
    for msg in report.unclassified:
        err_console.print(f"[yellow]unclassified:[/] {msg}", soft_wrap=True)
    for msg in report.problems:
        err_console.print(f"[yellow]warning:[/] {msg}", soft_wrap=True)
    console.print(
        f"{report.count('written')} written, {report.count('skipped')} already present, "
        f"{report.count('failed')} failed; {len(report.unclassified)} unclassified series, "
        f"{len(report.problems)} warning(s)"
    )
    console.print(f"imaging table: {report.imaging_table}")
    console.print(f"pseudonym mapping (keep private): {report.mapping_path}")
    failed = report.count("failed")
    if (failed and failed == len(report.studies)) or (
        strict and (failed or report.problems or report.unclassified)
    ):
        raise typer.Exit(EXIT_DATA_ERROR)


def dicom_scan(
    src: Annotated[Path, typer.Argument(help="Folder of DICOM files.")],
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="IngestConfig TOML with [classify] rules.")
    ] = None,
) -> None:
    """List the series under SRC with the sequence the rule table assigns (headers only)."""
    from metstrack.io.dicom import scan_dicom, uid_suffix  # lazy: pydicom
    from metstrack.io.dicom_classify import classify_series
    from metstrack.io.ingest import IngestConfig

    with guarded():
        cfg = load_config(IngestConfig, config)
        scan = scan_dicom(src)
        if not scan.series:
            raise DicomSeriesError(
                f"{src}: no DICOM files found; point dicom-scan at the folder of the DICOM export"
            )
    table = Table(title=f"DICOM series under {src}")
    for col in ("folder", "series", "modality", "description", "files", "sequence"):
        table.add_column(col, overflow="fold")
    for s in scan.series:
        seq = "-"
        if s.is_image:
            c = classify_series(s, cfg.classify)
            seq = c.sequence or "[yellow]unclassified[/]"
        folder = str(s.folders[0].relative_to(src)) if s.folders[0] != Path(src) else "."
        table.add_row(
            folder,
            uid_suffix(s.series_uid),
            s.modality,
            s.series_description,
            str(len(s.files)),
            seq,
        )
    console.print(table)
    for msg in (*scan.skipped, *scan.notes):
        err_console.print(f"[yellow]warning:[/] {msg}", soft_wrap=True)
