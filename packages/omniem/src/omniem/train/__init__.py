"""Training: `load_config` (default.yaml + recipe + overrides) and `train` (the loop)."""

from omniem.train.config import RunConfig, load_config
from omniem.train.loop import train

__all__ = ["RunConfig", "load_config", "train"]
