"""The CLI's root options."""

from __future__ import annotations

from metstrack import __version__


def test_version(cli):
    r = cli("--version")
    assert r.exit_code == 0
    assert r.output.strip() == f"metstrack {__version__}"


def test_info_lists_versions(cli):
    r = cli("info")
    assert r.exit_code == 0
    for name in ("torch", "monai", "nibabel", "SimpleITK", "torch_threads", "device"):
        assert name in r.output


def test_unknown_command_is_usage_error(cli):
    from typer.testing import CliRunner

    from metstrack.cli.main import app

    r = CliRunner().invoke(app, ["no-such-command"])
    assert r.exit_code == 2
