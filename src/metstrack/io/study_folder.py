"""Reader for one study folder of NIfTI sequences (no tables, no naming scheme beyond the file).

Supported::

    <root>/{t1,t1c,t2,flair[,seg]}.nii.gz

A file's sequence comes from its name, case-insensitive, without the NIfTI
suffix: first the whole stem, then its last ``_``/``-``/``.``-separated token,
looked up in :data:`NAME_TO_SEQUENCE` (``t1``, ``t1n``, ``t1w``, ``t1pre`` -> T1;
``t1c``, ``t1ce``, ``t1gd``, ``t1post``, ``ct1`` -> CT1; ``t2``, ``t2w`` -> T2;
``flair``, ``t2f`` -> FLAIR; ``seg``, ``label``, ``mask`` -> the lesion mask;
and the release names themselves). Files whose name maps to nothing (a brain
mask such as ``t1c_brainmask_hdbet.nii.gz``) are ignored with a warning.

The folder is one patient with one study: PatientID and StudyID are the
folder's name, ``days_from_baseline`` 0 and ``relative_timepoint`` 1.
"""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path

from metstrack.io.nifti import is_nifti
from metstrack.io.problems import ERROR, WARNING, DatasetScan, Problem, cohort_or_raise
from metstrack.types import LABEL_SEQUENCE, MODALITIES, SEQUENCES, Cohort, Patient, Series, Study

LAYOUT = "study"
#: File-name stem or last token (lower case) -> release sequence.
NAME_TO_SEQUENCE: dict[str, str] = {
    **{k: "T1" for k in ("t1", "t1n", "t1w", "t1pre", "t1_pre", "t1-pre", "t1native")},
    **{
        k: "CT1"
        for k in (
            "t1c",
            "t1ce",
            "t1gd",
            "t1_gd",
            "t1-gd",
            "t1post",
            "t1_post",
            "t1-post",
            "ct1",
            "t1wce",
            "t1contrast",
        )
    },
    **{k: "T2" for k in ("t2", "t2w")},
    **{k: "FLAIR" for k in ("flair", "t2f", "t2flair", "t2_flair", "t2-flair")},
    **{k: LABEL_SEQUENCE for k in ("seg", "label", "mask", "lesions", "rtstruct_segmentation")},
    **{s.lower(): s for s in SEQUENCES},
}
_SPLIT = re.compile(r"[-_.]")


def sequence_of(name: str) -> str | None:
    """The release sequence a file name stands for, or None (see :data:`NAME_TO_SEQUENCE`)."""
    stem = re.sub(r"\.nii(\.gz)?$", "", name, flags=re.I).lower()
    if stem in NAME_TO_SEQUENCE:
        return NAME_TO_SEQUENCE[stem]
    return NAME_TO_SEQUENCE.get(_SPLIT.split(stem)[-1])


def detect(root: Path) -> bool:
    """True when ``root`` directly holds a NIfTI file named like a T1 post sequence."""
    if not root.is_dir():
        return False
    return any(f.is_file() and is_nifti(f) and sequence_of(f.name) == "CT1" for f in root.iterdir())


def read_study_folder(root: str | Path, *, strict: bool = False) -> Cohort:
    """Read one study folder of NIfTI sequences as a one-patient, one-study cohort.

    Args:
        root: The folder.
        strict: Raise on recorded errors (two files for one sequence).

    Returns:
        The cohort, ``layout="study"``.

    Raises:
        DatasetError: No NIfTI file named like a sequence, or (strict) a recorded error.
    """
    return cohort_or_raise(scan_study_folder(root), root, strict=strict)


def scan_study_folder(root: str | Path) -> DatasetScan:
    """Scan a study folder, recording problems instead of stopping.

    Args:
        root: The folder.

    Returns:
        A :class:`~metstrack.io.problems.DatasetScan`.
    """
    root = Path(root)
    problems: list[Problem] = []
    found: dict[str, list[Path]] = defaultdict(list)
    files = (
        sorted(f for f in root.iterdir() if f.is_file() and is_nifti(f)) if root.is_dir() else []
    )
    for f in files:
        seq = sequence_of(f.name)
        if seq is None:
            problems.append(
                Problem(
                    WARNING,
                    f,
                    "unknown-file",
                    "file name names no sequence (t1, t1c, t2, flair, seg ...); file ignored",
                )
            )
            continue
        found[seq].append(f)
    if "CT1" not in found:
        fatal = Problem(
            ERROR,
            root,
            "layout",
            "no T1 post image (a NIfTI file named t1c, t1ce, t1gd, t1post or CT1) in this folder",
        )
        return DatasetScan(None, (fatal,), tuple(problems))
    series = []
    for seq in (*MODALITIES, LABEL_SEQUENCE):
        paths = found.get(seq, [])
        if len(paths) > 1:
            problems.append(
                Problem(
                    ERROR,
                    paths[1],
                    "duplicate-file",
                    f"{len(paths)} files for {seq} ({', '.join(p.name for p in paths)}); "
                    f"using {paths[0].name}, rename or remove the others",
                )
            )
        if paths:
            series.append(Series(sequence=seq, path=paths[0]))
    has_label = any(s.sequence == LABEL_SEQUENCE for s in series)
    name = root.resolve().name
    study = Study(
        study_id=name,
        patient_id=name,
        days_from_baseline=0.0,
        relative_timepoint=1,
        series=tuple(series),
        sequences_flagged=tuple(s.sequence for s in series),
        labelled=has_label,
        expert_adjusted=False,
    )
    cohort = Cohort(
        root=root, patients=(Patient(patient_id=name, studies=(study,)),), layout=LAYOUT
    )
    return DatasetScan(cohort, (), tuple(problems))
