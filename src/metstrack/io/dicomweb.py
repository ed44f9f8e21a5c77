"""A PACS in and out over DICOMweb (dicomweb-client): QIDO-RS, WADO-RS, STOW-RS.

- :func:`pull_studies` searches studies (QIDO-RS, by PatientID or by
  StudyInstanceUID) and retrieves them series by series (WADO-RS) into a
  folder tree ``<out>/<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm``
  that ``metstrack ingest`` reads. Each study is written into a hidden
  staging folder and renamed into place, so an interrupted pull leaves whole
  studies; a rerun skips studies already present.
- :func:`push_files` stores DICOM files (STOW-RS), e.g. the SEG/SR/RTSTRUCT
  that ``metstrack export`` wrote.

Credentials never come from the command line: a URL holding
``user:password@`` is refused. They come from the environment
(:data:`ENV_USER` + :data:`ENV_PASSWORD` for HTTP basic auth, or
:data:`ENV_TOKEN` for a bearer token) or, when none is set, from a netrc file
(``~/.netrc`` or the file ``NETRC`` names; requests reads it). Messages and
logs name the server by scheme, host and path only, never a credential or a
patient identifier; dicomweb-client's and urllib3's loggers are held at WARNING because
its debug records include query parameters such as PatientID (urllib3's too).
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pydicom
import requests
from dicomweb_client.api import DICOMwebClient

from metstrack.errors import PacsError
from metstrack.io.dicom import uid_suffix

log = logging.getLogger(__name__)
# their debug records carry query strings (PatientID=...): never let them reach a log
for _name in ("dicomweb_client", "urllib3"):
    logging.getLogger(_name).setLevel(logging.WARNING)

#: Environment variables holding credentials.
ENV_USER = "METSTRACK_PACS_USER"
ENV_PASSWORD = "METSTRACK_PACS_PASSWORD"
ENV_TOKEN = "METSTRACK_PACS_TOKEN"
#: Seconds before a request is abandoned.
TIMEOUT_S = 30.0
#: Instances per STOW-RS request.
STOW_BATCH = 16


@dataclass(frozen=True)
class PulledStudy:
    """One study fetched by :func:`pull_studies`.

    Attributes:
        study_uid: StudyInstanceUID.
        folder: Where its files are.
        n_series: Series retrieved.
        n_instances: Instances written.
        status: ``"pulled"`` or ``"skipped"`` (already present).
        seconds: Wall time of the retrieval.
    """

    study_uid: str
    folder: Path
    n_series: int
    n_instances: int
    status: str
    seconds: float


@dataclass(frozen=True)
class PushResult:
    """What :func:`push_files` stored.

    Attributes:
        n_stored: Instances the server accepted.
        studies: StudyInstanceUIDs of the stored instances.
        seconds: Wall time.
    """

    n_stored: int
    studies: tuple[str, ...]
    seconds: float


def server_label(url: str) -> str:
    """``scheme://host:port/path`` of ``url`` (no credentials, query or fragment)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


def check_url(url: str) -> str:
    """Validate a DICOMweb base URL and return it without a trailing slash.

    Raises:
        PacsError: Not http(s), no host, or credentials inside the URL.
    """
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise PacsError(f"{url!r} is not a URL; give e.g. http://pacs:8042/dicom-web") from None
    if parts.username is not None or parts.password is not None:
        raise PacsError(
            f"{server_label(url)}: credentials in the URL are refused (they would show in "
            f"shell history and logs); set {ENV_USER}/{ENV_PASSWORD} or use a netrc file"
        )
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise PacsError(
            f"{url!r} is not an http(s) DICOMweb URL; give e.g. http://pacs:8042/dicom-web"
        )
    return url.rstrip("/")


