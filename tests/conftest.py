"""Shared fixtures: tiny synthetic data, the real-data folder, a CLI runner."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("OMP_NUM_THREADS", "2")

#: Real MRI and DICOM files beside the repository (never copied into it).
REALDATA = Path(__file__).resolve().parents[2] / "shared" / "realdata"


@pytest.fixture
def realdata() -> Path:
    """Path of ``../shared/realdata``; the test is skipped with a reason where it is absent."""
    if not REALDATA.is_dir():
        pytest.skip(f"real-data folder {REALDATA} is absent (only present beside the dev checkout)")
    return REALDATA


@pytest.fixture
def rng() -> np.random.Generator:
    """A seeded generator so every test is deterministic."""
    return np.random.default_rng(1234)


@pytest.fixture
def cli():
    """Invoke the metstrack CLI in-process; returns a callable(args) -> Result."""
    from typer.testing import CliRunner

    from metstrack.cli.main import app

    runner = CliRunner()

    def invoke(*args: str):
        return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)

    return invoke
