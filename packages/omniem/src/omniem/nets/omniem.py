"""The OmniEM network: an emdino ViT encoder, a convolutional stem and a U-shaped decoder.

Shapes, for a backbone with patch size ``p`` and token grid ``G = H / p`` (after padding):

- stem: MONAI ``UnetrBasicBlock`` on the normalized image, ``feature_size`` channels at full size
  (at ``H / 2`` with ``stem_stride = 2``, below).
- levels ``l_1 .. l_S`` (``S = floor(log2 p)``) from ``Backbone.forward_intermediates``: the deepest
  feeds the bottleneck; level ``l_s`` (s < S) is projected by ``UnetrPrUpBlock`` to ``G * 2^s``.
- decoder stages ``s = 1 .. S`` (``UnetrUpBlock``: transposed convolution x2, concatenation with
  the skip, residual convolutions) at ``G * 2^s``; the last one reaches the image size, fused with
  the stem (when ``p`` is not a power of two the map is resized to ``H / 2`` first).
- head: ``UnetOutBlock`` (1x1 convolution); or, for super-resolution with
  ``upsample="pixel_shuffle"``, MONAI ``SubpixelUpsample`` on the last stage plus the stem, the
  network running at the input size.
- ``stem_blocks > 0`` replaces the stem by a `ConvTrunk` (residual convolutions, no norm).
- ``conv_encoder``: MONAI ``ResidualUnit`` s (stride 2) take the stem down to ``H / 2^S`` (the
  token grid when ``p = 2^S``), ``fs * 2^k`` channels at ``H / 2^k``; decoder skips are the sum
  of the conv level and the ViT projection, and the bottleneck concatenates the deepest conv
  level with the last ViT level.
- ``stem_stride = 2`` (hybrid only): the stem is strided, everything above sits one octave deeper
  (conv level k at ``H / 2^(k+1)``), the last decoder stage ends at ``H / 2`` and the head is a
  transposed convolution to the image size: the MONAI UNet's layout, whose only full-resolution
  layer is its output.
- ``bottleneck_units = n``: a MONAI ``ResidualUnit`` (n convolutions, stride 1) on the decoder's
  first input (the last ViT level, concatenated with the deepest conv level in the hybrid), with
  twice the deepest level's channels: the MONAI UNet's bottom layer.
- ``backbone_bin = b``: the ViT runs on the image area-binned by ``b`` (``b**2`` fewer tokens); its
  maps are resized (bilinear) back to the decoder's first grid.

3D (``spatial_dims=3``): slices go through the 2D network as a batch; `TokenZAdapter` after every
ViT block and `MapZMixer` after every decoder stage mix neighbouring slices. Both start at zero,
so an untrained 3D model equals its 2D model slice by slice.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.networks.blocks import (
    Convolution,
    ResidualUnit,
    SubpixelUpsample,
    UnetOutBlock,
    UnetrBasicBlock,
    UnetrPrUpBlock,
    UnetrUpBlock,
)
from torch import nn

from omniem.nets.adapters import LoRA, MapZMixer, TokenZAdapter, attach_output_hook
from omniem.nets.config import NetConfig
from omniem.nets.trunk import ConvTrunk


def default_levels(depth: int, patch_size: int) -> list[int]:
    """``floor(log2(patch))`` evenly spaced blocks ending with the last one.

    Examples:
        >>> default_levels(12, 8), default_levels(24, 14), default_levels(12, 16)
        ([3, 7, 11], [7, 15, 23], [2, 5, 8, 11])
    """
    n = max(1, min(depth, int(math.floor(math.log2(patch_size)))))
    return [(k + 1) * depth // n - 1 for k in range(n)]


class OmniEM(nn.Module):
    """U-shaped dense prediction on a ViT backbone, for 2D images or 3D volumes.

    Args:
        backbone: an `emdino.Backbone` (``emdino.load(...)``).
        config: the architecture (`NetConfig`); ``config.backbone`` is recorded, not loaded here.

    Input: uint8 or float in [0, 1], ``[B, 1, H, W]`` (2D) or ``[B, 1, Z, H, W]`` (3D), any
    ``H, W`` (padded to the patch grid inside, cropped back). Output: logits with
    ``config.out_channels`` channels for segmentation; for restoration the restored image
    (``input + residual``, unclamped while training; `predict` clamps to [0, 1]), ``output_scale``
    times larger in ``H, W``.

    Examples:
        >>> import emdino
        >>> bb = emdino.load("vit_tiny_patch8.random", img_size=64)
        >>> net = OmniEM(bb, NetConfig(backbone="vit_tiny_patch8.random", out_channels=3))
        >>> net(torch.rand(2, 1, 50, 70)).shape
        torch.Size([2, 3, 50, 70])
    """

    def __init__(self, backbone: Any, config: NetConfig) -> None:
        super().__init__()
        self.config = config
        self.backbone = backbone
        vit = backbone.vit
        p, depth, dim = backbone.patch_size, backbone.num_blocks, backbone.embed_dim
        levels = list(config.levels) if config.levels else default_levels(depth, p)
        levels = [i % depth if -depth <= i < depth else -1 for i in levels]
        if -1 in levels or sorted(set(levels)) != levels:
            raise ValueError(
                f"levels must be increasing block indices in [0, {depth}), got {config.levels}"
            )
        self.levels = levels
        n_stages = len(levels)
        if 2**n_stages > p:
            raise ValueError(
                f"{n_stages} levels need {n_stages} up-sampling stages, more than patch size {p} "
                f"allows (at most {int(math.log2(p))})"
            )
        fs, norm, sd = config.feature_size, config.norm, 2
        # Channels per decoder stage, coarse to fine; the last stage is at full resolution.
        chans = [fs * 2 ** (n_stages - s) for s in range(1, n_stages + 1)]
        if config.stem_blocks:
            self.stem: nn.Module = ConvTrunk(
                spatial_dims=sd, in_channels=1, channels=fs, num_blocks=config.stem_blocks
            )
        else:
            self.stem = UnetrBasicBlock(
                sd, 1, fs, kernel_size=3, stride=config.stem_stride, norm_name=norm, res_block=True
            )
        # Conv encoder levels 1..S: fs * 2^k channels at H / 2^k (level 0 is the stem); one octave
        # deeper with a strided stem.
        self.encoder = nn.ModuleList(
            ResidualUnit(sd, fs * 2 ** (k - 1), fs * 2**k, strides=2, subunits=2, norm=norm)
            for k in range(1, n_stages + 1)
            if config.conv_encoder
        )
        self.skips = nn.ModuleList(
            UnetrPrUpBlock(
                sd,
                dim,
                chans[s - 1],
                num_layer=s - 1,
                kernel_size=3,
                stride=1,
                upsample_kernel_size=2,
                norm_name=norm,
                conv_block=True,
                res_block=True,
            )
            for s in range(1, n_stages)
        )
        bottom = dim + (fs * 2**n_stages if config.conv_encoder else 0)
        if config.bottleneck_units:
            widest = fs * 2 ** (n_stages + 1)
            self.bottleneck: nn.Module = ResidualUnit(
                sd, bottom, widest, strides=1, subunits=config.bottleneck_units, norm=norm
            )
            bottom = widest
        else:
            self.bottleneck = nn.Identity()  # no parameters: older model files load unchanged
        ins = [bottom, *chans[:-1]]
        self.ups = nn.ModuleList(
            UnetrUpBlock(
                sd,
                ins[s],
                chans[s],
                kernel_size=3,
                upsample_kernel_size=2,
                norm_name=norm,
                res_block=True,
            )
            for s in range(n_stages)
        )
        if fs != chans[-1]:  # pragma: no cover - chans[-1] == fs by construction
            raise AssertionError
        self.sr_scale = int(config.output_scale) if config.upsample == "pixel_shuffle" else 1
        if self.sr_scale > 1:
            # No pad-pool: its blur shifts the residual by half an output pixel.
            self.out: nn.Module = SubpixelUpsample(
                sd, fs, config.out_channels, scale_factor=self.sr_scale, apply_pad_pool=False
            )
            last = self.out.conv_block
        elif config.stem_stride == 2:
            # The decoder ends at H / 2: a transposed convolution to the classes at full size.
            head = Convolution(
                sd,
                fs,
                config.out_channels,
                strides=2,
                kernel_size=3,
                is_transposed=True,
                conv_only=True,
            )
            self.out = nn.Sequential(nn.Dropout(config.dropout), head) if config.dropout else head
            last = head.conv
        else:
            self.out = UnetOutBlock(sd, fs, config.out_channels, dropout=config.dropout or None)
            last = self.out.conv.conv
        if config.task == "restoration":
            # Zero residual at the start: a new restoration model is the identity (denoising) or
            # bicubic interpolation (super-resolution) and training moves it away from there,
            # instead of first having to undo a random residual.
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)
        self.z_adapters = nn.ModuleList()
        self.z_mixers = nn.ModuleList()
        if config.spatial_dims == 3:
            self.z_adapters.extend(
                TokenZAdapter(dim, config.adapter_dim, config.z_kernel, vit.num_prefix_tokens)
                for _ in range(depth)
            )
            self.z_mixers.extend(MapZMixer(c, config.z_kernel) for c in chans)
        self.lora = nn.ModuleList()
        if config.backbone_mode == "lora":
            for blk in vit.blocks:
                qkv = blk.attn.qkv
                self.lora.append(LoRA(qkv.in_features, qkv.out_features, config.lora_rank))
        self._z = 1
        self._hooks = []
        for i, blk in enumerate(vit.blocks):
            if self.z_adapters:
                self._hooks.append(
                    attach_output_hook(blk, lambda _x, out, a=self.z_adapters[i]: a(out, self._z))
                )
            if self.lora:
                self._hooks.append(
                    attach_output_hook(blk.attn.qkv, lambda x, out, m=self.lora[i]: out + m(x))
                )
        if config.grad_checkpointing:
            vit.set_grad_checkpointing(True)
        self.set_backbone_mode(config.backbone_mode)

    # ------------------------------------------------------------------ training modes
    def set_backbone_mode(self, mode: str) -> None:
        """Set which backbone parameters train: ``frozen``, ``lora``, ``last_k`` or ``full``."""
        vit = self.backbone.vit
        if mode not in ("frozen", "lora", "last_k", "full"):
            raise ValueError(f"backbone_mode must be frozen, lora, last_k or full, got {mode!r}")
        for prm in vit.parameters():
            prm.requires_grad = mode == "full"
        if mode == "last_k":
            k = min(self.config.last_k, len(vit.blocks))
            for blk in list(vit.blocks)[-k:]:
                for prm in blk.parameters():
                    prm.requires_grad = True
            for prm in vit.norm.parameters():
                prm.requires_grad = True
        self.backbone_mode = mode

    @property
    def trains_backbone(self) -> bool:
        """Whether any backbone parameter trains (then the backbone is saved with the model)."""
        return any(p.requires_grad for p in self.backbone.vit.parameters())

    def _needs_backbone_grad(self) -> bool:
        return self.training and (self.trains_backbone or bool(self.z_adapters) or bool(self.lora))

    # ------------------------------------------------------------------ forward
    def forward(self, x: torch.Tensor | np.ndarray) -> torch.Tensor:
        x = torch.as_tensor(x)
        dims = self.config.spatial_dims
        if x.ndim != dims + 2 or x.shape[1] != 1:
            want = "[B, 1, H, W]" if dims == 2 else "[B, 1, Z, H, W]"
            raise ValueError(f"expected {want} input, got shape {tuple(x.shape)}")
        if dims == 3:
            b, _, z, h, w = x.shape
            x = x.transpose(1, 2).reshape(b * z, 1, h, w)
        else:
            z = 1
        if x.dtype == torch.uint8:
            x = x.float() / 255.0
        scale = self.config.output_scale
        if scale != 1.0 and self.sr_scale == 1:
            x = upscale_bicubic(x, scale)
        y = self._forward_slices(x, z)
        if dims == 3:
            y = y.reshape(b, z, *y.shape[1:]).transpose(1, 2)
        return y

    def _forward_slices(self, x: torch.Tensor, z: int) -> torch.Tensor:
        bb = self.backbone
        xp, grid = bb.prepare(x)
        k = self.config.backbone_bin
        # Pad so that binned patches and (hybrid) the conv levels tile the image exactly.
        conv_depth = len(self.ups) + (self.config.stem_stride == 2)
        multiple = math.lcm(bb.patch_size * k, 2**conv_depth if self.encoder else 1)
        ph, pw = (-xp.shape[-2]) % multiple, (-xp.shape[-1]) % multiple
        if ph or pw:
            xp = F.pad(xp, (0, pw, 0, ph), mode="replicate")
        self._z = z
        with torch.set_grad_enabled(torch.is_grad_enabled() and self._needs_backbone_grad()):
            maps = bb.forward_intermediates(
                F.avg_pool2d(xp, k) if k > 1 else xp,
                indices=self.levels,
                norm=True,
                output_fmt="NCHW",
                intermediates_only=True,
            )
        maps = [
            m.to(xp.dtype) if not torch.is_autocast_enabled(xp.device.type) else m for m in maps
        ]
        stem = self.stem(xp[:, :1])
        pyramid = [stem]
        for level in self.encoder:
            pyramid.append(level(pyramid[-1]))
        # The decoder starts on the token grid, or (hybrid) on the deepest conv level; binned or
        # non-power-of-two patches give other sizes, resized here.
        if self.encoder:
            start = tuple(pyramid[-1].shape[-2:])
        else:
            start = (xp.shape[-2] // bb.patch_size, xp.shape[-1] // bb.patch_size)
        if tuple(maps[-1].shape[-2:]) != start:
            maps = [
                F.interpolate(f, size=start, mode="bilinear", align_corners=False) for f in maps
            ]
        d = maps[-1]
        n = len(self.ups)
        if self.encoder:
            d = torch.cat([d, pyramid[-1].to(d.dtype)], dim=1)
        d = self.bottleneck(d)
        for s in range(n):
            if s < n - 1:
                skip = self.skips[s](maps[n - 2 - s])
                if self.encoder:
                    skip = skip + pyramid[n - 1 - s]
            else:
                skip = stem
                half = (skip.shape[-2] // 2, skip.shape[-1] // 2)
                if d.shape[-2:] != half:  # patch size not a power of two
                    d = F.interpolate(d, size=half, mode="bilinear", align_corners=False)
            d = self.ups[s](d, skip)
            if self.z_mixers:
                d = self.z_mixers[s](d, z)
        h, w = grid.image_hw
        if self.sr_scale > 1:
            s = self.sr_scale
            y = self.out(d + stem)[..., : s * h, : s * w]
            return upscale_bicubic(x, s) + y
        y = self.out(d)
        y = y[..., :h, :w]
        if self.config.task == "restoration":
            y = x + y
        return y

    # ------------------------------------------------------------------ inference
    @torch.inference_mode()
    def predict(self, x: torch.Tensor | np.ndarray, *, dtype: str = "fp32") -> torch.Tensor:
        """Output in inference form: class probabilities, sigmoid channels or a [0, 1] image.
        ``dtype``: ``fp32``, ``bf16`` (autocast) or ``auto`` (`emdino.precision`)."""
        from emdino.precision import autocast

        was = self.training
        self.eval()
        try:
            x = torch.as_tensor(x).to(self.backbone.device)
            with autocast(dtype, x.device):
                y = self(x).float()
        finally:
            self.train(was)
        return activate(y, self.config.task)

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """Parameters and buffers to save: everything but an untrained backbone."""
        sd = self.state_dict()
        if self.trains_backbone:
            return sd
        return {k: v for k, v in sd.items() if not k.startswith("backbone.")}

    def extra_repr(self) -> str:
        c = self.config
        return (
            f"task={c.task}, out_channels={c.out_channels}, spatial_dims={c.spatial_dims}, "
            f"levels={self.levels}, backbone_mode={self.backbone_mode}"
        )


def upscale_bicubic(x: torch.Tensor, scale: float) -> torch.Tensor:
    """Bicubic up-scaling of images in [0, 1], clamped back to [0, 1] (the SR baseline).

    Examples:
        >>> upscale_bicubic(torch.rand(1, 1, 4, 5), 2).shape
        torch.Size([1, 1, 8, 10])
    """
    y = F.interpolate(x.float(), scale_factor=scale, mode="bicubic", align_corners=False)
    return y.clamp(0.0, 1.0)


def activate(y: torch.Tensor, task: str) -> torch.Tensor:
    """Logits -> probabilities (softmax: ``semantic``, sigmoid: ``instances``); clamp images.

    ``y`` is batched (``[B, C, ...]``): the softmax runs over dimension 1.

    Examples:
        >>> p = activate(torch.tensor([[[[0.0]], [[1.0]]]]), "semantic")  # [1, 2, 1, 1]
        >>> [round(v, 3) for v in p.flatten().tolist()]
        [0.269, 0.731]
    """
    if y.ndim < 3:
        raise ValueError(f"activate expects batched output [B, C, ...], got {tuple(y.shape)}")
    if task == "semantic":
        return torch.softmax(y, dim=1)
    if task == "instances":
        return torch.sigmoid(y)
    return y.clamp(0.0, 1.0)


def build(config: NetConfig, *, img_size: int | None = None, device: str = "cpu") -> OmniEM:
    """Load ``config.backbone`` with emdino and build the network around it.

    Examples:
        >>> net = build(NetConfig(backbone="vit_tiny_patch16.random", out_channels=2), img_size=64)
        >>> net.levels
        [2, 5, 8, 11]
    """
    import emdino

    kwargs: dict[str, Any] = {"device": device, "in_chans": 1}
    if img_size:
        kwargs["img_size"] = img_size
    backbone = emdino.load(config.backbone, **kwargs)
    if config.backbone == "default":  # record what "default" meant, for the saved model
        config = config.model_copy(update={"backbone": backbone.name})
    return OmniEM(backbone, config)


def count_parameters(net: nn.Module, *, trainable: bool = False) -> int:
    return sum(p.numel() for p in net.parameters() if p.requires_grad or not trainable)


__all__: Sequence[str] = ["OmniEM", "activate", "build", "count_parameters", "default_levels"]
