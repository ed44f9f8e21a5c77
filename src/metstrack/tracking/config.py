"""Typed settings of lesion tracking, status, response and local control.

Load them with :func:`metstrack.config.load_config` (``TrackConfig``) from TOML
plus ``key=value`` overrides such as ``matching.max_distance_mm=12``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from metstrack.core.rate import RateMethod


@dataclass(frozen=True)
class MatchingConfig:
    """How lesions of consecutive studies are linked.

    Attributes:
        max_distance_mm: Largest centroid distance (mm) of a link between two
            lesions that do not overlap. Overlapping lesions may always link.
        distance_weight: Weight of ``distance / max_distance_mm`` in the cost
            (the overlap term ``1 - overlap`` has weight 1).
        min_overlap_fraction: Smallest overlap coefficient
            ``|A & B| / min(|A|, |B|)`` that counts as overlap (for links, splits
            and merges).
        lookback_studies: How many consecutive studies a lesion may be missed
            and still be linked when it is seen again ("reappeared"); 0 disables.
        connectivity: Connectivity of the lesion components (6, 18 or 26).
        min_volume_mm3: Components smaller than this are ignored (0 keeps all).
    """

    max_distance_mm: float = 10.0
    distance_weight: float = 1.0
    min_overlap_fraction: float = 0.05
    lookback_studies: int = 1
    connectivity: int = 26
    min_volume_mm3: float = 0.0


@dataclass(frozen=True)
class StatusConfig:
    """Thresholds of a lesion's status between two consecutive studies.

    A present lesion linked to the previous study is ``growing`` when its volume
    rose by at least ``change_fraction`` of the previous volume AND by at least
    ``min_change_mm3``; ``shrinking`` when it fell by both; ``stable`` otherwise.
    For split and merge groups the group's summed volumes are compared.

    Attributes:
        change_fraction: Relative volume change (0.20 = 20%).
        min_change_mm3: Absolute volume change in mm3.
    """

    change_fraction: float = 0.20
    min_change_mm3: float = 5.0


@dataclass(frozen=True)
class ResponseConfig:
    """RANO-BM and volumetric response, and local control after radiosurgery.

    Attributes:
        max_targets: Most target lesions chosen at baseline (RANO-BM: 5).
        min_target_diameter_mm: Smallest longest diameter of a target (RANO-BM: 10 mm).
        pr_decrease_fraction: PR at a decrease of the sum of diameters from
            baseline of at least this fraction (0.30).
        pd_increase_fraction: PD at an increase from the nadir of at least this
            fraction (0.20) ...
        pd_min_increase_mm: ... and at least this many mm (5).
        new_lesion_min_diameter_mm: New lesions smaller than this do not count
            for PD (0: any new lesion counts).
        vol_pr_decrease_fraction: Volumetric PR threshold, ``1 - 0.7**3``.
        vol_pd_increase_fraction: Volumetric PD threshold, ``1.2**3 - 1``.
        vol_pd_min_increase_mm3: Volumetric PD absolute minimum, the volume of a
            5 mm sphere (65.45 mm3).
        target_match_distance_mm: Largest distance between a radiosurgery
            target's centroid and a tracked lesion's centroid for a match.
        local_failure_fraction: Local failure when a treated lesion's volume
            exceeds its volume at treatment by at least this fraction ...
        local_failure_min_mm3: ... and by at least this many mm3.
    """

    max_targets: int = 5
    min_target_diameter_mm: float = 10.0
    pr_decrease_fraction: float = 0.30
    pd_increase_fraction: float = 0.20
    pd_min_increase_mm: float = 5.0
    new_lesion_min_diameter_mm: float = 0.0
    vol_pr_decrease_fraction: float = 1.0 - 0.7**3
    vol_pd_increase_fraction: float = 1.2**3 - 1.0
    vol_pd_min_increase_mm3: float = 4.0 / 3.0 * 3.141592653589793 * 2.5**3
    target_match_distance_mm: float = 10.0
    local_failure_fraction: float = 0.20
    local_failure_min_mm3: float = 5.0


@dataclass(frozen=True)
class TrackConfig:
    """Everything ``metstrack track`` and :func:`track_patient` need.

    Attributes:
        matching: Linking between studies.
        status: Growing/shrinking thresholds.
        response: RANO-BM, volumetric response, local control.
        rate_method: Monthly rate of change method (``"ols"``, ``"log_ols"``,
            ``"first_last"``).
        grid_atol_mm: Tolerance on affines of masks that must share a grid.
        figures: Write a timeline PNG/SVG per patient.
    """

    matching: MatchingConfig = field(default_factory=MatchingConfig)
    status: StatusConfig = field(default_factory=StatusConfig)
    response: ResponseConfig = field(default_factory=ResponseConfig)
    rate_method: RateMethod = "ols"
    grid_atol_mm: float = 1e-3
    figures: bool = True
