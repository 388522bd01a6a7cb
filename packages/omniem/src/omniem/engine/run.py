"""`predict`: blended tiled inference of an OmniEM model over an image or volume, out of core.

How a run goes:

1. The source (a path/URI read lazily by `em5m.io.open_volume`, an `em5m.Volume`, or a
   numpy/dask array ``[H, W]`` or ``[Z, H, W]``) is normalized to [0, 1]: uint8 as ``v / 255``
   (what the network does itself); any other integer or float type through one robust window for
   the whole volume, ``(v - p0.1) / (p99.9 - p0.1)`` clipped to [0, 1], with the percentiles
   estimated by `em5m.intensity.estimate_window` from at most 2 M sampled voxels (seeded, so the
   same source gives the same window; the window is recorded in the run parameters). Pass
   ``intensity=(low, high)`` to set it.
2. When the model card states ``voxel_size_nm`` and the source's in-plane voxel size differs by
   more than 10 % (``resample=True``), slices are resampled to the model's pixel size (linear
   interpolation at pixel centres, separable, no anti-aliasing), predicted there, and the
   (activated) output is resampled back to the source grid the same way. The mapping is global
   (pixel ``y`` of the source is ``(y + 0.5) * H' / H - 0.5`` in the model grid), so every block
   computes exactly the values the whole image would.
3. A 2D model runs slice by slice along z. Every slice is tiled with one global grid
   (`omniem.engine.tiles`: MONAI's grid, border tiles shifted inward, short axes reflect-padded)
   and tiles are blended with ``sum(w * logits) / sum(w)``, then activated
   (`omniem.nets.activate`). A 3D model (``spatial_dims=3``, e.g. OmniEM with z-adapters) gets
   ``[B, 1, tile_z, t, t]`` tiles from the same kind of grid in z (overlap ``overlap``) and is
   blended with the product of the per-axis weights, so z-context crosses block borders too.
4. The output is cut into blocks (``block=(slices, pixels)``, default 8 x 1024 x 1024 output
   voxels). A block reads only the source region under the tiles that touch it (its "halo" is
   the union of those tiles, not a fixed margin) and sums exactly the same tiles in the same
   order as the whole image, so the tiled result does not depend on the block size. Memory is
   bounded by one block plus its halo plus one batch of tiles (see `omniem.engine.plan`).
5. Without ``target`` the result is returned as a numpy array. With ``target`` it is an OME-Zarr
   (Zarr v3, NGFF 0.5) image whose level ``s0`` has one shard per block (inner chunks of one
   slice x up to 256 x 256); each block is written, its shard files fsynced, then recorded in the
   ledger (`omniem.engine.ledger`). A rerun resumes; the ``complete`` marker and the
   ``omniem.complete`` attribute are written only after the last block.

6. Blocks run in this process on one device, or in worker processes / on a dask cluster
   (``devices="cpu:N"``, ``"cuda:0,cuda:1"``, ``"dask://HOST:PORT"``, ``scheduler=``;
   `omniem.engine.devices`, `omniem.engine.distributed`): workers write their own shards, this
   process alone records the ledger and marks the output complete.

Determinism: blocks are independent and computed identically in a first run and a resumed one,
so the output is bit-identical however often a run is interrupted, and however the blocks are
spread over workers (same device type, dtype and batch size, which are part of the run
parameters; on CPU also the same torch thread count per process).
"""

from __future__ import annotations

import math
import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from omniem.engine.compute import _needed, compute_block, tile_weight
from omniem.engine.ledger import Ledger
from omniem.engine.setup import (
    DEFAULT_BLOCK,
    DEFAULT_TILE_Z,
    ENGINE_FORMAT,
    Block,
    BlockError,
    Runner,
    Setup,
    prepare,
)
from omniem.engine.stitch import RawLabels, stitch
from omniem.engine.writers import _MemoryWriter, _ZarrWriter

