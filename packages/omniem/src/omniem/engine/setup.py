"""What a run is: arguments checked, model and source opened, the tile grids and blocks laid out.

`prepare` resolves everything `omniem.engine.run.predict` and `omniem.engine.plan.plan` need
before any compute; the dataclasses here are what the compute, the writers and the worker
processes share.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import dask.array as da
import numpy as np
import torch

from emdino.precision import autocast, resolve_precision
from omniem.engine import tiles as T
from omniem.errors import OmniEMError
from omniem.infer import model_tiling

__all__ = ["Block", "BlockError", "Runner", "Setup", "prepare"]

ENGINE_FORMAT = "omniem.engine/1"
OUTPUTS: tuple[str, ...] = ("probabilities", "labels", "image", "instances")
DTYPES: tuple[str, ...] = ("auto", "bf16", "fp32")
#: Default block: slices x pixels (y and x) of output per block.
DEFAULT_BLOCK: tuple[int, int] = (8, 1024)
#: Slices per tile of a 3D model (``tile_z``) unless given.
DEFAULT_TILE_Z = 16
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
    "instances": ("uint32",),
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
    #: 2: tiles ``[B, 1, t, t]`` (slice by slice); 3: tiles ``[B, 1, tz, t, t]``.
    spatial_dims: int = 2


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
    gz: T.AxisGrid | None = None  # the z grid of a 3D model (None: slice by slice)
    scale: int = 1  # output pixels per input pixel in y and x (super-resolution models)

    @property
    def tile_shape(self) -> tuple[int, ...]:
        """``(t, t)``, or ``(tz, t, t)`` for a 3D model."""
        if self.gz is None:
            return (self.tile, self.tile)
        return (self.gz.tile, self.tile, self.tile)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.data.shape)  # type: ignore[return-value]

    @property
    def out_shape(self) -> tuple[int, ...]:
        """Shape of the result (no z axis for a 2D source; y, x times ``scale``)."""
        z, h, w = self.shape
        h, w = h * self.scale, w * self.scale
        spatial = (h, w) if self.is_2d else (z, h, w)
        if self.output == "probabilities":
            return (self.runner.out_channels, *spatial)
        return spatial

    @property
    def out_voxel_size(self) -> tuple[float, ...] | None:
        """Voxel size of the result: the source's, y and x divided by ``scale``."""
        if self.voxel_size is None:
            return None
        vs = list(self.voxel_size)
        vs[-2:] = [v / self.scale for v in vs[-2:]]
        return tuple(vs)

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


