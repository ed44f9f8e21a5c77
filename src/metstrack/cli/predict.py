"""``metstrack predict``: run a trained network over a dataset in any layout (or DICOM)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.progress import Progress, TaskID
from rich.table import Table

from metstrack.cli.common import (
    EXIT_DATA_ERROR,
    ExecutorOption,
    SchedulerOption,
    TaskMemoryOption,
    console,
    err_console,
    executor_from_options,
    guarded,
    progress,
    usage_error,
)
from metstrack.errors import did_you_mean

if TYPE_CHECKING:
    from metstrack.infer.run import PredictRequest

log = logging.getLogger(__name__)


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


# -- the options (declared once; the command below only lists them) ------------------
CheckpointOpt = Annotated[Path, typer.Option("--checkpoint", help="Trained network (.ckpt).")]
DataOpt = Annotated[
    Path,
    typer.Option(
        "--data",
        help="Input: release, BraTS-METS, BIDS, BrainMetShare, one study folder of NIfTI "
        "sequences, a DICOM folder, or a `metstrack preprocess` output.",
    ),
]
OutOpt = Annotated[Path, typer.Option("--out", help="Prediction root folder.")]
PatientsOpt = Annotated[
    str | None, typer.Option("--patients", help="Comma-separated PatientIDs (default: all).")
]
TtaOpt = Annotated[bool, typer.Option("--tta", help="Average over the 8 mirror flips.")]
OverlapOpt = Annotated[
    float, typer.Option("--overlap", min=0.0, max=0.95, help="Sliding-window overlap.")
]
RoiOpt = Annotated[
    str | None, typer.Option("--roi", help="Window size X,Y,Z (default: the checkpoint's).")
]
ThresholdOpt = Annotated[
    float | None,
    typer.Option(
        "--threshold",
        min=0.0,
        max=1.0,
        help="Foreground probability cut (default: the checkpoint's operating point from "
        "its provenance JSON, else 0.5).",
    ),
]
MinVolumeOpt = Annotated[
    float | None,
    typer.Option(
        "--min-volume",
        min=0.0,
        help="Drop predicted components under this volume in mm3 (default: the "
        "checkpoint's operating point, else 0).",
    ),
]
SwBatchSizeOpt = Annotated[
    int,
    typer.Option(
        "--sw-batch-size",
        min=1,
        help="Windows per network call (2: on CPU a single window runs a slow kernel).",
    ),
]
PrecisionOpt = Annotated[
    str,
    typer.Option(
        "--precision",
        help="Network arithmetic: auto (bf16 where the device computes it natively, "
        "else fp32), fp32 (the reference), bf16 (about 2x faster on CPUs with native "
        "bf16; masks agree with fp32 within the tolerance in docs/speed.md), or fp16 "
        "(for GPUs without bf16).",
    ),
]
MemoryFormatOpt = Annotated[
    str,
    typer.Option(
        "--memory-format",
        help="The network's memory format: auto (the faster one measured), ncdhw (as "
        "trained; with --precision fp32 the reference path), or channels-last "
        "(docs/speed.md).",
    ),
]
DeviceOpt = Annotated[str, typer.Option("--device", help="Torch device (cpu, cuda, cuda:1).")]
LayoutOpt = Annotated[
    str, typer.Option("--layout", help="Input layout (auto, dicom, or a layout name).")
]
IntervalsOpt = Annotated[
    Path | None,
    typer.Option(
        "--intervals",
        help="CSV of StudyID,DaysFromBaselineScan for inputs without dates (BraTS-METS).",
    ),
]
PreprocessOpt = Annotated[
    str,
    typer.Option(
        "--preprocess",
        help="auto: preprocess on the way in unless the input is a release dataset or "
        "a preprocess output; always; never.",
    ),
]
BrainMaskOpt = Annotated[
    str,
    typer.Option("--brain-mask", help="Brain mask: auto, deepbet, heuristic, nonzero or none."),
]
SpacingOpt = Annotated[
    float | None,
    typer.Option(
        "--spacing",
        min=0.2,
        max=5.0,
        help="Voxel size (mm) when preprocessing on the way in (default: the spacing the "
        "checkpoint was trained at, recorded in its provenance JSON; else 1).",
    ),
]
NativeOpt = Annotated[
    bool,
    typer.Option(
        "--native/--input-grid",
        help="For a `metstrack preprocess` output (it has transforms/): write on the "
        "original files' grids (default) or on the preprocessed grid.",
    ),
]
OverwriteOpt = Annotated[
    bool,
    typer.Option(
        "--overwrite",
        help="Replace predictions in --out made with another checkpoint or settings "
        "(by default the run refuses; the same run resumes).",
    ),
]
WorkersOpt = Annotated[
    int, typer.Option("--workers", min=1, help="Dask LocalCluster workers (--executor dask).")
]


def predict(
    checkpoint: CheckpointOpt,
    data: DataOpt,
    out: OutOpt,
    patients: PatientsOpt = None,
    tta: TtaOpt = False,
    overlap: OverlapOpt = 0.5,
    roi: RoiOpt = None,
    threshold: ThresholdOpt = None,
    min_volume: MinVolumeOpt = None,
    sw_batch_size: SwBatchSizeOpt = 2,
    precision: PrecisionOpt = "auto",
    memory_format: MemoryFormatOpt = "auto",
    device: DeviceOpt = "cpu",
    layout: LayoutOpt = "auto",
    intervals: IntervalsOpt = None,
    preprocess: PreprocessOpt = "auto",
    brain_method: BrainMaskOpt = "auto",
    spacing: SpacingOpt = None,
    native: NativeOpt = True,
    overwrite: OverwriteOpt = False,
    workers: WorkersOpt = 1,
    executor: ExecutorOption = "local",
    scheduler: SchedulerOption = None,
    task_memory: TaskMemoryOption = None,
) -> None:
    """Segment every study of each patient, memory carried through time, on native grids."""
    from metstrack.infer.inputs import PREPROCESS_CHOICES
    from metstrack.infer.run import PredictRequest
    from metstrack.infer.sliding import MEMORY_FORMATS, PRECISIONS
    from metstrack.preprocess.brain import BRAIN_METHODS

    for value, choices, flag in (
        (preprocess, PREPROCESS_CHOICES, "--preprocess"),
        (brain_method, BRAIN_METHODS, "--brain-mask"),
        (precision, PRECISIONS, "--precision"),
        (memory_format, MEMORY_FORMATS, "--memory-format"),
    ):
        if value not in choices:
            raise typer.BadParameter(f"{value!r}; {did_you_mean(value, choices)}", param_hint=flag)
    request = PredictRequest(
        checkpoint=checkpoint,
        data=data,
        out=out,
        patients=tuple(p.strip() for p in (patients or "").split(",") if p.strip()),
        tta=tta,
        overlap=overlap,
        roi_size=_parse_roi(roi),
        threshold=threshold,
        min_volume_mm3=min_volume,
        sw_batch_size=sw_batch_size,
        device=str(_device(device)),
        layout=layout,
        intervals=intervals,
        preprocess=preprocess,  # type: ignore[arg-type]  # checked above
        brain_method=brain_method,  # type: ignore[arg-type]
        spacing_mm=spacing,
        native=native,
        overwrite=overwrite,
        precision=precision,  # type: ignore[arg-type]
        memory_format=memory_format,  # type: ignore[arg-type]
    )
    run_prediction(
        request,
        roi=roi,
        executor=executor,
        workers=workers,
        scheduler=scheduler,
        task_memory=task_memory,
    )


def run_prediction(
    request: PredictRequest,
    *,
    roi: str | None,
    executor: str,
    workers: int,
    scheduler: str | None,
    task_memory: float | None,
) -> None:
    """Run :func:`metstrack.infer.run.predict_dataset` with progress bars and a result table.

    ``request`` holds every prediction option (the typed record the command builds);
    ``roi`` is the raw ``--roi`` text for error messages, the rest choose the executor
    (:func:`metstrack.cli.common.executor_from_options`). Exits 1 (after the table) when a patient failed; a window size the network refuses
    is a usage error naming ``--roi``.
    """
    from metstrack.infer.run import predict_dataset
    from metstrack.models.base import InputShapeError

    out = request.out
    table = Table(title=f"predictions in {out}")
    for col in ("patient", "studies", "lesions", "status"):
        table.add_column(col)
    # The first bar appears only when the input is preprocessed on the way in.
    bars: dict[str, Progress] = {}
    tasks: dict[str, TaskID] = {}

    def start_bar(name: str, description: str, n: int) -> None:
        bars[name] = progress()
        bars[name].start()
        tasks[name] = bars[name].add_task(description, total=n)

    def input_ready(prepared) -> None:
        if "input" in bars:
            bars["input"].stop()
        if prepared.unknown_intervals:
            console.print(
                f"note: intervals between studies are unknown for {len(prepared.unknown_intervals)} "
                "patient(s) (the input carries no dates); studies are kept in timepoint order. "
                "Give --intervals table.csv (StudyID,DaysFromBaselineScan) to set them.",
                soft_wrap=True,
            )

    def patient_done(p) -> None:
        if p.error is not None:
            err_console.print(
                f"[bold red]error:[/] patient {p.patient_id}: {escape(p.error)}", soft_wrap=True
            )
            table.add_row(p.patient_id, str(p.n_studies), "-", "[red]failed[/]")
        else:
            status = "done" if not p.n_kept else f"done ({p.n_kept} kept from a previous run)"
            table.add_row(p.patient_id, str(p.n_studies), str(p.n_lesions), status)
        bars["predict"].advance(tasks["predict"])

    with guarded(), executor_from_options(executor, workers, scheduler, task_memory) as pool:
        try:
            result = predict_dataset(
                request,
                on_input_start=lambda n: start_bar("input", "preprocessing input", n),
                on_input_study=lambda o: bars["input"].advance(tasks["input"]),
                on_input_ready=input_ready,
                on_start=lambda n: start_bar("predict", "predicting", n),
                on_patient=patient_done,
                executor=pool,
            )
        except InputShapeError as exc:
            usage_error(f"--roi {roi}: {exc}")
        finally:
            for bar in bars.values():
                bar.stop()
    console.print(table)
    if result.failed:
        err_console.print(
            f"[bold red]error:[/] {len(result.failed)} of {len(result.patients)} patients failed: "
            f"{', '.join(result.failed)}; "
            "fix the files named above and rerun (finished studies are kept)",
            soft_wrap=True,
        )
        raise typer.Exit(EXIT_DATA_ERROR)
