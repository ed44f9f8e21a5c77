"""`metstrack pull` / `push` against a real Orthanc (DICOMweb plugin) started by the test."""

from __future__ import annotations

import logging

import pydicom
import pytest
import requests
from tests.pacs_tools import PASSWORD, USER, free_port, run_orthanc
from typer.testing import CliRunner

from metstrack.cli.main import app
from metstrack.errors import PacsError
from metstrack.io.dicom_series import read_dicom_series
from metstrack.io.dicom_synth import SECRET_ID, write_demo_export
from metstrack.io.dicomweb import ENV_PASSWORD, ENV_TOKEN, ENV_USER, make_client
from metstrack.io.export import write_seg
from metstrack.io.rtstruct import rasterize_rtstruct, read_rtstruct


def _run(*args):
    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory):
    root = tmp_path_factory.mktemp("orthanc")
    export = write_demo_export(root / "export")
    with run_orthanc(root / "server") as server:
        server.upload(sorted(export.rglob("*.dcm")))
        yield server, export


@pytest.fixture
def creds(monkeypatch):
    monkeypatch.setenv(ENV_USER, USER)
    monkeypatch.setenv(ENV_PASSWORD, PASSWORD)
    monkeypatch.delenv(ENV_TOKEN, raising=False)


def _sop_uids(folder):
    return {
        pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in folder.rglob("*.dcm")
    }


def test_pull_by_patient_fetches_every_instance(orthanc, creds, tmp_path, caplog):
    server, export = orthanc
    caplog.set_level(logging.DEBUG)
    res = _run("-v", "pull", "--pacs", server.dicomweb, "--patient", SECRET_ID, "--out", tmp_path)
    assert res.exit_code == 0, res.output
    assert _sop_uids(tmp_path) == _sop_uids(export)
    assert len([p for p in tmp_path.iterdir() if p.is_dir()]) == 2  # two studies
    for text in (res.output, caplog.text):
        assert PASSWORD not in text
        assert SECRET_ID not in text
    again = _run("pull", "--pacs", server.dicomweb, "--patient", SECRET_ID, "--out", tmp_path)
    assert again.exit_code == 0
    assert again.output.count("skipped") == 2


def test_pulled_export_ingests(orthanc, creds, tmp_path):
    server, _ = orthanc
    assert (
        _run(
            "pull", "--pacs", server.dicomweb, "--patient", SECRET_ID, "--out", tmp_path / "in"
        ).exit_code
        == 0
    )
    res = _run("ingest", tmp_path / "in", "--out", tmp_path / "release")
    assert res.exit_code == 0, res.output
    assert (tmp_path / "release" / "tables" / "imaging.csv").read_text().count("P0001") == 2


def test_pull_by_study_uid(orthanc, creds, tmp_path):
    server, export = orthanc
    uid = pydicom.dcmread(next((export / "patient1" / "study2").rglob("*.dcm"))).StudyInstanceUID
    res = _run("pull", "--pacs", server.dicomweb, "--study", uid, "--out", tmp_path)
    assert res.exit_code == 0, res.output
    assert [p.name for p in tmp_path.iterdir()] == [uid]


def _one_error_line(res, code=1):
    assert res.exit_code == code, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1, res.output
    return lines[0]


def test_missing_study_is_one_line(orthanc, creds, tmp_path):
    server, _ = orthanc
    line = _one_error_line(
        _run("pull", "--pacs", server.dicomweb, "--study", "1.2.3.999", "--out", tmp_path)
    )
    assert "2.3.999 not found" in line


def test_unknown_patient_is_one_line_without_the_id(orthanc, creds, tmp_path):
    server, _ = orthanc
    line = _one_error_line(
        _run("pull", "--pacs", server.dicomweb, "--patient", "NO-SUCH-MRN-1", "--out", tmp_path)
    )
    assert "no study matches the given --patient" in line
    assert "NO-SUCH-MRN-1" not in line


def test_wrong_url_is_one_line(orthanc, creds, tmp_path):
    server, _ = orthanc
    line = _one_error_line(
        _run("pull", "--pacs", server.rest + "/not-dicomweb", "--study", "1.2", "--out", tmp_path)
    )
    assert "HTTP 404" in line and "DICOMweb root" in line


def test_unreachable_server_is_one_line(creds, tmp_path):
    url = f"http://127.0.0.1:{free_port()}/dicom-web"
    line = _one_error_line(_run("pull", "--pacs", url, "--study", "1.2", "--out", tmp_path))
    assert "cannot connect" in line


