"""Records of a tracked patient: events, per-study lesions and the tracking result.

Shared by the tracker (:mod:`metstrack.tracking.tracker`), which fills them, and
the trajectory tables (:mod:`metstrack.tracking.trajectory`), which read them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from metstrack.types import Lesion, Volume


@dataclass(frozen=True)
class TrackEvent:
    """A split, merge or reappearance between two studies.

    Attributes:
        kind: ``"split"``, ``"merge"`` or ``"reappear"``.
        study_index: Index of the study in which the event is observed.
        source_ids: Lesion IDs before the event (split: the parent; merge: every
            lesion that coalesced; reappear: the lesion).
        target_ids: Lesion IDs after it (split: the parent's continuation and
            the fragments; merge: the coalesced lesion; reappear: the lesion).
    """

    kind: str
    study_index: int
    source_ids: tuple[int, ...]
    target_ids: tuple[int, ...]


@dataclass(frozen=True)
class StudyLesions:
    """The tracked lesions of one study.

    Attributes:
        study_index: 0-based index in the patient's timeline.
        lesions: Measured lesions; ``Lesion.label`` is the persistent lesion ID.
    """

    study_index: int
    lesions: tuple[Lesion, ...]


@dataclass(frozen=True, eq=False)
class TrackingResult:
    """Tracking output of one patient.

    Attributes:
        patient_id: Release PatientID.
        study_ids: StudyIDs in time order.
        days_from_baseline: Days of each study from the first.
        tracked_maps: int32 (X, Y, Z) label maps on the baseline grid, one per
            study; voxel value = persistent lesion ID (0 background).
        study_lesions: Per study, the lesions measured on the tracked map.
        events: Splits, merges and reappearances in time order.
        split_from: Fragment ID -> parent ID.
        merged_into: Absorbed ID -> (study index, coalesced ID).
        reappeared: (study index, lesion ID) pairs linked by look-back.
        trajectories: Trajectory table (see :mod:`metstrack.tracking.trajectory`).
        burden: Per-study burden table.
    """

    patient_id: str
    study_ids: tuple[str, ...]
    days_from_baseline: tuple[float, ...]
    tracked_maps: tuple[Volume, ...]
    study_lesions: tuple[StudyLesions, ...]
    events: tuple[TrackEvent, ...]
    split_from: dict[int, int] = field(default_factory=dict)
    merged_into: dict[int, tuple[int, int]] = field(default_factory=dict)
    reappeared: frozenset[tuple[int, int]] = frozenset()
    trajectories: pd.DataFrame = field(default_factory=pd.DataFrame)
    burden: pd.DataFrame = field(default_factory=pd.DataFrame)

    @property
    def n_lesions(self) -> int:
        """Number of distinct lesion IDs over the patient's studies."""
        return len({les.label for s in self.study_lesions for les in s.lesions})
