"""Files shipped with metstrack: the demo checkpoint and its config."""
