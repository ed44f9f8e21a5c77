"""How a tracked lesion is named outside metstrack (DICOM SEG, SR, RTSTRUCT, report).

- **TrackingID** (DICOM (0062,0020), SR "Tracking Identifier"): ``"L<n>"`` with
  ``n`` the persistent lesion ID of the tracking run
  (:mod:`metstrack.tracking.tracker`), e.g. ``"L3"``. Readable, unique within a
  patient, never reused.
- **TrackingUID** (DICOM (0062,0021), SR "Tracking Unique Identifier"): a UID
  derived deterministically (a name-based UUID, version 5, written as a
  ``2.25.<decimal>`` UID per ISO/IEC 9834-8 / DICOM PS3.5 B.2) from an
  *anchor* that identifies the
  patient's tracking timeline worldwide (the original StudyInstanceUID of the
  patient's baseline study) and the lesion ID. Re-exporting any study of the
  patient, today or after a later follow-up was added, gives the lesion the
  same UID, so a viewer links it across studies.

Rules for changes of identity (they follow the tracker's IDs):

- a **new** lesion gets the next ID, hence a new TrackingID and TrackingUID;
- a **resolved** lesion keeps its identity: it has no segment in the study's
  SEG (nothing to draw) but stays listed in the study's SR with volume 0 and
  status ``resolved``; if it reappears it carries the same identity again;
- a **split**: the fragment the matching links to the parent keeps the
  parent's identity, every other fragment gets a new identity (the export's
  ``lesions.csv`` names its parent in ``split_from``);
- a **merge**: the coalesced lesion keeps the identity of the lesion the
  matching linked it to; the absorbed lesions' identities end (no further rows).
"""

from __future__ import annotations

import uuid

#: Prefix of the readable TrackingID.
TRACKING_ID_PREFIX = "L"


def tracking_id(lesion_id: int) -> str:
    """The readable TrackingID of a persistent lesion ID (``3 -> "L3"``)."""
    return f"{TRACKING_ID_PREFIX}{int(lesion_id)}"


def lesion_id_of(tracking_label: str) -> int:
    """Inverse of :func:`tracking_id` (``"L3" -> 3``).

    Raises:
        ValueError: Not a metstrack TrackingID.
    """
    text = str(tracking_label)
    if not text.startswith(TRACKING_ID_PREFIX) or not text[1:].isdigit():
        raise ValueError(f"{tracking_label!r} is not a metstrack TrackingID (expected 'L<n>')")
    return int(text[1:])


def tracking_uid(anchor: str, lesion_id: int) -> str:
    """The TrackingUID of one lesion of one patient's timeline.

    Args:
        anchor: Identifies the patient's timeline worldwide (metstrack uses the
            original StudyInstanceUID of the patient's baseline study).
        lesion_id: Persistent lesion ID.

    Returns:
        A UID (``2.25.<decimal>``), the same for the same inputs on every run.
    """
    if not anchor:
        raise ValueError("a TrackingUID needs a non-empty anchor")
    return derived_uid("metstrack-tracking-v1", anchor, str(int(lesion_id)))


#: Namespace of metstrack's name-based UUIDs.
_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://github.com/metstrack/metstrack")


def derived_uid(*parts: str) -> str:
    """A UID that depends only on ``parts``: ``2.25.`` + a version-5 UUID as a decimal.

    Args:
        parts: Strings identifying the thing named (joined with a separator that
            cannot occur in a UID).

    Returns:
        A DICOM UID of at most 64 characters.
    """
    return f"2.25.{uuid.uuid5(_NAMESPACE, chr(31).join(parts)).int}"
