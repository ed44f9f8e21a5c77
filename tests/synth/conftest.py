"""A small imaging cohort shared by the synth tests (generated once per session)."""

from __future__ import annotations

from pathlib import Path

import pytest

from metstrack.synth.config import SynthConfig
from metstrack.workflows.synth import generate_cohort

COHORT_CFG = SynthConfig(n_patients=3, seed=11, shape=48, max_studies=4)


@pytest.fixture(scope="session")
def small_cohort(tmp_path_factory) -> Path:
    """Three patients at 48^3 with up to four studies, written to a temp folder."""
    out = tmp_path_factory.mktemp("synth") / "cohort"
    return generate_cohort(COHORT_CFG, out)


@pytest.fixture(scope="session")
def small_cohort_config() -> SynthConfig:
    """The settings of :func:`small_cohort`."""
    return COHORT_CFG
