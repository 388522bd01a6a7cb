"""emdino: EM-DINO backbones, weights and feature extraction."""

__version__ = "0.1.0"
