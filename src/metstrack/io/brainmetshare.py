"""Reader for Stanford BrainMetShare, NIfTI-converted.

Supported::

    <root>/<case>/{t1_pre,t1_gd,flair,bravo,seg}.nii[.gz]
    <root>/<split>/<case>/{...}.nii[.gz]      split folder: train, val, valid,
                                               validation, test, test1, test2

Sequence mapping: ``t1_pre`` (T1 spin-echo pre-contrast) -> T1, ``flair``
(T2 FLAIR post-contrast) -> FLAIR, the T1 post-contrast named by
``post_contrast`` -> CT1 (default ``bravo``, the 3D T1 gradient-echo post
image on which the masks were drawn; ``t1_gd`` is the spin-echo post image).
BrainMetShare has no T2: the reader does not warn about it per study. ``seg``
is the binary metastasis mask; masks stored as 0/255 need
``label_classes=(255,)``.

Not supported: the release's original PNG slice folders
(``<case>/{0,1,2,3,seg}/<k>.png``): PNG slices carry no voxel spacing or
orientation, so volumes in mm3 would be invented. Such folders are reported
with a pointer to convert them to NIfTI with the spacing from the source
DICOM/metadata first.

Every case is one patient with one study (PatientID = StudyID = the case
folder name, ``days_from_baseline=0``); a split folder sets the patient's split.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from metstrack.errors import ConfigError, did_you_mean
from metstrack.io.nifti import find_nifti
from metstrack.io.problems import ERROR, WARNING, DatasetScan, Problem, cohort_or_raise
from metstrack.types import LABEL_SEQUENCE, Cohort, Patient, Series, Study

LAYOUT = "brainmetshare"
#: Files of a case (stems), as in the NIfTI-converted release.
CASE_STEMS: tuple[str, ...] = ("t1_pre", "t1_gd", "flair", "bravo", "seg")
POST_CONTRAST_CHOICES: tuple[str, ...] = ("bravo", "t1_gd")
#: Split folder names -> split.
SPLIT_FOLDERS: dict[str, str] = {
    "train": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "test": "test",
    "test1": "test",
    "test2": "test",
}
#: Original PNG release: one folder per sequence of slices.
PNG_FOLDERS: tuple[str, ...] = ("0", "1", "2", "3", "seg")


def detect(root: Path) -> bool:
    """True when ``root`` holds BrainMetShare case folders (NIfTI or the PNG original)."""
    return bool(_case_dirs(root)) or bool(_png_cases(root))


def read_brainmetshare(
    root: str | Path,
    *,
    post_contrast: str = "bravo",
    label_classes: tuple[int, ...] = (),
    strict: bool = False,
) -> Cohort:
    """Read a NIfTI-converted BrainMetShare folder.

    Args:
        root: Folder of case folders (optionally inside split folders).
        post_contrast: Which T1 post-contrast becomes CT1: ``"bravo"`` or ``"t1_gd"``.
        label_classes: Mask values forming the lesion mask when ``seg`` is not
            0/1 (e.g. ``(255,)``); empty means binary 0/1.
        strict: Raise on recorded errors instead of logging them.

    Returns:
        The cohort, ``layout="brainmetshare"``.

    Raises:
        DatasetError: No case found, or PNG slice folders (unsupported).
        ConfigError: Unknown ``post_contrast``.
    """
    scan = scan_brainmetshare(root, post_contrast=post_contrast, label_classes=label_classes)
    return cohort_or_raise(scan, root, strict=strict)


def scan_brainmetshare(
    root: str | Path, *, post_contrast: str = "bravo", label_classes: tuple[int, ...] = ()
) -> DatasetScan:
    """Scan a BrainMetShare folder, recording problems instead of stopping.

    Args:
        root: Folder of case folders.
        post_contrast: ``"bravo"`` or ``"t1_gd"``.
        label_classes: Mask values forming the lesion mask (empty: binary).

    Returns:
        A :class:`~metstrack.io.problems.DatasetScan`.
    """
    root = Path(root)
    if post_contrast not in POST_CONTRAST_CHOICES:
        raise ConfigError(
            f"post_contrast {post_contrast!r} is not a BrainMetShare T1 post-contrast; "
            + did_you_mean(post_contrast, POST_CONTRAST_CHOICES)
        )
    mapping = {"t1_pre": "T1", post_contrast: "CT1", "flair": "FLAIR", "seg": LABEL_SEQUENCE}
    table_errors: list[Problem] = []
    problems: list[Problem] = []
    for case in _png_cases(root):
        table_errors.append(
            Problem(
                ERROR,
                case,
                "layout",
                "original BrainMetShare PNG slice folders (0/, 1/, 2/, 3/, seg/) are not "
                "supported: PNG slices carry no voxel spacing or orientation; convert each "
                "case to <case>/{t1_pre,t1_gd,flair,bravo,seg}.nii.gz with the spacing of "
                "the source scans first (see docs/datasets.md)",
            )
        )
    cases = _case_dirs(root)
    if not cases and not table_errors:
        table_errors.append(
            Problem(
                ERROR,
                root,
                "layout",
                "no BrainMetShare case folders (<case>/{t1_pre,t1_gd,flair,bravo,seg}.nii.gz)",
            )
        )
    by_id: dict[str, list[Path]] = defaultdict(list)
    for case_dir, _ in cases:
        by_id[case_dir.name].append(case_dir)
    patients = []
    for case_dir, split in cases:
        if len(by_id[case_dir.name]) > 1:
            if case_dir != by_id[case_dir.name][0]:
                table_errors.append(
                    Problem(
                        ERROR,
                        case_dir,
                        "duplicate-file",
                        f"case {case_dir.name!r} appears in several split folders "
                        f"({', '.join(str(p.relative_to(root)) for p in by_id[case_dir.name])}); "
                        "a patient must be in one split",
                    )
                )
            continue
        series = []
        for stem, seq in mapping.items():
            path = find_nifti(case_dir, stem)
            if path is not None:
                series.append(Series(sequence=seq, path=path))
            elif seq != LABEL_SEQUENCE:
                problems.append(
                    Problem(
                        WARNING,
                        case_dir / f"{stem}.nii.gz",
                        "missing-sequence",
                        f"case has no {stem} ({seq}); models that need it will skip or impute it",
                    )
                )
        order = {"T1": 0, "CT1": 1, "T2": 2, "FLAIR": 3, LABEL_SEQUENCE: 4}
        series.sort(key=lambda s: order[s.sequence])
        labelled = any(s.sequence == LABEL_SEQUENCE for s in series)
        study = Study(
            study_id=case_dir.name,
            patient_id=case_dir.name,
            days_from_baseline=0.0,
            relative_timepoint=1,
            series=tuple(series),
            sequences_flagged=tuple(s.sequence for s in series),
            labelled=labelled,
            expert_adjusted=labelled,
            split=split,
        )
        patients.append(Patient(patient_id=case_dir.name, studies=(study,), split=split))
    patients.sort(key=lambda p: p.patient_id)
    cohort = Cohort(
        root=root,
        patients=tuple(patients),
        layout=LAYOUT,
        label_classes=tuple(int(c) for c in label_classes),
        extra={"post_contrast": post_contrast},
    )
    return DatasetScan(cohort, tuple(table_errors), tuple(problems))


def _is_case(folder: Path) -> bool:
    return any(find_nifti(folder, stem) is not None for stem in CASE_STEMS)


def _case_dirs(root: Path) -> list[tuple[Path, str | None]]:
    if not root.is_dir():
        return []
    out: list[tuple[Path, str | None]] = []
    for entry in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        split = SPLIT_FOLDERS.get(entry.name.lower())
        if split is not None and not _is_case(entry):
            for sub in sorted(p for p in entry.iterdir() if p.is_dir()):
                if _is_case(sub):
                    out.append((sub, split))
        elif _is_case(entry):
            out.append((entry, None))
    return out


def _png_cases(root: Path) -> list[Path]:
    if not root.is_dir():
        return []
    out = []
    candidates = [p for p in root.iterdir() if p.is_dir()]
    for entry in list(candidates):
        if entry.name.lower() in SPLIT_FOLDERS or entry.name.startswith("mets_stanford"):
            candidates.extend(p for p in entry.iterdir() if p.is_dir())
    for case in sorted(candidates):
        subs = {p.name for p in case.iterdir() if p.is_dir()}
        if {"seg", "0"} <= subs and any((case / "0").glob("*.png")):
            out.append(case)
    return out
