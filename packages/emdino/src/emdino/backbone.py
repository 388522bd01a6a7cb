"""`Backbone`: a loaded ViT with its normalization, and `Features`, what it returns.

``model.features(x)`` takes EM images of any size (``[B, 1, H, W]``, uint8 or float in [0, 1]),
normalizes them with the statistics of the pretrained configuration, pads them to the patch grid
and returns the class embedding, the final patch-feature map and intermediate block maps (via timm's
``forward_intermediates``).

How feature maps map to pixels: the image is padded at the bottom and right (reflection) to
``ceil(H / p) * p`` by ``ceil(W / p) * p``; token ``(i, j)`` of a ``[B, D, h, w]`` map describes the
pixels ``[i*p, (i+1)*p) x [j*p, (j+1)*p)`` (its centre is pixel ``(i*p + (p-1)/2, j*p + (p-1)/2)``);
in the last row/column part of that square may be padding. `TokenGrid` holds these numbers and
`Features.to_pixels` resamples a map to the image's pixels.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from emdino.models.registry import PretrainedCfg
from emdino.models.vit import EMViT

#: Compute dtypes accepted by name.
DTYPES = {
    "fp32": torch.float32,
    "float32": torch.float32,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
}


def as_dtype(dtype: torch.dtype | str) -> torch.dtype:
    """A torch compute dtype from a dtype or one of ``fp32``, ``bf16``, ``fp16``."""
    if isinstance(dtype, str):
        if dtype.lower() not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
        return DTYPES[dtype.lower()]
    if dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise ValueError(f"dtype must be float32, bfloat16 or float16, got {dtype}")
    return dtype


@dataclass(frozen=True)
class TokenGrid:
    """Geometry of a token map relative to the image it came from.

    Args:
        patch_size: patch side ``p`` in pixels.
        image_hw: image size (rows, columns) before padding.
        padded_hw: size after padding to multiples of ``p``.

    Examples:
        >>> g = TokenGrid(14, (100, 60), (112, 70))
        >>> g.tokens_hw, g.pixel_box(7, 4)
        ((8, 5), (98, 100, 56, 60))
    """

    patch_size: int
    image_hw: tuple[int, int]
    padded_hw: tuple[int, int]

    @property
    def tokens_hw(self) -> tuple[int, int]:
        p = self.patch_size
        return self.padded_hw[0] // p, self.padded_hw[1] // p

    def pixel_box(self, i: int, j: int) -> tuple[int, int, int, int]:
        """Pixels ``(y0, y1, x0, x1)`` (end exclusive, clipped to the image) of token (i, j)."""
        p = self.patch_size
        h, w = self.image_hw
        return i * p, min((i + 1) * p, h), j * p, min((j + 1) * p, w)


@dataclass
class Features:
    """What `Backbone.features` returns (float32 tensors on the model's device).

    Args:
        cls: class-token embedding ``[B, D]`` (after the final norm).
        patch: final patch features ``[B, D, h, w]`` (after the final norm).
        levels: block index -> intermediate patch map ``[B, D, h, w]`` (through the final norm
            when ``norm_levels`` was True, DINOv2's ``get_intermediate_layers(norm=True)``).
        registers: register tokens ``[B, R, D]`` (None without registers).
        grid: how the maps relate to the image's pixels.
    """

    cls: torch.Tensor
    patch: torch.Tensor
    levels: dict[int, torch.Tensor] = field(default_factory=dict)
    registers: torch.Tensor | None = None
    grid: TokenGrid | None = None

    def to_pixels(self, fmap: torch.Tensor | None = None, mode: str = "nearest") -> torch.Tensor:
        """Resample a token map (default: `patch`) to the image's pixels ``[B, D, H, W]``.

        ``nearest`` gives every pixel the feature of the token that covers it; ``bilinear``
        interpolates between token centres.
        """
        if self.grid is None:
            raise ValueError("these features carry no grid")
        fmap = self.patch if fmap is None else fmap
        if mode == "nearest":
            p = self.grid.patch_size
            up = fmap.repeat_interleave(p, dim=-2).repeat_interleave(p, dim=-1)
        elif mode == "bilinear":
            up = F.interpolate(fmap, size=self.grid.padded_hw, mode="bilinear", align_corners=False)
        else:
            raise ValueError(f"mode must be 'nearest' or 'bilinear', got {mode!r}")
        h, w = self.grid.image_hw
        return up[..., :h, :w]


def even_levels(depth: int, n: int = 4) -> tuple[int, ...]:
    """``n`` evenly spaced block indices ending at the last block (OmniEM's taps for n = 4).

    Examples:
        >>> even_levels(24), even_levels(12)
        ((5, 11, 17, 23), (2, 5, 8, 11))
    """
    if not 1 <= n <= depth:
        raise ValueError(f"n must be in 1..{depth}, got {n}")
    return tuple((k + 1) * depth // n - 1 for k in range(n))


class Backbone(nn.Module):
    """A ViT backbone with the normalization of its weights; what `emdino.load` returns.

    Args:
        vit: the network (an `EMViT`).
        cfg: its pretrained configuration (name, licence, ...).
        mean: normalization mean per input channel, on [0, 1] intensities.
        std: normalization std per input channel.
        compute_dtype: float32, or bfloat16/float16 for autocast.

    Examples:
        >>> import emdino
        >>> model = emdino.load("vit_tiny_patch14.random", img_size=56)
        >>> f = model.features(torch.rand(2, 1, 50, 70))
        >>> f.cls.shape, f.patch.shape, sorted(f.levels)
        (torch.Size([2, 192]), torch.Size([2, 192, 4, 5]), [2, 5, 8, 11])
    """

    def __init__(
        self,
        vit: EMViT,
        cfg: PretrainedCfg,
        mean: Sequence[float],
        std: Sequence[float],
        compute_dtype: torch.dtype | str = torch.float32,
    ) -> None:
        super().__init__()
        in_chans = int(vit.patch_embed.proj.in_channels)
        if len(mean) != in_chans or len(std) != in_chans:
            raise ValueError(f"mean/std need {in_chans} values, got {list(mean)}, {list(std)}")
        self.vit = vit
        self.cfg = cfg
        self.compute_dtype = as_dtype(compute_dtype)
        # Exact statistics (the float32 buffers below round them) for saving the configuration.
        self.norm_mean = tuple(float(v) for v in mean)
        self.norm_std = tuple(float(v) for v in std)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    # ------------------------------------------------------------------ facts
    @property
    def name(self) -> str:
        return self.cfg.name

    @property
    def patch_size(self) -> int:
        return self.vit.patch_size

    @property
    def embed_dim(self) -> int:
        return int(self.vit.embed_dim)

    @property
    def num_blocks(self) -> int:
        return len(self.vit.blocks)

    @property
    def in_chans(self) -> int:
        return int(self.vit.patch_embed.proj.in_channels)

    @property
    def img_size(self) -> int:
        """Side (pixels) of the position-embedding grid; other sizes are resampled."""
        return int(self.vit.patch_embed.grid_size[0]) * self.patch_size

    @property
    def device(self) -> torch.device:
        return self.mean.device

    @property
    def default_levels(self) -> tuple[int, ...]:
        """Blocks `features` returns by default: four evenly spaced, the last one included."""
        return even_levels(self.num_blocks, min(4, self.num_blocks))

    # ------------------------------------------------------------------ input
    def prepare(self, x: torch.Tensor | np.ndarray) -> tuple[torch.Tensor, TokenGrid]:
        """Normalize and pad images for the network.

        Args:
            x: ``[B, C, H, W]`` (also ``[B, H, W]`` or ``[H, W]``), C = 1 or the model's channels;
                uint8 (divided by 255) or float in [0, 1].

        Returns:
            The normalized float32 tensor padded to multiples of the patch size (reflection at
            the bottom and right), on the model's device, and its `TokenGrid`.

        Raises:
            ValueError: wrong shape, channels, dtype or value range.
        """
        x = torch.as_tensor(x)
        if x.ndim == 2:
            x = x[None, None]
        elif x.ndim == 3:
            x = x[:, None]
        if x.ndim != 4:
            raise ValueError(f"expected [B, C, H, W] images, got shape {tuple(x.shape)}")
        if x.shape[1] not in (1, self.in_chans):
            raise ValueError(f"expected 1 or {self.in_chans} channels, got {x.shape[1]}")
        if x.shape[-2] < 1 or x.shape[-1] < 1 or x.shape[0] < 1:
            raise ValueError(f"empty input {tuple(x.shape)}")
        x = x.to(self.device)
        if x.dtype == torch.uint8:
            x = x.float() / 255.0
        elif x.is_floating_point():
            x = x.float()
            # Skipped while torch.compile traces: the check reads values back to Python, which
            # breaks the graph and recompiles for every new (lo, hi) pair.
            lo, hi = (
                (0.0, 1.0) if torch.compiler.is_compiling() else (float(x.amin()), float(x.amax()))
            )
            if lo < -1e-3 or hi > 1 + 1e-3 or not np.isfinite(lo + hi):
                raise ValueError(
                    f"float images must be in [0, 1], got values in [{lo:.4g}, {hi:.4g}]; "
                    "pass uint8 or scale first (e.g. em5m.intensity.to_uint8)"
                )
        else:
            raise ValueError(
                f"images must be uint8 or float in [0, 1], got {x.dtype}; map other types to "
                "uint8 first (e.g. em5m.intensity.to_uint8)"
            )
        if x.shape[1] != self.in_chans:
            x = x.expand(-1, self.in_chans, -1, -1)
        x = (x - self.mean) / self.std
        h, w = x.shape[-2:]
        p = self.patch_size
        ph, pw = -h % p, -w % p
        if ph or pw:
            # Reflection continues EM texture; an image smaller than the pad can only replicate.
            mode = "reflect" if ph < h and pw < w else "replicate"
            x = F.pad(x, (0, pw, 0, ph), mode=mode)
        return x, TokenGrid(p, (int(h), int(w)), (int(h + ph), int(w + pw)))

    @contextlib.contextmanager
    def autocast(self) -> Iterator[None]:
        """Autocast to the compute dtype (no-op for float32)."""
        if self.compute_dtype == torch.float32:
            yield
            return
        with torch.autocast(self.device.type, dtype=self.compute_dtype):
            yield

    # ------------------------------------------------------------------ outputs
    def forward_intermediates(self, x: torch.Tensor, **kwargs: Any) -> Any:
        """timm's ``VisionTransformer.forward_intermediates`` on *prepared* input.

        ``x`` must come from `prepare` (normalized, padded to the patch grid). Keyword arguments
        are timm's (``indices``, ``norm``, ``output_fmt``, ``intermediates_only``,
        ``return_prefix_tokens``, ``stop_early``). Runs under the compute dtype's autocast and
        keeps autograd available (for fine-tuning); use `features` for inference.
        """
        with self.autocast():
            return self.vit.forward_intermediates(x, **kwargs)

    def features(
        self,
        x: torch.Tensor | np.ndarray,
        levels: Sequence[int] | None = None,
        *,
        norm_levels: bool = True,
    ) -> Features:
        """Class embedding, patch-feature map and intermediate maps of EM images of any size.

        Args:
            x: ``[B, 1, H, W]`` uint8 or float in [0, 1] (see `prepare`).
            levels: block indices for `Features.levels` (negative count from the end); default
                `default_levels`; ``()`` for none (faster: no intermediate maps).
            norm_levels: pass intermediate maps through the final LayerNorm.

        Returns:
            `Features` in float32, computed under ``torch.inference_mode``.
        """
        levels = self.default_levels if levels is None else tuple(int(i) for i in levels)
        absolute = [
            i % self.num_blocks if -self.num_blocks <= i < self.num_blocks else None for i in levels
        ]
        if None in absolute:
            raise ValueError(f"levels {levels} out of range for {self.num_blocks} blocks")
        with torch.inference_mode():
            xp, grid = self.prepare(x)
            h, w = grid.tokens_hw
            with self.autocast():
                if absolute:
                    tokens, maps = self.vit.forward_intermediates(
                        xp, indices=absolute, norm=norm_levels, output_fmt="NCHW"
                    )
                else:
                    tokens, maps = self.vit.forward_features(xp), []
            tokens = tokens.float()
            n_prefix = self.vit.num_prefix_tokens
            b = tokens.shape[0]
            patch = tokens[:, n_prefix:].reshape(b, h, w, -1).permute(0, 3, 1, 2).contiguous()
            regs = tokens[:, 1:n_prefix] if self.vit.num_reg_tokens else None
            return Features(
                cls=tokens[:, 0].contiguous(),
                patch=patch,
                levels={i: m.float() for i, m in zip(absolute, maps, strict=True)},
                registers=regs,
                grid=grid,
            )

    def forward(self, x: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Class embeddings ``[B, D]`` of images (see `features`)."""
        return self.features(x, levels=()).cls

    def extra_repr(self) -> str:
        return (
            f"name={self.name}, patch={self.patch_size}, dim={self.embed_dim}, "
            f"blocks={self.num_blocks}, in_chans={self.in_chans}, dtype={self.compute_dtype}"
        )
