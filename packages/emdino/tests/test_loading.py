"""Loading checkpoints: official DINOv2 and EM-DINO layouts reproduce the source model; 1-channel
folding is exact; architecture mismatches are named."""

from __future__ import annotations

import pytest
import timm
import torch

import emdino
from emdino.errors import WeightsMismatchError
from emdino.models import PretrainedCfg, register_pretrained, unregister_pretrained
from emdino.weights import timm_to_dinov2, timm_to_emdino_v1

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
LEVELS = (2, 5, 8, 11)


def _random_timm(name: str, seed: int = 0) -> torch.nn.Module:
    """A timm DINOv2 ViT-S/14 with random weights, LayerScale and tokens made non-trivial."""
    torch.manual_seed(seed)
    model = timm.create_model(name, pretrained=False, img_size=112, num_classes=0).eval()
    with torch.no_grad():
        for key, p in model.named_parameters():
            if key.endswith("gamma") or key in ("cls_token", "reg_token"):
                p.normal_(0, 0.5)  # DINOv2's 1e-5 LayerScale would hide block errors
    return model


def _reference(model, x: torch.Tensor, mean, std) -> dict[str, torch.Tensor]:
    """timm forward of [B, 1, H, W] images replicated to RGB and normalized per channel."""
    m = torch.tensor(mean).view(1, -1, 1, 1)
    s = torch.tensor(std).view(1, -1, 1, 1)
    with torch.no_grad():
        final, inter = model.forward_intermediates(
            (x.expand(-1, 3, -1, -1) - m) / s, indices=list(LEVELS), norm=True
        )
    b, n_prefix = x.shape[0], model.num_prefix_tokens
    h, w = x.shape[-2] // 14, x.shape[-1] // 14
    patch = final[:, n_prefix:].reshape(b, h, w, -1).permute(0, 3, 1, 2)
    return {
        "cls": final[:, 0],
        "patch": patch,
        **{f"l{i}": t for i, t in zip(LEVELS, inter, strict=True)},
    }


