"""metstrack.core: the layer everything else stands on (geometry, atomic writes, lesion labelling, rates); imports nothing above it."""
