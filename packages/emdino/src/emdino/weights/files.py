"""Reading and writing checkpoint files safely.

Checkpoints are read with safetensors or with ``torch.load(weights_only=True)``, never with plain
unpickling: a ``.pt`` file that asks for any object other than tensors and plain containers is
refused before anything in it runs (`UnsafeCheckpointError`). A file that cannot be read at all
(truncated download, wrong file) raises `CorruptCheckpointError` naming it.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from emdino.errors import CorruptCheckpointError, UnsafeCheckpointError

_ZIP_MAGIC = b"PK\x03\x04"
#: Metadata key under which emdino stores the model's configuration in its safetensors files.
META_KEY = "emdino"


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in ``chunk``-byte pieces (constant memory).

    Examples:
        >>> import tempfile
        >>> p = tempfile.mktemp(); _ = open(p, "wb").write(b"abc")
        >>> sha256_file(p)[:12]
        'ba7816bf8f01'
    """
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _is_safetensors(head: bytes) -> bool:
    # 8-byte little-endian header length, then a JSON object.
    return len(head) > 8 and head[8:9] == b"{"


def read_checkpoint(path: str | os.PathLike[str]) -> tuple[Any, dict[str, str]]:
    """Load a checkpoint file without executing anything in it.

    Args:
        path: a ``.safetensors`` file or a ``torch.save`` file (zip or legacy format).

    Returns:
        ``(obj, metadata)``: the loaded object (a dict of tensors for safetensors; whatever
        plain containers ``torch.save`` wrote otherwise) and the safetensors metadata (empty for
        ``.pt`` files).

    Raises:
        FileNotFoundError: no such file.
        UnsafeCheckpointError: the pickle asks for objects other than tensors/containers.
        CorruptCheckpointError: truncated, empty or not a checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint file")
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(16)
    if size == 0:
        raise CorruptCheckpointError(f"{path}: file is empty")
    if _is_safetensors(head):
        return _read_safetensors(path, size)
    try:
        # mmap keeps a multi-GB checkpoint out of RAM until its tensors are copied in.
        obj = torch.load(
            path, map_location="cpu", weights_only=True, mmap=head.startswith(_ZIP_MAGIC)
        )
    except pickle.UnpicklingError as e:
        # torch names the global a pickle asks for; anything else is not a pickle we can read.
        found = re.search(r"GLOBAL (\S+)", str(e))
        if found or re.search(r"[Uu]nsupported global", str(e)):
            what = f" (it asks for {found.group(1)})" if found else ""
            raise UnsafeCheckpointError(
                f"{path}: refused: the checkpoint holds pickled objects other than tensors{what}. "
                "emdino never unpickles arbitrary objects; convert it with code you trust "
                "(state_dict of tensors only) or save it as .safetensors"
            ) from None
        raise _corrupt(path, size, e) from None
    except (RuntimeError, EOFError, KeyError, ValueError, zipfile.BadZipFile, OSError) as e:
        raise _corrupt(path, size, e) from None
    return obj, {}


def _corrupt(path: Path, size: int, err: BaseException) -> CorruptCheckpointError:
    detail = re.search(r"WeightsUnpickler error: \s*(.+)", str(err))
    text = detail.group(1) if detail else str(err)
    reason = text.strip().splitlines()[0][:160] if text.strip() else type(err).__name__
    return CorruptCheckpointError(
        f"{path}: cannot read the checkpoint ({size} bytes): truncated or not a torch/safetensors "
        f"file ({reason}); delete it and download it again"
    )


def _read_safetensors(path: Path, size: int) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - not a dict
    except Exception as e:  # safetensors raises its own SafetensorError for every defect
        raise _corrupt(path, size, e) from None
    return tensors, meta


def write_safetensors(
    state_dict: Mapping[str, torch.Tensor],
    path: str | os.PathLike[str],
    config: Mapping[str, Any] | None = None,
) -> Path:
    """Write a state dict as safetensors, atomically, with emdino's config in the metadata.

    Args:
        state_dict: tensors to write (made contiguous; shared storage is copied).
        path: target file (``.safetensors``).
        config: JSON-serialisable model configuration stored under the ``emdino`` metadata key.
    """
    from safetensors.torch import save_file

    path = Path(path)
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in state_dict.items()}
    meta = {META_KEY: json.dumps(dict(config), sort_keys=True)} if config else {}
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata=meta)
    os.replace(tmp, path)
    return path
