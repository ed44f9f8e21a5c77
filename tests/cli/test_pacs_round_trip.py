"""The clinical round trip of docs/dicom.md against a real Orthanc.

Runs the documented example (synthetic export -> push -> pull -> ingest ->
preprocess -> predict with the shipped checkpoint -> track -> export -> push
-> report) with the PACS URL replaced by a local Orthanc started for the
test, then queries Orthanc over DICOMweb: the new SEG and SR instances must
sit in the studies of their source series, reference those series, and carry
one TrackingUID per TrackingID across the studies. Step timings are printed
(``pytest -s``) for the record, never asserted.
"""

from __future__ import annotations

import re
import shlex
import time
from pathlib import Path

import pandas as pd
import pydicom
import pytest
from tests.pacs_tools import PASSWORD, USER, dciodvfy, run_orthanc
from typer.testing import CliRunner

from metstrack.cli.main import app
from metstrack.io.dicomweb import ENV_PASSWORD, ENV_TOKEN, ENV_USER, make_client
from metstrack.io.pseudonyms import read_mapping
from metstrack.io.tracked_dicom import read_tracked_sr

DOC = Path(__file__).resolve().parents[2] / "docs" / "dicom.md"
DOC_URL = "http://localhost:8042/dicom-web"
SEG_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.34"


def _section() -> list[tuple[str, str]]:
    text = DOC.read_text(encoding="utf-8")
    start = text.index("## The clinical round trip")
    end = text.index("\n## ", start + 10)
    return re.findall(r"^```(\w*)\n(.*?)^```", text[start:end], flags=re.M | re.S)


@pytest.fixture(scope="module")
def round_trip(tmp_path_factory):
    root = tmp_path_factory.mktemp("roundtrip")
    mp = pytest.MonkeyPatch()
    mp.chdir(root)
    mp.setenv(ENV_USER, USER)
    mp.setenv(ENV_PASSWORD, PASSWORD)
    mp.delenv(ENV_TOKEN, raising=False)
    timings: list[tuple[str, float]] = []
    outputs: list[str] = []
    try:
        with run_orthanc(root / "orthanc") as server:
            runner = CliRunner()
            for lang, body in _section():
                if lang == "python":
                    t0 = time.perf_counter()
                    exec(compile(body, "dicom.md:python", "exec"), {})  # noqa: S102 - our docs
                    timings.append(("python block", time.perf_counter() - t0))
                    continue
                if lang != "console":
                    continue
                for line in body.splitlines():
                    if not line.startswith("$ metstrack "):
                        continue
                    args = shlex.split(
                        line[len("$ metstrack ") :].replace(DOC_URL, server.dicomweb)
                    )
                    t0 = time.perf_counter()
                    res = runner.invoke(app, args, catch_exceptions=False)
                    timings.append((" ".join(args[:1]), time.perf_counter() - t0))
                    assert res.exit_code == 0, f"{line}\n{res.output}"
                    outputs.append(res.output)
            client = make_client(server.dicomweb)
            found = _query(client)
            yield {
                "root": root,
                "found": found,
                "outputs": outputs,
                "timings": timings,
                "server": server,
            }
    finally:
        mp.undo()
    print("\nround-trip timings (s):", ", ".join(f"{n} {t:.2f}" for n, t in timings))


def _query(client) -> dict:
    """Per study on the server: its SEG and SR datasets (retrieved over WADO-RS)."""
    out: dict[str, dict] = {}
    for st in client.search_for_studies():
        study = str(pydicom.Dataset.from_json(st).StudyInstanceUID)
        for inst in client.search_for_instances(study_instance_uid=study):
            ds = pydicom.Dataset.from_json(inst)
            if ds.SOPClassUID in (SEG_CLASS, SR_CLASS):
                full = client.retrieve_instance(
                    study_instance_uid=study,
                    series_instance_uid=ds.SeriesInstanceUID,
                    sop_instance_uid=ds.SOPInstanceUID,
                )
                kind = "SEG" if ds.SOPClassUID == SEG_CLASS else "SR"
                out.setdefault(study, {})[kind] = full
    return out


def test_every_command_ran_and_nothing_identifying_was_printed(round_trip):
    for text in round_trip["outputs"]:
        assert PASSWORD not in text
        assert "MRN-7733-SECRET" not in text
        assert "Doe^Jane" not in text


