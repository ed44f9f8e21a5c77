"""metstrack.preprocess."""
