"""`predict`: blended tiled inference of a 2D OmniEM model over an image or volume, out of core.

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
3. The 2D model runs slice by slice along z. Every slice is tiled with one global grid
   (`omniem.engine.tiles`: MONAI's grid, border tiles shifted inward, short axes reflect-padded)
   and tiles are blended with ``sum(w * logits) / sum(w)``, then activated
   (`omniem.nets.activate`).
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
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import torch

from omniem.engine import tiles as T
from omniem.engine.ledger import Ledger
from omniem.errors import OmniEMError

__all__ = ["Block", "BlockError", "Setup", "predict", "prepare"]

ENGINE_FORMAT = "omniem.engine/1"
OUTPUTS: tuple[str, ...] = ("probabilities", "labels", "image")
DTYPES: tuple[str, ...] = ("bf16", "fp32")
#: Default block: slices x pixels (y and x) of output per block.
DEFAULT_BLOCK: tuple[int, int] = (8, 1024)
#: Percentiles of the intensity window for non-uint8 sources (as omniem training uses).
INTENSITY_PERCENTILES: tuple[float, float] = (0.1, 99.9)
#: Relative voxel-size difference above which the source is resampled to the model's.
RESAMPLE_TOLERANCE = 0.10
#: Inner chunk side of the output (y and x).
CHUNK_SIDE = 256
#: Output dtypes allowed per output kind (first = default, image: see `_default_out_dtype`).
OUT_DTYPES: dict[str, tuple[str, ...]] = {
    "probabilities": ("float32", "float16"),
    "labels": ("uint8", "uint16"),
    "image": ("float32", "uint8"),
}


class BlockError(OmniEMError, RuntimeError):
    """Reading, computing or writing one block failed; the output is not marked complete.

    Attributes:
        block: the `Block`.
        stage: ``"read"``, ``"compute"`` or ``"write"``.
    """

    def __init__(self, message: str, *, block: Block, stage: str) -> None:
        super().__init__(message)
        self.block = block
        self.stage = stage


@dataclass(frozen=True)
class Block:
    """One output block: id (row-major over the block grid), grid index and voxel ranges."""

    id: int
    index: tuple[int, int, int]
    z: tuple[int, int]
    y: tuple[int, int]
    x: tuple[int, int]

    def describe(self) -> str:
        return (
            f"block {self.id} (z {self.z[0]}:{self.z[1]}, y {self.y[0]}:{self.y[1]}, "
            f"x {self.x[0]}:{self.x[1]})"
        )


@dataclass
class Runner:
    """The model as the engine calls it: tiles ``[B, 1, t, t]`` float in [0, 1] -> raw output."""

    fn: Callable[[torch.Tensor], torch.Tensor]
    task: str | None
    out_channels: int
    device: torch.device
    name: str
    digest: str
    card: dict[str, Any]
    module: torch.nn.Module | None = None
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class Setup:
    """Everything `predict` and `plan` resolve before running (see `prepare`)."""

    runner: Runner
    data: da.Array  # (Z, H, W) source, lazily read
    is_2d: bool
    source_name: str
    src_dtype: np.dtype
    norm: dict[str, Any]
    voxel_size: tuple[float, ...] | None  # (z, y, x), or (y, x) for 2D; nm
    model_voxel: tuple[float, float] | None
    model_hw: tuple[int, int]
    resampled: tuple[bool, bool]
    tile: int
    overlap: float
    blend: str
    batch_size: int
    dtype: str
    gy: T.AxisGrid
    gx: T.AxisGrid
    block: tuple[int, int]
    blocks: list[Block]
    output: str
    out_dtype: np.dtype
    params: dict[str, Any]
    devices: Any = None  # omniem.engine.devices.DeviceSpec: where the blocks run

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.data.shape)  # type: ignore[return-value]

    @property
    def out_shape(self) -> tuple[int, ...]:
        """Shape of the result (no z axis for a 2D source)."""
        z, h, w = self.shape
        spatial = (h, w) if self.is_2d else (z, h, w)
        if self.output == "probabilities":
            return (self.runner.out_channels, *spatial)
        return spatial

    @property
    def out_axes(self) -> tuple[str, ...]:
        spatial = ("y", "x") if self.is_2d else ("z", "y", "x")
        return ("c", *spatial) if self.output == "probabilities" else spatial


# --------------------------------------------------------------------------- model


def _module_digest(module: torch.nn.Module) -> str:
    import hashlib

    h = hashlib.sha256()
    for k, v in sorted(module.state_dict().items()):
        t = v.detach().cpu().contiguous().reshape(-1)
        h.update(f"{k}|{t.dtype}|{tuple(v.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _device(devices: Any, scheduler: Any = None) -> tuple[torch.device, Any]:
    """The device of the model in this process and the parsed `DeviceSpec` (workers load their
    own copies, so with several devices this process keeps its copy on the CPU)."""
    from omniem.engine.devices import parse_devices

    spec = parse_devices(devices, scheduler=scheduler)
    return torch.device(spec.parent_device), spec


def _runner(model: Any, device: torch.device, dtype: str) -> Runner:
    name = str(model) if isinstance(model, (str, os.PathLike)) else type(model).__name__
    card: dict[str, Any] = {}
    if isinstance(model, (str, os.PathLike)):
        from omniem import registry

        try:  # a registry entry's facts (voxel size, classes) back up the file's card
            entry = registry.info(model)
            card.update({k: v for k, v in entry.items() if k in ("voxel_size_nm", "classes")})
        except Exception:  # a file path, or an unreadable entry: the card decides
            pass
        model = registry.load(model, device=str(device))
    config = getattr(model, "config", None)
    card.update(getattr(model, "card", None) or {})
    module = model if isinstance(model, torch.nn.Module) else None
    info: dict[str, Any] = {}
    if config is not None and hasattr(config, "spatial_dims"):
        if config.spatial_dims != 2:
            raise NotImplementedError(
                f"model {name}: 3D models (spatial_dims={config.spatial_dims}) are not supported "
                "by the engine yet; use a 2D model (it runs slice by slice along z)"
            )
        if float(getattr(config, "output_scale", 1.0)) != 1.0:
            raise NotImplementedError(
                f"model {name}: super-resolution (output_scale={config.output_scale}) is not "
                "supported by the engine yet"
            )
        task: str | None = config.task
        channels: int | None = int(config.out_channels)
        digest_extra = config.model_dump_json()
        info["feature_size"] = int(config.feature_size)
        bb = getattr(model, "backbone", None)
        if bb is not None:
            info["patch_size"] = int(getattr(bb, "patch_size", 16))
            info["embed_dim"] = int(getattr(bb, "embed_dim", 768))
            try:
                info["num_heads"] = int(bb.vit.blocks[0].attn.num_heads)
            except Exception:
                info["num_heads"] = 12
    else:
        task = getattr(model, "task", None)
        channels = None
        digest_extra = f"{getattr(model, '__module__', '')}.{getattr(model, '__qualname__', name)}"
    if module is not None:
        module.to(device)
        info["param_bytes"] = sum(p.numel() * p.element_size() for p in module.parameters())
    import hashlib

    digest = hashlib.sha256(
        ((_module_digest(module) if module is not None else "") + digest_extra).encode()
    ).hexdigest()

    def fn(batch: torch.Tensor) -> torch.Tensor:
        batch = batch.to(device)
        if dtype == "bf16":
            with torch.autocast(device.type, dtype=torch.bfloat16):
                out = model(batch)
        else:
            out = model(batch)
        return torch.as_tensor(out).float()

    runner = Runner(fn, task, channels or 0, device, name, digest, card, module, info)
    if channels is None:  # a plain callable: ask it once
        with torch.inference_mode():
            probe = fn(torch.zeros(1, 1, 32, 32))
        if probe.ndim != 4:
            raise ValueError(
                f"model {name} returned shape {tuple(probe.shape)} for a [1, 1, 32, 32] input; "
                "expected [B, C, H, W]"
            )
        runner.out_channels = int(probe.shape[1])
    return runner


# --------------------------------------------------------------------------- source


def _source(source: Any) -> tuple[Any, str]:
    """-> (em5m Volume, name for messages)."""
    from em5m.volume import Volume

    if isinstance(source, Volume):
        return source, source.source
    if isinstance(source, (str, os.PathLike)):
        from em5m.io import open_volume

        return open_volume(source), os.fspath(source)
    if isinstance(source, (np.ndarray, da.Array)) or hasattr(source, "__array__"):
        arr = source if isinstance(source, da.Array) else np.asarray(source)
        name = f"<{type(source).__name__} {tuple(arr.shape)} {arr.dtype}>"
        if arr.ndim not in (2, 3):
            raise ValueError(
                f"source {name}: {arr.ndim}D data is not supported; expected a 2D image [H, W] "
                "or a 3D volume [Z, H, W] of grey values"
            )
        _check_dtype(arr.dtype, name)
        return Volume.from_array(arr, source=name), name
    raise ValueError(
        f"source {source!r}: expected a path/URI, an em5m Volume or a numpy/dask array"
    )


def _check_dtype(dtype: np.dtype, name: str) -> None:
    if np.dtype(dtype).kind not in "uif":
        raise ValueError(
            f"source {name}: dtype {dtype} is not supported; expected grey values as unsigned "
            "or signed integers or floats (uint8, uint16, int16, float32, ...)"
        )


def _zyx(volume: Any, name: str) -> tuple[da.Array, bool, tuple[float, ...] | None]:
    """The (Z, H, W) dask array of a volume, whether it was 2D, and its voxel size."""
    data, axes = volume.data, list(volume.axes)
    if "c" in axes:
        i = axes.index("c")
        if data.shape[i] != 1:
            raise ValueError(
                f"source {name}: {data.shape[i]} channels (axes {''.join(axes)}); OmniEM models "
                "take one grey channel: pick one, e.g. volume.data[0]"
            )
        data = data[(slice(None),) * i + (0,)]
        axes.pop(i)
    if len(axes) not in (2, 3) or axes[-2:] != ["y", "x"]:
        raise ValueError(f"source {name}: axes {''.join(axes)} not supported; expected yx or zyx")
    _check_dtype(data.dtype, name)
    if any(int(n) == 0 for n in data.shape):
        raise ValueError(f"source {name}: empty {tuple(data.shape)}")
    is_2d = len(axes) == 2
    if is_2d:
        data = data[None]
    return data, is_2d, volume.voxel_size


def _in_plane(vs: Any) -> tuple[float, float] | None:
    if vs is None:
        return None
    if isinstance(vs, (int, float)):
        return float(vs), float(vs)
    vals = [float(v) for v in vs]
    if len(vals) == 1:
        return vals[0], vals[0]
    return vals[-2], vals[-1]


# --------------------------------------------------------------------------- prepare


def _default_output(task: str | None) -> str:
    return {"semantic": "labels", "restoration": "image"}.get(task or "", "probabilities")


def _default_out_dtype(output: str, src_dtype: np.dtype) -> str:
    if output == "image":
        return "uint8" if src_dtype == np.uint8 else "float32"
    return OUT_DTYPES[output][0]


def prepare(
    model: Any,
    source: Any,
    *,
    tile: int = 256,
    overlap: float = 0.25,
    blend: str = "gaussian",
    batch_size: int = 4,
    devices: Any = "cpu",
    dtype: str = "bf16",
    voxel_size: Any = None,
    resample: bool = True,
    output: str | None = None,
    out_dtype: str | None = None,
    block: Sequence[int] | None = None,
    intensity: tuple[float, float] | None = None,
    scheduler: Any = None,
) -> Setup:
    """Validate arguments, open model and source, and lay out grid and blocks (no compute)."""
    if not isinstance(tile, int) or tile < 8:
        raise ValueError(f"tile must be an integer >= 8, got {tile!r}")
    if not 0.0 <= float(overlap) < 1.0:
        raise ValueError(f"overlap must be in [0, 1), got {overlap!r}")
    if blend not in T.BLENDS:
        raise ValueError(f"blend must be one of {', '.join(T.BLENDS)}, got {blend!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if output is not None and output not in OUTPUTS:
        raise ValueError(f"output must be one of {', '.join(OUTPUTS)}, got {output!r}")
    bz, bhw = (int(b) for b in (block or DEFAULT_BLOCK))
    if bz < 1 or bhw < 1:
        raise ValueError(f"block must be two positive integers (slices, pixels), got {block!r}")

    volume, name = _source(source)
    data, is_2d, src_vs = _zyx(volume, name)
    if voxel_size is not None:
        src_vs = voxel_size if not isinstance(voxel_size, (int, float)) else (voxel_size,) * 2
        src_vs = tuple(float(v) for v in src_vs)
    device, spec = _device(devices, scheduler)
    runner = _runner(model, device, dtype)

    output = output or _default_output(runner.task)
    c = runner.out_channels
    if output == "labels" and (runner.task not in ("semantic", None) or c < 2):
        raise ValueError(
            f"output='labels' needs a semantic model with >= 2 classes; model {runner.name} has "
            f"task {runner.task} and {c} channel(s): use output='probabilities'"
        )
    if output == "image" and (runner.task not in ("restoration", None) or c != 1):
        raise ValueError(
            f"output='image' needs a restoration model (one channel); model {runner.name} has "
            f"task {runner.task} and {c} channel(s)"
        )
    odt = out_dtype or _default_out_dtype(output, data.dtype)
    if odt not in OUT_DTYPES[output]:
        raise ValueError(
            f"out_dtype={odt!r} for output={output!r}: choose one of {OUT_DTYPES[output]}"
        )
    if output == "labels" and odt == "uint8" and c > 256:
        odt = "uint16"

    # Intensity.
    if intensity is not None:
        lo, hi = (float(v) for v in intensity)
        if not hi > lo:
            raise ValueError(f"intensity=(low, high) needs high > low, got {intensity!r}")
        norm: dict[str, Any] = {"kind": "window", "low": lo, "high": hi, "from": "argument"}
    elif data.dtype == np.uint8:
        norm = {"kind": "uint8"}
    else:
        from em5m.intensity import estimate_window
        from em5m.volume import Volume

        w = estimate_window(Volume.from_array(data), percentiles=INTENSITY_PERCENTILES)
        norm = {"kind": "window", "low": w.low, "high": w.high, "from": "percentiles"}
        norm["percentiles"] = list(INTENSITY_PERCENTILES)

    # Voxel size and resampling.
    _, h, w_ = (int(s) for s in data.shape)
    model_vs = _in_plane(runner.card.get("voxel_size_nm"))
    src_yx = _in_plane(src_vs)
    mh, mw = h, w_
    if model_vs and src_yx:
        ratios = (src_yx[0] / model_vs[0], src_yx[1] / model_vs[1])
        if any(abs(r - 1.0) > RESAMPLE_TOLERANCE for r in ratios):
            if resample:
                mh, mw = max(1, round(h * ratios[0])), max(1, round(w_ * ratios[1]))
            else:
                warnings.warn(
                    f"source {name} has {src_yx[0]:g} x {src_yx[1]:g} nm pixels, model "
                    f"{runner.name} expects {model_vs[0]:g} x {model_vs[1]:g} nm; predicting "
                    "without resampling (resample=False)",
                    stacklevel=3,
                )
    resampled = (mh != h, mw != w_)

    gy, gx = T.axis_grid(mh, tile, overlap), T.axis_grid(mw, tile, overlap)
    z = int(data.shape[0])
    bz = 1 if is_2d else min(bz, z)
    bh, bw = min(bhw, h), min(bhw, w_)
    blocks = []
    for iz, z0 in enumerate(range(0, z, bz)):
        for iy, y0 in enumerate(range(0, h, bh)):
            for ix, x0 in enumerate(range(0, w_, bw)):
                blocks.append(
                    Block(
                        len(blocks),
                        (iz, iy, ix),
                        (z0, min(z0 + bz, z)),
                        (y0, min(y0 + bh, h)),
                        (x0, min(x0 + bw, w_)),
                    )
                )
    params = {
        "engine": ENGINE_FORMAT,
        "model": runner.digest,
        "source": {"name": name, "token": data.name, "shape": list(data.shape)},
        "source_dtype": str(data.dtype),
        "tile": tile,
        "overlap": float(overlap),
        "blend": blend,
        "batch_size": batch_size,
        "dtype": dtype,
        "device": spec.device_type,
        "output": output,
        "out_dtype": odt,
        "block": [bz, bhw],
        "intensity": norm,
        "model_hw": [mh, mw],
        "voxel_size": list(src_vs) if src_vs else None,
    }
    return Setup(
        runner=runner,
        data=data,
        is_2d=is_2d,
        source_name=name,
        src_dtype=np.dtype(data.dtype),
        norm=norm,
        voxel_size=tuple(src_vs) if src_vs else None,
        model_voxel=model_vs,
        model_hw=(mh, mw),
        resampled=resampled,
        tile=tile,
        overlap=float(overlap),
        blend=blend,
        batch_size=batch_size,
        dtype=dtype,
        gy=gy,
        gx=gx,
        block=(bz, bhw),
        blocks=blocks,
        output=output,
        out_dtype=np.dtype(odt),
        params=params,
        devices=spec,
    )


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


def _read(setup: Setup, block: Block, ry: tuple[int, int], rx: tuple[int, int]) -> torch.Tensor:
    _, h, w = setup.shape
    (y0, y1), cy, pad_y = _axis_read(setup.gy, ry, h, setup.resampled[0])
    (x0, x1), cx, pad_x = _axis_read(setup.gx, rx, w, setup.resampled[1])
    z0, z1 = block.z
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
    img = _read(setup, block, ry, rx)
    if weight is None:
        weight = T.blend_weights((setup.tile, setup.tile), setup.blend)
    runner = setup.runner
    try:
        img = img.to(runner.device)
        with torch.inference_mode():
            out = T.accumulate(
                runner.fn,
                img,
                [s - ry[0] for s in gy.starts[ty0:ty1]],
                [s - rx[0] for s in gx.starts[tx0:tx1]],
                weight,
                batch_size=setup.batch_size,
            )
            if runner.task is not None:
                from omniem.nets import activate

                out = activate(out, runner.task)
        oy, ox = ny[0] + gy.pad_before - ry[0], nx[0] + gx.pad_before - rx[0]
        res = out[:, :, oy : oy + ny[1] - ny[0], ox : ox + nx[1] - nx[0]].cpu().numpy()
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
    res = np.ascontiguousarray(res.transpose(1, 0, 2, 3))  # [C, z, y, x]
    if setup.output == "labels":
        return np.argmax(res, axis=0).astype(setup.out_dtype)
    if setup.output == "image":
        img0 = res[0]
        if setup.out_dtype == np.uint8:
            return np.rint(np.clip(img0, 0.0, 1.0) * 255.0).astype(np.uint8)
        return img0.astype(np.float32)
    return res.astype(setup.out_dtype)


# --------------------------------------------------------------------------- writers


def _index(setup: Setup, block: Block) -> tuple[slice, ...]:
    sl = [slice(*block.y), slice(*block.x)]
    if not setup.is_2d:
        sl.insert(0, slice(*block.z))
    if setup.output == "probabilities":
        sl.insert(0, slice(None))
    return tuple(sl)


def _squeeze(setup: Setup, data: np.ndarray) -> np.ndarray:
    """Drop the z axis of a 2D source's block."""
    if not setup.is_2d:
        return data
    return data[:, 0] if setup.output == "probabilities" else data[0]


