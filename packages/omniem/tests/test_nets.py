"""The OmniEM network on every emdino architecture; 3D = 2D at zero init; training modes."""

from __future__ import annotations

import math

import pytest
import torch

import emdino
from emdino.backbone import Backbone
from emdino.models.registry import get_pretrained, list_archs
from omniem.nets import NetConfig, OmniEM, build, default_levels


def tiny_backbone(arch_name: str, *, depth: int = 4) -> Backbone:
    """Architecture ``arch_name`` shrunk in width and depth (same patch, registers, block type)."""
    from emdino.models.registry import get_arch

    arch = get_arch(arch_name)
    p = arch.patch_size
    params = dict(arch.params, embed_dim=48, num_heads=2, depth=depth)
    torch.manual_seed(0)
    vit = arch.builder(**params, img_size=4 * p, in_chans=1)
    cfg = get_pretrained(f"{arch_name}.random")
    return Backbone(vit, cfg, [0.5], [0.25]).eval()


@pytest.mark.parametrize("arch", list_archs())
def test_builds_and_runs_on_every_registered_architecture(arch: str) -> None:
    bb = tiny_backbone(arch)
    p = bb.patch_size
    net = OmniEM(bb, NetConfig(backbone=f"{arch}.random", out_channels=3, feature_size=8))
    h, w = 3 * p + 5, 2 * p + 3  # not multiples of the patch: padded inside, cropped back
    y = net(torch.rand(2, 1, h, w))
    assert y.shape == (2, 3, h, w)
    assert torch.isfinite(y).all()
    assert len(net.levels) == len(default_levels(4, p))
    y.mean().backward()  # every decoder part receives a gradient
    assert net.stem.layer.conv1.conv.weight.grad.abs().sum() > 0
    assert all(s.transp_conv_init.conv.weight.grad.abs().sum() > 0 for s in net.skips)


def test_real_size_default_backbone_shapes() -> None:
    net = build(NetConfig(backbone="vit_tiny_patch8.random", out_channels=2), img_size=64)
    assert net.levels == [3, 7, 11]
    assert net(torch.rand(1, 1, 64, 96)).shape == (1, 2, 64, 96)


@pytest.mark.parametrize("arch", ["vit_tiny_patch8", "vit_small_patch14_reg4"])
def test_hybrid_layout_conv_encoder_and_binned_backbone(arch: str) -> None:
    bb = tiny_backbone(arch)
    p = bb.patch_size
    cfg = NetConfig(
        backbone=f"{arch}.random", out_channels=2, feature_size=8, conv_encoder=True, backbone_bin=2
    )
    net = OmniEM(bb, cfg)
    seen = []
    bb.vit.patch_embed.register_forward_hook(lambda _m, inp, _o: seen.append(inp[0].shape[-2:]))
    h, w = 3 * p + 5, 2 * p + 3  # padded to whole bins of patches inside, cropped back
    y = net(torch.rand(2, 1, h, w))
    assert y.shape == (2, 2, h, w) and torch.isfinite(y).all()
    # The ViT saw the padded image binned 2x: (4p, 4p) -> (2p, 2p) for these sizes.
    assert tuple(seen[-1]) == (2 * p, 2 * p)
    assert len(net.encoder) == len(net.ups)
    y.mean().backward()
    assert all(lvl.conv.unit0.conv.weight.grad.abs().sum() > 0 for lvl in net.encoder)
    assert bb.vit.blocks[0].attn.qkv.weight.grad.abs().sum() > 0
    # The bottleneck sees both the last ViT level and the deepest conv level.
    assert net.ups[0].transp_conv.conv.in_channels == bb.embed_dim + 8 * 2 ** len(net.ups)


