"""Classify DICOM series into the release sequences with an ordered rule table.

A rule names a target sequence (``T1``, ``CT1``, ``T2``, ``FLAIR`` or the
planning scan ``RTSTRUCT_MRI``), a case-insensitive regular expression searched
in the series' text fields, and optionally a requirement on the contrast-agent
tag. Rules are tried in order; the first match wins; a series matched by the
``exclude`` pattern (localizers, derived maps) or by no rule is reported as
unclassified, never guessed.

The table is a TOML-loadable dataclass (:func:`metstrack.config.load_config`)::

    exclude = "localizer|scout"
    [[rules]]
    sequence = "FLAIR"
    pattern = "flair"
    [[rules]]
    sequence = "CT1"
    pattern = "t1"
    contrast = "present"
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from metstrack.config import load_config
from metstrack.errors import ConfigError, did_you_mean
from metstrack.io.dicom import DicomSeriesInfo
from metstrack.types import MODALITIES, PLANNING_SEQUENCE

#: Sequences a rule may assign.
CLASSIFIABLE: tuple[str, ...] = (*MODALITIES, PLANNING_SEQUENCE)
#: Header fields a rule may search.
TEXT_FIELDS: tuple[str, ...] = (
    "SeriesDescription",
    "ProtocolName",
    "SequenceName",
    "ImageType",
    "ContrastBolusAgent",
)

_T1 = r"t1|mprage|mp-?rage|spgr|bravo|vibe|tfl|tfe|flash|fl3d"
_POST = r"post|\+ ?c\b|\bc\+|gad|\bgd\b|\+gd|contrast|\bce\b|dotarem|gadavist|magnevist|multihance"


@dataclass(frozen=True)
class ClassificationRule:
    """One row of the rule table.

    Attributes:
        sequence: Target sequence, one of :data:`CLASSIFIABLE`.
        pattern: Case-insensitive regular expression searched in ``fields``.
        fields: Header fields searched (joined with `` | ``).
        contrast: ``"present"`` requires a ContrastBolusAgent value (or ``post_pattern``
            to match), ``"absent"`` requires neither, ``"any"`` ignores contrast.
        modality: Required Modality tag ("" for any).
    """

    sequence: str
    pattern: str
    fields: tuple[str, ...] = ("SeriesDescription", "ProtocolName", "SequenceName")
    contrast: Literal["present", "absent", "any"] = "any"
    modality: str = "MR"

    def __post_init__(self) -> None:
        if self.sequence not in CLASSIFIABLE:
            raise ConfigError(
                f"rule sequence {self.sequence!r} is unknown; "
                + did_you_mean(self.sequence, CLASSIFIABLE)
            )
        for f in self.fields:
            if f not in TEXT_FIELDS:
                raise ConfigError(f"rule field {f!r} is unknown; {did_you_mean(f, TEXT_FIELDS)}")
        _compile(self.pattern, "pattern")


def _compile(pattern: str, what: str) -> re.Pattern[str]:
    try:
        return re.compile(pattern, re.IGNORECASE)
    except re.error as exc:
        raise ConfigError(f"invalid regular expression for {what} {pattern!r}: {exc}") from exc


DEFAULT_RULES: tuple[ClassificationRule, ...] = (
    ClassificationRule(
        "RTSTRUCT_MRI",
        r"stealth|gamma ?knife|\bgk\b|radiosurg|\bsrs\b|planning|\bplan\b",
        contrast="any",
    ),
    ClassificationRule("FLAIR", r"flair|dark ?fluid|\bir[_ ]?fse\b|\btirm\b"),
    ClassificationRule("T2", r"\bt2(?!\*)|t2w|t2_|_t2\b|\btse\b|\bfse\b|space.*t2"),
    ClassificationRule("CT1", _T1, contrast="present"),
    ClassificationRule("T1", _T1, contrast="absent"),
)


@dataclass(frozen=True)
class ClassificationRules:
    """The ordered rule table (first match wins).

    Attributes:
        rules: Rules in priority order.
        exclude: Series whose text fields match this are never classified
            (localizers, derived maps, reformats).
        post_pattern: Text that marks a post-contrast series when the
            ContrastBolusAgent tag is empty.
        pre_pattern: Text that marks a pre-contrast series even if
            ``post_pattern`` also matches (e.g. "pre").
    """

    rules: tuple[ClassificationRule, ...] = DEFAULT_RULES
    exclude: str = (
        r"localizer|localiser|scout|survey|3-?plane|\bloc\b|\badc\b|\btrace\b|\bdwi\b|"
        r"diffusion|perfusion|\bswi\b|\bmip\b|\bmpr\b|\bsub\b|subtract|calibration"
    )
    post_pattern: str = _POST
    pre_pattern: str = r"\bpre\b|pre[-_ ]?contrast|\bnon[-_ ]?contrast|without"

    def __post_init__(self) -> None:
        for name in ("exclude", "post_pattern", "pre_pattern"):
            _compile(getattr(self, name), name)


@dataclass(frozen=True)
class SeriesClass:
    """The classification of one series.

    Attributes:
        series_uid: SeriesInstanceUID.
        sequence: The sequence assigned, or ``None`` when unclassified.
        rule: Index of the rule that matched (``None`` when unclassified).
        reason: Why (the rule, or why nothing matched).
    """

    series_uid: str
    sequence: str | None
    rule: int | None
    reason: str


def series_text(info: DicomSeriesInfo, fields: tuple[str, ...]) -> str:
    """The series' text fields joined with `` | `` (non-identifying header values only)."""
    values = {
        "SeriesDescription": info.series_description,
        "ProtocolName": info.protocol_name,
        "SequenceName": info.sequence_name,
        "ImageType": info.image_type,
        "ContrastBolusAgent": info.contrast_agent,
    }
    return " | ".join(values[f] for f in fields if values[f])


