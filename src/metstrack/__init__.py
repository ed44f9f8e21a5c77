"""metstrack: longitudinal brain-metastasis MRI, from ingest to survival."""

__version__ = "0.1.0"
