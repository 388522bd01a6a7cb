"""`plan`: what a `predict` run would do, without running it.

Memory estimate (bytes, an estimate from shapes, not a measurement), for the largest block:

- ``params``: model parameter bytes.
- ``source``: the block's source region under its tiles (block + halo), stored dtype plus a
  float32 copy: ``bz * sh * sw * (itemsize + 4)``, plus ``2 * bz * rh * rw * 4`` for the
  model-space (resampled, padded) input; ``rh x rw`` is the union of the block's tiles.
- ``process``: the resident memory of this process before the run, less the model's
  parameters (interpreter, torch and the I/O libraries; measured, not estimated).
- ``accumulators``: ``bz * rh * rw * C * 4 + rh * rw * 4`` (weighted sums, normalized in place;
  weight sums of one slice).
- ``output_block``: labels ``bz * bh * bw * 13`` (int64 arg-max, int32, the stored type);
  otherwise ``C * bz * bh * bw * (8 + out itemsize)`` (activation, copy, stored type).
- ``batch``: tiles in and out, ``B * t^2 * (1 + C) * 4``, plus activations of one batch of an
  OmniEM model, ``B * 4 * (8 * F * t^2 + 12 * D * N + heads * N^2)`` with ``F`` the decoder
  feature size, ``D`` the ViT width, ``N = ceil(t / p)^2`` tokens (the terms: the
  full-resolution decoder maps alive at once in inference mode, token activations of a block, one
  attention matrix; the factor 8 was calibrated against a measured mito-2d run, see
  `tools/bench/engine_memory.py`). For a plain callable the activations are unknown and counted
  as ``B * t^2 * 16 * 4``.
- ``result``: without a target, the whole in-memory result.

Time (``time_batch=True`` only): one warm-up batch, then the mean of two timed batches of
``batch_size`` tiles, times the number of forward passes of the run.
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch

from omniem.engine import run as R

__all__ = ["plan"]


def plan(
    model: Any,
    source: Any,
    target: Any = None,
    *,
    time_batch: bool = False,
    **kwargs: Any,
) -> dict[str, Any]:
    """Blocks, tiles, memory, disk and (optionally) time of ``predict(model, source, target, ...)``.

    Args:
        model, source, target: as for `omniem.engine.predict`.
        time_batch: time a batch on the chosen device to estimate the run time.
        **kwargs: the other arguments of `predict` (``overwrite`` and ``progress`` are ignored).

    Returns:
        A dict: ``n_blocks``, ``block_shape`` (z, y, x), ``tiles_per_slice``, ``tile_runs``
        (tiles computed, counting those shared by blocks per block), ``halo_overhead`` (tile runs
        / tiles of the whole-image grid), ``n_batches``, ``peak_ram_bytes`` and its ``memory``
        terms, ``output_shape``, ``output_dtype``, ``output_bytes`` (uncompressed; on disk it is
        usually smaller), ``resampled`` and ``model_hw``, and ``seconds_per_batch`` /
        ``estimated_seconds`` with ``time_batch``.

    Examples:
        >>> import numpy as np
        >>> p = plan(lambda x: x, np.zeros((3, 300, 500), np.uint8), tile=128, block=(2, 256))
        >>> p["n_blocks"], p["tiles_per_slice"], p["output_shape"]
        (8, 15, (1, 3, 300, 500))
    """
    kwargs.pop("overwrite", None)
    kwargs.pop("progress", None)
    setup = R.prepare(model, source, **kwargs)
    runner = setup.runner
    c = runner.out_channels
    t, b = setup.tile, setup.batch_size
    z, h, w = setup.shape
    mh, mw = setup.model_hw
    per_block = R._block_tiles(setup)
    tile_runs = sum(
        R.block_z_tiles(setup, blk) * ny * nx
        for blk, (ny, nx) in zip(setup.blocks, per_block, strict=True)
    )
    per_slice = len(setup.gy.starts) * len(setup.gx.starts)
    # A 3D model's tiles are tz slices deep; a block reads and accumulates its z tiles' span.
    tz = setup.gz.tile if setup.gz is not None else 1
    n_z_tiles = len(setup.gz.starts) if setup.gz is not None else z

    # Largest block and its tile union.
    mem_source = mem_acc = mem_out = 0
    for blk, (ny, nx) in zip(setup.blocks, per_block, strict=True):
        bz = _z_span(setup, blk)
        rh = min((ny - 1) * _step(setup.gy) + t, setup.gy.padded)
        rw = min((nx - 1) * _step(setup.gx) + t, setup.gx.padded)
        sh, sw = math.ceil(rh * h / mh) + 2, math.ceil(rw * w / mw) + 2
        mem_source = max(
            mem_source, bz * sh * sw * (setup.src_dtype.itemsize + 4) + 2 * bz * rh * rw * 4
        )
        k2 = setup.scale**2  # super-resolution: accumulators and outputs at the output size
        mem_acc = max(mem_acc, k2 * (bz * rh * rw * c * 4 + rh * rw * 4))
        bh, bw = setup.scale * (blk.y[1] - blk.y[0]), setup.scale * (blk.x[1] - blk.x[0])
        per_voxel = {
            "labels": 13,
            # probabilities, then the watershed's mask, seeds, labels and queue (measured ~40)
            "instances": c * 8 + 40,
        }.get(setup.output, c * (8 + setup.out_dtype.itemsize))
        mem_out = max(mem_out, (blk.z[1] - blk.z[0]) * bh * bw * per_voxel)
    info = runner.info
    ortho = bool(setup.params.get("orthoplanes", False))
    # Orthoplanes run a 2D model on `b` planes at a time and keep three output copies per tile.
    planes = 1 if ortho else tz
    if "embed_dim" in info:
        n_tok = math.ceil(t / info["patch_size"]) ** 2
        act = (
            b
            * planes
            * 4
            * (
                8 * info["feature_size"] * t * t * setup.scale**2
                + 12 * info["embed_dim"] * n_tok
                + info["num_heads"] * n_tok * n_tok
            )
        )
    else:
        act = b * planes * t * t * 16 * 4
    mem_batch = b * tz * t * t * (1 + (3 if ortho else 1) * c * setup.scale**2) * 4 + act
    out_items = math.prod(setup.out_shape)
    out_bytes = out_items * setup.out_dtype.itemsize
    memory = {
        "process": max(0, process_rss() - int(info.get("param_bytes", 0))),
        "params": int(info.get("param_bytes", 0)),
        "source": int(mem_source),
        "accumulators": int(mem_acc),
        "output_block": int(mem_out),
        "batch": int(mem_batch),
        "result": int(out_bytes) if target is None else 0,
    }
    bz, bhw = setup.block
    result: dict[str, Any] = {
        "n_blocks": len(setup.blocks),
        "block_shape": (bz, min(bhw, h), min(bhw, w)),
        "tile": t,
        "tile_z": setup.gz.tile if setup.gz is not None else None,
        "tta": bool(setup.params.get("tta", False)),  # 8 forward passes per batch when on
        "orthoplanes": ortho,
        "tiles_per_slice": per_slice,
        "tile_runs": int(tile_runs),
        "halo_overhead": round(tile_runs / max(1, per_slice * n_z_tiles), 3),
        "n_batches": R.n_batches(setup),
        "peak_ram_bytes": int(sum(memory.values())),
        "memory": memory,
        "output": setup.output,
        "output_shape": setup.out_shape,
        "output_dtype": str(setup.out_dtype),
        "output_bytes": int(out_bytes),
        "source_shape": (z, h, w) if not setup.is_2d else (h, w),
        "model_hw": (mh, mw),
        "resampled": any(setup.resampled),
        "intensity": setup.norm,
        "device": str(runner.device),
        "dtype": setup.params["dtype"],  # the precision computed in ("auto" resolved)
    }
    if time_batch:
        result["seconds_per_batch"] = _time_batch(setup)
        result["estimated_seconds"] = round(result["seconds_per_batch"] * result["n_batches"], 3)
    return result


def process_rss() -> int:
    """Resident set size of this process in bytes (0 where it cannot be read)."""
    try:
        import psutil

        return int(psutil.Process().memory_info().rss)
    except Exception:  # psutil missing or no access: the estimate leaves this term out
        return 0


def _z_span(setup: R.Setup, blk: R.Block) -> int:
    """Slices a block reads and accumulates: its own, or its z tiles' span (3D model)."""
    if setup.gz is None:
        return blk.z[1] - blk.z[0]
    a, b = setup.gz.covering(*blk.z)
    return setup.gz.starts[b - 1] + setup.gz.tile - setup.gz.starts[a]


def _step(grid: Any) -> int:
    """Distance between tile starts (the last may be closer)."""
    s = grid.starts
    return s[1] - s[0] if len(s) > 1 else grid.tile


def _time_batch(setup: R.Setup) -> float:
    runner = setup.runner
    x = torch.rand(
        setup.batch_size, 1, *setup.tile_shape, generator=torch.Generator().manual_seed(0)
    )
    module = runner.module
    was = module.training if module is not None else False
    if module is not None:
        module.eval()
    try:
        with torch.inference_mode():
            runner.fn(x)  # warm-up
            _sync(runner.device)
            t0 = time.perf_counter()
            for _ in range(2):
                runner.fn(x)
            _sync(runner.device)
            return (time.perf_counter() - t0) / 2
    finally:
        if module is not None:
            module.train(was)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
