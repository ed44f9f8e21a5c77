"""``metstrack export-rtstruct`` (one mask) and ``metstrack export`` (a tracking run) to DICOM."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Annotated

import numpy as np
import typer
from rich.table import Table

from metstrack.cli.common import console, guarded, progress, usage_error


def export_rtstruct(
    mask: Annotated[Path, typer.Option("--mask", help="NIfTI lesion mask (binary or instances).")],
    series: Annotated[
        Path, typer.Option("--series", help="Folder of the source DICOM series the mask lies on.")
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="DICOM file to write.")],
    seg: Annotated[
        bool, typer.Option("--seg", help="Write a DICOM SEG instead of RTSTRUCT.")
    ] = False,
    series_uid: Annotated[
        str | None,
        typer.Option("--series-uid", help="Pick this series when --series holds several."),
    ] = None,
    study: Annotated[
        str | None,
        typer.Option("--study", help="Study pseudonym: take the source series from --mapping."),
    ] = None,
    mapping: Annotated[
        Path | None,
        typer.Option("--mapping", help="Pseudonym mapping written by ingest (with --study)."),
    ] = None,
    sequence: Annotated[
        str, typer.Option("--sequence", help="Sequence whose source series the mask lies on.")
    ] = "CT1",
    roi_type: Annotated[
        str, typer.Option("--roi-type", help="RTROIInterpretedType of each ROI.")
    ] = "GTV",
) -> None:
    """Write each lesion of MASK as one ROI (RTSTRUCT) or segment (SEG) on the source series."""
    if study is not None and mapping is None:
        usage_error("--study needs --mapping (the ingest's mapping file)")
    from metstrack.io.export import lesion_instances, write_rtstruct, write_seg  # lazy: pydicom
    from metstrack.io.nifti import read_label
    from metstrack.io.pseudonyms import source_series_uid

    with guarded():
        if study is not None:
            series_uid = source_series_uid(mapping, study, sequence)
        label = read_label(mask, binary=False)
        n = len([v for v in np.unique(lesion_instances(label.array)) if v > 0])
        if seg:
            path = write_seg(label, series, out, series_uid=series_uid)
        else:
            path = write_rtstruct(label, series, out, roi_type=roi_type, series_uid=series_uid)
    kind = "SEG segment(s)" if seg else "RTSTRUCT ROI(s)"
    console.print(f"wrote {n} lesion {kind} to {path}")


def export(
    tracking: Annotated[
        Path, typer.Option("--tracking", help="Output folder of `metstrack track`.")
    ],
    dicom: Annotated[
        Path, typer.Option("--dicom", help="The DICOM export that was ingested (source series).")
    ],
    mapping: Annotated[
        Path, typer.Option("--mapping", help="Private pseudonym mapping written by ingest.")
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder to write <P>/<S>/*.dcm into.")],
    rtstruct: Annotated[
        bool, typer.Option("--rtstruct", help="Also write an RTSTRUCT per study.")
    ] = False,
    pseudonymise: Annotated[
        bool,
        typer.Option(
            "--pseudonymise",
            help="Write the mapping's pseudonyms instead of the source's patient identifiers.",
        ),
    ] = False,
    sequence: Annotated[
        str, typer.Option("--sequence", help="Sequence whose source series the masks lie on.")
    ] = "CT1",
    patient: Annotated[
        list[str] | None, typer.Option("--patient", help="Only this patient (repeatable).")
    ] = None,
) -> None:
    """Write every tracked study's DICOM SEG + SR (+ RTSTRUCT) on its source series."""
    with guarded(), contextlib.ExitStack() as stack:
        from metstrack.io.export_tracked import export_tracked  # needs the `seg` extra

        bar: dict = {}

        def start(n_studies: int) -> None:  # the bar appears once the inputs check out
            bar["bar"] = stack.enter_context(progress())
            bar["task"] = bar["bar"].add_task("export", total=n_studies)

        result = export_tracked(
            tracking,
            dicom,
            mapping,
            out,
            sequence=sequence,
            rtstruct=rtstruct,
            pseudonymise=pseudonymise,
            patients=tuple(patient or ()),
            on_start=start,
            on_study=lambda _s: bar["bar"].advance(bar["task"]),
        )
    table = Table(title="tracked lesions exported")
    for col in ("patient", "study", "lesions", "in SEG", "objects"):
        table.add_column(col, justify="left" if col in ("patient", "study", "objects") else "right")
    for s in result.studies:
        objs = ", ".join(p.name for p in (s.seg, s.sr, s.rtstruct) if p is not None)
        table.add_row(
            s.patient_id,
            s.study_id,
            str(len(s.lesions)),
            str(sum(1 for les in s.lesions if les.present)),
            objs,
        )
    console.print(table)
    console.print(
        f"wrote {len(result.files())} DICOM object(s) and {result.lesion_table} under {result.out}"
    )
