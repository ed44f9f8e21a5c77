"""``metstrack export-rtstruct``: lesion masks back to DICOM (RTSTRUCT or SEG)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import numpy as np
import typer

from metstrack.cli.common import console, guarded, usage_error
from metstrack.io.export import lesion_instances, write_rtstruct, write_seg
from metstrack.io.ingest import source_series_uid
from metstrack.io.nifti import read_label


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