def make_client(url: str) -> DICOMwebClient:
    """A DICOMweb client for ``url`` with credentials from the environment or netrc.

    Raises:
        PacsError: A bad URL (see :func:`check_url`), or only one of user and password set.
    """
    url = check_url(url)
    session = requests.Session()  # trust_env: requests applies a netrc entry itself
    user, password, token = (os.environ.get(k) for k in (ENV_USER, ENV_PASSWORD, ENV_TOKEN))
    if bool(user) != bool(password):
        raise PacsError(f"set both {ENV_USER} and {ENV_PASSWORD}, or neither")
    if user:
        session.auth = (user, password or "")
    elif token:
        session.headers["Authorization"] = f"Bearer {token}"
    client = DICOMwebClient(url, session=session, timeout=TIMEOUT_S)
    client.set_http_retry_params(retry=False)
    return client


def _explain(exc: Exception, url: str, what: str) -> PacsError:
    where = server_label(url)
    if isinstance(exc, requests.exceptions.ConnectionError):
        return PacsError(
            f"{where}: cannot connect while trying to {what}; check that the server runs "
            "and the host and port are right"
        )
    if isinstance(exc, requests.exceptions.Timeout):
        return PacsError(f"{where}: no answer within {TIMEOUT_S:.0f} s while trying to {what}")
    if isinstance(exc, requests.exceptions.HTTPError) and exc.response is not None:
        code = exc.response.status_code
        if code in (401, 403):
            return PacsError(
                f"{where}: HTTP {code}, not authorised to {what}; set {ENV_USER} and "
                f"{ENV_PASSWORD} (or {ENV_TOKEN}) or add the host to your netrc file"
            )
        if code == 404:
            return PacsError(
                f"{where}: HTTP 404 while trying to {what}; is this the DICOMweb root "
                "(Orthanc: http://host:8042/dicom-web)?"
            )
        return PacsError(f"{where}: HTTP {code} while trying to {what}")
    return PacsError(f"{where}: {type(exc).__name__} while trying to {what}")