# The engine's pieces, importable from here as before the split into setup/compute/writers.
__all__ = [
    "DEFAULT_BLOCK",
    "DEFAULT_TILE_Z",
    "ENGINE_FORMAT",
    "Block",
    "BlockError",
    "Runner",
    "Setup",
    "block_z_tiles",
    "compute_block",
    "n_batches",
    "predict",
    "prepare",
    "tile_weight",
]

# --------------------------------------------------------------------------- predict


def _target_path(target: str | os.PathLike[str]) -> Path:
    text = os.fspath(target)
    if text.startswith("file://"):
        text = text[len("file://") :]
    elif "://" in text:
        raise ValueError(f"target {text}: the engine writes local paths only")
    return Path(os.path.abspath(os.path.expanduser(text.rstrip("/"))))


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif os.path.lexists(path):
        path.unlink()


def _open_target(setup: Setup, root: Path, overwrite: bool) -> tuple[_ZarrWriter, Ledger]:
    if os.path.lexists(root):
        if overwrite:
            _remove(root)
        elif Ledger.exists(root):
            ledger = Ledger.open(root)
            if ledger.is_complete:
                raise FileExistsError(
                    f"{root}: a complete prediction is already there; pass overwrite=True to "
                    "replace it"
                )
            ledger.check(setup.params)
            return _ZarrWriter.open(setup, root), ledger
        else:
            raise FileExistsError(
                f"{root}: already exists and is not a resumable omniem output (no "
                f"{root.name}/.omniem/ledger.jsonl); pass overwrite=True to replace it"
            )
    root.parent.mkdir(parents=True, exist_ok=True)
    writer = _ZarrWriter.create(setup, root)
    ledger = Ledger.create(root, setup.params, n_blocks=len(setup.blocks))
    return writer, ledger