@pytest.mark.parametrize("arch", ["vit_tiny_patch8", "vit_small_patch14_reg4"])
def test_strided_stem_leaves_only_the_head_at_full_resolution(arch: str) -> None:
    bb = tiny_backbone(arch)
    p = bb.patch_size
    cfg = NetConfig(
        backbone=f"{arch}.random",
        out_channels=3,
        feature_size=8,
        conv_encoder=True,
        backbone_bin=2,
        stem_stride=2,
    )
    net = OmniEM(bb, cfg)
    sizes: dict[str, tuple] = {}
    for name, mod in [("stem", net.stem), ("deepest", net.encoder[-1]), ("last", net.ups[-1])]:
        mod.register_forward_hook(lambda _m, _i, o, n=name: sizes.__setitem__(n, o.shape[-2:]))
    h, w = 3 * p + 5, 2 * p + 3
    y = net(torch.rand(2, 1, h, w))
    assert y.shape == (2, 3, h, w) and torch.isfinite(y).all()
    # Padded to whole bins of patches and to 2^(S+1); the stem and the last stage at half size.
    n = len(net.ups)
    padded = [
        -(-s // math.lcm(2 * p, 2 ** (n + 1))) * math.lcm(2 * p, 2 ** (n + 1)) for s in (h, w)
    ]
    assert tuple(sizes["stem"]) == tuple(sizes["last"]) == (padded[0] // 2, padded[1] // 2)
    assert tuple(sizes["deepest"]) == (padded[0] // 2 ** (n + 1), padded[1] // 2 ** (n + 1))
    y.mean().backward()
    assert net.out.conv.weight.grad.abs().sum() > 0
    assert net.stem.layer.conv1.conv.weight.grad.abs().sum() > 0
    assert bb.vit.blocks[0].attn.qkv.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("conv_encoder", [True, False], ids=["hybrid", "vit"])
def test_bottleneck_is_a_unet_bottom_layer_on_the_decoder_input(conv_encoder: bool) -> None:
    bb = tiny_backbone("vit_tiny_patch8")
    common = {"backbone": "vit_tiny_patch8.random", "feature_size": 8}
    cfg = NetConfig(**common, conv_encoder=conv_encoder, bottleneck_units=2)
    net = OmniEM(bb, cfg)
    n = len(net.ups)
    fed = bb.embed_dim + (8 * 2**n if conv_encoder else 0)
    assert net.bottleneck.conv.unit0.conv.in_channels == fed
    assert net.bottleneck.conv.unit1.conv.out_channels == 8 * 2 ** (n + 1)
    assert net.ups[0].transp_conv.conv.in_channels == 8 * 2 ** (n + 1)
    y = net(torch.rand(2, 1, 37, 29))
    assert y.shape == (2, 2, 37, 29)
    y.mean().backward()
    assert net.bottleneck.conv.unit0.conv.weight.grad.abs().sum() > 0
    # Without it the module is a parameter-free identity, so model files saved before it load.
    plain = OmniEM(tiny_backbone("vit_tiny_patch8"), NetConfig(**common, conv_encoder=conv_encoder))
    assert isinstance(plain.bottleneck, torch.nn.Identity)
    assert not any(k.startswith("bottleneck") for k in plain.state_dict())


@pytest.mark.parametrize(
    "layout",
    [
        {},
        {"conv_encoder": True, "backbone_bin": 2},
        {"conv_encoder": True, "backbone_bin": 2, "stem_stride": 2},
        {"conv_encoder": True, "backbone_bin": 2, "stem_stride": 2, "bottleneck_units": 2},
    ],
    ids=["vit", "hybrid", "hybrid_strided_stem", "hybrid_bottleneck"],
)
def test_3d_at_zero_init_equals_2d_slice_by_slice(layout: dict) -> None:
    cfg2 = NetConfig(backbone="vit_tiny_patch8.random", out_channels=2, feature_size=8, **layout)
    net2 = build(cfg2, img_size=32).eval()
    net3 = build(cfg2.model_copy(update={"spatial_dims": 3}), img_size=32).eval()
    shared = {k: v for k, v in net2.state_dict().items()}
    missing, unexpected = net3.load_state_dict(shared, strict=False)
    assert not unexpected and all(k.startswith(("z_adapters", "z_mixers")) for k in missing)
    x = torch.rand(2, 1, 5, 40, 48)
    y3 = net3(x)
    y2 = torch.stack([net2(x[:, :, z]) for z in range(5)], dim=2)
    assert y3.shape == (2, 2, 5, 40, 48)
    torch.testing.assert_close(y3, y2, atol=1e-5, rtol=1e-5)
    # The adapters do mix slices once trained: perturbing them changes the output across z.
    with torch.no_grad():
        for a in net3.z_adapters:
            a.up.weight.normal_(0, 0.1)
    x2 = x.clone()
    x2[:, :, 0] = 0.5
    d = (net3(x2) - net3(x)).abs().amax(dim=(0, 1, 3, 4))
    assert d[1] > 1e-4  # slice 1 sees slice 0


def test_backbone_modes_freeze_the_right_parameters() -> None:
    def trainable(mode: str) -> set[str]:
        net = build(
            NetConfig(backbone="vit_tiny_patch8.random", backbone_mode=mode, last_k=2), img_size=32
        )
        return {n for n, p in net.named_parameters() if p.requires_grad}

    frozen, lora, last_k, full = (trainable(m) for m in ("frozen", "lora", "last_k", "full"))
    assert not any(n.startswith("backbone.") for n in frozen)
    assert not any(n.startswith("backbone.") for n in lora) and any(
        n.startswith("lora.") for n in lora
    )
    bb_last = {n for n in last_k if n.startswith("backbone.")}
    assert bb_last and all(
        n.startswith(("backbone.vit.blocks.10", "backbone.vit.blocks.11", "backbone.vit.norm"))
        for n in bb_last
    )
    assert {n for n in full if n.startswith("backbone.")} >= bb_last


def test_lora_starts_at_identity_and_trains() -> None:
    cfg = NetConfig(backbone="vit_tiny_patch8.random", backbone_mode="lora", feature_size=8)
    net = build(cfg, img_size=32)
    ref = build(cfg.model_copy(update={"backbone_mode": "frozen"}), img_size=32)
    ref.load_state_dict({k: v for k, v in net.state_dict().items() if not k.startswith("lora")})
    x = torch.rand(1, 1, 32, 32)
    net.eval(), ref.eval()
    torch.testing.assert_close(net(x), ref(x))
    net.train()
    net(x).mean().backward()
    assert net.lora[0].b.weight.grad.abs().sum() > 0  # gradient reaches the first block's LoRA


def test_restoration_is_residual_and_super_resolution_scales() -> None:
    net = build(
        NetConfig(
            backbone="vit_tiny_patch8.random",
            task="restoration",
            out_channels=1,
            output_scale=2.0,
            feature_size=8,
        ),
        img_size=32,
    )
    x = torch.rand(1, 1, 20, 24)
    y = net(x)
    assert y.shape == (1, 1, 40, 48)
    up = torch.nn.functional.interpolate(x, scale_factor=2, mode="bicubic").clamp(0, 1)
    torch.testing.assert_close(y, up)  # a new restoration head is zero: bicubic up-scaling
    (y - up.flip(-1)).abs().mean().backward()
    assert net.out.conv.conv.weight.grad.abs().sum() > 0  # and it trains away from there


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_pixel_shuffle_super_resolution_runs_at_input_size_and_starts_at_bicubic(
    spatial_dims: int,
) -> None:
    net = build(
        NetConfig(
            backbone="vit_tiny_patch8.random",
            spatial_dims=spatial_dims,
            task="restoration",
            out_channels=1,
            output_scale=2.0,
            upsample="pixel_shuffle",
            stem_blocks=2,
            feature_size=8,
        ),
        img_size=32,
    )
    seen: list[tuple[int, ...]] = []
    net.backbone.vit.patch_embed.register_forward_hook(
        lambda _m, args, _o: seen.append(tuple(args[0].shape[-2:]))
    )
    x = torch.rand(2, 1, 20, 26) if spatial_dims == 2 else torch.rand(1, 1, 3, 20, 26)
    y = net(x)
    # The ViT sees the input padded to the patch grid (24 x 32), not the 40 x 52 output.
    assert seen == [(24, 32)]
    slices = x if spatial_dims == 2 else x[0].transpose(0, 1)  # [Z, 1, H, W]
    up = torch.nn.functional.interpolate(slices, scale_factor=2, mode="bicubic").clamp(0, 1)
    if spatial_dims == 3:
        assert y.shape == (1, 1, 3, 40, 52)
        up = up.transpose(0, 1)[None]
    assert y.shape[-2:] == (40, 52)
    torch.testing.assert_close(y, up)  # zero sub-pixel head: exactly bicubic up-scaling
    (y - up.flip(-1)).abs().mean().backward()
    assert net.out.conv_block.weight.grad.abs().sum() > 0  # and it trains away from there
    assert "stem.blocks.0.conv.unit0.conv.weight" in net.state_dict()  # the conv trunk


def test_bad_arguments_raise_value_errors() -> None:
    with pytest.raises(ValueError, match="out_channels must be 1"):
        NetConfig(task="restoration", out_channels=2)
    with pytest.raises(ValueError, match="output_scale"):
        NetConfig(task="semantic", output_scale=2)
    with pytest.raises(ValueError, match="integer output_scale >= 2, got 1.5"):
        NetConfig(task="restoration", out_channels=1, output_scale=1.5, upsample="pixel_shuffle")
    with pytest.raises(ValueError, match="stem_stride=2 needs conv_encoder"):
        NetConfig(stem_stride=2)
    with pytest.raises(ValueError, match="stem_stride=2 is for segmentation"):
        NetConfig(task="restoration", out_channels=1, conv_encoder=True, stem_stride=2)
    bb = emdino.load("vit_tiny_patch8.random", img_size=32)
    with pytest.raises(ValueError, match="levels"):
        OmniEM(bb, NetConfig(levels=[7, 3, 11]))
    with pytest.raises(ValueError, match="up-sampling stages"):
        OmniEM(bb, NetConfig(levels=[1, 3, 5, 11]))
    net = OmniEM(bb, NetConfig())
    with pytest.raises(ValueError, match=r"expected \[B, 1, H, W\]"):
        net(torch.rand(1, 3, 32, 32))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        net(torch.rand(1, 1, 32, 32) * 5)


@pytest.mark.parametrize(
    "module", ["omniem.nets.config", "omniem.nets.omniem", "omniem.nets.trunk", "omniem.train.data"]
)
def test_docstring_examples(module: str) -> None:
    import doctest
    import importlib

    flags = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
    result = doctest.testmod(importlib.import_module(module), optionflags=flags)
    assert result.attempted > 0 and result.failed == 0, result
