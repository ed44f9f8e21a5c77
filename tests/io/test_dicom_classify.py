"""Series classification through the rule table."""

from __future__ import annotations

import pytest

from metstrack.errors import ConfigError
from metstrack.io.dicom import DicomSeriesInfo
from metstrack.io.dicom_classify import (
    ClassificationRule,
    ClassificationRules,
    classify_series,
    load_rules,
)


def _info(desc: str = "", *, agent: str = "", protocol: str = "", modality: str = "MR"):
    return DicomSeriesInfo(
        series_uid="1.2.3.4",
        study_uid="1.2.3",
        modality=modality,
        folders=(),
        series_description=desc,
        protocol_name=protocol,
        contrast_agent=agent,
    )


@pytest.mark.parametrize(
    ("desc", "agent", "expected"),
    [
        ("AX T1 MPRAGE", "", "T1"),
        ("AX T1 MPRAGE", "Gadavist 10ml", "CT1"),
        ("T1 MPRAGE POST", "", "CT1"),
        ("T1_SE +C", "", "CT1"),
        ("Ax T1 pre", "", "T1"),
        ("AX T2 FSE", "", "T2"),
        ("AX T2 FLAIR", "", "FLAIR"),
        ("sag 3D FLAIR", "Dotarem", "FLAIR"),
        ("Stealth MPRAGE post", "", "RTSTRUCT_MRI"),
        ("GK planning T1+C", "", "RTSTRUCT_MRI"),
        ("3-plane localizer", "", None),
        ("ADC map", "", None),
        ("AX DWI", "", None),
        ("T2* GRE", "", None),
        ("", "", None),
        ("mystery scan", "", None),
    ],
)
def test_default_rules(desc, agent, expected):
    assert classify_series(_info(desc, agent=agent)).sequence == expected


def test_protocol_name_used_when_description_empty():
    c = classify_series(_info("", protocol="t2_tse_tra"))
    assert c.sequence == "T2" and c.rule is not None


def test_unclassified_reason_lists_text():
    c = classify_series(_info("mystery scan"))
    assert c.sequence is None and "mystery scan" in c.reason


def test_ct_modality_not_classified_by_mr_rules():
    assert classify_series(_info("T1 post", modality="CT")).sequence is None


def test_custom_rules_from_toml(tmp_path):
    toml = tmp_path / "rules.toml"
    toml.write_text(
        'exclude = "junk"\n'
        "[[rules]]\n"
        'sequence = "FLAIR"\n'
        'pattern = "^dark"\n'
        "[[rules]]\n"
        'sequence = "CT1"\n'
        'pattern = "brain_c"\n'
        'contrast = "any"\n'
    )
    rules = load_rules(toml)
    assert len(rules.rules) == 2
    assert classify_series(_info("dark water"), rules).sequence == "FLAIR"
    assert classify_series(_info("BRAIN_C"), rules).sequence == "CT1"
    assert classify_series(_info("AX T1"), rules).sequence is None
    assert classify_series(_info("junk brain_c"), rules).sequence is None


def test_rule_order_matters():
    first = ClassificationRules(
        rules=(ClassificationRule("T2", "t2"), ClassificationRule("FLAIR", "flair"))
    )
    assert classify_series(_info("t2 flair"), first).sequence == "T2"
    assert classify_series(_info("t2 flair")).sequence == "FLAIR"


def test_bad_rules_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="did you mean 'FLAIR'"):
        ClassificationRule("FLAIRR", "x")
    with pytest.raises(ConfigError, match="regular expression"):
        ClassificationRule("T1", "(")
    toml = tmp_path / "r.toml"
    toml.write_text('[[rules]]\nsequence = "T1"\npatern = "x"\n')
    with pytest.raises(ConfigError, match="did you mean 'pattern'"):
        load_rules(toml)
