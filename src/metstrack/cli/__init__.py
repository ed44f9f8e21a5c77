"""metstrack.cli."""
