"""Checkpoints that resume exactly, and export of the teacher backbone.

A checkpoint is a ``torch.save`` of tensors and plain Python values only, loadable with
``torch.load(weights_only=True)`` (no pickled objects): student, teacher, centres, optimizer,
completed step, configuration, and the RNG states of torch, numpy and Python of every rank. The
schedules are pure functions of the step and the data order a pure function of (seed, step)
(see `emdino.ssl.data`), so these are all the state a run has. Writes are atomic (temp + rename).

The exported backbone is a safetensors file of the teacher ViT in timm's parameter names with the
architecture and normalisation in its metadata.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from emdino.ssl import distributed

FORMAT = "emdino-ssl-checkpoint/1"
EXPORT_FORMAT = "emdino-vit/1"


def get_rng_state() -> dict[str, Any]:
    """This process's RNG states as tensors and plain values."""
    np_state = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": {"version": py_version, "state": list(py_state), "gauss": py_gauss},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `get_rng_state` returned."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(
        (
            "MT19937",
            n["keys"].numpy().astype(np.uint32),
            n["pos"],
            n["has_gauss"],
            n["cached_gaussian"],
        )
    )
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _gather_rng() -> list[dict[str, Any]]:
    mine = get_rng_state()
    if not distributed.is_enabled():
        return [mine]
    import torch.distributed as dist

    out: list[Any] = [None] * distributed.world_size()
    dist.all_gather_object(out, mine)
    return out