class _MemoryWriter:
    def __init__(self, setup: Setup) -> None:
        self.setup = setup
        self.out = np.zeros(setup.out_shape, setup.out_dtype)

    def write(self, block: Block, data: np.ndarray) -> None:
        self.out[_index(self.setup, block)] = _squeeze(self.setup, data)

    def finish(self) -> np.ndarray:
        return self.out


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _ZarrWriter:
    """Level ``s0`` of an OME-Zarr group; one shard per block."""

    ARRAY = "s0"

    def __init__(self, setup: Setup, root: Path, group: Any, arr: Any) -> None:
        self.setup, self.root, self.group, self.arr = setup, root, group, arr

    @classmethod
    def create(cls, setup: Setup, root: Path) -> _ZarrWriter:
        import zarr
        from zarr.codecs import BloscCodec

        shape, axes = setup.out_shape, setup.out_axes
        bz, bhw = setup.block
        outer, inner = [], []
        for a, n in zip(axes, shape, strict=True):
            if a == "c":
                outer.append(1)
                inner.append(1)
            elif a == "z":
                outer.append(min(bz, n))
                inner.append(1)
            else:
                o = min(bhw, n)
                i = min(CHUNK_SIDE, o)
                outer.append(o)
                inner.append(i if o % i == 0 else o)
        itemsize = setup.out_dtype.itemsize
        codec = BloscCodec(
            cname="zstd", clevel=5, shuffle="shuffle" if itemsize > 1 else "noshuffle"
        )
        group = zarr.open_group(str(root), mode="w-", zarr_format=3)
        arr = group.create_array(
            cls.ARRAY,
            shape=shape,
            dtype=setup.out_dtype,
            chunks=tuple(inner),
            shards=tuple(outer),
            compressors=[codec],
            fill_value=0,
            dimension_names=list(axes),
        )
        vs = dict(zip(("y", "x"), setup.voxel_size[-2:], strict=True)) if setup.voxel_size else {}
        if setup.voxel_size and len(setup.voxel_size) == 3:
            vs["z"] = setup.voxel_size[0]
        known = bool(vs) and all(a in vs for a in axes if a != "c")
        ngff_axes, scale = [], []
        for a in axes:
            if a == "c":
                ngff_axes.append({"name": "c", "type": "channel"})
                scale.append(1.0)
            else:
                ax: dict[str, Any] = {"name": a, "type": "space"}
                if known:
                    ax["unit"] = "nanometer"
                ngff_axes.append(ax)
                scale.append(float(vs[a]) if known else 1.0)
        group.attrs["ome"] = {
            "version": "0.5",
            "multiscales": [
                {
                    "name": root.name.removesuffix(".zarr").removesuffix(".ome"),
                    "axes": ngff_axes,
                    "datasets": [
                        {
                            "path": cls.ARRAY,
                            "coordinateTransformations": [{"type": "scale", "scale": scale}],
                        }
                    ],
                    "metadata": {"writer": "omniem.engine.predict"},
                }
            ],
        }
        group.attrs["omniem"] = cls._attrs(setup, complete=False)
        return cls(setup, root, group, arr)

    @classmethod
    def open(cls, setup: Setup, root: Path) -> _ZarrWriter:
        import zarr

        group = zarr.open_group(str(root), mode="r+")
        arr = group[cls.ARRAY]
        if tuple(arr.shape) != setup.out_shape or np.dtype(arr.dtype) != setup.out_dtype:
            raise OmniEMError(
                f"{root}: existing array {cls.ARRAY} is {tuple(arr.shape)} {arr.dtype}, this run "
                f"writes {setup.out_shape} {setup.out_dtype}; pass overwrite=True"
            )
        return cls(setup, root, group, arr)

    @staticmethod
    def _attrs(setup: Setup, *, complete: bool) -> dict[str, Any]:
        from omniem.engine.ledger import params_hash

        out: dict[str, Any] = {
            "format": ENGINE_FORMAT,
            "complete": complete,
            "params_hash": params_hash(setup.params),
            "output": setup.output,
            "model": setup.runner.name,
            "task": setup.runner.task,
            "source": setup.source_name,
        }
        classes = setup.runner.card.get("classes")
        if classes:
            out["classes"] = list(classes)
        return out

    def write(self, block: Block, data: np.ndarray) -> None:
        self.arr[_index(self.setup, block)] = _squeeze(self.setup, data)
        # fsync the shard files of this block (and their folders) before it is recorded.
        iz, iy, ix = block.index
        coords = [iy, ix] if self.setup.is_2d else [iz, iy, ix]
        channels = self.setup.out_shape[0] if self.setup.output == "probabilities" else None
        keys = [(c, *coords) for c in range(channels)] if channels is not None else [tuple(coords)]
        for key in keys:
            path = self.root / self.ARRAY / self.arr.metadata.encode_chunk_key(key)
            if path.exists():  # an all-zero shard is not stored
                _fsync(path)
                _fsync(path.parent)

    def finish(self) -> Path:
        self.group.attrs["omniem"] = self._attrs(self.setup, complete=True)
        return self.root


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
    tile: int = 256,
    overlap: float = 0.25,
    blend: str = "gaussian",
    batch_size: int = 4,
    devices: Any = "cpu",
    dtype: str = "bf16",
    voxel_size: Any = None,
    resample: bool = True,
    output: str | None = None,
    overwrite: bool = False,
    progress: Callable[[int, int], Any] | None = None,
    out_dtype: str | None = None,
    block: Sequence[int] | None = None,
    intensity: tuple[float, float] | None = None,
    scheduler: Any = None,
) -> np.ndarray | Path:
    """Predict a whole image or volume with a 2D OmniEM model, tiled and blended, out of core.

    Args:
        model: an `omniem.nets.OmniEM`, a registry name or model file (`omniem.registry.load`),
            or any callable ``[B, 1, h, w]`` float tensor -> ``[B, C, h, w]`` (raw outputs, no
            activation unless it has a ``task`` attribute).
        source: path/URI (`em5m.io.open_volume`), `em5m.Volume`, or numpy/dask array
            ``[H, W]`` / ``[Z, H, W]``; uint8, other integers or floats (see module docstring
            for normalization).
        target: OME-Zarr directory to write (resumable, see `omniem.engine.ledger`); ``None``
            returns a numpy array.
        tile: tile side in model pixels.
        overlap: tile overlap fraction in [0, 1).
        blend: ``gaussian`` (MONAI's, sigma = tile / 8), ``hann`` or ``constant``.
        batch_size: tiles per forward pass.
        devices: where blocks run (`omniem.engine.devices`): one torch device (``"cpu"``,
            ``"cuda:0"``) in this process; ``"cpu:N"``: N worker processes; ``"cuda:0,cuda:1"``:
            one worker process per GPU; ``"dask://HOST:PORT"``: a dask.distributed cluster.
            Workers compute the same blocks with the same code, so the output is bit-identical
            to one device (same torch threads per process on CPU).
        dtype: ``bf16`` (autocast) or ``fp32``.
        voxel_size: source voxel size in nm (``(z, y, x)``, ``(y, x)`` or one in-plane number);
            overrides what the source says.
        resample: resample to the model card's ``voxel_size_nm`` when they differ by > 10 %.
        output: ``probabilities`` (``[C, Z, H, W]``), ``labels`` (argmax, ``[Z, H, W]``) or
            ``image`` (restoration, ``[Z, H, W]``); default by task (semantic: labels,
            restoration: image, else probabilities). A 2D source gives no z axis.
        overwrite: replace an existing ``target``.
        progress: called as ``progress(done, total)`` after each block is written.
        out_dtype: probabilities ``float32``/``float16``; labels ``uint8``/``uint16``; image
            ``float32``/``uint8`` (default uint8 for a uint8 source, else float32).
        block: output block ``(slices, pixels)``; default ``(8, 1024)``.
        intensity: ``(low, high)`` grey values mapped to 0 and 1 (default: see module docstring).
        scheduler: a ``distributed.Client``, cluster or scheduler address: run the blocks on it
            (``devices`` then names the device of each dask worker, ``"cpu"`` or ``"cuda"``).

    Returns:
        The array, or the target path once complete.

    Raises:
        ValueError: unsupported source dtype or dimensionality, bad arguments.
        NotImplementedError: 3D or super-resolution models.
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
            if data is not None:  # computed here or sent back: write it here
                try:
                    writer.write(blk, data)
                except Exception as err:
                    where = f" to {writer.root}" if isinstance(writer, _ZarrWriter) else ""
                    raise BlockError(
                        f"{blk.describe()}: writing the output{where} failed: "
                        f"{type(err).__name__}: {err}",
                        block=blk,
                        stage="write",
                    ) from err
            if ledger is not None:
                ledger.record(blk.id, z=list(blk.z), y=list(blk.y), x=list(blk.x))
            n_done += 1
            if progress is not None:
                progress(n_done, total)
    finally:
        events.close()
    result = writer.finish()
    if ledger is not None:
        ledger.mark_complete(output=setup.output)
    return result


def _local_blocks(setup: Setup, todo: Sequence[int]):
    """Compute blocks ``todo`` in this process, in order; yields ``(block, data)``."""
    module = setup.runner.module
    was_training = module.training if module is not None else False
    if module is not None:
        module.eval()
    weight = T.blend_weights((setup.tile, setup.tile), setup.blend, device=setup.runner.device)
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
        total += math.ceil((blk.z[1] - blk.z[0]) * ny * nx / setup.batch_size)
    return total


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
