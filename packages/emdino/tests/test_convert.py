"""Converters: detection by keys, round trips, wrappers, position resizing, channel folding, and
an independent forward pass written against the official DINOv2 key names."""

from __future__ import annotations

import math

import pytest
import timm
import torch
import torch.nn.functional as F

import emdino
from emdino.errors import CorruptCheckpointError
from emdino.models import register_arch, unregister_arch
from emdino.models.vit import build_vit
from emdino.weights import (
    adapt_input_channels,
    describe,
    detect_format,
    dinov2_to_timm,
    extract_backbone,
    resize_pos_embed,
    timm_to_dinov2,
    timm_to_emdino_v1,
    to_timm,
)

TINY = {"patch_size": 14, "embed_dim": 64, "depth": 3, "num_heads": 2}


def _tiny(reg_tokens: int = 0, ffn: str = "mlp", img_size: int = 98, seed: int = 0):
    torch.manual_seed(seed)
    vit = build_vit(img_size=img_size, in_chans=3, reg_tokens=reg_tokens, ffn=ffn, **TINY)
    with torch.no_grad():  # make every parameter matter
        for p in vit.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return vit.eval()


@pytest.mark.parametrize(("reg", "ffn"), [(0, "mlp"), (4, "mlp"), (0, "swiglu"), (4, "swiglu")])
def test_timm_dinov2_round_trip_is_exact(reg, ffn):
    sd = _tiny(reg, ffn).state_dict()
    official = timm_to_dinov2(sd)
    assert detect_format(official) == "dinov2"
    assert ("register_tokens" in official) == bool(reg)
    assert any(".mlp.w12." in k for k in official) == (ffn == "swiglu")
    assert official["pos_embed"].shape[1] == 1 + 7 * 7  # official always has a class position
    back = dinov2_to_timm(official)
    assert back.keys() == sd.keys()
    assert all(torch.equal(back[k], sd[k]) for k in sd)
    assert detect_format(timm_to_emdino_v1(sd)) == "emdino_v1"
    assert to_timm(timm_to_emdino_v1(sd)).keys() == sd.keys()


def test_chunked_blocks_of_dinov2_training_checkpoints_are_flattened():
    sd = timm_to_dinov2(_tiny().state_dict())
    chunked = {
        (k.replace("blocks.", "blocks.0.", 1) if k.startswith("blocks.") else k): v
        for k, v in sd.items()
    }
    assert "blocks.0.2.attn.qkv.weight" in chunked
    out = to_timm(chunked)
    assert "blocks.2.attn.qkv.weight" in out and not any(k.startswith("blocks.0.2") for k in out)


def test_detection_ignores_a_plain_timm_dict_and_rejects_non_vits():
    sd = _tiny().state_dict()
    assert detect_format(sd) == "timm"
    with pytest.raises(CorruptCheckpointError, match="not a ViT"):
        detect_format({"conv.weight": torch.zeros(1)})


def test_extract_backbone_unwraps_training_checkpoints():
    sd = _tiny().state_dict()
    teacher = {
        "teacher": {
            **{"backbone." + k: v for k, v in sd.items()},
            "dino_head.mlp.0.weight": torch.zeros(2),
        }
    }
    assert extract_backbone(teacher).keys() == sd.keys()
    ddp = {"state_dict": {"module." + k: v for k, v in sd.items()}}
    assert extract_backbone(ddp).keys() == sd.keys()
    em = {"model": {**timm_to_emdino_v1(sd), "decoder.conv.weight": torch.zeros(1)}}
    out = extract_backbone(em)
    assert all(k.startswith("vit.") for k in out) and detect_format(out) == "emdino_v1"
    with pytest.raises(CorruptCheckpointError, match="no state dict"):
        extract_backbone({"epoch": 3})


def test_describe_reads_the_architecture():
    facts = describe(_tiny(4, "swiglu").state_dict())
    assert facts == {
        "embed_dim": 64,
        "depth": 3,
        "patch_size": 14,
        "in_chans": 3,
        "reg_tokens": 4,
        "ffn": "swiglu",
        "grid": 7,
    }


