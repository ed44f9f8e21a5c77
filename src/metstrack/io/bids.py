"""Reader for a BIDS-like longitudinal layout.

Supported::

    <root>/participants.tsv                         optional; a ``split`` column
                                                    (train/val/test) sets splits
    <root>/sub-<P>/sub-<P>_sessions.tsv             optional; ``session_id`` plus
                                                    ``acq_time`` (ISO date) or
                                                    ``days_from_baseline``
    <root>/sub-<P>/ses-<S>/anat/sub-<P>_ses-<S>[_<key>-<value>...]_<suffix>.nii[.gz]
    <root>/derivatives/<pipeline>/sub-<P>/ses-<S>/anat/sub-<P>_ses-<S>[_...]_{mask,dseg}.nii[.gz]

Suffix mapping: ``T1w`` -> T1, ``T1w`` with a ``ce-<agent>`` entity (e.g.
``ce-gd``) -> CT1, ``T2w`` -> T2, ``FLAIR`` -> FLAIR; other suffixes are
ignored. The lesion mask is a ``_mask`` or ``_dseg`` file of the session in a
derivatives pipeline (``derivative=`` picks one pipeline by name; otherwise
the first in name order, with a warning when several have one). Several files
for one sequence (``acq-``/``run-`` variants) keep the first in name order,
with a warning.

PatientID is ``sub-<P>``, StudyID ``sub-<P>_ses-<S>``. Studies are ordered by
days from the subject's first session (from ``sessions.tsv``), then by session
label; without session times the days are ``NaN`` (warned once per subject)
and the order is the session labels' (natural) order.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

import pandas as pd

from metstrack.errors import did_you_mean
from metstrack.io.nifti import is_nifti
from metstrack.io.problems import ERROR, WARNING, DatasetScan, Problem, cohort_or_raise
from metstrack.types import LABEL_SEQUENCE, MODALITIES, Cohort, Patient, Series, Study

LAYOUT = "bids"
SPLITS = ("train", "val", "test")
MASK_SUFFIXES = ("mask", "dseg")


def detect(root: Path) -> bool:
    """True when ``root`` holds ``sub-*/ses-*`` folders."""
    return root.is_dir() and any(
        p.is_dir() and any(s.is_dir() for s in p.glob("ses-*")) for p in root.glob("sub-*")
    )


def read_bids(
    root: str | Path,
    *,
    derivative: str | None = None,
    label_classes: tuple[int, ...] = (),
    strict: bool = False,
) -> Cohort:
    """Read a BIDS-like ``sub-*/ses-*`` dataset.

    Args:
        root: BIDS root folder.
        derivative: Name of the derivatives pipeline holding the masks; ``None``
            takes the first pipeline (name order) that has one.
        label_classes: Mask values forming the lesion mask for a multi-class
            ``dseg``; empty means binary 0/1 masks.
        strict: Raise on recorded errors instead of logging them.

    Returns:
        The cohort, ``layout="bids"``.

    Raises:
        DatasetError: No ``sub-*/ses-*`` folder, a bad ``participants.tsv`` or
            ``sessions.tsv`` row (file, line, column), or (strict) a recorded error.
    """
    scan = scan_bids(root, derivative=derivative, label_classes=label_classes)
    return cohort_or_raise(scan, root, strict=strict)


def scan_bids(
    root: str | Path, *, derivative: str | None = None, label_classes: tuple[int, ...] = ()
) -> DatasetScan:
    """Scan a BIDS-like dataset, recording problems instead of stopping.

    Args:
        root: BIDS root folder.
        derivative: Derivatives pipeline holding the masks, or ``None``.
        label_classes: Mask values forming the lesion mask (empty: binary).

    Returns:
        A :class:`~metstrack.io.problems.DatasetScan`.
    """
    root = Path(root)
    table_errors: list[Problem] = []
    problems: list[Problem] = []
    subjects = sorted((p for p in root.glob("sub-*") if p.is_dir()), key=lambda p: _natural(p.name))
    if not subjects:
        table_errors.append(Problem(ERROR, root, "layout", "no sub-*/ses-* folders"))
        return DatasetScan(None, tuple(table_errors), ())
    pipelines = _pipelines(root, derivative, table_errors)
    splits = _participant_splits(root, {p.name for p in subjects}, table_errors)
    patients = []
    for sub in subjects:
        sessions = sorted(
            (s for s in sub.glob("ses-*") if s.is_dir()), key=lambda s: _natural(s.name)
        )
        if not sessions:
            problems.append(
                Problem(WARNING, sub, "layout", "subject folder has no ses-* session; skipped")
            )
            continue
        days = _session_days(sub, [s.name for s in sessions], table_errors, problems)
        studies = []
        for ses in sessions:
            series = _session_series(sub.name, ses, problems)
            mask = _session_mask(root, pipelines, sub.name, ses.name, problems)
            if mask is not None:
                series.append(Series(sequence=LABEL_SEQUENCE, path=mask))
            studies.append(
                Study(
                    study_id=f"{sub.name}_{ses.name}",
                    patient_id=sub.name,
                    days_from_baseline=days.get(ses.name, math.nan),
                    relative_timepoint=0,
                    series=tuple(series),
                    sequences_flagged=tuple(s.sequence for s in series),
                    labelled=mask is not None,
                    expert_adjusted=False,
                    split=splits.get(sub.name),
                )
            )
        ordered = sorted(
            studies,
            key=lambda s: (
                math.isnan(s.days_from_baseline),
                0.0 if math.isnan(s.days_from_baseline) else s.days_from_baseline,
                _natural(s.study_id),
            ),
        )
        ranked = tuple(replace(s, relative_timepoint=k) for k, s in enumerate(ordered, 1))
        patients.append(Patient(patient_id=sub.name, studies=ranked, split=splits.get(sub.name)))
    cohort = Cohort(
        root=root,
        patients=tuple(patients),
        layout=LAYOUT,
        label_classes=tuple(int(c) for c in label_classes),
    )
    return DatasetScan(cohort, tuple(table_errors), tuple(problems))


def parse_entities(name: str) -> tuple[dict[str, str], str] | None:
    """Split a BIDS file name into its entities and suffix.

    Args:
        name: File name such as ``sub-01_ses-02_ce-gd_T1w.nii.gz``.

    Returns:
        ``({"sub": "01", "ses": "02", "ce": "gd"}, "T1w")``, or ``None`` when
        the name is not ``key-value`` pairs followed by a suffix.
    """
    stem = re.sub(r"\.nii(\.gz)?$", "", name)
    parts = stem.split("_")
    if len(parts) < 2:
        return None
    entities: dict[str, str] = {}
    for part in parts[:-1]:
        if "-" not in part:
            return None
        key, _, value = part.partition("-")
        if not key or not value or key in entities:
            return None
        entities[key] = value
    return entities, parts[-1]


def _sequence_of(entities: dict[str, str], suffix: str) -> str | None:
    if suffix == "T1w":
        return "CT1" if "ce" in entities else "T1"
    return {"T2w": "T2", "FLAIR": "FLAIR"}.get(suffix)


def _session_series(sub: str, ses: Path, problems: list[Problem]) -> list[Series]:
    anat = ses / "anat"
    found: dict[str, list[Path]] = defaultdict(list)
    if anat.is_dir():
        for f in sorted(anat.iterdir()):
            if not (f.is_file() and is_nifti(f)):
                continue
            parsed = parse_entities(f.name)
            if (
                parsed is None
                or parsed[0].get("sub") != sub[4:]
                or (parsed[0].get("ses") != ses.name[4:])
            ):
                problems.append(
                    Problem(
                        WARNING,
                        f,
                        "naming",
                        f"name does not follow {sub}_{ses.name}[_key-value...]_<suffix>.nii.gz; "
                        "file ignored",
                    )
                )
                continue
            seq = _sequence_of(*parsed)
            if seq is not None:
                found[seq].append(f)
    series = []
    for seq in MODALITIES:
        paths = found.get(seq, [])
        if len(paths) > 1:
            problems.append(
                Problem(
                    WARNING,
                    paths[1],
                    "duplicate-file",
                    f"{len(paths)} files map to {seq} in this session "
                    f"({', '.join(p.name for p in paths)}); using {paths[0].name}",
                )
            )
        if paths:
            series.append(Series(sequence=seq, path=paths[0]))
        else:
            want = {"T1": "T1w", "CT1": "ce-gd_T1w", "T2": "T2w", "FLAIR": "FLAIR"}[seq]
            problems.append(
                Problem(
                    WARNING,
                    anat / f"{sub}_{ses.name}_{want}.nii.gz",
                    "missing-sequence",
                    f"session has no {seq} ({want}); models that need it will skip or impute it",
                )
            )
    return series


def _pipelines(root: Path, derivative: str | None, table_errors: list[Problem]) -> list[Path]:
    deriv = root / "derivatives"
    available = sorted(p for p in deriv.iterdir() if p.is_dir()) if deriv.is_dir() else []
    if derivative is None:
        return available
    chosen = [p for p in available if p.name == derivative]
    if not chosen:
        table_errors.append(
            Problem(
                ERROR,
                deriv,
                "layout",
                f"derivatives pipeline {derivative!r} not found; "
                + did_you_mean(derivative, [p.name for p in available] or ["<none>"]),
            )
        )
    return chosen


def _session_mask(
    root: Path, pipelines: list[Path], sub: str, ses: str, problems: list[Problem]
) -> Path | None:
    hits: list[Path] = []
    for pipe in pipelines:
        anat = pipe / sub / ses / "anat"
        if not anat.is_dir():
            continue
        for f in sorted(anat.iterdir()):
            parsed = parse_entities(f.name) if is_nifti(f) else None
            if parsed and parsed[1] in MASK_SUFFIXES and f.name.startswith(f"{sub}_{ses}_"):
                hits.append(f)
    if len(hits) > 1:
        problems.append(
            Problem(
                WARNING,
                hits[1],
                "duplicate-file",
                f"{len(hits)} lesion masks for {sub} {ses} "
                f"({', '.join(str(h.relative_to(root)) for h in hits)}); using "
                f"{hits[0].relative_to(root)}; pass derivative=<pipeline> to choose",
            )
        )
    return hits[0] if hits else None


def _read_tsv(path: Path, required: tuple[str, ...], table_errors: list[Problem]):
    try:
        df = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False, skip_blank_lines=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        table_errors.append(Problem(ERROR, path, "table", f"cannot parse the TSV ({exc})"))
        return None
    df.columns = [str(c).strip() for c in df.columns]
    missing = [c for c in required if c not in df.columns]
    if missing:
        table_errors.append(
            Problem(
                ERROR,
                path,
                "table",
                f"missing required column(s) {', '.join(missing)}; found "
                f"{', '.join(df.columns)}; " + did_you_mean(missing[0], df.columns),
            )
        )
        return None
    df["__line__"] = df.index + 2
    return df[~(df.drop(columns="__line__") == "").all(axis=1)]


def _participant_splits(
    root: Path, subjects: set[str], table_errors: list[Problem]
) -> dict[str, str]:
    path = root / "participants.tsv"
    if not path.is_file():
        return {}
    df = _read_tsv(path, ("participant_id",), table_errors)
    if df is None or "split" not in df.columns:
        return {}
    out = {}
    for _, row in df.iterrows():
        line, pid, split = int(row["__line__"]), str(row["participant_id"]).strip(), row["split"]
        split = str(split).strip()
        if pid not in subjects:
            table_errors.append(
                Problem(
                    ERROR,
                    path,
                    "table",
                    f"line {line}, column 'participant_id': unknown subject {pid!r} "
                    "(no such sub-* folder)",
                )
            )
        elif split and split not in SPLITS:
            table_errors.append(
                Problem(
                    ERROR,
                    path,
                    "split",
                    f"line {line}, column 'split': unknown split {split!r}; "
                    + did_you_mean(split, SPLITS),
                )
            )
        elif split:
            out[pid] = split
    return out


def _session_days(
    sub: Path, sessions: list[str], table_errors: list[Problem], problems: list[Problem]
) -> dict[str, float]:
    path = sub / f"{sub.name}_sessions.tsv"
    if not path.is_file():
        if len(sessions) > 1:
            problems.append(
                Problem(
                    WARNING,
                    path,
                    "timepoints",
                    f"no sessions table; {sub.name}'s sessions are ordered by label and their "
                    "days from baseline are unknown (NaN); add session_id and acq_time",
                )
            )
        return {sessions[0]: 0.0} if len(sessions) == 1 else {}
    df = _read_tsv(path, ("session_id",), table_errors)
    if df is None:
        return {}
    col = "days_from_baseline" if "days_from_baseline" in df.columns else "acq_time"
    if col not in df.columns:
        table_errors.append(
            Problem(
                ERROR,
                path,
                "table",
                "needs an acq_time (ISO date) or days_from_baseline column to order sessions",
            )
        )
        return {}
    raw: dict[str, float] = {}
    for _, row in df.iterrows():
        line, ses, v = int(row["__line__"]), str(row["session_id"]).strip(), str(row[col]).strip()
        try:
            x = pd.Timestamp(v).value / 86400e9 if col == "acq_time" else float(v)
            if not math.isfinite(x):
                raise ValueError
        except (ValueError, TypeError):
            what = "an ISO date" if col == "acq_time" else "a number"
            table_errors.append(
                Problem(
                    ERROR,
                    path,
                    "table",
                    f"line {line}, column {col!r}: expected {what}, found a value that is "
                    "not one (not shown: acquisition dates can identify a patient)",
                )
            )
            continue
        if ses not in sessions:
            table_errors.append(
                Problem(
                    ERROR,
                    path,
                    "table",
                    f"line {line}, column 'session_id': unknown session {ses!r} "
                    f"(no {sub.name}/{ses} folder)",
                )
            )
            continue
        raw[ses] = x
    missing = [s for s in sessions if s not in raw]
    if missing:
        problems.append(
            Problem(
                WARNING,
                path,
                "timepoints",
                f"sessions {', '.join(missing)} have no row; their days are unknown (NaN)",
            )
        )
    if not raw:
        return {}
    first = min(raw.values())
    return {s: round(x - first, 6) for s, x in raw.items()}


def _natural(name: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]