def _compiled(module: torch.nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """``torch.compile`` (inductor) with freezing: weights become constants, folded and
    pre-packed for oneDNN, which is where the CPU gain comes from (without freezing inductor
    gained nothing here). Compiles on the first call, in each worker process (tens of seconds);
    shorter batches are padded to the first batch's size, so the graph compiles once."""
    fn = torch.compile(module, dynamic=False, options={"freezing": True})
    full = 0

    def call(batch: torch.Tensor) -> torch.Tensor:
        nonlocal full
        n = int(batch.shape[0])
        if n < full:
            pad = batch.new_zeros((full - n, *batch.shape[1:]))
            return fn(torch.cat([batch, pad]))[:n]
        full = max(full, n)
        return fn(batch)

    return call


def _runner(
    model: Any, device: torch.device, dtype: str, tta: bool = False, compile_model: bool = False
) -> Runner:
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
        info["spatial_dims"] = int(config.spatial_dims)
        scale = float(getattr(config, "output_scale", 1.0))
        if scale != int(scale) or scale < 1:
            raise NotImplementedError(
                f"model {name}: output_scale={scale:g}; the engine runs integer up-scaling only"
            )
        info["output_scale"] = int(scale)
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

    net = _compiled(module) if compile_model and module is not None else model

    def forward(batch: torch.Tensor) -> torch.Tensor:
        batch = batch.to(device)
        with autocast(dtype, device):
            out = net(batch)
        return torch.as_tensor(out).float()

    fn = forward
    if tta:
        from omniem.engine.views import with_tta

        fn = with_tta(forward)

    dims = int(info.get("spatial_dims", getattr(model, "spatial_dims", 2)))
    if dims not in (2, 3):
        raise ValueError(f"model {name}: spatial_dims must be 2 or 3, got {dims}")
    runner = Runner(fn, task, channels or 0, device, name, digest, card, module, info, dims)
    if channels is None:  # a plain callable: ask it once
        shape = (1, 1, 32, 32) if dims == 2 else (1, 1, 4, 32, 32)
        with torch.inference_mode():
            probe = fn(torch.zeros(shape))
        if probe.ndim != dims + 2:
            raise ValueError(
                f"model {name} returned shape {tuple(probe.shape)} for a {list(shape)} input; "
                f"expected [B, C, {'Z, ' if dims == 3 else ''}H, W]"
            )
        runner.out_channels = int(probe.shape[1])
    return runner


#: Slices up to this many pixels on a side are one block in y and x by default (2D models).
WHOLE_SLICE_MAX = 2048


def _default_block_2d(h: int, w: int) -> tuple[int, int]:
    """Default block of a 2D model: whole slices up to `WHOLE_SLICE_MAX` px on a side, as many
    of them as hold the pixels of `DEFAULT_BLOCK`; larger slices get `DEFAULT_BLOCK`.

    A block border in y or x makes the tiles that straddle it run once for each block; a 2048 px
    slice cut into 1024 px blocks runs 144 tiles of 256 px (overlap 0.25) instead of 121 (+19 %).
    Whole slices avoid that at the same block size in pixels (so the same memory).

    Examples:
        >>> _default_block_2d(768, 1024), _default_block_2d(2048, 2048)
        ((8, 1024), (2, 2048))
        >>> _default_block_2d(1500, 900), _default_block_2d(4096, 4096)
        ((6, 1500), (8, 1024))
    """
    side = max(h, w)
    if side <= DEFAULT_BLOCK[1] or side > WHOLE_SLICE_MAX:
        return DEFAULT_BLOCK
    return max(1, DEFAULT_BLOCK[0] * DEFAULT_BLOCK[1] ** 2 // (h * w)), side


def _default_block_3d(gz: T.AxisGrid) -> tuple[int, int]:
    """Default block of a 3D tile grid: two z steps deep, so a block's z tiles are computed about
    1.5 times in all (not once per 8 slices), and narrower in y, x when that makes it deep.

    Examples:
        >>> _default_block_3d(T.axis_grid(100, 16, 0.25))
        (24, 1024)
        >>> _default_block_3d(T.axis_grid(900, 256, 0.25))
        (384, 512)
    """
    step = gz.starts[1] - gz.starts[0] if len(gz.starts) > 1 else gz.tile
    bz = max(DEFAULT_BLOCK[0], 2 * step)
    return bz, DEFAULT_BLOCK[1] if bz <= 64 else DEFAULT_BLOCK[1] // 2


def _orthoplane_runner(runner: Runner, name: str, is_2d: bool, batch_size: int) -> None:
    """Turn a 2D model's runner into the 3D tile function of `omniem.engine.views.orthoplanes`."""
    from omniem.engine.views import orthoplanes

    if runner.spatial_dims != 2:
        raise ValueError(
            f"orthoplanes runs a 2D model along z, y and x; model {runner.name} is already a 3D "
            "model (it uses its own z-context)"
        )
    if is_2d:
        raise ValueError(f"orthoplanes needs a volume [Z, H, W]; source {name} is a 2D image")
    runner.fn = orthoplanes(runner.fn, batch_size)
    runner.spatial_dims = 3


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
    return {"semantic": "labels", "restoration": "image", "instances": "instances"}.get(
        task or "", "probabilities"
    )


def _default_out_dtype(output: str, src_dtype: np.dtype) -> str:
    if output == "image":
        return "uint8" if src_dtype == np.uint8 else "float32"
    return OUT_DTYPES[output][0]


def prepare(
    model: Any,
    source: Any,
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
    out_dtype: str | None = None,
    block: Sequence[int] | None = None,
    intensity: tuple[float, float] | None = None,
    scheduler: Any = None,
    tile_z: int | None = None,
    tta: bool = False,
    orthoplanes: bool = False,
    compile: bool = False,  # noqa: A002 - the user-facing name, as torch.compile
) -> Setup:
    """Validate arguments, open model and source, and lay out grid and blocks (no compute)."""
    if tile_z is not None and (not isinstance(tile_z, int) or tile_z < 1):
        raise ValueError(f"tile_z must be a positive integer, got {tile_z!r}")
    if tile is not None and (not isinstance(tile, int) or tile < 8):
        raise ValueError(f"tile must be an integer >= 8, got {tile!r}")
    if overlap is not None and not 0.0 <= float(overlap) < 1.0:
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
    # Resolved here, so that the run records (and a resume checks) the precision it computes in.
    dtype = resolve_precision(dtype, device)
    runner = _runner(model, device, dtype, bool(tta), bool(compile))
    tile, overlap = model_tiling(runner, tile, overlap)  # unless given: the model's card's
    if orthoplanes:
        _orthoplane_runner(runner, name, is_2d, batch_size)

    if runner.spatial_dims == 3 and is_2d:
        raise ValueError(
            f"model {runner.name} is a 3D model and needs a volume [Z, H, W]; source {name} is "
            "a 2D image (use a 2D model)"
        )
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
    if output == "instances":
        if runner.task not in ("instances", None) or c < 2:
            raise ValueError(
                f"output='instances' needs an instances model (sigmoid channels foreground, "
                f"boundary); model {runner.name} has task {runner.task} and {c} channel(s)"
            )
        if spec.kind != "local":
            raise ValueError(
                "output='instances' runs its blocks in this process (devices='cpu' or one "
                f"'cuda:N'), not on {devices!r}: stitching reads the blocks' labels back"
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

    scale = int(runner.info.get("output_scale", 1))
    if scale != 1 and (runner.spatial_dims != 2 or orthoplanes):
        raise ValueError(
            f"model {runner.name} up-scales {scale}x: the engine runs it slice by slice only "
            "(no 3D model, no orthoplanes)"
        )

    # Voxel size and resampling.
    _, h, w_ = (int(s) for s in data.shape)
    model_vs = _in_plane(runner.card.get("voxel_size_nm"))
    if model_vs and scale != 1:  # the card gives the output's pixel size; inputs are coarser
        model_vs = (model_vs[0] * scale, model_vs[1] * scale)
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
    if scale != 1 and any(resampled):
        raise ValueError(
            f"source {name} has {src_yx[0]:g} nm pixels, model {runner.name} expects "
            f"{model_vs[0]:g} nm inputs: the engine does not resample for super-resolution "
            "models; resample the source first or pass resample=False (--no-resample)"
        )

    gy, gx = T.axis_grid(mh, tile, overlap), T.axis_grid(mw, tile, overlap)
    z = int(data.shape[0])
    gz = None
    if runner.spatial_dims == 3:
        # Orthoplanes: cubic tiles by default, so xz and yz planes are as large as xy ones.
        gz = T.axis_grid(z, tile_z or (tile if orthoplanes else DEFAULT_TILE_Z), overlap)
    if block is None:
        bz, bhw = _default_block_3d(gz) if gz is not None else _default_block_2d(h, w_)
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
    if gz is not None:
        params["tile_z"] = gz.tile
    if tta:  # only when on, so the ledgers of earlier runs keep their hash
        params["tta"] = True
    if orthoplanes:
        params["orthoplanes"] = True
    if scale != 1:
        params["scale"] = scale
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
        gz=gz,
        scale=scale,
    )
