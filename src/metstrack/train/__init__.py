"""metstrack.train."""
