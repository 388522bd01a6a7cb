"""`NetConfig`: everything needed to rebuild an OmniEM network (saved with every model file)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

#: What the output means.
#: semantic: C-class logits (softmax); instances: C sigmoid channels (foreground, boundary, ...);
#: restoration: one image channel, predicted as a residual on the (up-scaled) input.
Task = Literal["semantic", "instances", "restoration"]

#: How super-resolution (``output_scale > 1``) up-scales. input: bicubic up-scaling of the input,
#: then the whole network at the output size; pixel_shuffle: the network at the input size and a
#: sub-pixel convolution head (MONAI ``SubpixelUpsample``) that predicts the residual on the
#: bicubic up-scaled input (ESPCN/EDSR's layout; a quarter of the ViT tokens for 2x).
Upsample = Literal["input", "pixel_shuffle"]

#: Which backbone parameters train: none; low-rank updates of attention; the last k blocks; all.
BackboneMode = Literal["frozen", "lora", "last_k", "full"]


class NetConfig(BaseModel):
    """Architecture of an OmniEM network.

    Args:
        backbone: emdino model name (``emdino list``) or checkpoint path.
        spatial_dims: 2 (images ``[B, 1, H, W]``) or 3 (volumes ``[B, 1, Z, H, W]``; slices share
            the 2D encoder and decoder, z-context through zero-initialized adapters).
        task: output type, see `Task`.
        out_channels: number of output channels (classes for ``semantic``).
        levels: backbone blocks tapped, shallow to deep; the last one feeds the bottleneck. Default:
            ``floor(log2(patch))`` evenly spaced blocks ending with the last.
        feature_size: channels of the full-resolution decoder stage (doubling per coarser stage).
        norm: MONAI normalization name for the decoder blocks.
        dropout: dropout before the output convolution.
        z_kernel: kernel of the z-adapters (3D only).
        adapter_dim: bottleneck width of the token z-adapters.
        backbone_mode: see `BackboneMode`.
        lora_rank: rank of the LoRA updates (``backbone_mode="lora"``).
        last_k: number of trained blocks (``backbone_mode="last_k"``).
        output_scale: output size / input size, for super-resolution (see ``upsample``).
        upsample: how ``output_scale`` is reached, see `Upsample`; ``pixel_shuffle`` needs an
            integer scale.
        stem_blocks: 0: the stem is one MONAI ``UnetrBasicBlock``; n > 0: a `ConvTrunk` of n
            residual units without normalization (capacity at full input resolution, for
            super-resolution).
        conv_encoder: add a convolutional encoder (MONAI residual units, stride 2 per level, as
            in a UNet) from the stem down to the decoder's coarsest grid; each decoder stage fuses
            its level with the ViT's, and the bottleneck sees both. Full-resolution detail then
            does not have to come from ViT tokens alone.
        stem_stride: 1: the stem works at full resolution; 2: at half resolution (a strided
            residual block, like the first level of a MONAI UNet) and the head up-samples the last
            decoder stage with a transposed convolution, so no other layer runs at full
            resolution. Needs ``conv_encoder``; for segmentation only (restoration needs
            full-resolution detail). The conv levels then sit one octave deeper.
        backbone_bin: the backbone sees the image area-binned by this factor (its features are
            resized back to the token grid): ``bin**2`` fewer tokens, for structures much larger
            than a patch.
        bottleneck_units: 0: the decoder starts on the concatenation of the last ViT level and
            (hybrid) the deepest conv level; n > 0: a MONAI ``ResidualUnit`` of n convolutions
            (stride 1) first maps it to twice the deepest level's channels, like the bottom
            layer of a MONAI UNet: convolutional context on the coarsest grid, beside the ViT's.
        grad_checkpointing: recompute backbone activations in the backward pass (less memory).

    Examples:
        >>> NetConfig(task="semantic", out_channels=2).spatial_dims
        2
        >>> NetConfig(task="restoration", out_channels=3)
        Traceback (most recent call last):
        ...
        pydantic_core._pydantic_core.ValidationError: 1 validation error for NetConfig
          Value error, restoration predicts one image channel; out_channels must be 1, got 3 ...
    """

    model_config = ConfigDict(extra="forbid")

    backbone: str = "default"
    spatial_dims: Literal[2, 3] = 2
    task: Task = "semantic"
    out_channels: int = Field(2, ge=1)
    levels: list[int] | None = None
    feature_size: int = Field(32, ge=4)
    norm: str = "instance"
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    z_kernel: int = Field(3, ge=1)
    adapter_dim: int = Field(64, ge=1)
    backbone_mode: BackboneMode = "full"
    lora_rank: int = Field(8, ge=1)
    last_k: int = Field(4, ge=1)
    output_scale: float = Field(1.0, ge=1.0)
    upsample: Upsample = "input"
    stem_blocks: int = Field(0, ge=0)
    conv_encoder: bool = False
    stem_stride: Literal[1, 2] = 1
    backbone_bin: int = Field(1, ge=1)
    bottleneck_units: int = Field(0, ge=0)
    grad_checkpointing: bool = False

    @model_validator(mode="after")
    def _check(self) -> NetConfig:
        if self.task == "restoration" and self.out_channels != 1:
            raise ValueError(
                f"restoration predicts one image channel; out_channels must be 1, got "
                f"{self.out_channels}"
            )
        if self.task == "semantic" and self.out_channels < 2:
            raise ValueError("semantic segmentation needs out_channels >= 2 (background + classes)")
        if self.z_kernel % 2 == 0:
            raise ValueError(f"z_kernel must be odd, got {self.z_kernel}")
        if self.output_scale != 1.0 and self.task != "restoration":
            raise ValueError("output_scale (super-resolution) needs task='restoration'")
        if self.upsample == "pixel_shuffle" and (
            self.output_scale < 2 or self.output_scale != int(self.output_scale)
        ):
            raise ValueError(
                f"upsample='pixel_shuffle' needs an integer output_scale >= 2, got "
                f"{self.output_scale:g}"
            )
        if self.stem_stride == 2:
            if not self.conv_encoder:
                raise ValueError("stem_stride=2 needs conv_encoder=True (the conv levels carry it)")
            if self.task == "restoration" or self.stem_blocks:
                raise ValueError(
                    "stem_stride=2 is for segmentation; restoration (and stem_blocks) need the "
                    "full-resolution stem"
                )
        return self
