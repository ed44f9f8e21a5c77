"""The benchmark's FROC comparison in the HTML report (issue 17: plots in the report)."""

from __future__ import annotations

import json

from metstrack.report.benchmark import build_benchmark_report


def test_benchmark_section_shows_every_arm_with_its_interval_and_the_curves(tmp_path, bench_folder):
    bench = bench_folder(tmp_path / "bench")
    index = build_benchmark_report(bench, tmp_path / "rep")
    html = index.read_text()
    assert "Benchmark: lesion detection at a common false-positive rate" in html
    assert "every study labelled" in html
    assert "+0.12 [+0.02, +0.21]" in html  # STT minus the no-memory U-Net, < 10 mm3
    assert "(reference)" in html and "<code>unet</code>" in html
    assert "a6d4571cbe2c" in html and "Test CPU (2 cores)" in html
    png = tmp_path / "rep" / "img" / "froc_all.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and "img/froc_all.png" in html
    facts = json.loads((tmp_path / "rep" / "report.json").read_text())
    rows = {r["arm"]: r for r in facts["benchmark"]["all"]}
    assert rows["stt"]["sens. < 10 mm3"] == "0.32" and rows["unet"]["diff all"] == "(reference)"


def test_report_command_with_a_benchmark_alone(cli, tmp_path, bench_folder):
    bench = bench_folder(tmp_path / "bench")
    r = cli("report", "--benchmark", bench, "--out", tmp_path / "rep")
    assert r.exit_code == 0, r.output
    assert "stt" in (tmp_path / "rep" / "index.html").read_text()


def test_report_command_refuses_what_it_cannot_show(cli, tmp_path, bench_folder):
    r = cli("report", "--out", tmp_path / "rep")
    assert r.exit_code == 2 and "--benchmark" in r.output
    empty = tmp_path / "empty"
    empty.mkdir()
    r = cli("report", "--benchmark", empty, "--out", tmp_path / "rep")
    assert r.exit_code == 1 and "froc.csv: not found" in r.output
    bench = bench_folder(tmp_path / "bench")
    r = cli("report", "--benchmark", bench, "--evaluation", bench, "--out", tmp_path / "rep")
    assert r.exit_code == 2 and "need --data" in r.output
