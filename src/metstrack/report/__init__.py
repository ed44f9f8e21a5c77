"""metstrack.report."""
