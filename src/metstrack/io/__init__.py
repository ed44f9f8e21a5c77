"""metstrack.io."""