def test_seg_and_sr_sit_in_their_source_studies(round_trip):
    root = round_trip["root"]
    mapping = read_mapping(root / "release-pseudonyms.json")
    found = round_trip["found"]
    assert set(found) == set(mapping["studies"])  # every study got its objects back
    for study_uid, entry in mapping["studies"].items():
        seg, sr = found[study_uid]["SEG"], found[study_uid]["SR"]
        ct1 = entry["series"]["CT1"]
        assert seg.StudyInstanceUID == study_uid and sr.StudyInstanceUID == study_uid
        assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == ct1
        evidence = {
            s.SeriesInstanceUID
            for st in sr.CurrentRequestedProcedureEvidenceSequence
            for s in st.ReferencedSeriesSequence
        }
        assert ct1 in evidence and seg.SeriesInstanceUID in evidence
        assert seg.FrameOfReferenceUID == sr_frame(sr)


def sr_frame(sr) -> str:
    """FrameOfReferenceUID of the first SCOORD3D in the SR's content tree."""

    def walk(items):
        for it in items:
            if it.ValueType == "SCOORD3D":
                return str(it.ReferencedFrameOfReferenceUID)
            got = walk(it.get("ContentSequence", []))
            if got:
                return got
        return None

    return walk(sr.ContentSequence)


def test_tracking_uids_are_shared_across_studies(round_trip):
    found = round_trip["found"]
    by_id: dict[str, set[str]] = {}
    in_studies: dict[str, int] = {}
    for objs in found.values():
        for seg_item in objs["SEG"].SegmentSequence:
            by_id.setdefault(seg_item.TrackingID, set()).add(seg_item.TrackingUID)
            in_studies[seg_item.TrackingID] = in_studies.get(seg_item.TrackingID, 0) + 1
    assert by_id, "no lesion was found"
    assert all(len(u) == 1 for u in by_id.values())
    assert len({next(iter(u)) for u in by_id.values()}) == len(by_id)
    assert max(in_studies.values()) == len(found)  # some lesion is followed through every study


def test_server_copies_equal_the_exported_table(round_trip, tmp_path):
    root = round_trip["root"]
    table = pd.read_csv(root / "dicom_out" / "lesions.csv", dtype={"study_id": str})
    mapping = read_mapping(root / "release-pseudonyms.json")
    for study_uid, objs in round_trip["found"].items():
        sid = mapping["studies"][study_uid]["study_id"]
        path = tmp_path / f"{sid}.dcm"
        objs["SR"].save_as(path, enforce_file_format=True)
        rep = read_tracked_sr(path)
        rows = table[table["study_id"] == sid].set_index("tracking_id")
        assert {les.tracking_id for les in rep.lesions} == set(rows.index)
        for les in rep.lesions:
            assert les.tracking_uid == rows.loc[les.tracking_id, "tracking_uid"]
            assert les.volume_mm3 == pytest.approx(
                rows.loc[les.tracking_id, "volume_mm3"], rel=1e-9
            )
            assert les.long_axis_mm == pytest.approx(
                rows.loc[les.tracking_id, "long_axis_mm"], rel=1e-9, abs=1e-9
            )
        for kind, ds in objs.items():  # the server's copies validate too
            copy = tmp_path / f"{sid}-{kind}-server.dcm"
            ds.save_as(copy, enforce_file_format=True)
            assert dciodvfy(copy)[0] == [], copy
    for f in sorted((root / "dicom_out").rglob("*.dcm")):
        assert dciodvfy(f)[0] == [], f


def test_report_lists_the_tracking_ids_of_the_seg(round_trip):
    root = round_trip["root"]
    page = (root / "report" / "patients" / "P0001.html").read_text(encoding="utf-8")
    ids = {
        s.TrackingID for objs in round_trip["found"].values() for s in objs["SEG"].SegmentSequence
    }
    for tid in ids:
        assert f"<td class='l'>{tid}</td>" in page


def test_exporting_and_pushing_again_adds_no_duplicate(round_trip):
    root, server = round_trip["root"], round_trip["server"]
    before = len(server.get("/instances"))
    runner = CliRunner()
    for args in (
        [
            "export",
            "--tracking",
            "tracking",
            "--dicom",
            "pulled",
            "--mapping",
            "release-pseudonyms.json",
            "--out",
            "dicom_again",
            "--rtstruct",
        ],
        ["push", "dicom_again", "--pacs", server.dicomweb],
    ):
        with pytest.MonkeyPatch.context() as mp:
            mp.chdir(root)
            mp.setenv(ENV_USER, USER)
            mp.setenv(ENV_PASSWORD, PASSWORD)
            res = runner.invoke(app, args, catch_exceptions=False)
        assert res.exit_code == 0, res.output
    assert len(server.get("/instances")) == before
