"""Tiling of 2D images and 3D volumes: the tile grid, blending weights, weighted accumulation.

The grid is MONAI's (`monai.inferers.sliding_window_inference`): along an axis of ``n`` pixels,
tiles of side ``t`` start every ``int(t * (1 - overlap))`` pixels (at least 1) until one reaches
the end; that last tile is shifted inward to end exactly at ``n`` (never padded). An axis shorter
than a tile is reflect-padded symmetrically to ``t`` (``(t - n) // 2`` before, the rest after) and
covered by one tile.

Blending: every tile's output is multiplied by a weight map and summed; the weight maps are summed
too, and the result is ``sum(w * y) / sum(w)``. The division makes any pixel a convex combination
of the tiles covering it, so the borders of the image (covered by fewer tiles) are as correctly
normalized as the centre. Weight maps (all clamped below at ``max(min(w), 1e-3)`` as MONAI does):

- ``gaussian``: ``exp(-d^2 / (2 sigma^2))`` per axis, ``d`` the distance to the tile centre,
  ``sigma = t / 8`` (MONAI ``sigma_scale=0.125``); computed with the same float32 operations as
  `monai.data.utils.compute_importance_map`, so the weights are bit-identical to MONAI's.
- ``hann``: ``sin^2(pi (i + 0.5) / t)`` per axis (a Hann window sampled at pixel centres).
- ``constant``: all ones (plain averaging).

3D models tile z the same way (their own ``tile_z``); the weight of a 3D tile is the product of
the per-axis weights, as in MONAI.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

__all__ = [
    "BLENDS",
    "SIGMA_SCALE",
    "AxisGrid",
    "accumulate",
    "accumulate_volume",
    "axis_grid",
    "blend_weights",
    "pad_reflect",
    "sliding_window",
    "tile_starts",
]

#: Blend modes of `blend_weights`.
BLENDS: tuple[str, ...] = ("gaussian", "hann", "constant")
#: Gaussian sigma as a fraction of the tile side (MONAI's default).
SIGMA_SCALE = 0.125
#: Smallest weight (relative floor as in MONAI: ``max(min(w), 1e-3)``).
MIN_WEIGHT = 1e-3


def tile_starts(size: int, tile: int, overlap: float) -> list[int]:
    """Start offsets of the tiles along one axis of ``size`` pixels (``size >= tile``).

    Same as MONAI's ``dense_patch_slices`` with its scan interval: step ``int(tile * (1 -
    overlap))``, the last tile shifted inward to end at ``size``.

    Examples:
        >>> tile_starts(200, 64, 0.25)
        [0, 48, 96, 136]
        >>> tile_starts(64, 64, 0.25), tile_starts(10, 64, 0.5)
        ([0], [0])
    """
    if tile < 1:
        raise ValueError(f"tile must be >= 1, got {tile}")
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    if size <= tile:
        return [0]
    step = max(1, int(tile * (1.0 - overlap)))
    starts: list[int] = []
    k = 0
    while True:
        s = k * step
        if s + tile >= size:
            starts.append(size - tile)
            return starts
        starts.append(s)
        k += 1


@dataclass(frozen=True)
class AxisGrid:
    """Tiles along one axis, in *padded* coordinates (``pad_before`` + image coordinate).

    Attributes:
        size: image pixels along the axis.
        tile: tile side.
        pad_before, pad_after: reflect padding (non-zero only when ``size < tile``).
        starts: tile starts in padded coordinates.
    """

    size: int
    tile: int
    pad_before: int
    pad_after: int
    starts: tuple[int, ...]

    @property
    def padded(self) -> int:
        return self.size + self.pad_before + self.pad_after

    def covering(self, lo: int, hi: int) -> tuple[int, int]:
        """Indices ``[first, last + 1)`` of the tiles overlapping image pixels ``[lo, hi)``.

        Examples:
            >>> g = axis_grid(200, 64, 0.25)
            >>> g.covering(0, 10), g.covering(100, 150), g.covering(199, 200)
            ((0, 1), (1, 4), (3, 4))
        """
        a, b = lo + self.pad_before, hi + self.pad_before
        idx = [i for i, s in enumerate(self.starts) if s < b and s + self.tile > a]
        if not idx:
            raise ValueError(f"no tile covers [{lo}, {hi}) of an axis of {self.size}")
        return idx[0], idx[-1] + 1


def axis_grid(size: int, tile: int, overlap: float) -> AxisGrid:
    """The `AxisGrid` of an axis: MONAI's symmetric padding of short axes, then `tile_starts`.

    Examples:
        >>> axis_grid(50, 64, 0.25)
        AxisGrid(size=50, tile=64, pad_before=7, pad_after=7, starts=(0,))
    """
    if size < 1:
        raise ValueError(f"axis size must be >= 1, got {size}")
    diff = max(tile - size, 0)
    before, after = diff // 2, diff - diff // 2
    return AxisGrid(size, tile, before, after, tuple(tile_starts(size + diff, tile, overlap)))


def blend_weights(
    tile_hw: Sequence[int], blend: str = "gaussian", *, device: str | torch.device = "cpu"
) -> torch.Tensor:
    """Weight map ``[h, w]`` or ``[d, h, w]`` (float32) of one tile; see the module docstring.

    Examples:
        >>> from monai.data.utils import compute_importance_map
        >>> w = blend_weights((64, 48), "gaussian")
        >>> bool(torch.equal(w, compute_importance_map((64, 48), "gaussian", 0.125)))
        True
        >>> blend_weights((4, 4), "hann")[0]
        tensor([0.0214, 0.1250, 0.1250, 0.0214])
        >>> float(blend_weights((3, 5), "constant").sum())
        15.0
        >>> w3 = blend_weights((8, 64, 48), "gaussian")
        >>> bool(torch.equal(w3, compute_importance_map((8, 64, 48), "gaussian", 0.125)))
        True
    """
    if len(tile_hw) not in (2, 3):
        raise ValueError(f"tile shape must have 2 or 3 axes, got {tuple(tile_hw)}")
    if blend not in BLENDS:
        raise ValueError(f"blend must be one of {', '.join(BLENDS)}, got {blend!r}")
    device = torch.device(device)
    if blend == "constant":
        w = torch.ones(tuple(tile_hw), dtype=torch.float32, device=device)
    else:
        axes = []
        for n in tile_hw:
            if blend == "gaussian":  # the exact operations of MONAI's compute_importance_map
                sigma = n * SIGMA_SCALE
                x = torch.arange(
                    start=-(n - 1) / 2.0, end=(n - 1) / 2.0 + 1, dtype=torch.float, device=device
                )
                axes.append(torch.exp(x**2 / (-2 * sigma**2)))
            else:
                i = torch.arange(n, dtype=torch.float64, device=device)
                axes.append((torch.sin(torch.pi * (i + 0.5) / n) ** 2).float())
        w = axes[0].unsqueeze(-1) * axes[1][None]
        if len(axes) == 3:  # MONAI's order of products: ((z x y) x x)
            w = w.unsqueeze(-1) * axes[2][None, None]
    floor = max(torch.min(w).item(), MIN_WEIGHT)
    return torch.clamp_(w.to(torch.float32), min=floor)


def accumulate(
    fn: Callable[[torch.Tensor], torch.Tensor],
    image: torch.Tensor,
    starts_y: Sequence[int],
    starts_x: Sequence[int],
    weight: torch.Tensor,
    *,
    batch_size: int = 4,
    scale: int = 1,
) -> torch.Tensor:
    """Blend the tiles of ``image`` ``[N, 1, h, w]``: ``sum(w * fn(tile)) / sum(w)``.

    Tiles are ``image[n, :, y:y + th, x:x + tw]`` for every ``n`` and start ``(y, x)`` (relative
    to ``image``), run through ``fn`` in batches of ``batch_size`` in the order (n, y, x); each
    pixel sums its tiles in that order, so the same tiles give bit-identical results wherever the
    region starts. Pixels covered by no tile are NaN.

    With ``scale`` s (super-resolution), ``fn`` returns ``[B, C, s*th, s*tw]`` per tile, ``weight``
    is the output tile's ``[s*th, s*tw]`` and the result is ``[N, C, s*h, s*w]``.

    Returns:
        ``[N, C, h, w]`` (times ``scale`` in y and x) float32 on ``image``'s device.

    Examples:
        >>> img = torch.rand(1, 1, 40, 50)
        >>> w = blend_weights((16, 16), "gaussian")
        >>> out = accumulate(lambda t: t, img, tile_starts(40, 16, .5), tile_starts(50, 16, .5), w)
        >>> bool(torch.allclose(out, img, atol=1e-6))
        True
        >>> up = lambda t: t.repeat_interleave(2, -2).repeat_interleave(2, -1)
        >>> w2 = blend_weights((32, 32), "gaussian")
        >>> out = accumulate(up, img, tile_starts(40, 16, .5), tile_starts(50, 16, .5), w2, scale=2)
        >>> out.shape, bool(torch.allclose(out, up(img), atol=1e-6))
        (torch.Size([1, 1, 80, 100]), True)
    """
    return _accumulate(fn, image, (starts_y, starts_x), weight, batch_size, scale)


def accumulate_volume(
    fn: Callable[[torch.Tensor], torch.Tensor],
    volume: torch.Tensor,
    starts_z: Sequence[int],
    starts_y: Sequence[int],
    starts_x: Sequence[int],
    weight: torch.Tensor,
    *,
    batch_size: int = 4,
) -> torch.Tensor:
    """Blend the 3D tiles of ``volume`` ``[1, d, h, w]``: ``sum(w * fn(tile)) / sum(w)``.

    Tiles are ``volume[:, z:z + td, y:y + th, x:x + tw]`` for every start, run through ``fn`` as
    ``[B, 1, td, th, tw]`` batches in the order (z, y, x); as in `accumulate`, each voxel sums its
    tiles in one fixed order, so a block gives the same values as the whole volume.

    Returns:
        ``[C, d, h, w]`` float32.

    Examples:
        >>> vol = torch.rand(1, 12, 40, 30)
        >>> w = blend_weights((8, 16, 16), "gaussian")
        >>> sz, sy, sx = tile_starts(12, 8, .5), tile_starts(40, 16, .5), tile_starts(30, 16, .5)
        >>> out = accumulate_volume(lambda t: t, vol, sz, sy, sx, w)
        >>> bool(torch.allclose(out, vol, atol=1e-6))
        True
    """
    return _accumulate(fn, volume[None], (starts_z, starts_y, starts_x), weight, batch_size)[0]


def _accumulate(
    fn: Callable[[torch.Tensor], torch.Tensor],
    image: torch.Tensor,
    starts: Sequence[Sequence[int]],
    weight: torch.Tensor,
    batch_size: int,
    scale: int = 1,
) -> torch.Tensor:
    """`accumulate` in any number of spatial axes: ``image`` ``[L, 1, *S]`` -> ``[L, C, *S]``.

    Tiles are taken in the order (leading index, then ``starts`` of each axis, last fastest);
    every leading index (a slice of a 2D model, or the one volume of a 3D model) shares the
    spatial weight sum. ``scale`` multiplies the last two axes of the output (``weight`` is the
    output tile's).
    """
    n_lead = image.shape[0]
    nd = len(starts)
    factors = (1,) * (nd - 2) + (scale, scale)
    tile = tuple(weight.shape)  # output tile
    if any(t % f for t, f in zip(tile, factors, strict=True)):
        raise ValueError(f"weight shape {tile} is not a multiple of scale {scale}")
    in_tile = tuple(t // f for t, f in zip(tile, factors, strict=True))
    spatial = tuple(n * f for n, f in zip(image.shape[2:], factors, strict=True))
    weight = weight.to(image.device)
    origins = list(itertools.product(*starts))
    in_windows = [
        tuple(slice(o, o + t) for o, t in zip(origin, in_tile, strict=True)) for origin in origins
    ]
    windows = [
        tuple(slice(o * f, o * f + t) for o, t, f in zip(origin, tile, factors, strict=True))
        for origin in origins
    ]
    wsum = torch.zeros(spatial, dtype=torch.float32, device=image.device)
    for win in windows:
        wsum[win] += weight
    tiles = [(n, k) for n in range(n_lead) for k in range(len(origins))]
    acc: torch.Tensor | None = None
    for i in range(0, len(tiles), batch_size):
        part = tiles[i : i + batch_size]
        batch = torch.stack([image[(n, slice(None), *in_windows[k])] for n, k in part])
        out = fn(batch)
        if out.ndim != 2 + len(tile) or out.shape[0] != len(part) or out.shape[2:] != tile:
            raise ValueError(
                f"the model returned shape {tuple(out.shape)} for tiles of shape "
                f"{tuple(batch.shape)}; expected [B, C, {', '.join(map(str, tile))}]"
            )
        out = out.float()
        if acc is None:
            acc = torch.zeros(
                (n_lead, out.shape[1], *spatial), dtype=torch.float32, device=image.device
            )
        for j, (n, k) in enumerate(part):
            acc[(n, slice(None), *windows[k])].addcmul_(out[j].to(image.device), weight)
    if acc is None:
        raise ValueError("no tiles to run")
    return acc.div_(wsum)  # in place: a block's accumulator is its largest buffer


def sliding_window(
    fn: Callable[[torch.Tensor], torch.Tensor],
    image: torch.Tensor,
    *,
    tile: int = 256,
    overlap: float = 0.25,
    blend: str = "gaussian",
    batch_size: int = 4,
) -> torch.Tensor:
    """Whole-image blended tiling of ``image`` ``[N, 1, H, W]`` -> ``[N, C, H, W]`` (in memory).

    Short axes are reflect-padded (see `axis_grid`), the result is cropped back.

    Examples:
        >>> img = torch.rand(2, 1, 30, 70)
        >>> out = sliding_window(lambda t: 2 * t, img, tile=32, blend="hann")
        >>> out.shape, bool(torch.allclose(out, 2 * img, atol=1e-5))
        (torch.Size([2, 1, 30, 70]), True)
    """
    gy = axis_grid(image.shape[-2], tile, overlap)
    gx = axis_grid(image.shape[-1], tile, overlap)
    x = pad_reflect(image, (gy.pad_before, gy.pad_after), (gx.pad_before, gx.pad_after))
    w = blend_weights((tile, tile), blend, device=image.device)
    out = accumulate(fn, x, gy.starts, gx.starts, w, batch_size=batch_size)
    return out[
        ..., gy.pad_before : gy.pad_before + gy.size, gx.pad_before : gx.pad_before + gx.size
    ]


def pad_reflect(x: torch.Tensor, pad_y: tuple[int, int], pad_x: tuple[int, int]) -> torch.Tensor:
    """Reflect-pad the last two axes (``numpy.pad(mode="reflect")``: any width, even > size).

    Examples:
        >>> pad_reflect(torch.arange(3.0)[None], (0, 0), (2, 4)).tolist()
        [[2.0, 1.0, 0.0, 1.0, 2.0, 1.0, 0.0, 1.0, 2.0]]
    """
    if not any(pad_y) and not any(pad_x):
        return x
    out = x.detach().cpu().numpy()
    for axis, p in ((out.ndim - 2, pad_y), (out.ndim - 1, pad_x)):
        if any(p):
            width = [(0, 0)] * out.ndim
            width[axis] = p
            # A single pixel cannot be reflected: repeat it.
            out = np.pad(out, width, mode="reflect" if out.shape[axis] > 1 else "edge")
    return torch.from_numpy(np.ascontiguousarray(out)).to(x.device)
