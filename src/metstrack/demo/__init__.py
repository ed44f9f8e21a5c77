"""metstrack.demo: the main job, end to end on the synthetic cohort."""
