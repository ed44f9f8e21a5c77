"""``metstrack predict``: run a trained network over a dataset in any layout (or DICOM)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from metstrack.cli.common import (
    EXIT_DATA_ERROR,
    console,
    err_console,
    guarded,
    progress,
    usage_error,
)
from metstrack.errors import DatasetError, MetstrackError, did_you_mean
from metstrack.infer.resume import PREDICT_CONFIG
from metstrack.io.fingerprint import file_sha256

log = logging.getLogger(__name__)

#: Resolved settings written beside the predictions.
CONFIG_FILE = PREDICT_CONFIG
#: Sub-folder of --out holding the ingested / preprocessed copy of the input.
INPUT_DIR = "input"


@dataclass(frozen=True)
class PredictRun:
    """What a prediction run used (saved as ``predict_config.json``)."""

    checkpoint: str
    data: str
    patients: tuple[str, ...]
    roi_size: tuple[int, ...]
    overlap: float
    tta_flips: bool
    threshold: float
    sw_batch_size: int
    device: str
    output_grid: str
    input_layout: str
    preprocessed_input: str
    brain_method: str
    spacing_mm: float = 1.0
    min_volume_mm3: float = 0.0


def _parse_roi(roi: str | None) -> tuple[int, int, int] | None:
    if roi is None:
        return None
    try:
        vals = tuple(int(v) for v in roi.replace("x", ",").split(","))
    except ValueError:
        vals = ()
    if len(vals) != 3 or min(vals) < 1:
        raise typer.BadParameter(
            f"expected three positive sizes such as 96,96,96, found {roi!r}", param_hint="--roi"
        )
    return vals  # type: ignore[return-value]


def _device(name: str):
    import torch

    try:
        dev = torch.device(name)
    except RuntimeError as exc:
        raise typer.BadParameter(
            f"unknown device {name!r} ({exc})", param_hint="--device"
        ) from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise typer.BadParameter(
            "CUDA is not available on this machine; use --device cpu", param_hint="--device"
        )
    return dev


def predict(
    checkpoint: Annotated[Path, typer.Option("--checkpoint", help="Trained network (.ckpt).")],
    data: Annotated[
        Path,
        typer.Option(
            "--data",
            help="Input: release, BraTS-METS, BIDS, BrainMetShare, one study folder of NIfTI "
            "sequences, a DICOM folder, or a `metstrack preprocess` output.",
        ),
    ],
    out: Annotated[Path, typer.Option("--out", help="Prediction root folder.")],
    patients: Annotated[
        str | None, typer.Option("--patients", help="Comma-separated PatientIDs (default: all).")
    ] = None,
    tta: Annotated[bool, typer.Option("--tta", help="Average over the 8 mirror flips.")] = False,
    overlap: Annotated[
        float, typer.Option("--overlap", min=0.0, max=0.95, help="Sliding-window overlap.")
    ] = 0.5,
    roi: Annotated[
        str | None, typer.Option("--roi", help="Window size X,Y,Z (default: the checkpoint's).")
    ] = None,
    threshold: Annotated[
        float | None,
        typer.Option(
            "--threshold",
            min=0.0,
            max=1.0,
            help="Foreground probability cut (default: the checkpoint's operating point from "
            "its provenance JSON, else 0.5).",
        ),
    ] = None,
    min_volume: Annotated[
        float | None,
        typer.Option(
            "--min-volume",
            min=0.0,
            help="Drop predicted components under this volume in mm3 (default: the "
            "checkpoint's operating point, else 0).",
        ),
    ] = None,
    sw_batch_size: Annotated[
        int, typer.Option("--sw-batch-size", min=1, help="Windows per call.")
    ] = 1,
    device: Annotated[
        str, typer.Option("--device", help="Torch device (cpu, cuda, cuda:1).")
    ] = "cpu",
    layout: Annotated[
        str, typer.Option("--layout", help="Input layout (auto, dicom, or a layout name).")
    ] = "auto",
    intervals: Annotated[
        Path | None,
        typer.Option(
            "--intervals",
            help="CSV of StudyID,DaysFromBaselineScan for inputs without dates (BraTS-METS).",
        ),
    ] = None,
    preprocess: Annotated[
        str,
        typer.Option(
            "--preprocess",
            help="auto: preprocess on the way in unless the input is a release dataset or "
            "a preprocess output; always; never.",
        ),
    ] = "auto",
    brain_method: Annotated[
        str,
        typer.Option("--brain-mask", help="Brain mask: auto, deepbet, heuristic, nonzero or none."),
    ] = "auto",
    spacing: Annotated[
        float | None,
        typer.Option(
            "--spacing",
            min=0.2,
            max=5.0,
            help="Voxel size (mm) when preprocessing on the way in (default: the spacing the "
            "checkpoint was trained at, recorded in its provenance JSON; else 1).",
        ),
    ] = None,
    native: Annotated[
        bool,
        typer.Option(
            "--native/--input-grid",
            help="For a `metstrack preprocess` output (it has transforms/): write on the "
            "original files' grids (default) or on the preprocessed grid.",
        ),
    ] = True,
    overwrite: Annotated[
        bool,
        typer.Option(
            "--overwrite",
            help="Replace predictions in --out made with another checkpoint or settings "
            "(by default the run refuses; the same run resumes).",
        ),
    ] = False,
) -> None:
    """Segment every study of each patient, memory carried through time, on native grids."""
    from metstrack.config import save_config, to_dict
    from metstrack.infer.inputs import PREPROCESS_CHOICES, prepare_input
    from metstrack.infer.predict import PredictOptions, load_patient_studies, predict_patient
    from metstrack.infer.resume import (
        FINGERPRINT_KEY,
        prepare_prediction_root,
        run_fingerprint,
        saved_fingerprint,
    )
    from metstrack.io.checkpoint import (
        MIN_VOLUME_KEY,
        THRESHOLD_KEY,
        load_checkpoint,
        provenance_number,
        training_spacing_mm,
    )
    from metstrack.models.base import InputShapeError
    from metstrack.preprocess.brain import BRAIN_METHODS

    for value, choices, flag in (
        (preprocess, PREPROCESS_CHOICES, "--preprocess"),
        (brain_method, BRAIN_METHODS, "--brain-mask"),
    ):
        if value not in choices:
            raise typer.BadParameter(f"{value!r}; {did_you_mean(value, choices)}", param_hint=flag)
    roi_size = _parse_roi(roi)
    dev = _device(device)
    with guarded():
        model, cfg = load_checkpoint(checkpoint, map_location=dev)
        model.to(dev)
        spacing_mm = spacing if spacing is not None else training_spacing_mm(checkpoint)
        if threshold is None:
            threshold = provenance_number(checkpoint, THRESHOLD_KEY, 0.5)
        if min_volume is None:
            min_volume = provenance_number(checkpoint, MIN_VOLUME_KEY, 0.0)
    if roi_size is not None:
        try:  # a window the network cannot take is refused before any work
            model.check_spatial(roi_size)
        except InputShapeError as exc:
            usage_error(f"--roi {roi}: {exc}")
    with guarded():
        # The bar appears only when the input is preprocessed on the way in.
        bar = progress()
        tasks: list = []

        def start(n: int) -> None:
            bar.start()
            tasks.append(bar.add_task("preprocessing input", total=n))

        try:
            prepared = prepare_input(
                data,
                out / INPUT_DIR,
                layout=layout,
                intervals=intervals,
                preprocess=preprocess,
                brain_method=brain_method,
                spacing_mm=spacing_mm,
                on_start=start,
                on_study=lambda o: bar.advance(tasks[0]),
            )
        finally:
            bar.stop()
        cohort = prepared.cohort
        if prepared.unknown_intervals:
            console.print(
                f"note: intervals between studies are unknown for {len(prepared.unknown_intervals)} "
                "patient(s) (the input carries no dates); studies are kept in timepoint order. "
                "Give --intervals table.csv (StudyID,DaysFromBaselineScan) to set them.",
                soft_wrap=True,
            )
        if patients:
            wanted = [p.strip() for p in patients.split(",") if p.strip()]
            selected = [cohort.patient(p) for p in wanted]
        else:
            selected = list(cohort.patients)
        if not selected:
            raise DatasetError(f"{data}: no patients to predict")
    transforms_root = prepared.root if native and prepared.preprocessed else None
    options = PredictOptions(
        brain_method=brain_method,
        roi_size=roi_size,
        overlap=overlap,
        tta_flips=tta,
        threshold=threshold,
        min_volume_mm3=min_volume,
        sw_batch_size=sw_batch_size,
    )
    run = PredictRun(
        checkpoint=str(checkpoint),
        data=str(data),
        patients=tuple(p.patient_id for p in selected),
        roi_size=tuple(roi_size or cfg.roi_size),
        overlap=overlap,
        tta_flips=tta,
        threshold=threshold,
        sw_batch_size=sw_batch_size,
        device=str(dev),
        output_grid="native" if transforms_root is not None else "input",
        input_layout=prepared.source_layout,
        preprocessed_input=str(prepared.root) if prepared.preprocessed else "",
        brain_method=brain_method,
        spacing_mm=spacing_mm,
        min_volume_mm3=min_volume,
    )
    # Everything that changes a study's outputs; device and batch size do not. The
    # dataset is not part of it: a study is its StudyID, so a follow-up added to
    # the dataset later is predicted alone on a rerun (its patient's memory rerun).
    fingerprint = run_fingerprint(
        file_sha256(checkpoint),
        {
            "roi_size": run.roi_size,
            "overlap": overlap,
            "tta_flips": tta,
            "threshold": threshold,
            "output_grid": run.output_grid,
            "brain_method": brain_method,
            "spacing_mm": spacing_mm,
            "min_volume_mm3": min_volume,
        },
    )
    with guarded():
        prepare_prediction_root(out, fingerprint, overwrite=overwrite)
    if saved_fingerprint(out) != fingerprint:  # a resumed run keeps the record it resumes
        save_config(run, out / CONFIG_FILE, model=to_dict(cfg), **{FINGERPRINT_KEY: fingerprint})
    table = Table(title=f"predictions in {out}")
    for col in ("patient", "studies", "lesions", "status"):
        table.add_column(col)
    failed: list[str] = []
    with progress() as bar:
        task = bar.add_task("predicting", total=len(selected))
        for patient in selected:
            pid = patient.patient_id
            try:
                studies = load_patient_studies(
                    patient, cfg.modalities, transforms_root=transforms_root
                )
                results = predict_patient(model, pid, studies, out, options=options)
            except MetstrackError as exc:
                failed.append(pid)
                err_console.print(
                    f"[bold red]error:[/] patient {pid}: {escape(str(exc))}", soft_wrap=True
                )
                table.add_row(pid, str(len(patient.studies)), "-", "[red]failed[/]")
            else:
                skipped = sum(r.skipped for r in results)
                status = "done" if not skipped else f"done ({skipped} kept from a previous run)"
                table.add_row(
                    pid, str(len(results)), str(sum(r.n_lesions for r in results)), status
                )
            bar.advance(task)
    console.print(table)
    if failed:
        err_console.print(
            f"[bold red]error:[/] {len(failed)} of {len(selected)} patients failed: {', '.join(failed)}; "
            "fix the files named above and rerun (finished studies are kept)",
            soft_wrap=True,
        )
        raise typer.Exit(EXIT_DATA_ERROR)
