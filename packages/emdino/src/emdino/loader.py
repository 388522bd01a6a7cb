"""`load` a backbone by name or file, `save` one as safetensors, `info` about a name.

Loading is strict: the architecture read from the checkpoint must be the one the name promises,
and every key must be used; otherwise `WeightsMismatchError` names what differs. RGB-trained
weights are folded into a 1-channel patch embedding (`emdino.weights.adapt_input_channels`), so a
grey EM image gives exactly the features of the 3-channel model on the replicated image.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from dataclasses import asdict, fields, replace
from pathlib import Path
from typing import Any

import torch

from emdino.backbone import Backbone, as_dtype
from emdino.errors import UnknownModelError, WeightsMismatchError
from emdino.models.registry import (
    EMDINO_MEAN,
    EMDINO_STD,
    ArchSpec,
    PretrainedCfg,
    get_arch,
    get_pretrained,
    list_archs,
)
from emdino.precision import resolve_precision
from emdino.weights import convert, files, store

log = logging.getLogger(__name__)

#: Seed of the ``.random`` configurations (same weights in every run).
RANDOM_SEED = 0
_CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt")


def _looks_like_path(name: str) -> bool:
    return os.sep in name or name.endswith(_CHECKPOINT_SUFFIXES) or os.path.exists(name)


def load(
    name_or_path: str | os.PathLike[str] = "default",
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | str = torch.float32,
    img_size: int | None = None,
    in_chans: int = 1,
    download: bool = True,
    progress: bool = True,
) -> Backbone:
    """Build a backbone and load its weights; returned in eval mode.

    Args:
        name_or_path: a registered name (``emdino list``; ``"default"``; aliases such as
            ``dinov2_vits14``) or a checkpoint file in any supported layout (DINOv2, EM-DINO v1
            ``vit.*``, timm, emdino safetensors).
        device: where the model runs.
        dtype: compute dtype: float32, or bfloat16 (``"bf16"``) / float16 for autocast; weights
            stay float32. ``"auto"``: bf16 where ``device`` computes it natively, else float32
            (`emdino.precision`; emulated bf16 is far slower than float32).
        img_size: side (pixels) of the position-embedding grid to build the model with (the
            checkpoint's grid is resampled once, as in training); default: the checkpoint's.
            Inputs of other sizes still work (resampled at run time).
        in_chans: input channels of the model: 1 for grey EM (default), or as many as the
            checkpoint has.
        download: allow downloading missing weights into the cache.
        progress: show download progress.

    Raises:
        UnknownModelError: not a registered name nor an existing file.
        WeightsNotFoundError: weights missing and not downloadable (the message says where to put
            them).
        ChecksumError, CorruptCheckpointError, UnsafeCheckpointError: bad file.
        WeightsMismatchError: checkpoint and architecture do not fit (keys/shapes named).
        ValueError: bad arguments.

    Examples:
        >>> model = load("vit_small_patch14.random", dtype="bf16")
        >>> model.name, model.embed_dim, model.in_chans
        ('vit_small_patch14.random', 384, 1)
    """
    if isinstance(dtype, str) and dtype.lower() == "auto":
        dtype = resolve_precision("auto", device)
    compute_dtype = as_dtype(dtype)
    if in_chans < 1:
        raise ValueError(f"in_chans must be >= 1, got {in_chans}")
    name = os.fspath(name_or_path)
    if _looks_like_path(name):
        cfg, sd = _from_file(Path(name))
    else:
        cfg = get_pretrained(name)
        sd = None
        if not cfg.random_init:
            path = store.fetch(cfg, download_missing=download, progress=progress)
            sd = _state_dict(path)
    arch = get_arch(cfg.arch)
    size = int(img_size or cfg.img_size)
    if size % arch.patch_size:
        raise ValueError(f"img_size {size} is not a multiple of the patch size {arch.patch_size}")
    mean, std = _target_norm(cfg, in_chans)
    kwargs = dict(
        arch.params,
        img_size=size,
        in_chans=in_chans,
        pos_interp_offset=cfg.pos_interp_offset,
        pos_interp_antialias=cfg.pos_interp_antialias,
    )
    if sd is None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_SEED)
            vit = arch.builder(**kwargs)
    else:
        sd = _fit(sd, cfg, arch, size, mean, std, in_chans)
        with torch.device("meta"):  # no throw-away random init of large models
            vit = arch.builder(**kwargs)
        _load_strict(vit, sd, cfg.name)
    model = Backbone(vit, cfg, mean, std, compute_dtype)
    return model.to(device).eval()


def _target_norm(cfg: PretrainedCfg, in_chans: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    if in_chans == cfg.in_chans:
        return tuple(cfg.mean), tuple(cfg.std)
    if in_chans == 1:
        # One grey statistic close to the checkpoint's, so inputs keep their usual scale.
        return (sum(cfg.mean) / len(cfg.mean),), (sum(cfg.std) / len(cfg.std),)
    if cfg.in_chans == 1:
        return (cfg.mean[0],) * in_chans, (cfg.std[0],) * in_chans
    raise ValueError(
        f"{cfg.name} has {cfg.in_chans} input channels; in_chans must be 1 or {cfg.in_chans}"
    )


def _state_dict(path: Path) -> dict[str, torch.Tensor]:
    obj, _ = files.read_checkpoint(path)
    return convert.to_timm(convert.extract_backbone(obj, source=str(path)))


def _from_file(path: Path) -> tuple[PretrainedCfg, dict[str, torch.Tensor]]:
    """Configuration and timm-named state dict of a checkpoint file."""
    if not path.exists():
        raise UnknownModelError(f"{path}: no such file, and not a registered model name")
    obj, meta = files.read_checkpoint(path)
    raw = convert.extract_backbone(obj, source=str(path))
    fmt = convert.detect_format(raw)
    sd = convert.to_timm(raw)
    if files.META_KEY in meta:  # written by emdino.save: the configuration travels with it
        data = json.loads(meta[files.META_KEY])
        known = {f.name for f in fields(PretrainedCfg)}
        row = {k: (tuple(v) if isinstance(v, list) else v) for k, v in data.items() if k in known}
        return PretrainedCfg(**row), sd
    facts = convert.describe(sd)
    arch = infer_arch(facts)
    known = _registered_file(path.name, arch)
    if known is not None:  # e.g. a hand-downloaded dinov2_vits14_pretrain.pth: use its entry
        return known, sd
    official = fmt in ("dinov2", "emdino_v1")
    c = int(facts["in_chans"])
    log.warning(
        "%s: no configuration in the file; assuming %s with EM-DINO normalization (mean %.6f, "
        "std %.6f)",
        path,
        arch,
        EMDINO_MEAN,
        EMDINO_STD,
    )
    cfg = PretrainedCfg(
        arch=arch,
        tag="file",
        img_size=int(facts["grid"]) * int(facts["patch_size"]),
        in_chans=c,
        mean=(EMDINO_MEAN,) * c,
        std=(EMDINO_STD,) * c,
        filename=path.name,
        source=str(path),
        # DINOv2 code (and EM-DINO v1) resample positions with the 0.1 offset, no antialias.
        pos_interp_offset=0.1 if official and not facts["reg_tokens"] else 0.0,
        pos_interp_antialias=not (official and not facts["reg_tokens"]),
        description=f"checkpoint {path.name} ({fmt} layout)",
    )
    return cfg, sd


def _registered_file(filename: str, arch: str) -> PretrainedCfg | None:
    """The registry entry whose weights file has this name and architecture, if any."""
    from emdino.models.registry import list_models

    for name in list_models(include_random=False):
        cfg = get_pretrained(name)
        if cfg.filename == filename and cfg.arch == arch:
            return cfg
    return None


def infer_arch(facts: Mapping[str, Any]) -> str:
    """The registered architecture matching facts from `emdino.weights.describe`.

    Raises:
        WeightsMismatchError: no registered architecture has these dimensions.
    """
    for name in list_archs():
        p = get_arch(name).params
        if (
            p["embed_dim"] == facts["embed_dim"]
            and p["depth"] == facts["depth"]
            and p["patch_size"] == facts["patch_size"]
            and p.get("reg_tokens", 0) == facts["reg_tokens"]
            and p.get("ffn", "mlp") == facts["ffn"]
        ):
            return name
    raise WeightsMismatchError(f"no registered architecture fits the checkpoint ({_fmt(facts)})")


def _fmt(facts: Mapping[str, Any]) -> str:
    return (
        f"width {facts['embed_dim']}, {facts['depth']} blocks, patch {facts['patch_size']}, "
        f"{facts['reg_tokens']} registers, {facts['ffn']} feed-forward"
    )


def _fit(
    sd: dict[str, torch.Tensor],
    cfg: PretrainedCfg,
    arch: ArchSpec,
    size: int,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    in_chans: int,
) -> dict[str, torch.Tensor]:
    """Check the checkpoint's architecture; resize positions; adapt input channels."""
    facts = convert.describe(sd)
    want = {
        "embed_dim": arch.embed_dim,
        "depth": arch.depth,
        "patch_size": arch.patch_size,
        "reg_tokens": arch.params.get("reg_tokens", 0),
        "ffn": arch.params.get("ffn", "mlp"),
    }
    if any(facts[k] != v for k, v in want.items()):
        try:
            hint = f" (it looks like {infer_arch(facts)})"
        except WeightsMismatchError:
            hint = ""
        raise WeightsMismatchError(
            f"{cfg.name}: architecture mismatch: the checkpoint has {_fmt(facts)}{hint}, but "
            f"{arch.name} has {_fmt(want)}"
        )
    if facts["in_chans"] != cfg.in_chans:
        raise WeightsMismatchError(
            f"{cfg.name}: the checkpoint has {facts['in_chans']} input channels, its "
            f"configuration says {cfg.in_chans}"
        )
    # Compute in float32 whatever the file stored (fp16 checkpoints exist).
    sd = {k: v.float() if v.is_floating_point() else v for k, v in sd.items()}
    grid = size // arch.patch_size
    if facts["grid"] != grid:
        sd = convert.resize_pos_embed(
            sd, grid, offset=cfg.pos_interp_offset, antialias=cfg.pos_interp_antialias
        )
    return convert.adapt_input_channels(sd, cfg.mean, cfg.std, mean, std)


def _load_strict(vit: torch.nn.Module, sd: Mapping[str, torch.Tensor], name: str) -> None:
    expected = vit.state_dict()
    sd = convert.fill_identity_layerscale(sd, expected)
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    shapes = [
        f"{k} {tuple(sd[k].shape)} vs {tuple(expected[k].shape)}"
        for k in sorted(set(sd) & set(expected))
        if sd[k].shape != expected[k].shape
    ]
    problems = []
    if missing:
        problems.append(f"missing keys {_some(missing)}")
    if unexpected:
        problems.append(f"unexpected keys {_some(unexpected)}")
    if shapes:
        problems.append(f"shape mismatches (checkpoint vs model) {_some(shapes)}")
    if problems:
        raise WeightsMismatchError(f"{name}: checkpoint does not fit: " + "; ".join(problems))
    vit.load_state_dict(sd, strict=True, assign=True)


def _some(items: list[str], n: int = 6) -> str:
    shown = ", ".join(items[:n])
    return f"[{shown}{f', ... ({len(items)} in all)' if len(items) > n else ''}]"


def save(model: Backbone, path: str | os.PathLike[str], *, tag: str | None = None) -> Path:
    """Save a backbone as safetensors (timm names) with its configuration; `load` reads it back.

    Args:
        model: a loaded backbone.
        path: target ``.safetensors`` file (written atomically).
        tag: tag stored in the configuration (default: the model's).

    Examples:
        >>> import tempfile
        >>> m = load("vit_tiny_patch16.random")
        >>> p = save(m, tempfile.mkdtemp() + "/tiny.safetensors")
        >>> load(p).name
        'vit_tiny_patch16.random'
    """
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"save writes .safetensors files, got {path.name}")
    cfg = replace(
        model.cfg,
        tag=tag or model.cfg.tag,
        img_size=model.img_size,
        in_chans=model.in_chans,
        mean=model.norm_mean,
        std=model.norm_std,
        url=None,
        filename=path.name,
        sha256=None,
        size=None,
    )
    return files.write_safetensors(model.vit.state_dict(), path, asdict(cfg))


def info(name: str) -> dict[str, Any]:
    """Everything known about a registered model: configuration, architecture, cache state.

    Examples:
        >>> d = info("dinov2_vitl14")
        >>> d["name"], d["embed_dim"], d["license"], d["sha256"]
        ('vit_large_patch14.dinov2', 1024, 'Apache-2.0', None)
    """
    cfg = get_pretrained(name)
    arch = get_arch(cfg.arch)
    out = cfg.as_dict()
    out.update(
        family=arch.family,
        patch_size=arch.patch_size,
        embed_dim=arch.embed_dim,
        depth=arch.depth,
        num_heads=arch.params.get("num_heads"),
        reg_tokens=arch.params.get("reg_tokens", 0),
        ffn=arch.params.get("ffn", "mlp"),
        random_init=cfg.random_init,
    )
    if not cfg.random_init:
        path = store.cached_path(cfg)
        out["cache_path"] = str(path)
        out["cached"] = path.is_file()
    return out
