"""metstrack.survival."""
