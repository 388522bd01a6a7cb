"""Backbone registry: architectures by name, pretrained configurations as data.

See `emdino.models.registry` for the naming (``arch.tag``) and `emdino.models.vit` for the ViT
family.
"""

from __future__ import annotations

from emdino.models.registry import (
    EMDINO_MEAN,
    EMDINO_STD,
    ArchSpec,
    PretrainedCfg,
    default_model,
    get_arch,
    get_pretrained,
    list_archs,
    list_models,
    register_arch,
    register_pretrained,
    resolve_name,
    unregister_arch,
    unregister_pretrained,
)

__all__ = [
    "EMDINO_MEAN",
    "EMDINO_STD",
    "ArchSpec",
    "PretrainedCfg",
    "default_model",
    "get_arch",
    "get_pretrained",
    "list_archs",
    "list_models",
    "register_arch",
    "register_pretrained",
    "resolve_name",
    "unregister_arch",
    "unregister_pretrained",
]
