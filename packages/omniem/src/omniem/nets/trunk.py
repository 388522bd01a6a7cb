"""`ConvTrunk`: residual convolutions without normalization at full input resolution.

Super-resolution needs many convolutions on every input pixel (EDSR, Lim et al. 2017); the ViT
sees the image at 1/patch resolution and the U-shaped decoder's last stage is one residual block,
which is too little to recover sub-pixel detail. Normalization layers are left out on purpose:
they discard the absolute intensities a restoration residual depends on (EDSR's finding).
"""

from __future__ import annotations

import torch
from monai.networks.blocks import Convolution, ResidualUnit
from torch import nn


class ConvTrunk(nn.Module):
    """A head convolution, ``num_blocks`` residual units and a long skip around them.

    Args:
        spatial_dims: 2 or 3.
        in_channels: input channels.
        channels: feature channels throughout.
        num_blocks: residual units (conv - ReLU - conv, plus identity), each MONAI `ResidualUnit`.

    Examples:
        >>> t = ConvTrunk(spatial_dims=2, in_channels=1, channels=8, num_blocks=2)
        >>> t(torch.rand(1, 1, 12, 10)).shape
        torch.Size([1, 8, 12, 10])
        >>> ConvTrunk(spatial_dims=2, in_channels=1, channels=8, num_blocks=0)
        Traceback (most recent call last):
        ...
        ValueError: num_blocks must be >= 1, got 0
    """

    def __init__(self, *, spatial_dims: int, in_channels: int, channels: int, num_blocks: int):
        super().__init__()
        if num_blocks < 1:
            raise ValueError(f"num_blocks must be >= 1, got {num_blocks}")
        self.head = Convolution(spatial_dims, in_channels, channels, kernel_size=3, conv_only=True)
        self.blocks = nn.Sequential(
            *(
                ResidualUnit(
                    spatial_dims,
                    channels,
                    channels,
                    subunits=2,
                    act="RELU",
                    norm=None,
                    last_conv_only=True,
                )
                for _ in range(num_blocks)
            )
        )
        self.tail = Convolution(spatial_dims, channels, channels, kernel_size=3, conv_only=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.head(x)
        return f + self.tail(self.blocks(f))