def save_checkpoint(
    path: str | Path,
    *,
    meta: Any,
    optimizer: torch.optim.Optimizer,
    step: int,
    config: dict[str, Any],
    extra: dict[str, Any] | None = None,
) -> None:
    """Write a checkpoint (every rank must call it; rank 0 writes).

    Args:
        path: destination ``.pt`` file.
        meta: the `SSLMetaArch`.
        optimizer: its optimizer.
        step: number of completed optimizer steps.
        config: the resolved configuration as a plain dict.
        extra: more plain values to store (e.g. wall time so far).
    """
    rng = _gather_rng()
    model_sd, optim_sd = _state_dicts(meta, optimizer)
    if not distributed.is_main():
        return
    state = {
        "format": FORMAT,
        "step": int(step),
        "student": model_sd["student"],
        "teacher": model_sd["teacher"],
        "centers": {
            "cls": meta.cls_center.center.detach().cpu().clone(),
            "patch": meta.patch_center.center.detach().cpu().clone(),
        },
        "optimizer": optim_sd,
        "rng": rng,
        "world_size": distributed.world_size(),
        "config": config,
        "extra": dict(extra or {}),
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    torch.save(state, tmp)
    os.replace(tmp, path)


def _state_dicts(meta: Any, optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    if meta.cfg.dist.strategy == "fsdp" and distributed.is_enabled():
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_model_state_dict,
            get_optimizer_state_dict,
        )

        opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
        student = get_model_state_dict(meta.student, options=opts)
        teacher = get_model_state_dict(meta.teacher, options=opts)
        optim = get_optimizer_state_dict(meta.student, optimizer, options=opts)
        return {"student": student, "teacher": teacher}, optim
    student = {k: v.detach().cpu() for k, v in meta.student.state_dict().items()}
    teacher = {k: v.detach().cpu() for k, v in meta.teacher.state_dict().items()}
    return {"student": student, "teacher": teacher}, optimizer.state_dict()


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint safely (``weights_only=True``).

    Raises:
        FileNotFoundError: no such file.
        ValueError: not an emdino pretraining checkpoint.
    """
    state = torch.load(Path(path), map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"{path} is not an emdino pretraining checkpoint ({FORMAT})")
    return state


def restore(meta: Any, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> int:
    """Load a checkpoint into the networks, optimizer and RNGs; returns the completed step.

    Raises:
        ValueError: the checkpoint was written by a run with a different number of ranks (its
            per-rank RNG states would not line up).
    """
    if state["world_size"] != distributed.world_size():
        raise ValueError(
            f"checkpoint from {state['world_size']} ranks, this run has "
            f"{distributed.world_size()}: resume with the same number of processes"
        )
    if meta.cfg.dist.strategy == "fsdp" and distributed.is_enabled():
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            set_model_state_dict,
            set_optimizer_state_dict,
        )

        opts = StateDictOptions(full_state_dict=True)
        set_model_state_dict(meta.student, state["student"], options=opts)
        set_model_state_dict(meta.teacher, state["teacher"], options=opts)
        set_optimizer_state_dict(meta.student, optimizer, state["optimizer"], options=opts)
    else:
        meta.student.load_state_dict(state["student"])
        meta.teacher.load_state_dict(state["teacher"])
        optimizer.load_state_dict(state["optimizer"])
    meta.cls_center.center.copy_(state["centers"]["cls"])
    meta.patch_center.center.copy_(state["centers"]["patch"])
    set_rng_state(state["rng"][distributed.rank()])
    return int(state["step"])


# ---------------------------------------------------------------------------------------------
# Export


def backbone_state_dict(state: dict[str, Any], which: str = "teacher") -> dict[str, torch.Tensor]:
    """The timm ViT weights (``backbone.vit.*`` without the prefix) of a checkpoint's network.

    Args:
        state: a loaded checkpoint.
        which: ``teacher`` (the EMA network DINOv2 evaluates) or ``student``.
    """
    if which not in ("teacher", "student"):
        raise ValueError("which must be 'teacher' or 'student'")
    prefix = "backbone.vit."
    return {k[len(prefix) :]: v for k, v in state[which].items() if k.startswith(prefix)}


def export_backbone(
    checkpoint: str | Path,
    out: str | Path,
    *,
    dtype: torch.dtype = torch.float16,
    which: str = "teacher",
    metadata: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write a checkpoint's backbone as safetensors; returns the metadata written.

    The metadata (string values, as safetensors requires) holds ``format``, ``arch`` (JSON of the
    timm ``VisionTransformer`` arguments), ``normalization`` (JSON: grey image in [0, 1], mean,
    std), ``step`` and anything passed in ``metadata``.

    Args:
        checkpoint: a pretraining checkpoint.
        out: the ``.safetensors`` file to write.
        dtype: tensor dtype (float16 halves the size; float32 keeps the training precision).
        which: ``teacher`` or ``student``.
        metadata: extra string-able entries.

    Examples:
        >>> export_backbone("/work/ckpt/run/last.pt", "vit.safetensors")  # doctest: +SKIP
    """
    from safetensors.torch import save_file

    state = load_checkpoint(checkpoint)
    weights = {k: v.to(dtype).contiguous() for k, v in backbone_state_dict(state, which).items()}
    cfg = state["config"]
    m = cfg["model"]
    arch = {
        "class": "timm.models.vision_transformer.VisionTransformer",
        "img_size": cfg["crops"]["global_size"],
        "patch_size": m["patch_size"],
        "in_chans": m["in_chans"],
        "embed_dim": m["embed_dim"],
        "depth": m["depth"],
        "num_heads": m["num_heads"],
        "mlp_ratio": m["mlp_ratio"],
        "qkv_bias": m["qkv_bias"],
        "init_values": m["layerscale"],
        "num_classes": 0,
        "dynamic_img_size": True,
    }
    norm = {
        "input": "grey image scaled to [0, 1]",
        "mean": cfg["data"]["mean"],
        "std": cfg["data"]["std"],
    }
    meta = {
        "format": EXPORT_FORMAT,
        "arch": json.dumps(arch),
        "normalization": json.dumps(norm),
        "step": str(state["step"]),
        "network": which,
        "name": str(cfg.get("name", "")),
    }
    meta.update(
        {k: v if isinstance(v, str) else json.dumps(v) for k, v in (metadata or {}).items()}
    )
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    save_file(weights, str(tmp), metadata=meta)
    os.replace(tmp, out)
    return meta


def load_exported(path: str | Path) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Rebuild the timm ViT of an exported file (float32) and return it with its metadata.

    Examples:
        >>> vit, meta = load_exported("vit.safetensors")  # doctest: +SKIP
        >>> json.loads(meta["normalization"])["mean"]  # doctest: +SKIP
        0.595446
    """
    from safetensors import safe_open
    from safetensors.torch import load_file
    from timm.models.vision_transformer import VisionTransformer

    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata() or {})
    if meta.get("format") != EXPORT_FORMAT:
        raise ValueError(f"{path} is not an emdino export ({EXPORT_FORMAT})")
    arch = json.loads(meta["arch"])
    arch.pop("class", None)
    vit = VisionTransformer(**arch)
    weights = {k: v.float() for k, v in load_file(str(path)).items()}
    vit.load_state_dict(weights, strict=True)
    return vit.eval(), meta