@pytest.mark.parametrize("size", ["dinov2", "dinov2_reg4"])
def test_registered_architectures_match_timm_dinov2_shapes(size):
    """Our ViT-S/B/L/g(/reg4) have exactly timm's DINOv2 parameter names and shapes."""
    from emdino.models import get_arch

    suffix = "_reg4" if "reg4" in size else ""
    for ours, theirs in [
        ("small", "small"),
        ("base", "base"),
        ("large", "large"),
        ("giant", "giant"),
    ]:
        arch = get_arch(f"vit_{ours}_patch14{suffix}")
        with torch.device("meta"):
            a = arch.builder(**dict(arch.params, img_size=518, in_chans=3)).state_dict()
            b = timm.create_model(
                f"vit_{theirs}_patch14{suffix}_dinov2", num_classes=0
            ).state_dict()
        assert {k: tuple(v.shape) for k, v in a.items()} == {
            k: tuple(v.shape) for k, v in b.items()
        }


def test_resize_pos_embed_keeps_prefix_and_is_identity_at_same_size():
    sd = _tiny().state_dict()  # grid 7, one class position
    assert resize_pos_embed(sd, 7)["pos_embed"] is sd["pos_embed"]
    out = resize_pos_embed(sd, (4, 9), offset=0.1, antialias=False)
    assert out["pos_embed"].shape == (1, 1 + 36, 64)
    assert torch.equal(out["pos_embed"][:, 0], sd["pos_embed"][:, 0])
    reg = _tiny(4).state_dict()  # no class position
    assert resize_pos_embed(reg, 3)["pos_embed"].shape == (1, 9, 64)
    with pytest.raises(ValueError):
        resize_pos_embed(sd, 0)


def test_adapt_input_channels_is_exact_for_grey_images():
    torch.manual_seed(0)
    w, b = torch.randn(5, 3, 2, 2), torch.randn(5)
    sd = {"patch_embed.proj.weight": w, "patch_embed.proj.bias": b}
    src = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    x = torch.rand(2, 1, 4, 4)

    def conv(sd, mean, std, channels):
        m, s = torch.tensor(mean).view(1, -1, 1, 1), torch.tensor(std).view(1, -1, 1, 1)
        xn = (x.expand(-1, channels, -1, -1) - m) / s
        return F.conv2d(xn, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=2)

    ref = conv(sd, *src, 3)
    for dst in [([0.45], [0.226]), ([0.0], [1.0]), ([0.3, 0.5, 0.7], [0.1, 0.2, 0.3])]:
        out = adapt_input_channels(sd, *src, *dst)
        assert out["patch_embed.proj.weight"].shape[1] == len(dst[0])
        assert torch.allclose(conv(out, *dst, len(dst[0])), ref, atol=1e-5)
    with pytest.raises(ValueError):
        adapt_input_channels(sd, [0.5], [0.2], [0.5], [0.2])


# --------------------------------------------------------------------------- reference forward


