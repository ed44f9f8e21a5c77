"""The worked example of docs/training.md, run exactly as written (config path made absolute)."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "training.md"


def _example_commands() -> list[list[str]]:
    text = DOC.read_text(encoding="utf-8")
    section = text.split("## Worked example", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return [shlex.split(line) for line in block.strip().splitlines() if line.strip()]


@pytest.mark.slow
def test_worked_example_runs(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    commands = _example_commands()
    assert [c[:2] for c in commands] == [["metstrack", "synth"], ["metstrack", "train"]]
    for cmd in commands:
        args = [str(REPO / a) if a.startswith("configs/") else a for a in cmd[1:]]
        res = cli(*args)
        assert res.exit_code == 0, res.output
    run = tmp_path / "runs" / "quick"
    result = json.loads((run / "result.json").read_text())
    assert result["global_step"] == 2
    assert (run / "checkpoints" / "best.ckpt").is_file()
    assert json.loads((run / "config.json").read_text())["config"]["model"]["width"] == 0.0625
    assert "best checkpoint" in res.output
