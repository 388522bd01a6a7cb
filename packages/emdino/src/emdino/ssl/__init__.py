"""DINOv2 self-supervised pretraining of EM-DINO backbones.

Public API:

- `load_config`, `PretrainConfig`: the configuration (``configs/default.yaml`` + overrides).
- `train`: run or resume pretraining; `main` / `add_pretrain_parser`: ``emdino pretrain``.
- `SSLMetaArch`: student/teacher orchestration of one step; `build_backbone`: the masked ViT.
- `export_backbone`, `load_exported`: the teacher ViT as safetensors and back.

Examples:
    >>> from emdino.ssl import load_config
    >>> cfg = load_config("vitt8_cpu", ["optim.total_steps=100"])
    >>> cfg.model.patch_size, cfg.crops.global_size
    (8, 96)
    >>> train(cfg, "/work/ckpt/run")  # doctest: +SKIP
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from emdino.ssl.config import PretrainConfig, load_config

__all__ = [
    "PretrainConfig",
    "SSLMetaArch",
    "add_pretrain_parser",
    "build_backbone",
    "export_backbone",
    "load_config",
    "load_exported",
    "main",
    "train",
]

if TYPE_CHECKING:
    from emdino.ssl.backbone import build_backbone
    from emdino.ssl.checkpoint import export_backbone, load_exported
    from emdino.ssl.meta_arch import SSLMetaArch
    from emdino.ssl.train import add_pretrain_parser, main, train

_LAZY = {
    "SSLMetaArch": "emdino.ssl.meta_arch",
    "add_pretrain_parser": "emdino.ssl.train",
    "build_backbone": "emdino.ssl.backbone",
    "export_backbone": "emdino.ssl.checkpoint",
    "load_exported": "emdino.ssl.checkpoint",
    "main": "emdino.ssl.train",
    "train": "emdino.ssl.train",
}


def __getattr__(name: str) -> Any:
    # torch/timm load only when a training object is asked for.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'emdino.ssl' has no attribute {name!r}")
