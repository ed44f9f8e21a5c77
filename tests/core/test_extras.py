"""Optional extras: a missing one fails with one line naming it; the demo needs none."""

from __future__ import annotations

import subprocess
import sys

import pytest
from typer.testing import CliRunner

from metstrack.core.extras import EXTRAS, require
from metstrack.errors import MetstrackError, MissingExtraError


def test_require_returns_an_installed_module() -> None:
    assert require("json", extra="search", feature="x").dumps([1]) == "[1]"


def test_require_names_the_extra_in_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "optuna", None)  # import optuna now fails
    with pytest.raises(MissingExtraError) as info:
        require("optuna", extra="search", feature="metstrack search")
    msg = str(info.value)
    assert msg == (
        "metstrack search needs optuna, which is not installed; "
        'install the extra: pip install "metstrack[search]"'
    )
    assert isinstance(info.value, MetstrackError) and isinstance(info.value, ImportError)


def test_extras_match_pyproject() -> None:
    import tomllib
    from pathlib import Path

    project = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())
    extras = project["project"]["optional-dependencies"]
    for extra, modules in EXTRAS.items():
        assert [r.split("==")[0] for r in extras[extra]] == list(modules)
    assert "metstrack[search,seg]" in extras["test"]
    base = {r.split("==")[0] for r in project["project"]["dependencies"]}
    assert not base & {m for ms in EXTRAS.values() for m in ms}


@pytest.mark.parametrize(
    ("module", "extra", "argv", "drop"),
    [
        (
            "optuna",
            "search",
            ["search", "--config", "s.toml", "--data", "d", "--out", "o"],
            ["metstrack.train.search"],
        ),
        (
            "highdicom",
            "seg",
            ["export", "--tracking", "t", "--dicom", "d", "--mapping", "m.csv", "--out", "o"],
            ["metstrack.io.export_tracked", "metstrack.io.tracked_dicom"],
        ),
    ],
)
def test_cli_without_an_extra_prints_one_line_and_exits_1(
    monkeypatch: pytest.MonkeyPatch, module: str, extra: str, argv: list[str], drop: list[str]
) -> None:
    from metstrack.cli.main import app

    monkeypatch.setitem(sys.modules, module, None)
    for name in drop:  # imported afresh, as on a machine without the extra
        monkeypatch.delitem(sys.modules, name, raising=False)
    r = CliRunner().invoke(app, argv)
    assert r.exit_code == 1, r.output
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and f'pip install "metstrack[{extra}]"' in lines[0]


def test_the_demo_and_the_cli_start_without_the_extras() -> None:
    code = (
        "import sys\n"
        "sys.modules['optuna'] = None\n"
        "sys.modules['highdicom'] = None\n"
        "import metstrack.cli.main, metstrack.demo.run\n"
        "assert 'optuna' not in [m for m, v in sys.modules.items() if v is not None]\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
