"""Run the worked examples of a docs page: ```python blocks and ``$ metstrack`` lines, in order."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

DOCS = Path(__file__).resolve().parents[1] / "docs"
_FENCE = re.compile(r"^```(\w+)\n(.*?)^```", re.M | re.S)


def blocks(page: str) -> list[tuple[str, str]]:
    """``(language, body)`` of every fenced block of ``docs/<page>``, in order."""
    text = (DOCS / page).read_text(encoding="utf-8")
    return [(m.group(1), m.group(2)) for m in _FENCE.finditer(text)]


def run_examples(page: str, cli) -> int:
    """Execute the page's python blocks and console ``$ metstrack`` lines; return how many ran."""
    ran = 0
    namespace: dict = {}
    for lang, body in blocks(page):
        if lang == "python":
            exec(compile(body, f"{page}:python", "exec"), namespace)  # noqa: S102 - our own docs
            ran += 1
        elif lang == "console":
            for line in body.splitlines():
                if line.startswith("$ metstrack "):
                    args = shlex.split(line[len("$ metstrack ") :])
                    res = cli(*args)
                    assert res.exit_code == 0, f"{page}: {line}\n{res.output}"
                    ran += 1
    return ran
