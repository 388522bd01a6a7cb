"""omniem: the OmniEM dense-prediction network on EM-DINO features.

Public API (imported lazily so that ``import omniem`` stays cheap):

- `load` a model by registry name (``omniem list``) or file; `list_models`, `info`.
- `OmniEM`, `NetConfig`, `build`: the network (2D/3D, adapters, LoRA) on any emdino backbone.
- `omniem.train.train` / `load_config`: training from a YAML recipe.
- `evaluate`: scores on labelled images.
- `predict_image`: sliding-window inference of one 2D image.
- `predict` / `plan`: the out-of-core volume engine (tiles, blending, OME-Zarr, resumable).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "load": "omniem.registry",
    "list_models": "omniem.registry",
    "info": "omniem.registry",
    "OmniEM": "omniem.nets",
    "NetConfig": "omniem.nets",
    "build": "omniem.nets",
    "load_config": "omniem.train.config",
    "evaluate": "omniem.evaluate",
    "predict_image": "omniem.infer",
    "save_model": "omniem.modelfile",
    "predict": "omniem.engine",
    "plan": "omniem.engine",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'omniem' has no attribute {name!r}")
