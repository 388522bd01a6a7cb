"""`WeightAverage`: an exponential moving average of the trained weights (``optim.ema_decay``).

The averaged weights are the ones validated and saved; the optimizer keeps stepping the live ones.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn


class WeightAverage:
    """Exponential moving average of the trainable parameters of ``net``.

    The decay ramps up as ``min(decay, (1 + n) / (10 + n))`` after ``n`` updates, so that the
    average of a young run is not dominated by its random initialization.

    Args:
        net: the network whose trainable parameters are averaged (frozen ones are left out).
        decay: the weight of the old average per update, in [0, 1).

    Examples:
        >>> net = nn.Linear(2, 1)
        >>> avg = WeightAverage(net, decay=0.9)
        >>> with torch.no_grad():
        ...     _ = net.weight.add_(1.0)
        >>> avg.update(net)
        >>> with avg.applied(net):
        ...     inside = net.weight.clone()
        >>> bool((inside < net.weight).all())
        True
    """

    def __init__(self, net: nn.Module, decay: float) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.updates = 0
        self.average = {
            name: p.detach().clone() for name, p in net.named_parameters() if p.requires_grad
        }

    def _live(self, net: nn.Module) -> list[torch.Tensor]:
        params = dict(net.named_parameters())
        return [params[name].detach() for name in self.average]

    @torch.no_grad()
    def update(self, net: nn.Module) -> None:
        """Move the average towards the current weights of ``net``."""
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        torch._foreach_lerp_(list(self.average.values()), self._live(net), 1.0 - d)

    @contextlib.contextmanager
    def applied(self, net: nn.Module) -> Iterator[nn.Module]:
        """Within the block ``net`` holds the averaged weights; the live ones come back after."""
        live = [t.clone() for t in self._live(net)]
        try:
            with torch.no_grad():
                torch._foreach_copy_(self._live(net), list(self.average.values()))
            yield net
        finally:
            with torch.no_grad():
                torch._foreach_copy_(self._live(net), live)

    def state_dict(self) -> dict[str, object]:
        return {"decay": self.decay, "updates": self.updates, "average": self.average}

    def load_state_dict(self, state: dict[str, object]) -> None:
        average = state["average"]
        assert isinstance(average, dict)
        if average.keys() != self.average.keys():
            raise ValueError("the checkpoint's weight average is of another network")
        for name, t in average.items():
            self.average[name].copy_(t)
        self.updates = int(state["updates"])  # type: ignore[call-overload]
