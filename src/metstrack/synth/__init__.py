"""Synthetic NYUMets-style longitudinal cohort with known ground truth.

Modules: ``config`` (SynthConfig), ``timeline`` (clinical course, lesion volumes
and the planted Cox model, shared by both modes), ``anatomy`` (the head),
``render`` (lesions, vessels, motion, one study), ``cohort`` (make_patient,
generate_cohort), ``clinical`` (tables, clinical-only mode). See ``docs/synth.md``.
"""