def _dinov2_reference(sd, x, *, patch, heads, offset, antialias):
    """DINOv2's forward written directly against the official key names (no timm, no emdino):
    class token + position (interpolated with DINOv2's offset rule), registers after the class
    token, pre-norm blocks with LayerScale, MLP or SwiGLU (w12/w3), final norm."""
    b, _, hh, ww = x.shape
    t = F.conv2d(x, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=patch)
    d = t.shape[1]
    t = t.flatten(2).transpose(1, 2)
    t = torch.cat([sd["cls_token"].expand(b, -1, -1), t], dim=1)
    pos = sd["pos_embed"]
    n = pos.shape[1] - 1
    m = int(math.sqrt(n))
    h0, w0 = hh // patch, ww // patch
    if (h0, w0) != (m, m):
        grid = pos[:, 1:].reshape(1, m, m, d).permute(0, 3, 1, 2)
        kw = (
            {"scale_factor": ((h0 + offset) / m, (w0 + offset) / m)}
            if offset
            else {"size": (h0, w0)}
        )
        grid = F.interpolate(grid, mode="bicubic", antialias=antialias, **kw)
        pos = torch.cat([pos[:, :1], grid.permute(0, 2, 3, 1).reshape(1, -1, d)], dim=1)
    t = t + pos
    n_reg = 0
    if "register_tokens" in sd:
        n_reg = sd["register_tokens"].shape[1]
        t = torch.cat([t[:, :1], sd["register_tokens"].expand(b, -1, -1), t[:, 1:]], dim=1)

    def ln(v, key):
        return F.layer_norm(v, (d,), sd[key + ".weight"], sd[key + ".bias"], eps=1e-6)

    depth = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
    for i in range(depth):
        p = f"blocks.{i}."
        y = F.linear(ln(t, p + "norm1"), sd[p + "attn.qkv.weight"], sd[p + "attn.qkv.bias"])
        q, k, v = y.reshape(b, -1, 3, heads, d // heads).permute(2, 0, 3, 1, 4)
        a = ((q * (d // heads) ** -0.5) @ k.transpose(-2, -1)).softmax(-1)
        y = (a @ v).transpose(1, 2).reshape(b, -1, d)
        y = F.linear(y, sd[p + "attn.proj.weight"], sd[p + "attn.proj.bias"])
        t = t + sd[p + "ls1.gamma"] * y
        y = ln(t, p + "norm2")
        if p + "mlp.w12.weight" in sd:
            x1, x2 = F.linear(y, sd[p + "mlp.w12.weight"], sd[p + "mlp.w12.bias"]).chunk(2, -1)
            y = F.linear(F.silu(x1) * x2, sd[p + "mlp.w3.weight"], sd[p + "mlp.w3.bias"])
        else:
            y = F.gelu(F.linear(y, sd[p + "mlp.fc1.weight"], sd[p + "mlp.fc1.bias"]))
            y = F.linear(y, sd[p + "mlp.fc2.weight"], sd[p + "mlp.fc2.bias"])
        t = t + sd[p + "ls2.gamma"] * y
    t = ln(t, "norm")
    return t[:, 0], t[:, 1 + n_reg :]


@pytest.mark.parametrize(("reg", "ffn"), [(0, "mlp"), (4, "swiglu")])
@pytest.mark.parametrize("hw", [(98, 98), (70, 126)])  # native 7x7 grid and a resampled one
def test_official_layout_matches_an_independent_dinov2_forward(tmp_path, reg, ffn, hw):
    name = f"vit_testref_patch14_r{reg}_{ffn}"
    register_arch(
        name, build_vit, family="vit", default_img_size=98, reg_tokens=reg, ffn=ffn, **TINY
    )
    try:
        official = timm_to_dinov2(_tiny(reg, ffn, seed=7).state_dict())
        torch.save(official, tmp_path / "ref.pth")
        model = emdino.load(tmp_path / "ref.pth", in_chans=3)
    finally:
        unregister_arch(name)
    # DINOv2's hub settings: offset 0.1 without registers; size + antialias with registers.
    offset, antialias = (0.0, True) if reg else (0.1, False)
    assert (model.vit.pos_interp_offset, model.vit.pos_interp_antialias) == (offset, antialias)
    x = torch.rand(2, 1, *hw, generator=torch.Generator().manual_seed(0))
    feats = model.features(x.expand(-1, 3, -1, -1), levels=())
    xn = (x.expand(-1, 3, -1, -1) - model.mean) / model.std
    with torch.no_grad():
        cls, patch = _dinov2_reference(
            official, xn, patch=14, heads=2, offset=offset, antialias=antialias
        )
    h, w = hw[0] // 14, hw[1] // 14
    assert torch.allclose(feats.cls, cls, atol=1e-5)
    assert torch.allclose(feats.patch, patch.reshape(2, h, w, -1).permute(0, 3, 1, 2), atol=1e-5)