def test_not_a_url_is_one_line(creds, tmp_path):
    line = _one_error_line(_run("pull", "--pacs", "pacs:8042", "--study", "1.2", "--out", tmp_path))
    assert "not an http(s) DICOMweb URL" in line


def test_credentials_in_the_url_are_refused_and_not_echoed(orthanc, tmp_path):
    server, _ = orthanc
    url = server.dicomweb.replace("http://", f"http://{USER}:{PASSWORD}@")
    line = _one_error_line(_run("pull", "--pacs", url, "--study", "1.2", "--out", tmp_path))
    assert "credentials in the URL are refused" in line
    assert PASSWORD not in line


def test_without_credentials_says_how_to_give_them(orthanc, monkeypatch, tmp_path):
    server, _ = orthanc
    for key in (ENV_USER, ENV_PASSWORD, ENV_TOKEN):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "empty-netrc"))
    (tmp_path / "empty-netrc").write_text("")
    line = _one_error_line(
        _run("pull", "--pacs", server.dicomweb, "--patient", SECRET_ID, "--out", tmp_path / "o")
    )
    assert "HTTP 401" in line and ENV_USER in line and "netrc" in line


def test_credentials_from_netrc(orthanc, monkeypatch, tmp_path):
    server, _ = orthanc
    for key in (ENV_USER, ENV_PASSWORD, ENV_TOKEN):
        monkeypatch.delenv(key, raising=False)
    netrc = tmp_path / "netrc"
    netrc.write_text(f"machine 127.0.0.1 login {USER} password {PASSWORD}\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    res = _run("pull", "--pacs", server.dicomweb, "--patient", SECRET_ID, "--out", tmp_path / "o")
    assert res.exit_code == 0, res.output
    assert PASSWORD not in res.output


def test_pull_needs_a_patient_or_study(tmp_path):
    res = _run("pull", "--pacs", "http://127.0.0.1:1/dicom-web", "--out", tmp_path)
    assert res.exit_code == 2
    assert "give --patient ID or --study UID" in res.output


def test_push_stores_and_orthanc_has_it(orthanc, creds, tmp_path):
    server, export = orthanc
    vol = read_dicom_series(export / "patient1" / "study1" / "planning")
    masks = rasterize_rtstruct(
        read_rtstruct(export / "patient1" / "study1" / "rtstruct" / "RS.dcm"), vol
    )
    seg = write_seg(
        masks.binary, export / "patient1" / "study1" / "planning", tmp_path / "x" / "SEG.dcm"
    )
    before = len(server.get("/instances"))
    res = _run("push", tmp_path / "x", "--pacs", server.dicomweb)
    assert res.exit_code == 0, res.output
    assert "stored 1 instance(s) in 1 study(ies)" in res.output
    assert len(server.get("/instances")) == before + 1
    uid = pydicom.dcmread(seg).SOPInstanceUID
    assert _lookup(server, uid) == ["instance"]


def _lookup(server, uid):
    r = requests.post(f"{server.rest}/tools/lookup", data=uid, auth=server.auth, timeout=30)
    r.raise_for_status()
    return [h["Type"].lower() for h in r.json()]


def test_push_nothing_is_one_line(tmp_path, creds):
    line = _one_error_line(_run("push", tmp_path, "--pacs", "http://127.0.0.1:1/dicom-web"))
    assert "no .dcm files to push" in line


def test_wildcard_patient_is_refused(creds, tmp_path):
    line = _one_error_line(
        _run(
            "pull", "--pacs", "http://127.0.0.1:1/dicom-web", "--patient", "MRN*", "--out", tmp_path
        )
    )
    assert "wildcards" in line


def test_push_to_an_unreachable_server_is_one_line(orthanc, creds):
    _, export = orthanc
    url = f"http://127.0.0.1:{free_port()}/dicom-web"
    line = _one_error_line(_run("push", export / "patient1" / "study2" / "t1", "--pacs", url))
    assert "cannot connect while trying to store" in line


def test_token_and_half_given_credentials(monkeypatch):
    for key in (ENV_USER, ENV_PASSWORD, ENV_TOKEN):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv(ENV_TOKEN, "tok-123")
    client = make_client("http://127.0.0.1:1/dicom-web/")
    assert client._session.headers["Authorization"] == "Bearer tok-123"
    monkeypatch.setenv(ENV_USER, "alice")
    with pytest.raises(PacsError, match="set both"):
        make_client("http://127.0.0.1:1/dicom-web")
