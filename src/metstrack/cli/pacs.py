"""``metstrack pull`` and ``metstrack push``: a PACS in and out over DICOMweb."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from metstrack.cli.common import console, guarded, progress, usage_error
from metstrack.io.dicom import uid_suffix
from metstrack.io.dicomweb import (
    ENV_PASSWORD,
    ENV_USER,
    dicom_files,
    find_studies,
    make_client,
    pull_studies,
    push_files,
)

_PACS_HELP = (
    "DICOMweb base URL, e.g. http://pacs:8042/dicom-web. Credentials come from "
    f"{ENV_USER}/{ENV_PASSWORD} or a netrc file, never from the URL."
)


def pull(
    pacs: Annotated[str, typer.Option("--pacs", help=_PACS_HELP)],
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Folder to fill; then `metstrack ingest` it.")
    ],
    patient: Annotated[
        str | None,
        typer.Option("--patient", help="Fetch every study of this PatientID (as the PACS has it)."),
    ] = None,
    study: Annotated[
        list[str] | None,
        typer.Option("--study", help="Fetch this StudyInstanceUID (repeatable)."),
    ] = None,
) -> None:
    """Fetch a patient's studies from a PACS (QIDO-RS search, WADO-RS retrieve)."""
    if not patient and not study:
        usage_error("give --patient ID or --study UID (repeatable)")
    with guarded():
        uids = find_studies(
            make_client(pacs), pacs, patient_id=patient, study_uids=tuple(study or ())
        )
        with progress() as bar:
            task = bar.add_task("pull", total=len(uids))
            results = pull_studies(
                pacs, out, study_uids=uids, on_study=lambda _r: bar.advance(task)
            )
    table = Table(title="pulled studies")
    for col in ("study", "series", "instances", "status", "seconds"):
        table.add_column(col, justify="left" if col in ("study", "status") else "right")
    for r in results:
        table.add_row(
            uid_suffix(r.study_uid),
            str(r.n_series),
            str(r.n_instances),
            r.status,
            f"{r.seconds:.2f}",
        )
    console.print(table)
    console.print(f"{len(results)} study(ies) in {out}; next: metstrack ingest {out} --out DATASET")


def push(
    paths: Annotated[
        list[Path], typer.Argument(help="DICOM files or folders (e.g. a `metstrack export` out).")
    ],
    pacs: Annotated[str, typer.Option("--pacs", help=_PACS_HELP)],
) -> None:
    """Store DICOM objects (SEG, SR, RTSTRUCT) on a PACS (STOW-RS)."""
    with guarded():
        result = push_files(pacs, dicom_files(paths))
    console.print(
        f"stored {result.n_stored} instance(s) in {len(result.studies)} study(ies) "
        f"in {result.seconds:.2f} s"
    )
