"""metstrack.models."""
