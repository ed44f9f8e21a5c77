"""Build the static HTML report: a cohort page and one page per patient.

The report is a folder that opens from disk (no server, no network)::

    <out>/index.html              cohort: evaluation by lesion-size stratum,
                                  tracking summary, Kaplan-Meier curves, Cox table
    <out>/patients/<P>.html       timeline, one image strip per study, lesion table
    <out>/img/...                 every picture (PNG)
    <out>/report.json             what the pages show, as numbers (tests compare)

Inputs are the outputs of the other commands; each is optional and its
section is omitted (with a note) when absent.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from metstrack.core import schema
from metstrack.core.atomic import write_json_atomic, write_text_atomic
from metstrack.core.lesions import lesion_table
from metstrack.io.layouts import read_dataset
from metstrack.io.nifti import find_nifti, read_label, read_volume
from metstrack.io.tracks import tracked_map_path
from metstrack.report.benchmark import benchmark_section
from metstrack.report.figures import StripLesion, lesion_strip
from metstrack.report.html import cards, esc, figure, fmt, page, table
from metstrack.tracking.identity import lesion_id_of, tracking_id
from metstrack.types import Cohort, Patient, Study

log = logging.getLogger(__name__)

#: Modalities tried, in order, for the display image of a study.
DISPLAY_ORDER = ("CT1", "T1", "FLAIR", "T2")


@dataclass(frozen=True)
class ReportInputs:
    """Where the report reads from.

    Attributes:
        data: Dataset root (release layout) with the images and reference labels.
        predictions: Predictions root of ``metstrack predict`` (optional).
        evaluation: Output folder of ``metstrack evaluate`` (optional).
        tracking: Output folder of ``metstrack track`` (optional).
        survival: Output folder of ``metstrack survival`` (optional).
        title: Report title.
        benchmark: Output folder of ``metstrack benchmark`` (optional): its FROC
            comparison and curves become a section of the cohort page.
    """

    data: Path
    predictions: Path | None = None
    evaluation: Path | None = None
    tracking: Path | None = None
    survival: Path | None = None
    title: str = "metstrack report"
    benchmark: Path | None = None


def _read_csv(path: Path | None) -> pd.DataFrame | None:
    if path is None or not path.is_file():
        return None
    return pd.read_csv(
        path, dtype={"PatientID": str, "StudyID": str, "patient_id": str, "study_id": str}
    )


def _read_json(path: Path | None) -> dict | None:
    if path is None or not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


def _display_image(study: Study):
    for m in DISPLAY_ORDER:
        p = study.path(m)
        if p is not None:
            return m, read_volume(p)
    return None, None


def _study_masks(study: Study, inputs: ReportInputs, image):
    pred = ref = None
    if inputs.predictions is not None:
        p = find_nifti(
            schema.prediction_dir(inputs.predictions, study.patient_id, study.study_id),
            schema.PREDICTION_MASK,
        )
        if p is not None:
            pred = read_label(p, reference=image).array
    if study.any_label_path is not None:  # the release label, else a synthetic truth label
        ref = read_label(study.any_label_path, binary=False, reference=image).array > 0
    return pred, ref


def _strip_lesions(pred, ref, affine, *, tracked: np.ndarray | None) -> list[StripLesion]:
    """Lesions of pred and ref, named by tracked ID when a tracked map shares the grid."""
    out: list[StripLesion] = []
    seen = np.zeros(pred.shape if pred is not None else ref.shape, dtype=bool)
    k = 0
    for mask, src in ((pred, "pred"), (ref, "ref")):
        if mask is None:
            continue
        for les in sorted(lesion_table(mask, affine), key=lambda x: -x.volume_mm3):
            c = tuple(int(round(v)) for v in les.centroid_voxel)
            if src == "ref" and seen[c]:
                continue
            k += 1
            name = f"#{k}"
            if tracked is not None and tracked[c] > 0:
                name = f"L{int(tracked[c])}"
            both = src == "pred" and ref is not None and bool(ref[c])
            out.append(
                StripLesion(name, les.centroid_voxel, les.volume_mm3, "both" if both else src)
            )
            if src == "pred":
                x0, y0, z0, x1, y1, z1 = les.bbox
                seen[x0:x1, y0:y1, z0:z1] = True
    return out


def build_report(
    inputs: ReportInputs,
    out_dir: str | Path,
    *,
    cohort: Cohort | None = None,
    patients: Sequence[str] | None = None,
    max_lesions_per_study: int = 6,
    progress: Callable[[str], None] | None = None,
) -> Path:
    """Write the report and return the path of ``index.html``.

    Args:
        inputs: Input folders.
        out_dir: Report folder (created; existing pages are replaced atomically).
        cohort: The dataset, if already read (else read from ``inputs.data``).
        patients: Restrict patient pages to these IDs (default: every patient).
        max_lesions_per_study: Lesion panels per study strip (largest first,
            then the rest are listed in the table only).
        progress: Called with each patient ID as its page is done.

    Returns:
        Path of ``index.html``.
    """
    out = Path(out_dir)
    (out / "img").mkdir(parents=True, exist_ok=True)
    (out / "patients").mkdir(parents=True, exist_ok=True)
    cohort = cohort or read_dataset(inputs.data)
    chosen = [p for p in cohort.patients if patients is None or p.patient_id in set(patients)]

    traj = _read_csv(inputs.tracking / "trajectories.csv" if inputs.tracking else None)
    rates = _read_csv(inputs.tracking / "rates.csv" if inputs.tracking else None)
    burden = _read_csv(inputs.tracking / "burden.csv" if inputs.tracking else None)
    ev_summary = _read_csv(inputs.evaluation / "summary.csv" if inputs.evaluation else None)
    ev_json = _read_json(inputs.evaluation / "summary.json" if inputs.evaluation else None)
    ev_studies = _read_csv(inputs.evaluation / "studies.csv" if inputs.evaluation else None)
    sv_json = _read_json(inputs.survival / "summary.json" if inputs.survival else None)
    cox = _read_csv(inputs.survival / "cox_summary.csv" if inputs.survival else None)

    facts: dict = {"patients": {}, "title": inputs.title}
    for p in chosen:
        facts["patients"][p.patient_id] = _patient_page(
            p, inputs, out, traj=traj, max_lesions=max_lesions_per_study
        )
        if progress:
            progress(p.patient_id)

    body = [_headline(ev_json, sv_json, traj, chosen, facts)]
    body.append(_evaluation_section(ev_summary, ev_json))
    body.append(_tracking_section(traj, rates, burden, facts))
    body.append(_survival_section(inputs, cox, sv_json, out, facts))
    if inputs.benchmark is not None:
        body.append(benchmark_section(inputs.benchmark, out, facts))
    body.append(_patient_index(chosen, traj, rates, ev_studies))
    index = out / "index.html"
    write_text_atomic(index, page(inputs.title, "".join(body)))
    write_json_atomic(out / "report.json", facts)
    return index


# ------------------------------------------------------------------ cohort page


def _headline(ev_json, sv_json, traj, patients, facts) -> str:
    items = [
        ("patients", str(len(patients))),
        ("studies", str(sum(len(p.studies) for p in patients))),
    ]
    if ev_json:
        h = ev_json.get("headline", {})
        facts["evaluation_headline"] = h
        items += [
            ("lesion F1", fmt(h.get("lesion_f1"))),
            ("sensitivity < 10 mm³", fmt(h.get("small_lesion_sensitivity"))),
            ("false positives / scan", fmt(h.get("fp_per_scan"))),
            ("voxel Dice", fmt(h.get("dice"))),
        ]
    if traj is not None:
        items.append(
            ("tracked lesions", str(traj[["patient_id", "lesion_id"]].drop_duplicates().shape[0]))
        )
    if sv_json and sv_json.get("headline"):
        h = sv_json["headline"]
        facts["survival_headline"] = h
        items.append(
            (
                "HR per cm³/month",
                f"{fmt(h['hr_rate_volume_per_cm3_month'])} ({fmt(h['hr_lower_95'])}-{fmt(h['hr_upper_95'])})",
            )
        )
    return "<h2>Summary</h2>" + cards(items)


def _evaluation_section(summary: pd.DataFrame | None, ev_json) -> str:
    if summary is None:
        return "<h2>Evaluation</h2><p class='note'>No evaluation (run metstrack evaluate).</p>"
    s = summary.set_index("name")
    rows = []
    for name in s.index:
        if name.startswith("sensitivity_"):
            stratum = name[len("sensitivity_") :]
            fp = s.loc[f"fp_per_scan_{stratum}"] if f"fp_per_scan_{stratum}" in s.index else None
            r = s.loc[name]
            rows.append(
                {
                    "reference lesion volume": stratum,
                    "lesions": int(r["n_defined"]) if "n_defined" in r else "",
                    "sensitivity": r["value"],
                    "95% CI": f"{fmt(r['ci_low'])}-{fmt(r['ci_high'])}",
                    "FP per scan (by FP volume)": None if fp is None else fp["value"],
                }
            )
    strata = pd.DataFrame(rows)
    main_names = [
        n
        for n in (
            "lesion_f1",
            "lesion_sensitivity",
            "lesion_precision",
            "fp_per_scan",
            "new_lesion_sensitivity",
            "dice",
            "hd95_mm",
            "lesionwise_dice",
            "lesionwise_hd95_mm",
            "count_abs_error",
            "volume_rel_error",
        )
        if n in s.index
    ]
    overall = s.loc[main_names].reset_index()[["name", "value", "ci_low", "ci_high", "n_defined"]]
    n = (
        ""
        if not ev_json
        else f" ({ev_json.get('n_studies')} studies, {ev_json.get('n_patients')} patients, patient-level bootstrap 95% CI)"
    )
    return (
        f"<h2>Evaluation{esc(n)}</h2><h3>Detection by reference lesion volume</h3>"
        + table(strata, left=["reference lesion volume", "95% CI"])
        + "<h3>Overall</h3>"
        + table(overall, left=["name"])
    )


def _tracking_section(traj, rates, burden, facts) -> str:
    if traj is None:
        return "<h2>Tracking</h2><p class='note'>No tracking (run metstrack track).</p>"
    lesions = traj[["patient_id", "lesion_id"]].drop_duplicates()
    status = traj["status"].value_counts().rename_axis("status").reset_index(name="observations")
    new_after = int(((traj["status"] == "new") & (traj["study_index"] > 0)).sum())
    facts["tracking"] = {
        "lesions": len(lesions),
        "new_after_baseline": new_after,
        "status_counts": dict(zip(status["status"], status["observations"], strict=True)),
    }
    parts = [
        "<h2>Tracking</h2>",
        cards(
            [
                ("lesion identities", str(len(lesions))),
                ("new lesions after baseline", str(new_after)),
            ]
        ),
        "<h3>Lesion observations by status</h3>",
        table(status, left=["status"], classes={"status": "status-"}),
    ]
    if rates is not None:
        r = rates[
            [
                "patient_id",
                "n_studies",
                "rate_volume_cm3_per_month",
                "rate_count_per_month",
                "defined",
            ]
        ]
        parts += ["<h3>Monthly rate of change per patient</h3>", table(r, left=["patient_id"])]
    return "".join(parts)


def survival_cohort(data: Path, survival: Path) -> tuple[str, str]:
    """Header and note naming the cohort a survival analysis was fitted on.

    The survival folder's ``config.json`` records its dataset and burden table.
    A fit on another dataset than the report's is labelled a separate cohort, so
    survival curves are never shown under the header of the cohort above them.
    """
    cfg_path = survival / "config.json"
    try:
        recorded = json.loads(cfg_path.read_text(encoding="utf-8")).get("inputs", {})
    except (OSError, ValueError):
        recorded = {}
    src = recorded.get("data")
    burden = recorded.get("burden", "")
    measured = (
        "measured by metstrack track"
        if "ground_truth" not in str(burden)
        else "the synthetic ground truth"
    )
    if src is None:
        return (
            "Survival",
            "The cohort this analysis was fitted on is not recorded (no config.json).",
        )
    if Path(src).resolve() == Path(data).resolve():
        return "Survival of this cohort", f"Burden from {measured} ({esc(burden)})."
    return (
        "Survival: a separate cohort",
        f"This analysis is of the cohort in {esc(src)}, not of the imaging cohort above; "
        f"its burden is from {measured}.",
    )


def _survival_section(inputs, cox, sv_json, out, facts) -> str:
    if cox is None:
        return "<h2>Survival</h2><p class='note'>No survival analysis (run metstrack survival).</p>"
    header, note = survival_cohort(inputs.data, inputs.survival)
    parts = [f"<h2>{esc(header)}</h2>", f"<p class='note'>{note}</p>"]
    facts["survival_cohort"] = header
    km = inputs.survival / "km_rate_of_change.png"
    if km.is_file():
        shutil.copyfile(km, out / "img" / "km_rate_of_change.png")
        parts.append(figure("img/km_rate_of_change.png", "Kaplan-Meier curves by rate of change"))
    cols = [
        c
        for c in ("covariate", "unit", "hr", "hr_lower_95", "hr_upper_95", "p", "hr_per_sd")
        if c in cox.columns
    ]
    parts.append("<h3>Cox proportional hazards</h3>" + table(cox[cols], left=["covariate", "unit"]))
    if sv_json:
        parts.append(
            f"<p class='note'>{sv_json.get('n_patients')} patients, {sv_json.get('n_events')} deaths; "
            f"concordance {fmt(sv_json.get('concordance'))}; origin {esc(sv_json.get('origin'))}.</p>"
        )
        facts["survival"] = {
            "n_patients": sv_json.get("n_patients"),
            "cox": cox[cols].to_dict(orient="records"),
        }
    return "".join(parts)


def _patient_index(patients: Sequence[Patient], traj, rates, ev_studies) -> str:
    rows = []
    for p in patients:
        row = {
            "patient": f"<a href='patients/{esc(p.patient_id)}.html'>{esc(p.patient_id)}</a>",
            "split": p.split or "-",
            "studies": len(p.studies),
        }
        if rates is not None:
            r = rates[rates["patient_id"] == p.patient_id]
            row["rate cm³/month"] = (
                fmt(float(r["rate_volume_cm3_per_month"].iloc[0])) if len(r) else "-"
            )
        if traj is not None:
            row["lesions tracked"] = int(
                traj.loc[traj["patient_id"] == p.patient_id, "lesion_id"].nunique()
            )
        rows.append(row)
    if not rows:
        return ""
    head = "".join(f"<th class='l'>{esc(k)}</th>" for k in rows[0])
    body = "".join(
        "<tr>"
        + "".join(f"<td class='l'>{v if k == 'patient' else esc(v)}</td>" for k, v in r.items())
        + "</tr>"
        for r in rows
    )
    return f"<h2>Patients</h2><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


# ------------------------------------------------------------------ patient page


def _patient_page(p: Patient, inputs: ReportInputs, out: Path, *, traj, max_lesions: int) -> dict:
    pid = p.patient_id
    nav = "<a href='../index.html'>&larr; cohort</a>"
    parts = []
    facts: dict = {"studies": {}}
    if inputs.tracking is not None:
        tl = inputs.tracking / "timelines" / f"{pid}.png"
        if tl.is_file():
            shutil.copyfile(tl, out / "img" / f"{pid}_timeline.png")
            parts.append(
                "<h2>Lesion timeline</h2>"
                + figure(f"../img/{pid}_timeline.png", "lesion volumes over time")
            )
    parts.append(
        "<h2>Studies</h2><p class='legend'>contours:<span style='background:#ff7f0e'></span>prediction (solid)"
        "<span style='background:#17becf'></span>reference (dashed); small lesions (&lt; 100 mm³) are shown zoomed</p>"
    )
    for s in p.studies:
        mod, img = _display_image(s)
        sf: dict = {"days_from_baseline": s.days_from_baseline, "labelled": s.labelled}
        head = (
            f"<h3>{esc(s.study_id)}: day {fmt(float(s.days_from_baseline))}"
            f"{' (labelled)' if s.labelled else ''}</h3>"
        )
        if img is None:
            parts.append(head + "<p class='note'>no image for this study</p>")
            facts["studies"][s.study_id] = sf
            continue
        pred, ref = _study_masks(s, inputs, img)
        tracked = None
        if inputs.tracking is not None:
            tp = tracked_map_path(inputs.tracking, pid, s.study_id)
            if tp.is_file():
                tv = read_label(tp, binary=False)
                tracked = tv.array if tv.same_grid(img) else None
        lesions = (
            _strip_lesions(pred, ref, img.affine, tracked=tracked)
            if (pred is not None or ref is not None)
            else []
        )
        png = out / "img" / f"{pid}_{s.study_id}.png"
        lesion_strip(
            img.array,
            img.spacing_mm,
            lesions[:max_lesions],
            png,
            pred=pred,
            ref=ref,
            title=f"{s.study_id} {mod}",
        )
        sf.update(
            {
                "image": png.name,
                "n_pred_lesions": sum(x.source != "ref" for x in lesions),
                "n_ref_only_lesions": sum(x.source == "ref" for x in lesions),
            }
        )
        facts["studies"][s.study_id] = sf
        parts.append(head + figure(f"../img/{png.name}", f"axial slices of {s.study_id}"))
    if traj is not None:
        t = traj[traj["patient_id"] == pid]
        if len(t):
            # the TrackingID metstrack export writes into the SEG segments and SR groups
            t = t.assign(TrackingID=t["lesion_id"].map(tracking_id))
            cols = [
                "TrackingID",
                "study_id",
                "days_from_baseline",
                "volume_mm3",
                "longest_diameter_mm",
                "status",
                "event",
            ]
            parts.append(
                "<h2>Lesions</h2><p class='note'>TrackingID: the lesion's identity as the DICOM "
                "SEG segments and SR measurement groups written by <code>metstrack export</code> "
                "carry it (TrackingID, with a TrackingUID that is the same in every study)</p>"
                + table(
                    t[cols].fillna(""),
                    left=["TrackingID", "study_id", "status", "event"],
                    classes={"status": "status-"},
                )
            )
            facts["lesion_rows"] = len(t)
            facts["tracking_ids"] = sorted(set(t["TrackingID"]), key=lesion_id_of)
    write_text_atomic(
        out / "patients" / f"{pid}.html", page(f"Patient {pid}", "".join(parts), nav=nav)
    )
    return facts
