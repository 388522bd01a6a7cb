"""The DINO projection head: MLP -> L2-normalised bottleneck -> weight-normed prototypes.

As in DINOv2 (``dinov2/layers/dino_head.py``): ``nlayers`` linear layers with GELU, no batch norm,
truncated-normal init (std 0.02), then a weight-normalised linear layer without bias whose rows are
the prototypes; its norm (``g``) starts at 1 and is trained.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.parametrizations import weight_norm


class DINOHead(nn.Module):
    """Projection head producing prototype scores (logits).

    Args:
        in_dim: backbone embedding size.
        out_dim: number of prototypes.
        nlayers: linear layers of the MLP (>= 1).
        hidden_dim: width of the hidden layers.
        bottleneck_dim: width of the L2-normalised output of the MLP.

    Examples:
        >>> head = DINOHead(32, 64, nlayers=3, hidden_dim=48, bottleneck_dim=16)
        >>> head(torch.randn(5, 32)).shape
        torch.Size([5, 64])
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        nlayers: int = 3,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
    ) -> None:
        super().__init__()
        if min(in_dim, out_dim, hidden_dim, bottleneck_dim) < 1 or nlayers < 1:
            raise ValueError("DINOHead sizes and nlayers must be positive")
        self.mlp = _build_mlp(nlayers, in_dim, bottleneck_dim, hidden_dim)
        self.apply(_init_weights)
        self.last_layer = weight_norm(nn.Linear(bottleneck_dim, out_dim, bias=False))
        with torch.no_grad():
            self.last_layer.parametrizations.weight.original0.fill_(1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.mlp(x)
        eps = 1e-6 if x.dtype in (torch.float16, torch.bfloat16) else 1e-12
        x = nn.functional.normalize(x, dim=-1, p=2, eps=eps)
        return self.last_layer(x)


def _build_mlp(nlayers: int, in_dim: int, out_dim: int, hidden_dim: int) -> nn.Module:
    if nlayers == 1:
        return nn.Linear(in_dim, out_dim)
    layers: list[nn.Module] = [nn.Linear(in_dim, hidden_dim), nn.GELU()]
    for _ in range(nlayers - 2):
        layers += [nn.Linear(hidden_dim, hidden_dim), nn.GELU()]
    layers.append(nn.Linear(hidden_dim, out_dim))
    return nn.Sequential(*layers)


def _init_weights(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
