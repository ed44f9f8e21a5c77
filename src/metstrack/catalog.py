"""The cohort catalog: one SQLite file (WAL) holding what metstrack knows and made.

Tables: ``datasets``, ``patients``, ``studies``, ``series``, ``labels`` (what a
dataset holds), ``runs`` (one per command invocation: ingest, preprocess,
predict, track...), ``run_studies`` (which study a run finished), ``outputs``
(files a run wrote), ``predictions``, ``lesions`` and ``lesion_tracks``, plus
``schema_version``.

Every write method runs in one transaction (``BEGIN IMMEDIATE`` ... ``COMMIT``)
and upserts on natural keys, so a run killed at any moment leaves the catalog
consistent (SQLite's WAL journal rolls back the unfinished transaction) and a
rerun adds nothing twice. A rerun (:meth:`Catalog.begin_run` with the same kind,
config, source and output, interrupted or finished) continues that run's id.

Schema versions are applied in order by :data:`MIGRATIONS`; opening an older
file upgrades it in place (each migration is one transaction).
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from metstrack.config import config_fingerprint, to_dict
from metstrack.core.atomic import atomic_path
from metstrack.errors import DatasetError, did_you_mean
from metstrack.types import Cohort, Lesion

log = logging.getLogger(__name__)

#: Schema migrations: version -> SQL statements that bring version-1 to version.
MIGRATIONS: dict[int, tuple[str, ...]] = {
    1: (
        """CREATE TABLE datasets (
            root TEXT PRIMARY KEY,
            layout TEXT NOT NULL,
            registered_at TEXT NOT NULL)""",
        """CREATE TABLE patients (
            patient_id TEXT PRIMARY KEY,
            dataset_root TEXT NOT NULL REFERENCES datasets(root),
            split TEXT)""",
        """CREATE TABLE studies (
            study_id TEXT PRIMARY KEY,
            patient_id TEXT NOT NULL REFERENCES patients(patient_id),
            days_from_baseline REAL NOT NULL,
            relative_timepoint INTEGER NOT NULL,
            labelled INTEGER NOT NULL,
            expert_adjusted INTEGER NOT NULL)""",
        """CREATE TABLE series (
            study_id TEXT NOT NULL REFERENCES studies(study_id),
            sequence TEXT NOT NULL,
            path TEXT NOT NULL,
            PRIMARY KEY (study_id, sequence))""",
        """CREATE TABLE labels (
            study_id TEXT PRIMARY KEY REFERENCES studies(study_id),
            path TEXT NOT NULL,
            expert_adjusted INTEGER NOT NULL)""",
        """CREATE TABLE runs (
            run_id INTEGER PRIMARY KEY AUTOINCREMENT,
            kind TEXT NOT NULL,
            status TEXT NOT NULL,
            config_json TEXT NOT NULL,
            started_at TEXT NOT NULL,
            finished_at TEXT)""",
        """CREATE TABLE run_studies (
            run_id INTEGER NOT NULL REFERENCES runs(run_id),
            study_id TEXT NOT NULL,
            patient_id TEXT NOT NULL,
            status TEXT NOT NULL,
            seconds REAL NOT NULL,
            recorded_at TEXT NOT NULL,
            PRIMARY KEY (run_id, study_id))""",
        """CREATE TABLE outputs (
            run_id INTEGER NOT NULL REFERENCES runs(run_id),
            study_id TEXT,
            path TEXT NOT NULL,
            kind TEXT NOT NULL,
            PRIMARY KEY (run_id, path))""",
        """CREATE TABLE predictions (
            run_id INTEGER NOT NULL REFERENCES runs(run_id),
            study_id TEXT NOT NULL,
            mask_path TEXT NOT NULL,
            prob_path TEXT,
            PRIMARY KEY (run_id, study_id))""",
        """CREATE TABLE lesions (
            run_id INTEGER NOT NULL REFERENCES runs(run_id),
            study_id TEXT NOT NULL,
            label INTEGER NOT NULL,
            voxel_count INTEGER NOT NULL,
            volume_mm3 REAL NOT NULL,
            centroid_x_mm REAL NOT NULL,
            centroid_y_mm REAL NOT NULL,
            centroid_z_mm REAL NOT NULL,
            longest_diameter_mm REAL NOT NULL,
            PRIMARY KEY (run_id, study_id, label))""",
    ),
    2: (
        # Version 2: config fingerprints and run locations (resume matching), lesion tracks.
        "ALTER TABLE runs ADD COLUMN config_fingerprint TEXT NOT NULL DEFAULT ''",
        "ALTER TABLE runs ADD COLUMN source TEXT NOT NULL DEFAULT ''",
        "ALTER TABLE runs ADD COLUMN output TEXT NOT NULL DEFAULT ''",
        """CREATE TABLE lesion_tracks (
            run_id INTEGER NOT NULL REFERENCES runs(run_id),
            track_id INTEGER NOT NULL,
            study_id TEXT NOT NULL,
            label INTEGER NOT NULL,
            PRIMARY KEY (run_id, track_id, study_id, label))""",
        "CREATE INDEX run_studies_by_study ON run_studies(study_id)",
        "CREATE INDEX runs_by_kind ON runs(kind, status)",
        # Series and labels belong to a dataset (a raw release and its preprocessed copy
        # share StudyIDs but not files): rebuild both keyed by dataset, keeping the rows.
        """CREATE TABLE series_v2 (
            dataset_root TEXT NOT NULL REFERENCES datasets(root),
            study_id TEXT NOT NULL REFERENCES studies(study_id),
            sequence TEXT NOT NULL,
            path TEXT NOT NULL,
            PRIMARY KEY (dataset_root, study_id, sequence))""",
        """INSERT INTO series_v2(dataset_root, study_id, sequence, path)
            SELECT p.dataset_root, se.study_id, se.sequence, se.path
            FROM series se JOIN studies st USING(study_id) JOIN patients p USING(patient_id)""",
        "DROP TABLE series",
        "ALTER TABLE series_v2 RENAME TO series",
        """CREATE TABLE labels_v2 (
            dataset_root TEXT NOT NULL REFERENCES datasets(root),
            study_id TEXT NOT NULL REFERENCES studies(study_id),
            path TEXT NOT NULL,
            expert_adjusted INTEGER NOT NULL,
            PRIMARY KEY (dataset_root, study_id))""",
        """INSERT INTO labels_v2(dataset_root, study_id, path, expert_adjusted)
            SELECT p.dataset_root, l.study_id, l.path, l.expert_adjusted
            FROM labels l JOIN studies st USING(study_id) JOIN patients p USING(patient_id)""",
        "DROP TABLE labels",
        "ALTER TABLE labels_v2 RENAME TO labels",
    ),
}
#: The schema version this code writes.
SCHEMA_VERSION = max(MIGRATIONS)

#: Tables users may list and export.
TABLES: tuple[str, ...] = (
    "datasets",
    "patients",
    "studies",
    "series",
    "labels",
    "runs",
    "run_studies",
    "outputs",
    "predictions",
    "lesions",
    "lesion_tracks",
    "schema_version",
)
EXPORT_FORMATS = ("csv", "parquet")


@dataclass(frozen=True)
class OutputRecord:
    """One file a run wrote.

    Attributes:
        path: File path (relative to the run's output folder, or absolute).
        study_id: The study it belongs to, or ``None`` for run-level files.
        kind: What it is (``image``, ``label``, ``transform``, ``report``...).
    """

    path: str
    study_id: str | None = None
    kind: str = "file"


@dataclass(frozen=True)
class PredictionRecord:
    """One study's prediction files.

    Attributes:
        study_id: Release StudyID.
        mask_path: Binary mask file.
        prob_path: Probability map file, if written.
    """

    study_id: str
    mask_path: str
    prob_path: str | None = None


@dataclass(frozen=True)
class TrackRecord:
    """One lesion's membership in a track.

    Attributes:
        track_id: Identity of the lesion across studies.
        study_id: The study of the lesion.
        label: The lesion's component label in that study's mask.
    """

    track_id: int
    study_id: str
    label: int


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _config_payload(config: Any) -> tuple[str, str]:
    if config is None:
        return "{}", ""
    if isinstance(config, dict):
        text = json.dumps(config, sort_keys=True, default=str)
        import hashlib

        return text, hashlib.sha256(text.encode()).hexdigest()[:16]
    return json.dumps(to_dict(config), sort_keys=True, default=str), config_fingerprint(config)


class Catalog:
    """A cohort catalog file. Open with :meth:`Catalog.open`; use as a context manager."""

    def __init__(self, path: Path, conn: sqlite3.Connection) -> None:
        self.path = path
        self._conn = conn

    # ---------------------------------------------------------------- opening
    @classmethod
    def open(cls, path: str | Path) -> Catalog:
        """Open (or create) a catalog file and migrate it to :data:`SCHEMA_VERSION`.

        Args:
            path: The SQLite file; parent folders are created.

        Raises:
            DatasetError: The file is not a SQLite database or is newer than this code.
        """
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            conn = sqlite3.connect(str(path), isolation_level=None, timeout=60.0)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA foreign_keys=ON")
            cat = cls(path, conn)
            cat._migrate()
        except sqlite3.DatabaseError as exc:
            raise DatasetError(
                f"{path}: not a usable metstrack catalog ({exc}); give a new file name"
            ) from exc
        return cat

    def close(self) -> None:
        """Close the connection (pending transactions are already committed)."""
        self._conn.close()

    def __enter__(self) -> Catalog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def schema_version(self) -> int:
        """The schema version of the open file."""
        row = self._conn.execute(
            "SELECT name FROM sqlite_master WHERE type='table' AND name='schema_version'"
        ).fetchone()
        if row is None:
            return 0
        v = self._conn.execute("SELECT MAX(version) FROM schema_version").fetchone()[0]
        return int(v or 0)

    def _migrate(self) -> None:
        current = self.schema_version
        if current > SCHEMA_VERSION:
            raise DatasetError(
                f"{self.path}: catalog schema version {current} is newer than this metstrack "
                f"({SCHEMA_VERSION}); upgrade metstrack"
            )
        for version in range(current + 1, SCHEMA_VERSION + 1):
            with self._tx() as c:
                if version == 1:
                    c.execute(
                        "CREATE TABLE IF NOT EXISTS schema_version "
                        "(version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)"
                    )
                for stmt in MIGRATIONS[version]:
                    c.execute(stmt)
                c.execute(
                    "INSERT INTO schema_version(version, applied_at) VALUES (?, ?)",
                    (version, _now()),
                )
            log.info("catalog %s migrated to schema version %d", self.path, version)

    def _tx(self):
        return _Transaction(self._conn)

    # ------------------------------------------------------------------ writes
    def register_dataset(self, cohort: Cohort) -> int:
        """Upsert a cohort's patients, studies, series and labels (one transaction).

        Patients and studies are entities shared by every dataset that names them
        (a raw release and its preprocessed copy); series and labels are files
        recorded per dataset.

        Args:
            cohort: A cohort from any reader (``metstrack.io.release.read_release``...).

        Returns:
            The number of studies registered.
        """
        root = str(Path(cohort.root).resolve())
        with self._tx() as c:
            c.execute(
                "INSERT INTO datasets(root, layout, registered_at) VALUES (?, ?, ?) "
                "ON CONFLICT(root) DO UPDATE SET layout=excluded.layout",
                (root, cohort.layout, _now()),
            )
            for p in cohort.patients:
                c.execute(
                    # dataset_root keeps the first dataset that named the patient.
                    "INSERT INTO patients(patient_id, dataset_root, split) VALUES (?, ?, ?) "
                    "ON CONFLICT(patient_id) DO UPDATE SET split=excluded.split",
                    (p.patient_id, root, p.split),
                )
                for s in p.studies:
                    c.execute(
                        "INSERT INTO studies(study_id, patient_id, days_from_baseline, "
                        "relative_timepoint, labelled, expert_adjusted) VALUES (?, ?, ?, ?, ?, ?) "
                        "ON CONFLICT(study_id) DO UPDATE SET patient_id=excluded.patient_id, "
                        "days_from_baseline=excluded.days_from_baseline, "
                        "relative_timepoint=excluded.relative_timepoint, "
                        "labelled=excluded.labelled, expert_adjusted=excluded.expert_adjusted",
                        (
                            s.study_id,
                            p.patient_id,
                            float(s.days_from_baseline),
                            int(s.relative_timepoint),
                            int(s.labelled),
                            int(s.expert_adjusted),
                        ),
                    )
                    for se in s.series:
                        c.execute(
                            "INSERT INTO series(dataset_root, study_id, sequence, path) "
                            "VALUES (?, ?, ?, ?) ON CONFLICT(dataset_root, study_id, sequence) "
                            "DO UPDATE SET path=excluded.path",
                            (root, s.study_id, se.sequence, str(se.path)),
                        )
                    if s.label_path is not None:
                        c.execute(
                            "INSERT INTO labels(dataset_root, study_id, path, expert_adjusted) "
                            "VALUES (?, ?, ?, ?) ON CONFLICT(dataset_root, study_id) DO UPDATE "
                            "SET path=excluded.path, expert_adjusted=excluded.expert_adjusted",
                            (root, s.study_id, str(s.label_path), int(s.expert_adjusted)),
                        )
        return len(cohort.studies)

    def begin_run(
        self,
        kind: str,
        config: Any = None,
        *,
        source: str = "",
        output: str = "",
        resume: bool = True,
    ) -> int:
        """Start a run, or continue the run with the same kind, config, source and output.

        The same command over the same input into the same output is the same run,
        whether it was interrupted (``running``/``failed``) or finished: its id is
        reused, so its studies and outputs (upserted on natural keys) are never
        counted twice however often it is repeated.

        Args:
            kind: ``ingest``, ``preprocess``, ``predict``, ``track``...
            config: The resolved config dataclass (or a plain dict); stored as JSON.
            source: Input location.
            output: Output location.
            resume: Reuse the matching run (any status) instead of starting a new one.

        Returns:
            The run id.
        """
        text, fp = _config_payload(config)
        with self._tx() as c:
            if resume:
                row = c.execute(
                    "SELECT run_id FROM runs WHERE kind=? AND config_fingerprint=? AND source=? "
                    "AND output=? ORDER BY run_id DESC LIMIT 1",
                    (kind, fp, source, output),
                ).fetchone()
                if row is not None:
                    c.execute(
                        "UPDATE runs SET status='running', finished_at=NULL WHERE run_id=?",
                        (row[0],),
                    )
                    return int(row[0])
            cur = c.execute(
                "INSERT INTO runs(kind, status, config_json, config_fingerprint, source, output, "
                "started_at) VALUES (?, 'running', ?, ?, ?, ?, ?)",
                (kind, text, fp, source, output, _now()),
            )
            return int(cur.lastrowid)

    def record_study_done(
        self,
        run_id: int,
        patient_id: str,
        study_id: str,
        *,
        outputs: Iterable[str | OutputRecord] = (),
        seconds: float = 0.0,
        status: str = "done",
    ) -> None:
        """Record that a run finished a study, with the files it wrote (one transaction)."""
        with self._tx() as c:
            c.execute(
                "INSERT INTO run_studies(run_id, study_id, patient_id, status, seconds, "
                "recorded_at) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(run_id, study_id) DO UPDATE "
                "SET status=excluded.status, seconds=excluded.seconds, "
                "recorded_at=excluded.recorded_at",
                (run_id, study_id, patient_id, status, float(seconds), _now()),
            )
            for o in outputs:
                rec = o if isinstance(o, OutputRecord) else OutputRecord(str(o), study_id)
                _upsert_output(c, run_id, rec)

    def add_outputs(self, run_id: int, rows: Iterable[OutputRecord]) -> int:
        """Record files a run wrote (one transaction, idempotent). Returns the row count."""
        n = 0
        with self._tx() as c:
            for rec in rows:
                _upsert_output(c, run_id, rec)
                n += 1
        return n

    def add_predictions(self, run_id: int, rows: Iterable[PredictionRecord]) -> int:
        """Record prediction files per study (one transaction, idempotent)."""
        n = 0
        with self._tx() as c:
            for r in rows:
                c.execute(
                    "INSERT INTO predictions(run_id, study_id, mask_path, prob_path) "
                    "VALUES (?, ?, ?, ?) ON CONFLICT(run_id, study_id) DO UPDATE SET "
                    "mask_path=excluded.mask_path, prob_path=excluded.prob_path",
                    (run_id, r.study_id, r.mask_path, r.prob_path),
                )
                n += 1
        return n

    def add_lesions(self, run_id: int, study_id: str, lesions: Sequence[Lesion]) -> int:
        """Replace a study's lesions for a run (one transaction)."""
        with self._tx() as c:
            c.execute("DELETE FROM lesions WHERE run_id=? AND study_id=?", (run_id, study_id))
            for les in lesions:
                c.execute(
                    "INSERT INTO lesions(run_id, study_id, label, voxel_count, volume_mm3, "
                    "centroid_x_mm, centroid_y_mm, centroid_z_mm, longest_diameter_mm) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        run_id,
                        study_id,
                        int(les.label),
                        int(les.voxel_count),
                        float(les.volume_mm3),
                        *(float(v) for v in les.centroid_mm),
                        float(les.longest_diameter_mm),
                    ),
                )
        return len(lesions)

    def add_tracks(self, run_id: int, rows: Iterable[TrackRecord]) -> int:
        """Record lesion-track memberships (one transaction, idempotent)."""
        n = 0
        with self._tx() as c:
            for r in rows:
                c.execute(
                    "INSERT OR IGNORE INTO lesion_tracks(run_id, track_id, study_id, label) "
                    "VALUES (?, ?, ?, ?)",
                    (run_id, int(r.track_id), r.study_id, int(r.label)),
                )
                n += 1
        return n

    def finish_run(self, run_id: int, status: str = "finished") -> None:
        """Mark a run ``finished`` (or ``failed``) with its end time."""
        with self._tx() as c:
            c.execute(
                "UPDATE runs SET status=?, finished_at=? WHERE run_id=?", (status, _now(), run_id)
            )

    # ------------------------------------------------------------------- reads
    def done_studies(self, kind: str, *, run_id: int | None = None) -> set[str]:
        """StudyIDs finished (status ``done``) by runs of ``kind`` (or by one run)."""
        sql = (
            "SELECT DISTINCT rs.study_id FROM run_studies rs JOIN runs r USING(run_id) "
            "WHERE r.kind=? AND rs.status='done'"
        )
        args: tuple = (kind,)
        if run_id is not None:
            sql += " AND r.run_id=?"
            args = (kind, run_id)
        return {row[0] for row in self._conn.execute(sql, args)}

    def counts(self) -> dict[str, int]:
        """Row count of every table."""
        return {
            t: int(self._conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]) for t in TABLES
        }

    def frame(self, table: str) -> pd.DataFrame:
        """A table as a DataFrame (columns as in the database)."""
        _check_table(table)
        return pd.read_sql_query(f"SELECT * FROM {table}", self._conn)

    def export(self, table: str, path: str | Path, format: str = "csv") -> Path:
        """Write a table to CSV or Parquet (atomically).

        Args:
            table: One of :data:`TABLES`.
            path: Output file.
            format: ``csv`` or ``parquet``.

        Raises:
            DatasetError: Unknown table or format (with a suggestion).
        """
        if format not in EXPORT_FORMATS:
            raise DatasetError(
                f"export format {format!r} is not supported; {did_you_mean(format, EXPORT_FORMATS)}"
            )
        df = self.frame(table)
        with atomic_path(path) as tmp:
            if format == "csv":
                df.to_csv(tmp, index=False)
            else:
                df.to_parquet(tmp, index=False)
        return Path(path)

    def integrity_problems(self) -> list[str]:
        """SQLite integrity and foreign-key check findings (empty when consistent)."""
        out = [r[0] for r in self._conn.execute("PRAGMA integrity_check") if r[0] != "ok"]
        out += [str(tuple(r)) for r in self._conn.execute("PRAGMA foreign_key_check")]
        return out


def _check_table(table: str) -> None:
    if table not in TABLES:
        raise DatasetError(f"unknown catalog table {table!r}; {did_you_mean(table, TABLES)}")


def _upsert_output(c: sqlite3.Connection, run_id: int, rec: OutputRecord) -> None:
    c.execute(
        "INSERT INTO outputs(run_id, study_id, path, kind) VALUES (?, ?, ?, ?) "
        "ON CONFLICT(run_id, path) DO UPDATE SET study_id=excluded.study_id, kind=excluded.kind",
        (run_id, rec.study_id, rec.path, rec.kind),
    )


class _Transaction:
    """``BEGIN IMMEDIATE`` ... ``COMMIT`` (``ROLLBACK`` on an exception)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def __enter__(self) -> sqlite3.Connection:
        self._conn.execute("BEGIN IMMEDIATE")
        return self._conn

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self._conn.execute("COMMIT")
        else:
            self._conn.execute("ROLLBACK")
