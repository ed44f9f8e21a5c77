"""Test helpers for the hospital round trip: a real Orthanc server and dciodvfy.

Both come from Debian packages (``orthanc``, ``orthanc-dicomweb``,
``dicom3tools``) that ``.ci/run`` installs. Where they are absent the tests
that need them are skipped with the reason, except when
``METSTRACK_REQUIRE_PACS_TOOLS=1`` (set by ``.ci/run``), where they fail.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

ORTHANC = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
DCIODVFY = shutil.which("dciodvfy")
USER, PASSWORD = "metstrack-test", "s3cret-pass-741"


def _require(ok: bool, what: str) -> None:
    if ok:
        return
    msg = f"{what} is not installed (apt-get install orthanc orthanc-dicomweb dicom3tools)"
    if os.environ.get("METSTRACK_REQUIRE_PACS_TOOLS") == "1":
        pytest.fail(msg)
    pytest.skip(msg)


def dciodvfy(path: Path) -> tuple[list[str], list[str]]:
    """Run dciodvfy on one file; return (errors, warnings) lines."""
    _require(DCIODVFY is not None, "dciodvfy (dicom3tools)")
    proc = subprocess.run(
        [DCIODVFY, str(path)], capture_output=True, text=True, timeout=60, check=False
    )
    lines = (proc.stdout + proc.stderr).splitlines()
    return (
        [ln for ln in lines if ln.startswith("Error")],
        [ln for ln in lines if ln.startswith("Warning")],
    )


def free_port() -> int:
    """A TCP port free on localhost right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class Orthanc:
    """A running Orthanc: its REST root, DICOMweb root and credentials."""

    rest: str
    dicomweb: str
    auth: tuple[str, str]

    def get(self, path: str):
        """GET a REST resource as JSON."""
        r = requests.get(f"{self.rest}{path}", auth=self.auth, timeout=30)
        r.raise_for_status()
        return r.json()

    def upload(self, files: list[Path]) -> None:
        """Store files through Orthanc's REST API (not the code under test)."""
        for f in files:
            r = requests.post(
                f"{self.rest}/instances", data=f.read_bytes(), auth=self.auth, timeout=30
            )
            r.raise_for_status()


@contextmanager
def run_orthanc(folder: Path) -> Iterator[Orthanc]:
    """Start Orthanc with the DICOMweb plugin on free localhost ports, in ``folder``."""
    _require(Path(ORTHANC).exists(), "Orthanc")
    _require(DICOMWEB_PLUGIN.exists(), "the Orthanc DICOMweb plugin")
    folder.mkdir(parents=True, exist_ok=True)
    http, dimse = free_port(), free_port()
    cfg = {
        "Name": "metstrack-test",
        "StorageDirectory": str(folder / "db"),
        "IndexDirectory": str(folder / "db"),
        "HttpPort": http,
        "DicomPort": dimse,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": True,
        "RegisteredUsers": {USER: PASSWORD},
        "Plugins": [str(DICOMWEB_PLUGIN)],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "Host": f"127.0.0.1:{http}"},
        "StableAge": 1,
        "HttpTimeout": 30,
    }
    (folder / "orthanc.json").write_text(json.dumps(cfg))
    log = open(folder / "orthanc.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [ORTHANC, str(folder / "orthanc.json")], stdout=log, stderr=subprocess.STDOUT
    )
    rest = f"http://127.0.0.1:{http}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if requests.get(f"{rest}/system", auth=(USER, PASSWORD), timeout=2).ok:
                    break
            except requests.exceptions.ConnectionError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                log.flush()
                raise RuntimeError(
                    "Orthanc did not start: " + (folder / "orthanc.log").read_text()[-2000:]
                )
            time.sleep(0.1)
        yield Orthanc(rest=rest, dicomweb=f"{rest}/dicom-web", auth=(USER, PASSWORD))
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
