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


def test_cli_start_up_leaves_the_heavy_libraries_to_the_commands():
    """``metstrack <command>`` imports every command module; none may pull in a heavy library.

    Each command imports its workflow when it runs (function-local imports, cli/ only),
    so `metstrack --help` and every command start without torch, lifelines (survival),
    scipy.optimize (matching), matplotlib, pandas or SimpleITK: about 0.8 s instead of 5.
    """
    import subprocess
    import sys

    heavy = ("torch", "lifelines", "scipy.optimize", "matplotlib", "pandas", "SimpleITK")
    code = (
        "import sys, metstrack.cli.main\n"
        f"print(','.join(m for m in {heavy!r} if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert out == ""
