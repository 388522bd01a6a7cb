"""Weights: layout converters (`convert`), safe file reading (`files`) and the cache (`store`)."""

from __future__ import annotations

from emdino.weights.convert import (
    adapt_input_channels,
    describe,
    detect_format,
    dinov2_to_timm,
    emdino_v1_to_timm,
    extract_backbone,
    resize_pos_embed,
    timm_to_dinov2,
    timm_to_emdino_v1,
    to_timm,
)
from emdino.weights.files import read_checkpoint, sha256_file, write_safetensors
from emdino.weights.store import cache_dir, download, fetch, verify, weights_dir

__all__ = [
    "adapt_input_channels",
    "cache_dir",
    "describe",
    "detect_format",
    "dinov2_to_timm",
    "download",
    "emdino_v1_to_timm",
    "extract_backbone",
    "fetch",
    "read_checkpoint",
    "resize_pos_embed",
    "sha256_file",
    "timm_to_dinov2",
    "timm_to_emdino_v1",
    "to_timm",
    "verify",
    "weights_dir",
    "write_safetensors",
]