def predict(
    model: Any,
    source: Any,
    target: str | os.PathLike[str] | None = None,
    *,
    tile: int | None = None,
    overlap: float | None = None,
    blend: str = "gaussian",
    batch_size: int = 4,
    devices: Any = "cpu",
    dtype: str = "auto",
    voxel_size: Any = None,
    resample: bool = True,
    output: str | None = None,
    overwrite: bool = False,
    progress: Callable[[int, int], Any] | None = None,
    out_dtype: str | None = None,
    block: Sequence[int] | None = None,
    intensity: tuple[float, float] | None = None,
    scheduler: Any = None,
    tile_z: int | None = None,
    tta: bool = False,
    orthoplanes: bool = False,
    compile: bool = False,  # noqa: A002 - the user-facing name, as torch.compile
) -> np.ndarray | Path:
    """Predict a whole image or volume with an OmniEM model, tiled and blended, out of core.

    Args:
        model: an `omniem.nets.OmniEM`, a registry name or model file (`omniem.registry.load`),
            or any callable ``[B, 1, h, w]`` float tensor -> ``[B, C, h, w]`` (raw outputs, no
            activation unless it has a ``task`` attribute).
        source: path/URI (`em5m.io.open_volume`), `em5m.Volume`, or numpy/dask array
            ``[H, W]`` / ``[Z, H, W]``; uint8, other integers or floats (see module docstring
            for normalization).
        target: OME-Zarr directory to write (resumable, see `omniem.engine.ledger`); ``None``
            returns a numpy array.
        tile: tile side in model pixels; default: the model's (its card's ``tile``, the tiling
            it was validated with; else 256, `omniem.infer.model_tiling`).
        overlap: tile overlap fraction in [0, 1); default: the model's (else 0.25).
        blend: ``gaussian`` (MONAI's, sigma = tile / 8), ``hann`` or ``constant``.
        batch_size: tiles per forward pass.
        devices: where blocks run (`omniem.engine.devices`): one torch device (``"cpu"``,
            ``"cuda:0"``) in this process; ``"cpu:N"``: N worker processes; ``"cuda:0,cuda:1"``:
            one worker process per GPU; ``"dask://HOST:PORT"``: a dask.distributed cluster.
            Workers compute the same blocks with the same code, so the output is bit-identical
            to one device (same torch threads per process on CPU).
        dtype: ``auto`` (bf16 autocast where the device computes bf16 natively, else fp32;
            `emdino.precision`), ``bf16`` or ``fp32``.
        voxel_size: source voxel size in nm (``(z, y, x)``, ``(y, x)`` or one in-plane number);
            overrides what the source says.
        resample: resample to the model card's ``voxel_size_nm`` when they differ by > 10 %.
        output: ``probabilities`` (``[C, Z, H, W]``), ``labels`` (argmax, ``[Z, H, W]``),
            ``image`` (restoration, ``[Z, H, W]``) or ``instances`` (uint32 ids stitched across
            blocks, `omniem.engine.stitch`; models with task ``instances``, one device); default
            by task (semantic: labels, restoration: image, instances: instances, else
            probabilities). A 2D source gives no z axis.
        overwrite: replace an existing ``target``.
        progress: called as ``progress(done, total)`` after each block is written.
        out_dtype: probabilities ``float32``/``float16``; labels ``uint8``/``uint16``; image
            ``float32``/``uint8`` (default uint8 for a uint8 source, else float32).
        block: output block ``(slices, pixels)``; default ``(8, 1024)``.
        intensity: ``(low, high)`` grey values mapped to 0 and 1 (default: see module docstring).
        scheduler: a ``distributed.Client``, cluster or scheduler address: run the blocks on it
            (``devices`` then names the device of each dask worker, ``"cpu"`` or ``"cuda"``).
        tile_z: slices per tile of a 3D model (default 16; tiles overlap in z by ``overlap``
            too and are blended in 3D). Ignored for 2D models, which run slice by slice.
        tta: test-time augmentation: each tile's raw output is the mean over its 8 flips and
            90-degree rotations (8x the compute; `omniem.infer.dihedral_transforms`).
        orthoplanes: run a 2D model on xy, xz and yz slices of cubic tiles (``tile_z`` defaults
            to ``tile``) and average the raw outputs (`omniem.engine.views.orthoplanes`); the
            tiles are blended in 3D like a 3D model's. For (near-)isotropic volumes; about
            3x the compute of xy slices, plus the overlap in z.
        compile: run an `omniem.nets.OmniEM` through ``torch.compile`` with inductor freezing
            (tens of seconds to compile in every worker, then about 1.2-1.3x faster in bf16 on
            this project's CPU; `tools/bench/inference.py --compile`). Outputs agree with the
            eager model to rounding; an execution detail, so a resumed run may change it.

    Returns:
        The array, or the target path once complete.

    Raises:
        ValueError: unsupported source dtype or dimensionality, bad arguments.
        NotImplementedError: a model with a non-integer ``output_scale``. Integer up-scaling
            (super-resolution) runs slice by slice; the output is ``output_scale`` times larger
            in y and x, its voxel size as much smaller, and the source is not resampled.
        FileExistsError: ``target`` exists (complete, or not an omniem output) and ``overwrite``
            is False; `omniem.engine.ledger.LedgerMismatchError` when it is an incomplete run
            with other parameters.
        BlockError: reading, computing or writing a block failed (names the block); the output
            stays incomplete and a rerun resumes it.

    Examples:
        >>> from omniem.nets import NetConfig, build
        >>> net = build(NetConfig(backbone="vit_tiny_patch8.random", out_channels=2), img_size=64)
        >>> predict(net, np.zeros((2, 70, 90), np.uint8), tile=64, dtype="fp32").shape
        (2, 70, 90)
    """
    kwargs: dict[str, Any] = {
        "tile": tile,
        "overlap": overlap,
        "blend": blend,
        "batch_size": batch_size,
        "dtype": dtype,
        "voxel_size": voxel_size,
        "resample": resample,
        "output": output,
        "out_dtype": out_dtype,
        "block": block,
        "intensity": intensity,
        "tile_z": tile_z,
        "tta": tta,
        "orthoplanes": orthoplanes,
        "compile": compile,
    }
    setup = prepare(model, source, devices=devices, scheduler=scheduler, **kwargs)
    ledger: Ledger | None = None
    done: set[int] = set()
    root: Path | None = None
    if target is None:
        writer: _MemoryWriter | _ZarrWriter = _MemoryWriter(setup)
    else:
        root = _target_path(target)
        writer, ledger = _open_target(setup, root, overwrite)
        done = ledger.done()
    raw: RawLabels | None = None  # instances: blocks' local labels, stitched at the end
    n_labels: dict[int, int] = {}
    if setup.output == "instances":
        raw = RawLabels.in_memory(setup) if root is None else RawLabels.on_disk(setup, root)
        if ledger is not None:
            n_labels = {i: int(r["n_labels"]) for i, r in ledger.blocks().items()}
    total = len(setup.blocks)
    todo = [b.id for b in setup.blocks if b.id not in done]
    n_done = total - len(todo)
    spec = setup.devices
    if spec is None or spec.kind == "local":
        events = _local_blocks(setup, todo)
    else:
        from omniem.engine import distributed as D

        kw = {k: v for k, v in kwargs.items() if k != "intensity" or v is not None}
        job = D.make_job(model, source, setup, root, kw)
        backend = D.run_processes if spec.kind == "processes" else D.run_dask
        events = backend(job, spec, setup, todo)
    try:
        for blk, data in events:
            extra: dict[str, Any] = {}
            if data is not None:  # computed here or sent back: write it here
                if raw is not None:
                    n_labels[blk.id] = extra["n_labels"] = int(data.max(initial=0))
                _write(raw if raw is not None else writer, blk, data, writer)
            if ledger is not None:
                ledger.record(blk.id, z=list(blk.z), y=list(blk.y), x=list(blk.x), **extra)
            n_done += 1
            if progress is not None:
                progress(n_done, total)
    finally:
        events.close()
    if raw is not None:  # join the blocks' instances, then write the final ids (idempotent)
        relabel = stitch(setup, raw, n_labels)
        for blk in setup.blocks:
            _write(writer, blk, relabel(blk), writer)
    result = writer.finish()
    if ledger is not None:
        ledger.mark_complete(output=setup.output)
    return result


