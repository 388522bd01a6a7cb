"""The OmniEM model registry: name -> file, task, classes, voxel size, backbone, licence, card.

Entries are data (``omniem/models/models.yaml``); the network configuration, normalization and
scores are read from each model file's metadata, so nothing per model is hard-coded here.
"""

from __future__ import annotations

import difflib
import os
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from omniem.errors import ModelFileError, UnknownModelError

MODELS_DIR = Path(__file__).parent / "models"


@cache
def _table() -> dict[str, dict[str, Any]]:
    data = yaml.safe_load((MODELS_DIR / "models.yaml").read_text()) or {}
    return dict(data.get("models") or {})


def list_models(*, bundled_only: bool = False) -> list[str]:
    """Registered model names (``bundled_only``: those whose weights ship with the package)."""
    names = sorted(_table())
    if bundled_only:
        names = [n for n in names if (MODELS_DIR / _table()[n]["file"]).is_file()]
    return names


def _entry(name: str) -> dict[str, Any]:
    table = _table()
    if name not in table:
        close = difflib.get_close_matches(name, list(table), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise UnknownModelError(f"no OmniEM model named {name!r}{hint} (omniem list)")
    return table[name]


def resolve_model_path(name_or_path: str | os.PathLike[str]) -> Path:
    """The file of a registered model, or ``name_or_path`` itself when it is a file.

    Raises:
        UnknownModelError: neither a file nor a registered name.
        ModelFileError: registered, but its weights are not bundled.
    """
    path = Path(name_or_path)
    if path.suffix == ".safetensors" or path.is_file():
        if not path.is_file():
            raise ModelFileError(f"{path}: no such model file")
        return path
    entry = _entry(str(name_or_path))
    file = MODELS_DIR / entry["file"]
    if not file.is_file():
        raise ModelFileError(
            f"model {name_or_path!r} is registered but its weights ({file}) are "
            "not bundled in this installation"
        )
    return file


def info(name_or_path: str | os.PathLike[str]) -> dict[str, Any]:
    """Registry entry merged with the file's configuration and card."""
    from omniem.modelfile import read_metadata

    out: dict[str, Any] = {}
    if not Path(name_or_path).is_file():
        out.update(_entry(str(name_or_path)))
        out["name"] = str(name_or_path)
    try:
        path = resolve_model_path(name_or_path)
    except ModelFileError as err:
        out["bundled"] = False
        out["error"] = str(err)
        return out
    meta = read_metadata(path)
    out.update(
        {
            "path": str(path),
            "bundled": True,
            "net": meta["net"],
            "card": meta["card"],
            "backbone_included": meta["backbone_included"],
        }
    )
    return out


def load(
    name_or_path: str | os.PathLike[str], *, device: str = "cpu", img_size: int | None = None
) -> Any:
    """Load a registered model or a model file as an `omniem.nets.OmniEM` (eval mode).

    Examples:
        >>> import omniem
        >>> "mito-2d" in omniem.list_models()
        True
    """
    from omniem.modelfile import load_model

    return load_model(resolve_model_path(name_or_path), device=device, img_size=img_size)
