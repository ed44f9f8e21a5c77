"""Reader for BraTS-METS (BraTS 2023/2024 brain-metastasis challenge) folders.

Supported, one level deep (either form, mixed allowed)::

    <root>/BraTS-MET-00110-000/BraTS-MET-00110-000-{t1n,t1c,t2w,t2f,seg}.nii.gz   (nested)
    <root>/BraTS-MET-00110-000-{t1n,t1c,t2w,t2f,seg}.nii.gz                       (flat)

``.nii`` works as well as ``.nii.gz``. Sequence mapping: ``t1n`` -> T1,
``t1c`` -> CT1, ``t2w`` -> T2, ``t2f`` -> FLAIR, ``seg`` -> the label.
The case ID ``BraTS-MET-<patient>-<timepoint>`` gives PatientID
``BraTS-MET-<patient>`` and StudyID the whole case ID; studies of a patient are
ordered by the timepoint number. BraTS names carry no dates: the first study
gets ``days_from_baseline=0`` when its timepoint is ``000``, later ones ``NaN``.

The ``seg`` file is multi-class (1 necrotic core NETC, 2 surrounding FLAIR
hyperintensity SNFH, 3 enhancing tumour ET). The metastasis mask is the union
of ``label_classes`` (default ET + NETC = (1, 3)), stored in
:attr:`~metstrack.types.Cohort.label_classes`; load it with
:func:`metstrack.io.layouts.load_lesion_mask`. Studies with a ``seg`` file are
``labelled`` (and ``expert_adjusted``: BraTS labels are approved by
neuroradiologists); cases without one (validation/test sets) are unlabelled.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from pathlib import Path

from metstrack.errors import ConfigError, did_you_mean
from metstrack.io.nifti import is_nifti
from metstrack.io.problems import ERROR, WARNING, DatasetScan, Problem, cohort_or_raise
from metstrack.types import LABEL_SEQUENCE, MODALITIES, Cohort, Patient, Series, Study

LAYOUT = "brats-mets"
#: File suffix -> release sequence name.
SUFFIX_TO_SEQUENCE: dict[str, str] = {
    "t1n": "T1",
    "t1c": "CT1",
    "t2w": "T2",
    "t2f": "FLAIR",
    "seg": LABEL_SEQUENCE,
}
#: BraTS-METS label values.
BRATS_LABELS: dict[int, str] = {1: "NETC", 2: "SNFH", 3: "ET"}
#: Default metastasis classes: enhancing tumour plus necrotic core.
DEFAULT_LABEL_CLASSES: tuple[int, ...] = (1, 3)

_CASE = r"BraTS-MET-(?P<num>\d+)-(?P<tp>\d+)"
CASE_RE = re.compile(rf"^{_CASE}$")
FILE_RE = re.compile(rf"^(?P<case>{_CASE})-(?P<suffix>[A-Za-z0-9]+)\.nii(\.gz)?$")


def detect(root: Path) -> bool:
    """True when ``root`` or one of its subfolders holds a BraTS-MET case file."""
    return any(True for _ in _case_files(root))


def read_brats_mets(
    root: str | Path,
    *,
    label_classes: tuple[int, ...] = DEFAULT_LABEL_CLASSES,
    strict: bool = False,
) -> Cohort:
    """Read a BraTS-METS folder (nested or flat case files).

    Args:
        root: Folder holding case folders or case files.
        label_classes: ``seg`` values forming the metastasis mask (each in 1, 2, 3).
        strict: Raise on recorded errors (duplicate files) instead of logging them.

    Returns:
        The cohort, ``layout="brats-mets"``, ``label_classes`` set.

    Raises:
        DatasetError: No case file under ``root``, or (strict) a recorded error.
        ConfigError: ``label_classes`` is empty or holds values other than 1, 2, 3.
    """
    scan = scan_brats_mets(root, label_classes=label_classes)
    return cohort_or_raise(scan, root, strict=strict)


def scan_brats_mets(
    root: str | Path, *, label_classes: tuple[int, ...] = DEFAULT_LABEL_CLASSES
) -> DatasetScan:
    """Scan a BraTS-METS folder, recording problems instead of stopping.

    Args:
        root: Folder holding case folders or case files.
        label_classes: ``seg`` values forming the metastasis mask.

    Returns:
        A :class:`~metstrack.io.problems.DatasetScan`.
    """
    root = Path(root)
    classes = _check_classes(label_classes)
    problems: list[Problem] = []
    # case ID -> sequence -> candidate files
    cases: dict[str, dict[str, list[Path]]] = defaultdict(lambda: defaultdict(list))
    for path, m in _case_files(root):
        suffix = m.group("suffix").lower()
        parent = path.parent
        if parent != root and parent.name != m.group("case"):
            problems.append(
                Problem(
                    WARNING,
                    path,
                    "naming",
                    f"file of case {m.group('case')} sits in folder {parent.name!r}; "
                    "expected the case's own folder",
                )
            )
        if suffix not in SUFFIX_TO_SEQUENCE:
            problems.append(
                Problem(
                    WARNING,
                    path,
                    "unknown-file",
                    f"unknown BraTS sequence suffix {suffix!r}; file ignored; "
                    + did_you_mean(suffix, SUFFIX_TO_SEQUENCE),
                )
            )
            continue
        cases[m.group("case")][SUFFIX_TO_SEQUENCE[suffix]].append(path)
    if not cases:
        problems_t = (
            Problem(
                ERROR,
                root,
                "layout",
                "no BraTS-MET case files (BraTS-MET-<nnnnn>-<ttt>-<t1n|t1c|t2w|t2f|seg>.nii.gz) "
                "in this folder or its subfolders",
            ),
        )
        return DatasetScan(None, problems_t, tuple(problems))
    by_patient: dict[str, list[Study]] = defaultdict(list)
    for case in sorted(cases):
        m = CASE_RE.match(case)
        assert m is not None
        pid = f"BraTS-MET-{m.group('num')}"
        series = []
        for seq in (*MODALITIES, LABEL_SEQUENCE):
            paths = sorted(cases[case].get(seq, []), key=lambda p: (not p.name.endswith(".gz"), p))
            if len(paths) > 1:
                problems.append(
                    Problem(
                        ERROR,
                        paths[1],
                        "duplicate-file",
                        f"case {case} has {len(paths)} {seq} files "
                        f"({', '.join(str(p.relative_to(root)) for p in paths)}); "
                        f"using {paths[0].relative_to(root)}, remove the others",
                    )
                )
            if paths:
                series.append(Series(sequence=seq, path=paths[0]))
            elif seq in MODALITIES:
                suffix = next(k for k, v in SUFFIX_TO_SEQUENCE.items() if v == seq)
                problems.append(
                    Problem(
                        WARNING,
                        _case_folder(root, case, cases[case]) / f"{case}-{suffix}.nii.gz",
                        "missing-sequence",
                        f"case {case} has no {suffix} ({seq}); models that need every "
                        "modality will skip or impute it",
                    )
                )
        has_label = any(s.sequence == LABEL_SEQUENCE for s in series)
        by_patient[pid].append(
            Study(
                study_id=case,
                patient_id=pid,
                days_from_baseline=math.nan,
                relative_timepoint=int(m.group("tp")),
                series=tuple(series),
                sequences_flagged=tuple(s.sequence for s in series),
                labelled=has_label,
                expert_adjusted=has_label,
            )
        )
    patients = []
    for pid in sorted(by_patient):
        ordered = sorted(by_patient[pid], key=lambda s: s.relative_timepoint)
        studies = []
        for rank, s in enumerate(ordered, start=1):
            tp = s.relative_timepoint
            days = 0.0 if rank == 1 and tp == 0 else math.nan
            studies.append(
                Study(
                    study_id=s.study_id,
                    patient_id=pid,
                    days_from_baseline=days,
                    relative_timepoint=rank,
                    series=s.series,
                    sequences_flagged=s.sequences_flagged,
                    labelled=s.labelled,
                    expert_adjusted=s.expert_adjusted,
                )
            )
        patients.append(Patient(patient_id=pid, studies=tuple(studies)))
    cohort = Cohort(
        root=root,
        patients=tuple(patients),
        layout=LAYOUT,
        label_classes=classes,
    )
    return DatasetScan(cohort, (), tuple(problems))


def _check_classes(label_classes) -> tuple[int, ...]:
    try:
        classes = tuple(sorted({int(c) for c in label_classes}))
    except (TypeError, ValueError):
        raise ConfigError(
            f"label_classes must be integers among {sorted(BRATS_LABELS)}, got {label_classes!r}"
        ) from None
    bad = [c for c in classes if c not in BRATS_LABELS]
    if not classes or bad:
        names = ", ".join(f"{k} {v}" for k, v in BRATS_LABELS.items())
        raise ConfigError(
            f"label_classes must be a non-empty subset of the BraTS-METS labels ({names}), "
            f"got {tuple(label_classes)!r}"
        )
    return classes


def _case_files(root: Path):
    """Yield (path, match) for every case file in ``root`` and its direct subfolders."""
    if not root.is_dir():
        return
    for entry in sorted(root.iterdir()):
        if entry.is_file() and is_nifti(entry):
            m = FILE_RE.match(entry.name)
            if m:
                yield entry, m
        elif entry.is_dir() and not entry.name.startswith("."):
            for f in sorted(entry.iterdir()):
                if f.is_file() and is_nifti(f):
                    m = FILE_RE.match(f.name)
                    if m:
                        yield f, m


def _case_folder(root: Path, case: str, files: dict[str, list[Path]]) -> Path:
    for paths in files.values():
        if paths:
            return paths[0].parent
    return root / case