def _ours(model: emdino.Backbone, x: torch.Tensor) -> dict[str, torch.Tensor]:
    f = model.features(x, levels=LEVELS)
    return {"cls": f.cls, "patch": f.patch, **{f"l{i}": f.levels[i] for i in LEVELS}}


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.rand(2, 1, 112, 112, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("timm_name", ["vit_small_patch14_dinov2", "vit_small_patch14_reg4_dinov2"])
@pytest.mark.parametrize("layout", ["dinov2", "emdino_v1", "emdino_v1_in_model_dict"])
def test_official_layouts_reproduce_the_timm_source_model(tmp_path, images, timm_name, layout):
    src = _random_timm(timm_name)
    sd = src.state_dict()
    if layout == "dinov2":
        saved = timm_to_dinov2(sd)
        assert "mask_token" in saved and "blocks.3.ls1.gamma" in saved
        assert ("register_tokens" in saved) == ("reg4" in timm_name)
    elif layout == "emdino_v1":
        saved = timm_to_emdino_v1(sd)
        assert all(k.startswith("vit.") for k in saved)
    else:
        saved = {"model": timm_to_emdino_v1(sd)}
    path = tmp_path / "ckpt.pt"
    torch.save(saved, path)

    model = emdino.load(path, in_chans=3)  # the file's 3 channels, no folding: exact
    assert model.cfg.arch == timm_name.replace("_dinov2", "")
    mean, std = model.cfg.mean, model.cfg.std
    diff = _max_diff(_ours(model, images), _reference(src, images, mean, std))
    assert diff < 1e-5, diff


@pytest.mark.parametrize("stats", ["emdino", "imagenet"])
def test_one_channel_model_equals_three_channel_model_on_replicated_grey(
    tmp_path, emdino_home, images, stats
):
    src = _random_timm("vit_small_patch14_dinov2", seed=3)
    weights = emdino_home / "weights"
    weights.mkdir(parents=True)
    torch.save(timm_to_dinov2(src.state_dict()), weights / "grey.pth")
    mean, std = (
        (IMAGENET_MEAN, IMAGENET_STD) if stats == "imagenet" else ((0.595446,) * 3, (0.211906,) * 3)
    )
    cfg = PretrainedCfg(
        arch="vit_small_patch14",
        tag=f"test_{stats}",
        img_size=112,
        in_chans=3,
        mean=mean,
        std=std,
        filename="grey.pth",
        pos_interp_offset=0.1,
        pos_interp_antialias=False,
    )
    register_pretrained(cfg)
    try:
        grey = emdino.load(cfg.name)
        rgb = emdino.load(cfg.name, in_chans=3)
    finally:
        unregister_pretrained(cfg.name)
    assert grey.in_chans == 1 and rgb.in_chans == 3
    assert grey.vit.patch_embed.proj.weight.shape[1] == 1
    ours = _ours(grey, images)  # [B, 1, H, W]
    replicated = _ours(rgb, images.expand(-1, 3, -1, -1).contiguous())
    assert _max_diff(ours, replicated) < 1e-4
    # and both equal the RGB source model with its per-channel normalization
    assert _max_diff(replicated, _reference(src, images, mean, std)) < 1e-5
    if stats == "emdino":  # equal statistics: the folded weights are the plain channel sum
        summed = src.patch_embed.proj.weight.sum(dim=1, keepdim=True)
        assert torch.allclose(grey.vit.patch_embed.proj.weight, summed, atol=1e-6)


def test_architecture_mismatch_is_named(tmp_path, emdino_home):
    src = _random_timm("vit_small_patch14_dinov2")
    (emdino_home / "weights").mkdir(parents=True)
    torch.save(timm_to_dinov2(src.state_dict()), emdino_home / "weights" / "s.pth")
    cfg = PretrainedCfg(
        arch="vit_base_patch14",
        tag="wrong",
        img_size=112,
        in_chans=3,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        filename="s.pth",
    )
    register_pretrained(cfg)
    try:
        with pytest.raises(WeightsMismatchError, match="architecture mismatch") as err:
            emdino.load(cfg.name)
    finally:
        unregister_pretrained(cfg.name)
    msg = str(err.value)
    assert "width 384, 12 blocks" in msg and "width 768" in msg
    assert "looks like vit_small_patch14" in msg


def test_missing_and_unexpected_keys_are_named(tmp_path):
    sd = timm_to_dinov2(_random_timm("vit_small_patch14_dinov2").state_dict())
    del sd["blocks.4.attn.proj.bias"]
    sd["blocks.4.attn.extra.weight"] = torch.zeros(3)
    torch.save(sd, tmp_path / "broken.pth")
    with pytest.raises(WeightsMismatchError) as err:
        emdino.load(tmp_path / "broken.pth", in_chans=3)
    msg = str(err.value)
    assert "missing keys [blocks.4.attn.proj.bias]" in msg
    assert "unexpected keys [blocks.4.attn.extra.weight]" in msg


def test_emdino_safetensors_round_trip_keeps_configuration(tmp_path, images):
    model = emdino.load("vit_tiny_patch14.random", img_size=112)
    path = emdino.save(model, tmp_path / "tiny.safetensors", tag="mine")
    back = emdino.load(path)
    assert back.name == "vit_tiny_patch14.mine"
    assert back.img_size == 112 and back.cfg.mean == model.cfg.mean
    assert torch.equal(back.features(images).patch, model.features(images).patch)


def test_plain_timm_state_dict_of_a_one_channel_model_loads(tmp_path, images):
    """What emdino.ssl exports: a bare timm state dict, single channel, no mask token."""
    model = emdino.load("vit_tiny_patch14.random", img_size=56)
    torch.save(model.vit.state_dict(), tmp_path / "ssl_export.pt")
    back = emdino.load(tmp_path / "ssl_export.pt")
    assert back.cfg.arch == "vit_tiny_patch14" and back.in_chans == 1 and back.img_size == 56
    assert torch.equal(back.features(images).cls, model.features(images).cls)


def test_img_size_resamples_positions_once_as_at_run_time(tmp_path, images):
    """Built for 112 px from a 518-px checkpoint = the 518 model resampling at run time."""
    src = emdino.load("vit_tiny_patch14.random")  # grid 37 (518 px)
    torch.save(timm_to_dinov2(src.vit.state_dict()), tmp_path / "t.pth")
    full = emdino.load(tmp_path / "t.pth")  # DINOv2 layout: offset 0.1, no antialias
    small = emdino.load(tmp_path / "t.pth", img_size=112)
    assert full.vit.pos_interp_offset == 0.1 and not full.vit.pos_interp_antialias
    assert full.img_size == 518 and small.img_size == 112
    assert small.vit.pos_embed.shape[1] == 1 + 8 * 8
    diff = (small.features(images).patch - full.features(images).patch).abs().max()
    assert diff < 1e-5
    # and the resampling mattered: the 518 model without resampling differs at 224
    assert not torch.allclose(small.vit.pos_embed, full.vit.pos_embed[:, : 1 + 64])


def test_bf16_autocast_stays_close_to_fp32(images):
    fp32 = emdino.load("vit_small_patch14.random", img_size=112)
    bf16 = emdino.load("vit_small_patch14.random", img_size=112, dtype="bf16")
    a, b = fp32.features(images), bf16.features(images)
    assert b.patch.dtype == torch.float32 and bf16.compute_dtype == torch.bfloat16
    cos = torch.nn.functional.cosine_similarity(a.patch, b.patch, dim=1)
    assert float(cos.min()) > 0.98
    assert not torch.equal(a.patch, b.patch)  # it did run in reduced precision


def test_dtype_auto_is_bf16_only_where_the_cpu_computes_it():
    from emdino.precision import native_bf16

    auto = emdino.load("vit_small_patch14.random", img_size=112, dtype="auto")
    assert auto.compute_dtype == (torch.bfloat16 if native_bf16("cpu") else torch.float32)
    with pytest.raises(ValueError, match="dtype must be one of"):
        emdino.load("vit_small_patch14.random", img_size=112, dtype="half-ish")


def test_a_hand_downloaded_official_file_gets_its_registry_entry(tmp_path):
    """Loading dinov2_vits14_pretrain.pth by path uses the DINOv2 entry (ImageNet statistics)."""
    src = _random_timm("vit_small_patch14_dinov2")
    torch.save(timm_to_dinov2(src.state_dict()), tmp_path / "dinov2_vits14_pretrain.pth")
    model = emdino.load(tmp_path / "dinov2_vits14_pretrain.pth")
    assert model.name == "vit_small_patch14.dinov2"
    assert model.cfg.mean == IMAGENET_MEAN and model.vit.pos_interp_offset == 0.1
