"""metstrack.infer."""
