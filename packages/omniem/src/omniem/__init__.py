"""omniem: the OmniEM dense-prediction network on EM-DINO features."""

__version__ = "0.1.0"