def has_contrast(info: DicomSeriesInfo, rules: ClassificationRules) -> bool:
    """True when the contrast tag is set or the description marks a post-contrast series."""
    text = series_text(info, ("SeriesDescription", "ProtocolName", "SequenceName"))
    if re.search(rules.pre_pattern, text, re.IGNORECASE):
        return bool(info.contrast_agent.strip())
    return bool(info.contrast_agent.strip()) or bool(
        re.search(rules.post_pattern, text, re.IGNORECASE)
    )


def classify_series(info: DicomSeriesInfo, rules: ClassificationRules | None = None) -> SeriesClass:
    """Assign a release sequence to one image series.

    Args:
        info: The series (headers only).
        rules: The rule table (default: :class:`ClassificationRules`).

    Returns:
        A :class:`SeriesClass`; ``sequence`` is ``None`` when no rule matched.
    """
    rules = rules or ClassificationRules()
    all_text = series_text(info, TEXT_FIELDS)
    if re.search(rules.exclude, series_text(info, TEXT_FIELDS[:4]), re.IGNORECASE):
        return SeriesClass(info.series_uid, None, None, f"excluded ({all_text or 'no text'})")
    contrast = has_contrast(info, rules)
    for i, rule in enumerate(rules.rules):
        if rule.modality and info.modality != rule.modality.upper():
            continue
        if rule.contrast == "present" and not contrast:
            continue
        if rule.contrast == "absent" and contrast:
            continue
        text = series_text(info, rule.fields)
        if text and re.search(rule.pattern, text, re.IGNORECASE):
            return SeriesClass(
                info.series_uid, rule.sequence, i, f"rule {i + 1} ({rule.sequence}: {rule.pattern})"
            )
    return SeriesClass(info.series_uid, None, None, f"no rule matched ({all_text or 'no text'})")


def load_rules(
    path: str | Path | None = None, overrides: tuple[str, ...] = ()
) -> ClassificationRules:
    """Load a rule table from TOML (``[[rules]]`` tables, ``exclude``...) or the defaults."""
    return load_config(ClassificationRules, path, overrides)
