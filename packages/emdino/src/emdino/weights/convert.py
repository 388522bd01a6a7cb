"""Pure ``state_dict -> state_dict`` converters, picked by the keys a checkpoint holds.

emdino models are timm ``VisionTransformer`` s, so every layout is converted *to timm names*:

=============  ======================================================  =====================
format         recognised by                                           converter
=============  ======================================================  =====================
``emdino_v1``  keys under ``vit.`` (OmniEM's ``backbone_emdino_v1.pt``)  `emdino_v1_to_timm`
``dinov2``     ``mask_token``, ``register_tokens``, ``mlp.w12``,       `dinov2_to_timm`
               chunked ``blocks.C.I.`` (official DINOv2 release)
``timm``       ``patch_embed.proj.weight`` and none of the above       identity (also emdino's
                                                                       own safetensors)
=============  ======================================================  =====================

A DINOv2 checkpoint without mask token, registers or SwiGLU has exactly timm's names, so reading
it as ``timm`` is the same thing. Wrappers (``{"model": ...}``, ``{"teacher": ...}``) and prefixes
(``module.``, ``backbone.``, ``teacher.backbone.``) are removed first by `extract_backbone`.

The inverse converters (`timm_to_dinov2`, `timm_to_emdino_v1`) write the official layouts; the
tests use them to prove a round trip, and they let emdino export weights for DINOv2 code.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Mapping, Sequence

import torch

from emdino.errors import CorruptCheckpointError
from emdino.models.pos_embed import resample_pos_embed

log = logging.getLogger(__name__)

StateDict = dict[str, torch.Tensor]

#: Keys a ViT backbone always has (after conversion to timm names).
ANCHOR = "patch_embed.proj.weight"
#: Wrapper keys of training checkpoints, tried in order.
_WRAPPERS = ("state_dict", "model", "teacher", "module", "student")
#: Prefixes of the backbone inside bigger models; ``vit.`` marks EM-DINO v1 (kept for detection).
_PREFIXES = ("module.", "teacher.backbone.", "backbone.", "encoder.", "model.")
_CHUNKED = re.compile(r"^blocks\.(\d+)\.(\d+)\.")


def extract_backbone(obj: object, *, source: str = "checkpoint") -> StateDict:
    """The backbone's state dict inside a loaded checkpoint object.

    Unwraps ``{"state_dict"|"model"|"teacher"|...: {...}}`` and removes a prefix shared by the
    backbone keys (``module.``, ``backbone.``, ...); keys outside the backbone (DINO heads, an
    OmniEM decoder) are dropped and logged. The EM-DINO ``vit.`` prefix is kept: it identifies
    the format (see `detect_format`).

    Args:
        obj: what ``torch.load``/``safetensors`` returned.
        source: file name for error messages.

    Raises:
        CorruptCheckpointError: no ViT backbone found.

    Examples:
        >>> t = torch.zeros(1)
        >>> sorted(extract_backbone({"teacher": {"backbone.patch_embed.proj.weight": t,
        ...                                      "dino_head.w": t}}))
        ['patch_embed.proj.weight']
    """
    sd = obj
    for _ in range(3):  # nested wrappers, e.g. {"model": {"state_dict": ...}}
        if isinstance(sd, Mapping) and not _has_tensors(sd):
            inner = next((sd[k] for k in _WRAPPERS if isinstance(sd.get(k), Mapping)), None)
            if inner is None:
                break
            sd = inner
    if not isinstance(sd, Mapping) or not _has_tensors(sd):
        raise CorruptCheckpointError(f"{source}: holds no state dict of tensors")
    sd = {str(k): v for k, v in sd.items() if isinstance(v, torch.Tensor)}
    for anchor_prefix in ("vit.", ""):
        if anchor_prefix + ANCHOR in sd:
            return sd if not anchor_prefix else _only(sd, anchor_prefix, keep_prefix=True)
    for prefix in _PREFIXES:
        for inner_prefix in ("vit.", ""):
            if prefix + inner_prefix + ANCHOR in sd:
                out = _only(sd, prefix, keep_prefix=False)
                return out
    some = ", ".join(sorted(sd)[:5])
    raise CorruptCheckpointError(
        f"{source}: not a ViT checkpoint (no '{ANCHOR}' under any known prefix; keys: {some}, ...)"
    )


def _has_tensors(d: Mapping) -> bool:
    return any(isinstance(v, torch.Tensor) for v in d.values())


def _only(sd: StateDict, prefix: str, *, keep_prefix: bool) -> StateDict:
    out = {}
    dropped = []
    for k, v in sd.items():
        if k.startswith(prefix):
            out[k if keep_prefix else k[len(prefix) :]] = v
        else:
            dropped.append(k)
    if dropped:
        log.info("dropped %d keys outside %r (e.g. %s)", len(dropped), prefix, dropped[0])
    return out


def detect_format(sd: Mapping[str, torch.Tensor]) -> str:
    """Which layout a backbone state dict is in: ``emdino_v1``, ``dinov2`` or ``timm``.

    Raises:
        CorruptCheckpointError: no ViT patch embedding among the keys.

    Examples:
        >>> t = torch.zeros(1)
        >>> detect_format({"vit.patch_embed.proj.weight": t})
        'emdino_v1'
        >>> detect_format({"patch_embed.proj.weight": t, "mask_token": t})
        'dinov2'
        >>> detect_format({"patch_embed.proj.weight": t, "blocks.0.mlp.fc1.weight": t})
        'timm'
    """
    keys = set(sd)
    if "vit." + ANCHOR in keys:
        return "emdino_v1"
    if ANCHOR not in keys:
        raise CorruptCheckpointError(f"not a ViT state dict: no '{ANCHOR}'")
    if (
        "mask_token" in keys
        or "register_tokens" in keys
        or any(".mlp.w12." in k or _CHUNKED.match(k) for k in keys)
    ):
        return "dinov2"
    return "timm"


def dinov2_to_timm(sd: Mapping[str, torch.Tensor]) -> StateDict:
    """Official DINOv2 layout -> timm names.

    ``mask_token`` (used only in training) is dropped; chunked ``blocks.C.I.`` become
    ``blocks.I.``; SwiGLU ``w12``/``w3`` become ``fc1``/``fc2``; with registers,
    ``register_tokens`` becomes ``reg_token`` and the class position is folded into the class
    token (timm's register models have no class position), which gives identical outputs.

    Examples:
        >>> sd = {"cls_token": torch.ones(1, 1, 2), "pos_embed": torch.ones(1, 5, 2),
        ...       "register_tokens": torch.zeros(1, 4, 2), "mask_token": torch.zeros(1, 2),
        ...       "blocks.0.3.mlp.w12.weight": torch.zeros(8, 2)}
        >>> out = dinov2_to_timm(sd)
        >>> sorted(out), out["cls_token"][0, 0].tolist(), tuple(out["pos_embed"].shape)
        (['blocks.3.mlp.fc1.weight', 'cls_token', 'pos_embed', 'reg_token'], [2.0, 2.0], (1, 4, 2))
    """
    out: StateDict = {}
    for k, v in sd.items():
        if k == "mask_token":
            continue
        k = _CHUNKED.sub(r"blocks.\2.", k)
        k = k.replace(".mlp.w12.", ".mlp.fc1.").replace(".mlp.w3.", ".mlp.fc2.")
        out[k] = v
    if "register_tokens" in out:
        pos = out.pop("pos_embed")
        out["reg_token"] = out.pop("register_tokens")
        out["cls_token"] = out["cls_token"] + pos[:, :1]
        out["pos_embed"] = pos[:, 1:]
    return out


def emdino_v1_to_timm(sd: Mapping[str, torch.Tensor]) -> StateDict:
    """EM-DINO v1 layout (DINOv2 names under ``vit.``) -> timm names."""
    stripped = {k[len("vit.") :]: v for k, v in sd.items() if k.startswith("vit.")}
    extra = [k for k in sd if not k.startswith("vit.")]
    if extra:
        log.info("emdino_v1: dropped %d keys outside 'vit.' (e.g. %s)", len(extra), extra[0])
    return dinov2_to_timm(stripped)


def timm_to_dinov2(sd: Mapping[str, torch.Tensor]) -> StateDict:
    """timm names -> official DINOv2 layout (inverse of `dinov2_to_timm`).

    The class position of register models is written as zeros (timm folded it into the class
    token, so the outputs are identical); ``mask_token`` is added as zeros (DINOv2's init).
    SwiGLU blocks are recognised by shape (``fc1`` twice as wide as ``fc2``'s input).
    """
    out: StateDict = {}
    for k, v in sd.items():
        m = re.match(r"^(blocks\.\d+\.mlp\.)(fc1|fc2)\.(weight|bias)$", k)
        if m:
            fc1 = sd[m.group(1) + "fc1.weight"]
            fc2 = sd[m.group(1) + "fc2.weight"]
            if fc1.shape[0] == 2 * fc2.shape[1]:  # packed SwiGLU
                k = m.group(1) + ("w12" if m.group(2) == "fc1" else "w3") + "." + m.group(3)
        out[k] = v
    if "reg_token" in out:
        pos = out.pop("pos_embed")
        out["register_tokens"] = out.pop("reg_token")
        out["pos_embed"] = torch.cat([torch.zeros_like(pos[:, :1]), pos], dim=1)
    dim = out["cls_token"].shape[-1]
    out["mask_token"] = torch.zeros(1, dim, dtype=out["cls_token"].dtype)
    return out


def timm_to_emdino_v1(sd: Mapping[str, torch.Tensor]) -> StateDict:
    """timm names -> EM-DINO v1 layout (``vit.`` + DINOv2 names)."""
    return {"vit." + k: v for k, v in timm_to_dinov2(sd).items()}


#: format -> converter to timm names (`to_timm` picks by `detect_format`).
CONVERTERS: dict[str, Callable[[Mapping[str, torch.Tensor]], StateDict]] = {
    "emdino_v1": emdino_v1_to_timm,
    "dinov2": dinov2_to_timm,
    "timm": dict,
}


def to_timm(sd: Mapping[str, torch.Tensor]) -> StateDict:
    """Convert any known layout to timm names (the converter is chosen by `detect_format`)."""
    return CONVERTERS[detect_format(sd)](sd)


def pos_grid(sd: Mapping[str, torch.Tensor]) -> tuple[int, int]:
    """Number of class positions (0 or 1) and side of the square position grid in ``sd``.

    Examples:
        >>> pos_grid({"pos_embed": torch.zeros(1, 1 + 37 * 37, 4)})
        (1, 37)
    """
    n = int(sd["pos_embed"].shape[1])
    for prefix in (0, 1):
        side = math.isqrt(n - prefix)
        if side * side == n - prefix and side > 0:
            return prefix, side
    raise CorruptCheckpointError(f"pos_embed of {n} entries is not a square grid (+1 class)")


def resize_pos_embed(
    sd: Mapping[str, torch.Tensor],
    grid: int | tuple[int, int],
    *,
    offset: float = 0.0,
    antialias: bool = True,
) -> StateDict:
    """Resample a timm-named state dict's position embedding to a ``grid`` of patches.

    Args:
        sd: state dict with timm names (square position grid).
        grid: target grid side, or (rows, columns).
        offset: DINOv2's interpolation offset (see `emdino.models.pos_embed.resample_grid`).
        antialias: antialias when shrinking.

    Examples:
        >>> sd = {"pos_embed": torch.zeros(1, 1 + 37 * 37, 4)}
        >>> tuple(resize_pos_embed(sd, 16)["pos_embed"].shape)
        (1, 257, 4)
    """
    rows, cols = (grid, grid) if isinstance(grid, int) else grid
    if rows < 1 or cols < 1:
        raise ValueError(f"grid must be positive, got {grid}")
    prefix, side = pos_grid(sd)
    out = dict(sd)
    out["pos_embed"] = resample_pos_embed(
        sd["pos_embed"],
        (rows, cols),
        (side, side),
        num_prefix=prefix,
        offset=offset,
        antialias=antialias,
    )
    return out


def adapt_input_channels(
    sd: Mapping[str, torch.Tensor],
    src_mean: Sequence[float],
    src_std: Sequence[float],
    dst_mean: Sequence[float],
    dst_std: Sequence[float],
) -> StateDict:
    """Rewrite the patch embedding for another number of input channels, exactly for grey input.

    A checkpoint trained on ``C`` channels normalized with ``(src_mean, src_std)`` becomes one
    for ``len(dst_mean)`` channels normalized with ``(dst_mean, dst_std)``, such that the new
    model on a grey image (replicated to its channels) computes exactly what the old one computes
    on the grey image replicated to ``C`` channels. With ``C = 3`` equal normalizations and one
    output channel this is the sum of the weights over input channels; unequal ones (ImageNet's)
    are folded into the weights and the bias:

        W'_k = (s'_k / C') * sum_c W_c / s_c
        b'   = b - sum_c sum(W_c) m_c / s_c + sum_k sum(W'_k) m'_k / s'_k

    Args:
        sd: state dict with timm names.
        src_mean, src_std: normalization of the checkpoint, one value per channel.
        dst_mean, dst_std: normalization of the new model, one value per new channel.

    Examples:
        >>> sd = {"patch_embed.proj.weight": torch.ones(2, 3, 1, 1),
        ...       "patch_embed.proj.bias": torch.zeros(2)}
        >>> out = adapt_input_channels(sd, [0.5] * 3, [0.2] * 3, [0.5], [0.2])
        >>> w, b = out["patch_embed.proj.weight"], out["patch_embed.proj.bias"]
        >>> w[:, :, 0, 0].tolist(), b.tolist()
        ([[3.0], [3.0]], [0.0, 0.0])
    """
    w = sd["patch_embed.proj.weight"]
    b = sd.get("patch_embed.proj.bias")
    c_src, c_dst = int(w.shape[1]), len(dst_mean)
    if len(src_mean) != c_src or len(src_std) != c_src:
        raise ValueError(f"src normalization needs {c_src} values per statistic")
    if len(dst_std) != c_dst or c_dst < 1:
        raise ValueError("dst_mean and dst_std need the same, positive, length")
    if any(s <= 0 for s in (*src_std, *dst_std)):
        raise ValueError("std values must be positive")
    if list(src_mean) == list(dst_mean) and list(src_std) == list(dst_std):
        return dict(sd)
    w64 = w.double()
    ms = torch.tensor(src_mean, dtype=torch.float64)
    ss = torch.tensor(src_std, dtype=torch.float64)
    md = torch.tensor(dst_mean, dtype=torch.float64)
    sdv = torch.tensor(dst_std, dtype=torch.float64)
    grey = (w64 / ss.view(1, -1, 1, 1)).sum(dim=1, keepdim=True)  # (D, 1, p, p)
    w_new = grey.repeat(1, c_dst, 1, 1) * (sdv / c_dst).view(1, -1, 1, 1)
    b64 = b.double() if b is not None else torch.zeros(w.shape[0], dtype=torch.float64)
    shift_src = (w64.sum(dim=(2, 3)) * (ms / ss)).sum(dim=1)
    shift_dst = (w_new.sum(dim=(2, 3)) * (md / sdv)).sum(dim=1)
    out = dict(sd)
    out["patch_embed.proj.weight"] = w_new.to(w.dtype)
    out["patch_embed.proj.bias"] = (b64 - shift_src + shift_dst).to(w.dtype)
    return out


def describe(sd: Mapping[str, torch.Tensor]) -> dict[str, int | str]:
    """Architecture facts readable from a timm-named state dict.

    Returns:
        ``embed_dim``, ``depth``, ``patch_size``, ``in_chans``, ``reg_tokens``, ``ffn``
        (``mlp``/``swiglu``) and ``grid`` (position grid side).

    Examples:
        >>> from emdino.models.vit import build_vit
        >>> m = build_vit(img_size=28, patch_size=14, embed_dim=32, depth=2, num_heads=2)
        >>> facts = describe(m.state_dict())
        >>> facts["embed_dim"], facts["depth"], facts["patch_size"], facts["grid"]
        (32, 2, 14, 2)
    """
    w = sd[ANCHOR]
    blocks = (re.match(r"blocks\.(\d+)\.", k) for k in sd)
    depth = 1 + max((int(m.group(1)) for m in blocks if m), default=-1)
    ffn = "mlp"
    fc1, fc2 = sd.get("blocks.0.mlp.fc1.weight"), sd.get("blocks.0.mlp.fc2.weight")
    if fc1 is not None and fc2 is not None and fc1.shape[0] == 2 * fc2.shape[1]:
        ffn = "swiglu"
    reg = sd.get("reg_token")
    return {
        "embed_dim": int(w.shape[0]),
        "depth": depth,
        "patch_size": int(w.shape[-1]),
        "in_chans": int(w.shape[1]),
        "reg_tokens": int(reg.shape[1]) if reg is not None else 0,
        "ffn": ffn,
        "grid": pos_grid(sd)[1] if "pos_embed" in sd else 0,
    }


_LAYERSCALE_KEY = re.compile(r"^blocks\.\d+\.ls[12]\.gamma$")


def fill_identity_layerscale(
    sd: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Add LayerScale gammas of 1 that a model expects and a checkpoint trained without has.

    A block without LayerScale computes exactly what one with ``gamma = 1`` does, so weights
    trained without it (the bundled EM-DINO ViT-T/8) load into the registered architectures.

    Examples:
        >>> exp = {"blocks.0.ls1.gamma": torch.empty(4), "blocks.0.norm1.weight": torch.empty(4)}
        >>> out = fill_identity_layerscale({"blocks.0.norm1.weight": torch.zeros(4)}, exp)
        >>> out["blocks.0.ls1.gamma"].tolist()
        [1.0, 1.0, 1.0, 1.0]
    """
    out = dict(sd)
    if any(_LAYERSCALE_KEY.match(k) for k in sd):
        return out
    for k, v in expected.items():
        if _LAYERSCALE_KEY.match(k) and k not in out:
            out[k] = torch.ones(v.shape, dtype=torch.float32)
    return out
