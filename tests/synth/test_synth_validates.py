"""What ``metstrack synth`` writes validates clean, and hidden labels stay usable."""

from __future__ import annotations

from metstrack.core import schema
from metstrack.io.release import read_release
from metstrack.io.validate import validate_dataset
from metstrack.synth.clinical import generate_clinical_only
from metstrack.train.cache import study_label_path
from metstrack.workflows.synth import write_clinical_only


def test_imaging_cohort_validates_with_no_warning(small_cohort):
    report = validate_dataset(small_cohort)
    assert report.problems == (), [p.message for p in report.problems]


def test_clinical_only_cohort_validates_clean(tmp_path):
    out = write_clinical_only(generate_clinical_only(4, seed=3), tmp_path / "clinical")
    assert not (out / schema.IMAGING_DIR).exists()
    report = validate_dataset(out)
    assert report.problems == (), [p.message for p in report.problems]


def test_hidden_labels_live_in_the_ground_truth(small_cohort):
    cohort = read_release(small_cohort)
    studies = [s for p in cohort.patients for s in p.studies]
    hidden = [s for s in studies if not s.labelled]
    assert hidden and all(s.label_path is None for s in hidden)
    assert all(s.truth_label is not None and s.any_label_path == s.truth_label for s in hidden)
    # Training with use_all_labels still sees every study's label; the flag policy not.
    assert all(study_label_path(s, use_all_labels=True) is not None for s in studies)
    assert all(study_label_path(s, use_all_labels=False) is None for s in hidden)
