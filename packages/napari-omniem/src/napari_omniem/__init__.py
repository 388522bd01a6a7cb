"""napari-omniem: napari plugin for OmniEM."""

__version__ = "0.1.0"
