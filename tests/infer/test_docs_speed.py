"""The worked examples of docs/speed.md run as written."""

from __future__ import annotations

from tests.docs_examples import run_examples


def test_speed_doc_examples_run(cli) -> None:
    assert run_examples("speed.md", cli) == 2
