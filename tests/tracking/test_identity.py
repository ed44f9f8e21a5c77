"""TrackingID / TrackingUID naming of tracked lesions."""

from __future__ import annotations

import re

import pytest

from metstrack.tracking.identity import derived_uid, lesion_id_of, tracking_id, tracking_uid


def test_tracking_id_round_trip():
    assert tracking_id(3) == "L3"
    assert lesion_id_of("L3") == 3
    with pytest.raises(ValueError, match="not a metstrack TrackingID"):
        lesion_id_of("lesion_3")


def test_tracking_uid_is_deterministic_valid_and_distinct():
    a = tracking_uid("1.2.3.4", 1)
    assert a == tracking_uid("1.2.3.4", 1)
    assert a != tracking_uid("1.2.3.4", 2)
    assert a != tracking_uid("1.2.3.5", 1)
    for uid in (a, derived_uid("x"), derived_uid("")):
        assert len(uid) <= 64
        assert re.fullmatch(r"2\.25\.(0|[1-9][0-9]*)", uid)


def test_tracking_uid_needs_an_anchor():
    with pytest.raises(ValueError, match="anchor"):
        tracking_uid("", 1)
