"""metstrack.workflows: cohort-level workflows (evaluate, track, survival, synthetic cohort) that compose core, pure domains and I/O; each a library function with typed inputs and outputs."""
