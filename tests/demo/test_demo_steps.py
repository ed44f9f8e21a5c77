"""The demo's named steps: each a library workflow, in order, with the equivalent command."""

from __future__ import annotations

from pathlib import Path

from metstrack.demo.steps import DemoConfig, DemoPaths, checkpoint_path, demo_steps, will_train


def test_steps_are_the_library_workflows_in_order(tmp_path: Path) -> None:
    cfg = DemoConfig(out=tmp_path / "d", patients=3, seed=5, train_steps=2, workers=1)
    paths = DemoPaths.under(cfg.out)
    steps = demo_steps(cfg, paths)
    assert [s.name for s in steps] == [
        "synth",
        "validate",
        "preprocess",
        "train",
        "predict",
        "evaluate",
        "track",
        "survival (tracked burden)",
        "clinical cohort",
        "survival",
        "report",
    ]
    by_name = {s.name: s for s in steps}
    assert by_name["synth"].command.startswith("metstrack synth --patients 3 --seed 5")
    assert by_name["train"].argv[-2:] == ("--max-steps", "2")
    assert by_name["predict"].argv[2] == str(paths.model / "run/checkpoints/best.ckpt")
    assert will_train(cfg) and checkpoint_path(cfg, paths).name == "best.ckpt"
    assert not (tmp_path / "d").exists()  # building the steps runs nothing


def test_shipped_checkpoint_replaces_training(tmp_path: Path) -> None:
    cfg = DemoConfig(out=tmp_path / "d")
    steps = demo_steps(cfg, DemoPaths.under(cfg.out))
    model = [s for s in steps if s.name in ("model", "train")]
    assert [s.name for s in model] == ["model" if not will_train(cfg) else "train"]
    if not will_train(cfg):
        assert model[0].argv == ()
        assert checkpoint_path(cfg, DemoPaths.under(cfg.out)).name == "stt_demo.pt"


def test_report_command_names_the_survival_folder_the_report_shows(tmp_path: Path) -> None:
    cfg = DemoConfig(out=tmp_path / "d", patients=3, seed=5, train_steps=2, workers=1)
    paths = DemoPaths.under(cfg.out)
    report = {s.name: s for s in demo_steps(cfg, paths)}["report"]
    assert str(paths.survival) in report.argv  # no tracked-burden fit (yet)
    paths.survival_tracked.mkdir(parents=True)
    (paths.survival_tracked / "summary.json").write_text("{}")
    assert str(paths.survival_tracked) in report.argv  # resolved when the step runs
