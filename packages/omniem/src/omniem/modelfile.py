"""OmniEM model files: safetensors weights + the network configuration and card as metadata.

A file holds the decoder (and adapters) always and the backbone only when it was trained; an
untrained backbone is loaded from its emdino name, recorded in the configuration.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from omniem.errors import ModelFileError
from omniem.nets import NetConfig, OmniEM, build

FORMAT = "omniem.model/1"


def save_model(
    net: OmniEM,
    path: str | os.PathLike[str],
    *,
    card: dict[str, Any] | None = None,
    dtype: torch.dtype = torch.float32,
) -> Path:
    """Write ``net`` to ``path`` (atomic: a temporary file renamed at the end).

    Args:
        net: the network.
        path: ``.safetensors`` file.
        card: model-card facts (name, task, classes, voxel size, licence, data, scores, ...).
        dtype: floating-point storage dtype (float16 halves the file).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {
        k: (v.detach().to(dtype) if v.is_floating_point() else v.detach()).contiguous().cpu()
        for k, v in net.trainable_state_dict().items()
    }
    meta = {
        "format": FORMAT,
        "net": json.dumps(net.config.model_dump(mode="json")),
        "card": json.dumps(card or {}),
        "backbone_included": json.dumps(net.trains_backbone),
        # The position-embedding grid the backbone was built with (other sizes resample it).
        "img_size": json.dumps(net.backbone.img_size),
    }
    tmp = path.with_name(path.name + ".partial")
    save_file(tensors, str(tmp), metadata=meta)
    os.replace(tmp, path)
    return path


def read_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The configuration and card of a model file without loading its weights.

    Raises:
        ModelFileError: missing, unreadable, or not an OmniEM model file.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: no such model file")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as err:  # safetensors raises several types for damaged files
        raise ModelFileError(f"{path}: not a readable safetensors file ({err})") from err
    if meta.get("format") != FORMAT:
        raise ModelFileError(
            f"{path}: not an OmniEM model file (metadata format {meta.get('format')!r}, "
            f"expected {FORMAT!r})"
        )
    return {
        "net": json.loads(meta["net"]),
        "card": json.loads(meta.get("card", "{}")),
        "backbone_included": json.loads(meta.get("backbone_included", "false")),
        "img_size": json.loads(meta.get("img_size", "null")),
    }


def load_model(
    path: str | os.PathLike[str], *, device: str = "cpu", img_size: int | None = None
) -> OmniEM:
    """Rebuild the network from a model file (strict: every stored and expected key must match).

    The backbone is rebuilt on the position-embedding grid it was trained with (recorded in the
    file), so a frozen backbone gives the decoder the features it learned from; ``img_size``
    overrides that grid for files without a trained backbone (inputs of any size still work).

    Raises:
        ModelFileError: not a model file, or its weights do not fit its configuration.
    """
    from safetensors.torch import load_file

    meta = read_metadata(path)
    config = NetConfig.model_validate(meta["net"])
    if meta["img_size"] and (meta["backbone_included"] or img_size is None):
        img_size = int(meta["img_size"])
    net = build(config, img_size=img_size, device=device)
    tensors = load_file(str(path), device=device)
    expected = net.state_dict() if meta["backbone_included"] else net.trainable_state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise ModelFileError(
            f"{path}: weights do not match the network: missing {missing[:5]}"
            f"{'...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}"
        )
    for k, v in tensors.items():
        if v.shape != expected[k].shape:
            raise ModelFileError(
                f"{path}: {k} has shape {tuple(v.shape)}, the network expects "
                f"{tuple(expected[k].shape)}"
            )
    state = {k: v.to(expected[k].dtype) for k, v in tensors.items()}
    net.load_state_dict(state, strict=False)
    net.card = meta["card"]
    net.eval()
    return net
