"""Re-running preprocess with the same --catalog adds nothing to the catalog."""

from __future__ import annotations

from tests.dataset_factory import write_release

from metstrack.catalog import Catalog


def test_three_identical_runs_leave_one_run_and_no_duplicate_rows(cli, tmp_path):
    data = write_release(tmp_path / "data", patients={"P01": [0.0, 30.0]})
    db = tmp_path / "c.db"
    args = ("preprocess", "--data", data, "--out", tmp_path / "pp", "--no-brain-mask")
    counts = []
    for _ in range(3):
        res = cli(*args, "--catalog", db)
        assert res.exit_code == 0, res.output
        with Catalog.open(db) as cat:
            counts.append(cat.counts())
    assert counts[0] == counts[1] == counts[2]
    assert counts[0]["runs"] == 1 and counts[0]["run_studies"] == 2
    # another output folder is another run
    other = ("preprocess", "--data", data, "--out", tmp_path / "pp2", "--no-brain-mask")
    res = cli(*other, "--catalog", db)
    assert res.exit_code == 0, res.output
    with Catalog.open(db) as cat:
        assert cat.counts()["runs"] == 2