def _write(dest: Any, blk: Block, data: np.ndarray, writer: Any) -> None:
    """``dest.write(blk, data)``; a failure becomes a `BlockError` naming block and output."""
    try:
        dest.write(blk, data)
    except Exception as err:
        where = f" to {writer.root}" if isinstance(writer, _ZarrWriter) else ""
        raise BlockError(
            f"{blk.describe()}: writing the output{where} failed: {type(err).__name__}: {err}",
            block=blk,
            stage="write",
        ) from err


def _local_blocks(setup: Setup, todo: Sequence[int]):
    """Compute blocks ``todo`` in this process, in order; yields ``(block, data)``."""
    module = setup.runner.module
    was_training = module.training if module is not None else False
    if module is not None:
        module.eval()
    weight = tile_weight(setup)
    try:
        for bid in todo:
            blk = setup.blocks[bid]
            yield blk, compute_block(setup, blk, weight)
    finally:
        if module is not None:
            module.train(was_training)


def n_batches(setup: Setup) -> int:
    """Forward passes of a whole run (tiles shared by neighbouring blocks count once per block)."""
    total = 0
    for blk, (ny, nx) in zip(setup.blocks, _block_tiles(setup), strict=True):
        total += math.ceil(block_z_tiles(setup, blk) * ny * nx / setup.batch_size)
    return total


def block_z_tiles(setup: Setup, blk: Block) -> int:
    """Tiles along z a block runs: its slices (2D model) or the z tiles touching it (3D)."""
    if setup.gz is None:
        return blk.z[1] - blk.z[0]
    a, b = setup.gz.covering(*blk.z)
    return b - a


def _block_tiles(setup: Setup) -> list[tuple[int, int]]:
    """Tiles per slice (y, x) each block runs."""
    _, h, w = setup.shape
    out = []
    for blk in setup.blocks:
        ny, _ = _needed(setup.gy, *blk.y, h, setup.resampled[0])
        nx, _ = _needed(setup.gx, *blk.x, w, setup.resampled[1])
        a, b = setup.gy.covering(*ny)
        c, d = setup.gx.covering(*nx)
        out.append((b - a, d - c))
    return out
