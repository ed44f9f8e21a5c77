"""metstrack.tracking."""
