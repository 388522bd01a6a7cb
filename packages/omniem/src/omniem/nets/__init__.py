"""OmniEM networks: `OmniEM` (2D/3D U-shaped network on an emdino backbone) and its adapters."""

from omniem.nets.config import NetConfig
from omniem.nets.omniem import OmniEM, activate, build, default_levels

__all__ = ["NetConfig", "OmniEM", "activate", "build", "default_levels"]
