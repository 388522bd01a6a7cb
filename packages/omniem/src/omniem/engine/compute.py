"""One block's output: read the source under its tiles, normalize, resample, run and blend.

A block reads only the source region under the tiles that touch it and sums the same tiles in the
same order as the whole image (or volume, for 3D models), so its values do not depend on the
block size (see `omniem.engine.tiles`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from omniem.engine import tiles as T
from omniem.engine.setup import Block, BlockError, Setup

__all__ = ["compute_block", "tile_weight"]

# --------------------------------------------------------------------------- resampling


def _map(n_from: int, n_to: int, idx: np.ndarray) -> np.ndarray:
    """Coordinates in an axis of ``n_to`` pixels of pixel centres ``idx`` of ``n_from`` pixels."""
    c = (idx.astype(np.float64) + 0.5) * (n_to / n_from) - 0.5
    return np.clip(c, 0.0, n_to - 1.0)


def _support(coords: np.ndarray, n: int) -> tuple[int, int]:
    """Pixels ``[lo, hi)`` that linear interpolation at ``coords`` reads."""
    return int(np.floor(coords.min())), min(int(np.floor(coords.max())) + 2, n)


def _interp(a: np.ndarray, axis: int, coords: np.ndarray) -> np.ndarray:
    """Linear interpolation of ``a`` along ``axis`` at ``coords`` (relative to ``a``)."""
    n = a.shape[axis]
    i0 = np.clip(np.floor(coords).astype(np.int64), 0, n - 1)
    i1 = np.minimum(i0 + 1, n - 1)
    w = (coords - i0).astype(np.float32)
    shape = [1] * a.ndim
    shape[axis] = -1
    w = w.reshape(shape)
    return np.take(a, i0, axis=axis) * (np.float32(1.0) - w) + np.take(a, i1, axis=axis) * w


# --------------------------------------------------------------------------- compute


def _normalize(a: np.ndarray, norm: dict[str, Any]) -> np.ndarray:
    if norm["kind"] == "uint8":
        return a.astype(np.float32) / np.float32(255.0)
    lo, hi = np.float32(norm["low"]), np.float32(norm["high"])
    out = (a.astype(np.float32) - lo) / (hi - lo)
    return np.clip(np.nan_to_num(out, nan=0.0, posinf=1.0, neginf=0.0), 0.0, 1.0)


def _axis_read(
    grid: T.AxisGrid, region: tuple[int, int], n_src: int, resampled: bool
) -> tuple[tuple[int, int], np.ndarray | None, tuple[int, int]]:
    """Source pixels to read for padded model-space ``region``, interpolation coords, padding."""
    a, b = region[0] - grid.pad_before, region[1] - grid.pad_before
    ua, ub = max(a, 0), min(b, grid.size)
    pad = (ua - a, b - ub)
    if not resampled:
        return (ua, ub), None, pad
    coords = _map(grid.size, n_src, np.arange(ua, ub))
    lo, hi = _support(coords, n_src)
    return (lo, hi), coords - lo, pad


def _read(
    setup: Setup,
    block: Block,
    ry: tuple[int, int],
    rx: tuple[int, int],
    rz: tuple[int, int] | None = None,
) -> torch.Tensor:
    """Normalized source under padded model-space region ``(rz,) ry, rx`` -> ``[n, 1, h, w]``.

    ``rz`` (3D models): the padded z range of the block's z tiles; otherwise the block's slices.
    """
    z, h, w = setup.shape
    (y0, y1), cy, pad_y = _axis_read(setup.gy, ry, h, setup.resampled[0])
    (x0, x1), cx, pad_x = _axis_read(setup.gx, rx, w, setup.resampled[1])
    pad_z = (0, 0)
    if rz is None or setup.gz is None:
        z0, z1 = block.z
    else:
        (z0, z1), _, pad_z = _axis_read(setup.gz, rz, z, False)
    try:
        raw = np.asarray(setup.data[z0:z1, y0:y1, x0:x1].compute(scheduler="synchronous"))
    except Exception as err:
        raise BlockError(
            f"{block.describe()}: reading source {setup.source_name} region "
            f"[{z0}:{z1}, {y0}:{y1}, {x0}:{x1}] failed: {type(err).__name__}: {err}",
            block=block,
            stage="read",
        ) from err
    img = _normalize(raw, setup.norm)
    if any(pad_z):  # a volume thinner than tile_z: reflect in z as in y and x
        img = np.pad(img, (pad_z, (0, 0), (0, 0)), mode="reflect" if img.shape[0] > 1 else "edge")
    if cy is not None:
        img = _interp(img, 1, cy)
    if cx is not None:
        img = _interp(img, 2, cx)
    x = torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32))[:, None]
    return T.pad_reflect(x, pad_y, pad_x)


def _needed(grid: T.AxisGrid, lo: int, hi: int, n_src: int, resampled: bool):
    """Model-space pixels ``[a, b)`` an output range needs, and back-interpolation coords."""
    if not resampled:
        return (lo, hi), None
    coords = _map(n_src, grid.size, np.arange(lo, hi))
    a, b = _support(coords, grid.size)
    return (a, b), coords - a


def compute_block(setup: Setup, block: Block, weight: torch.Tensor | None = None) -> np.ndarray:
    """The output of one block: ``[C, z, y, x]`` probabilities or ``[z, y, x]`` labels/image."""
    _, h, w = setup.shape
    gy, gx = setup.gy, setup.gx
    (ny, back_y) = _needed(gy, *block.y, h, setup.resampled[0])
    (nx, back_x) = _needed(gx, *block.x, w, setup.resampled[1])
    ty0, ty1 = gy.covering(*ny)
    tx0, tx1 = gx.covering(*nx)
    ry = (gy.starts[ty0], gy.starts[ty1 - 1] + gy.tile)
    rx = (gx.starts[tx0], gx.starts[tx1 - 1] + gx.tile)
    gz, rz, starts_z = setup.gz, None, None
    if gz is not None:  # a 3D model: the z tiles touching the block, with their halo
        tz0, tz1 = gz.covering(*block.z)
        rz = (gz.starts[tz0], gz.starts[tz1 - 1] + gz.tile)
        starts_z = [s - rz[0] for s in gz.starts[tz0:tz1]]
    img = _read(setup, block, ry, rx, rz)
    if weight is None:
        weight = tile_weight(setup)
    runner = setup.runner
    starts_y = [s - ry[0] for s in gy.starts[ty0:ty1]]
    starts_x = [s - rx[0] for s in gx.starts[tx0:tx1]]
    try:
        img = img.to(runner.device)
        with torch.inference_mode():
            if gz is None or rz is None or starts_z is None:
                out = T.accumulate(
                    runner.fn,
                    img,
                    starts_y,
                    starts_x,
                    weight,
                    batch_size=setup.batch_size,
                    scale=setup.scale,
                )
            else:
                vol = T.accumulate_volume(
                    runner.fn,
                    img[:, 0][None],
                    starts_z,
                    starts_y,
                    starts_x,
                    weight,
                    batch_size=setup.batch_size,
                )
                oz = block.z[0] + gz.pad_before - rz[0]
                out = vol[:, oz : oz + block.z[1] - block.z[0]].transpose(0, 1)  # [z, C, h, w]
            oy, ox = ny[0] + gy.pad_before - ry[0], nx[0] + gx.pad_before - rx[0]
            k = setup.scale  # output pixels per model pixel (super-resolution)
            out = out[:, :, k * oy : k * (oy + ny[1] - ny[0]), k * ox : k * (ox + nx[1] - nx[0])]
            if setup.output == "labels" and back_y is None and back_x is None:
                # Softmax is monotonic per pixel, so the arg-max of the blended logits is the
                # arg-max of the probabilities: skip the activation and the float copies.
                return _argmax_channels(out).cpu().numpy().astype(setup.out_dtype)
            if runner.task is not None:
                from omniem.nets import activate

                out = activate(out, runner.task)
            res = out.cpu().numpy()
    except BlockError:
        raise
    except Exception as err:
        raise BlockError(
            f"{block.describe()}: model {runner.name} failed: {type(err).__name__}: {err}",
            block=block,
            stage="compute",
        ) from err
    if back_y is not None:
        res = _interp(res, 2, back_y)
    if back_x is not None:
        res = _interp(res, 3, back_x)
    if setup.output == "labels":
        return np.argmax(res, axis=1).astype(setup.out_dtype)  # [z, y, x]
    if setup.output == "instances":  # local ids 1..n; `omniem.engine.stitch` joins blocks
        from omniem.engine.stitch import block_instances

        return block_instances(res)
    if setup.output == "image":
        img0 = res[:, 0]
        if setup.out_dtype == np.uint8:
            return np.rint(np.clip(img0, 0.0, 1.0) * 255.0).astype(np.uint8)
        return np.ascontiguousarray(img0, dtype=np.float32)
    return np.ascontiguousarray(res.transpose(1, 0, 2, 3), dtype=setup.out_dtype)  # [C, z, y, x]


def _argmax_channels(x: torch.Tensor) -> torch.Tensor:
    """``x.argmax(1)`` as int32 (first maximum wins), a channel at a time.

    torch's arg-max over the channel axis of a cropped ``[z, C, y, x]`` view is a strided
    reduction and was the slowest step of a block; comparing whole channel planes is not.

    Examples:
        >>> x = torch.tensor([[[[0.0, 2.0]], [[1.0, 2.0]], [[1.0, 0.0]]]])  # [1, 3, 1, 2]
        >>> _argmax_channels(x).tolist()
        [[[1, 0]]]
    """
    best = x[:, 0].clone()
    idx = torch.zeros(best.shape, dtype=torch.int32, device=x.device)
    for c in range(1, x.shape[1]):
        plane = x[:, c]
        better = plane > best
        idx.masked_fill_(better, c)
        torch.maximum(best, plane, out=best)
    return idx


def tile_weight(setup: Setup) -> torch.Tensor:
    """The blending weights of one tile (2D, or 3D for a 3D model) on the run's device."""
    shape = setup.tile_shape
    if setup.scale != 1:  # weights of the up-scaled output tile
        shape = (*shape[:-2], shape[-2] * setup.scale, shape[-1] * setup.scale)
    return T.blend_weights(shape, setup.blend, device=setup.runner.device)
