"""Trainable additions to a backbone that start as the identity.

- `TokenZAdapter`: mixes patch tokens of neighbouring slices after a ViT block (bottleneck linear,
  depthwise convolution along z, linear back; the last linear starts at zero).
- `MapZMixer`: the same on decoder feature maps ``[B*Z, C, H, W]``.
- `LoRA`: low-rank update of a linear layer's output (``B`` starts at zero).

All three are attached with forward hooks (`attach_output_hook`), so the backbone's parameter names
stay those of its checkpoint, and a model whose additions are still at zero equals the model
without them exactly.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


class TokenZAdapter(nn.Module):
    """Residual z-mixing of patch tokens ``[B*Z, N, D]`` (prefix tokens pass through).

    Args:
        dim: token width ``D``.
        hidden: bottleneck width.
        z_kernel: odd kernel size along z.
        num_prefix_tokens: class/register tokens at the start of each sequence (left unchanged).

    Examples:
        >>> a = TokenZAdapter(dim=8, hidden=4, z_kernel=3, num_prefix_tokens=1)
        >>> t = torch.randn(2 * 5, 1 + 16, 8)
        >>> bool(torch.equal(a(t, z=5), t))  # zero-initialized: the identity
        True
    """

    def __init__(self, dim: int, hidden: int, z_kernel: int = 3, num_prefix_tokens: int = 1):
        super().__init__()
        if z_kernel < 1 or z_kernel % 2 == 0:
            raise ValueError(f"z_kernel must be a positive odd number, got {z_kernel}")
        self.num_prefix_tokens = int(num_prefix_tokens)
        self.down = nn.Linear(dim, hidden)
        self.mix = nn.Conv2d(
            hidden, hidden, (z_kernel, 1), padding=(z_kernel // 2, 0), groups=hidden
        )
        self.act = nn.GELU()
        self.up = nn.Linear(hidden, dim)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, tokens: torch.Tensor, z: int) -> torch.Tensor:
        bz, n, _ = tokens.shape
        if bz % z:
            raise ValueError(f"batch {bz} is not a multiple of z = {z}")
        p = self.num_prefix_tokens
        patch = tokens[:, p:]
        h = self.down(patch)  # [B*Z, N', h]
        b = bz // z
        h = h.reshape(b, z, n - p, -1).permute(0, 3, 1, 2)  # [B, h, Z, N']
        h = self.act(self.mix(h)).permute(0, 2, 3, 1).reshape(bz, n - p, -1)
        delta = self.up(h)
        return torch.cat([tokens[:, :p], patch + delta], dim=1)


class MapZMixer(nn.Module):
    """Residual depthwise convolution along z of decoder maps ``[B*Z, C, H, W]``; starts at zero.

    Examples:
        >>> m = MapZMixer(channels=4, z_kernel=3)
        >>> x = torch.randn(6, 4, 8, 8)
        >>> bool(torch.equal(m(x, z=3), x))
        True
    """

    def __init__(self, channels: int, z_kernel: int = 3):
        super().__init__()
        if z_kernel < 1 or z_kernel % 2 == 0:
            raise ValueError(f"z_kernel must be a positive odd number, got {z_kernel}")
        self.conv = nn.Conv3d(
            channels, channels, (z_kernel, 1, 1), padding=(z_kernel // 2, 0, 0), groups=channels
        )
        nn.init.zeros_(self.conv.weight)
        nn.init.zeros_(self.conv.bias)

    def forward(self, x: torch.Tensor, z: int) -> torch.Tensor:
        bz, c, h, w = x.shape
        v = x.reshape(bz // z, z, c, h, w).transpose(1, 2)  # [B, C, Z, H, W]
        d = self.conv(v).transpose(1, 2).reshape(bz, c, h, w)
        return x + d


class LoRA(nn.Module):
    """Low-rank update ``scale * B(A(x))`` added to a linear layer's output.

    Args:
        in_features: input width of the adapted layer.
        out_features: its output width.
        rank: rank of the update.
        alpha: the update is scaled by ``alpha / rank``.

    Examples:
        >>> lora = LoRA(8, 24, rank=2)
        >>> float(lora(torch.randn(3, 8)).abs().max())
        0.0
    """

    def __init__(self, in_features: int, out_features: int, rank: int = 8, alpha: float = 16.0):
        super().__init__()
        if rank < 1:
            raise ValueError(f"rank must be >= 1, got {rank}")
        self.a = nn.Linear(in_features, rank, bias=False)
        self.b = nn.Linear(rank, out_features, bias=False)
        nn.init.kaiming_uniform_(self.a.weight, a=5**0.5)
        nn.init.zeros_(self.b.weight)
        self.scale = alpha / rank

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(self.a(x)) * self.scale


def attach_output_hook(
    module: nn.Module, fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
) -> torch.utils.hooks.RemovableHandle:
    """Replace ``module``'s output by ``fn(input, output)`` through a forward hook."""

    def hook(_mod: nn.Module, args: tuple[torch.Tensor, ...], out: torch.Tensor) -> torch.Tensor:
        return fn(args[0], out)

    return module.register_forward_hook(hook)
