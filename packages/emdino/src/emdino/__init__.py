"""emdino: EM-DINO backbones, weights and feature extraction.

Public API (imported lazily, so ``import emdino`` stays cheap until a model is needed):

- `load` a backbone by name (``emdino list``) or checkpoint file; `save` one as safetensors;
  `info` / `list_models` / `default_model` about the registry.
- ``model.features(x)`` -> `Features` (``cls``, ``patch``, ``levels``) for images of any size;
  ``model.forward_intermediates`` for layers built on top (omniem).
- `extract_features` / `extract_to_zarr`: tiled extraction of large images and volumes to Zarr.
- Errors: `EMDinoError` and its subclasses in `emdino.errors`.

Examples:
    >>> import emdino, torch
    >>> model = emdino.load("vit_tiny_patch16.random")
    >>> model.features(torch.rand(1, 1, 64, 80)).patch.shape
    torch.Size([1, 192, 4, 5])
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from emdino.errors import (
    ChecksumError,
    CorruptCheckpointError,
    DownloadError,
    EMDinoError,
    UnknownModelError,
    UnsafeCheckpointError,
    WeightsMismatchError,
    WeightsNotFoundError,
)

__version__ = "0.1.0"

_LAZY = {
    "load": "emdino.loader",
    "save": "emdino.loader",
    "info": "emdino.loader",
    "list_models": "emdino.models.registry",
    "default_model": "emdino.models.registry",
    "Backbone": "emdino.backbone",
    "Features": "emdino.backbone",
    "TokenGrid": "emdino.backbone",
    "extract_features": "emdino.features",
    "extract_to_zarr": "emdino.features",
}

__all__ = [
    "Backbone",
    "ChecksumError",
    "CorruptCheckpointError",
    "DownloadError",
    "EMDinoError",
    "Features",
    "TokenGrid",
    "UnknownModelError",
    "UnsafeCheckpointError",
    "WeightsMismatchError",
    "WeightsNotFoundError",
    "__version__",
    "default_model",
    "extract_features",
    "extract_to_zarr",
    "info",
    "list_models",
    "load",
    "save",
]

if TYPE_CHECKING:
    from emdino.backbone import Backbone, Features, TokenGrid
    from emdino.features import extract_features, extract_to_zarr
    from emdino.loader import info, load, save
    from emdino.models.registry import default_model, list_models


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'emdino' has no attribute {name!r}")
