"""metstrack.metrics."""
