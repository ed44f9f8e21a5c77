"""metstrack.synth."""