def _call(fn, url: str, what: str, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except (requests.exceptions.RequestException, ValueError) as exc:
        raise _explain(exc, url, what) from None


def _search(client: DICOMwebClient, url: str, filters: dict[str, str]) -> list[str]:
    hits = _call(
        client.search_for_studies,
        url,
        "search studies",
        search_filters=filters,
        fields=["StudyInstanceUID"],
    )
    return [str(pydicom.Dataset.from_json(h).StudyInstanceUID) for h in hits]


def find_studies(
    client: DICOMwebClient, url: str, *, patient_id: str | None, study_uids: Sequence[str]
) -> list[str]:
    """StudyInstanceUIDs matching a PatientID and/or given UIDs (QIDO-RS).

    Raises:
        PacsError: Unreachable, refused, or nothing matches (a given UID that is absent
            is named by its suffix; a PatientID is never echoed).
    """
    found: list[str] = []
    if patient_id and any(c in patient_id for c in "*?\\"):
        raise PacsError(
            "--patient must be one exact PatientID: wildcards (* ?) would match other patients"
        )
    if patient_id:
        found += _search(client, url, {"PatientID": patient_id})
        if not found and not study_uids:
            raise PacsError(
                f"{server_label(url)}: no study matches the given --patient; check the "
                "PatientID as the PACS stores it"
            )
    for uid in study_uids:
        if not _search(client, url, {"StudyInstanceUID": uid}):
            raise PacsError(
                f"{server_label(url)}: study {uid_suffix(uid)} not found; check the "
                "StudyInstanceUID (metstrack pull --study UID)"
            )
        if uid not in found:
            found.append(uid)
    return found


def pull_studies(
    url: str,
    out: str | Path,
    *,
    patient_id: str | None = None,
    study_uids: Sequence[str] = (),
    on_study: Callable[[PulledStudy], None] | None = None,
) -> list[PulledStudy]:
    """Fetch studies from a DICOMweb server into a folder ``metstrack ingest`` reads.

    Args:
        url: DICOMweb base URL (e.g. ``http://pacs:8042/dicom-web``).
        out: Folder to fill (``<StudyUID>/<SeriesUID>/<SOPUID>.dcm``).
        patient_id: Fetch every study of this PatientID (as the PACS stores it).
        study_uids: Fetch these studies.
        on_study: Called with each :class:`PulledStudy` (progress).

    Returns:
        One record per study.

    Raises:
        PacsError: Bad URL, unreachable, refused, or a requested study is absent.
    """
    if not patient_id and not study_uids:
        raise PacsError("nothing to pull: give a PatientID or at least one StudyInstanceUID")
    client = make_client(url)
    out = Path(out)
    uids = find_studies(client, url, patient_id=patient_id, study_uids=study_uids)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for uid in uids:
        final = out / uid
        t0 = time.perf_counter()
        if final.is_dir():
            n = sum(1 for _ in final.rglob("*.dcm"))
            rec = PulledStudy(uid, final, len(list(final.iterdir())), n, "skipped", 0.0)
        else:
            rec = _pull_one(client, url, uid, out, t0)
        results.append(rec)
        log.info("study %s: %s %d instance(s)", uid_suffix(uid), rec.status, rec.n_instances)
        if on_study is not None:
            on_study(rec)
    return results


def _pull_one(client: DICOMwebClient, url: str, uid: str, out: Path, t0: float) -> PulledStudy:
    series = _call(
        client.search_for_series,
        url,
        f"list the series of study {uid_suffix(uid)}",
        study_instance_uid=uid,
        fields=["SeriesInstanceUID"],
    )
    stage = out / f".{uid}.partial-{os.getpid()}"
    shutil.rmtree(stage, ignore_errors=True)
    n = 0
    try:
        for s in series:
            suid = str(pydicom.Dataset.from_json(s).SeriesInstanceUID)
            datasets = _call(
                client.retrieve_series,
                url,
                f"retrieve series {uid_suffix(suid)}",
                study_instance_uid=uid,
                series_instance_uid=suid,
            )
            folder = stage / suid
            folder.mkdir(parents=True, exist_ok=True)
            for ds in datasets:
                ds.save_as(folder / f"{ds.SOPInstanceUID}.dcm", enforce_file_format=True)
                n += 1
        os.replace(stage, out / uid)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    return PulledStudy(uid, out / uid, len(series), n, "pulled", time.perf_counter() - t0)


def dicom_files(paths: Iterable[str | Path]) -> list[Path]:
    """Every ``*.dcm`` file under the given files or folders, sorted.

    Raises:
        PacsError: A path does not exist, or nothing was found.
    """
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_file():
            files.append(p)
        elif p.is_dir():
            files += sorted(q for q in p.rglob("*.dcm") if q.is_file())
        else:
            raise PacsError(f"{p}: no such file or folder")
    if not files:
        raise PacsError("no .dcm files to push under the given paths")
    return files


def push_files(url: str, files: Sequence[str | Path]) -> PushResult:
    """Store DICOM files on a DICOMweb server (STOW-RS, in batches per study).

    Raises:
        PacsError: Bad URL, unreachable, refused, an unreadable file, or the server
            reports failed instances.
    """
    client = make_client(url)
    t0 = time.perf_counter()
    by_study: dict[str, list[pydicom.Dataset]] = {}
    for f in files:
        try:
            ds = pydicom.dcmread(f)
        except Exception as exc:  # noqa: BLE001 - pydicom raises many types
            raise PacsError(f"{f}: not a readable DICOM file ({type(exc).__name__})") from None
        by_study.setdefault(str(ds.StudyInstanceUID), []).append(ds)
    stored = 0
    for study, items in by_study.items():
        for i in range(0, len(items), STOW_BATCH):
            batch = items[i : i + STOW_BATCH]
            resp = _call(
                client.store_instances,
                url,
                f"store {len(batch)} instance(s) of study {uid_suffix(study)}",
                datasets=batch,
                study_instance_uid=study,
            )
            failed = resp.get("FailedSOPSequence") if resp is not None else None
            if failed:
                raise PacsError(
                    f"{server_label(url)}: the server refused {len(failed)} of {len(batch)} "
                    f"instance(s) of study {uid_suffix(study)}"
                )
            stored += len(batch)
    return PushResult(stored, tuple(by_study), time.perf_counter() - t0)
