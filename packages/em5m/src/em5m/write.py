"""Write volumes as OME-Zarr (NGFF 0.5 on Zarr v3, with a pyramid) or TIFF, atomically.

Everything is written from the dask array block by block, so memory is bounded by a few shards
(OME-Zarr) or a few slabs of pages (TIFF), never by the volume. Output first goes to a sibling
``<name>.partial-<uuid>`` path and is renamed into place only when complete: an interrupted write
leaves nothing at the target (and `em5m.open_volume` refuses ``*.partial-*`` leftovers).
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
import shutil
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import dask.array as da
import numpy as np
import tifffile
import zarr
from zarr.codecs import BloscCodec

from em5m.errors import InvalidVolumeError
from em5m.io._lazy import block_bytes
from em5m.volume import SPATIAL_AXES, Volume

__all__ = ["MAX_TIFF_BYTES", "save_volume"]

Format = Literal["ome-zarr", "tiff"]

#: Largest TIFF we write: TIFF is for small outputs that other tools open whole (Fiji, napari).
MAX_TIFF_BYTES = 16 * 2**30
#: Above this the classic TIFF 4 GB offset limit gets close; switch to BigTIFF (OME-TIFF).
BIGTIFF_BYTES = 2 * 2**30
#: ImageJ only has these pixel types; other dtypes are written as OME-TIFF.
IMAGEJ_DTYPES = (np.dtype("uint8"), np.dtype("uint16"), np.dtype("float32"))
#: What OME-TIFF can describe (int64/uint64/float16 have no OME pixel type).
TIFF_DTYPES = tuple(
    np.dtype(t)
    for t in (
        "bool",
        "int8",
        "uint8",
        "int16",
        "uint16",
        "int32",
        "uint32",
        "float32",
        "float64",
        "complex64",
        "complex128",
    )
)
#: The pyramid stops once the smaller of y/x is at most this many pixels.
PYRAMID_MIN_SIDE = 256
#: Bytes of pixel data computed at once when writing TIFF pages.
TIFF_SLAB_BYTES = 128 * 2**20

_TIFF_SUFFIXES = (".tif", ".tiff", ".btf", ".tf8")
_ZARR_SUFFIXES = (".zarr",)


def save_volume(
    volume_or_array: Volume | np.ndarray | da.Array,
    uri: str | os.PathLike[str],
    *,
    axes: str | Sequence[str] | None = None,
    voxel_size: Sequence[float] | None = None,
    chunks: Sequence[int] | None = None,
    shard: Sequence[int] | bool | None = None,
    levels: int | None = None,
    overwrite: bool = False,
    format: Format | None = None,  # noqa: A002 - the public keyword is ``format``
    label: bool = False,
) -> str:
    """Write a volume to OME-Zarr or TIFF, atomically; `em5m.open_volume` reads it back.

    Args:
        volume_or_array: a `Volume`, or a numpy/dask array (then ``axes`` default to
            ``yx``/``zyx``/``czyx`` by dimension).
        uri: output path (or ``file://`` URL). ``*.zarr`` -> OME-Zarr, ``*.tif[f]`` -> TIFF.
        axes: axes of a plain array, e.g. ``"zyx"`` (not allowed with a `Volume`).
        voxel_size: nm per spatial axis (z, y, x order); overrides the volume's.
        chunks: OME-Zarr inner chunk shape (default ``1 x 256 x 256`` per channel).
        shard: OME-Zarr shard shape, ``False`` for no sharding (default ``32 x 1024 x 1024``).
        levels: number of pyramid levels including s0 (default: halve y/x until the smaller
            side is at most 256).
        overwrite: replace an existing target (the old one is removed only after the new one
            is complete); otherwise an existing target raises `FileExistsError`.
        format: ``"ome-zarr"`` or ``"tiff"``; default from the suffix of ``uri``.
        label: label data: pyramid levels take every 2nd voxel (never invent label values)
            instead of the mean.

    Returns:
        The absolute path written.

    Raises:
        FileExistsError: the target exists and ``overwrite`` is False.
        ValueError: bad arguments, unknown format, TIFF larger than `MAX_TIFF_BYTES`.
        InvalidVolumeError: empty volume; errors raised while computing blocks propagate
            (e.g. NaN checks of `open_volume`) and nothing is left at the target.

    Examples:
        >>> import tempfile, numpy as np
        >>> from em5m import open_volume
        >>> d = tempfile.mkdtemp()
        >>> vol = Volume.from_array(np.ones((2, 512, 512), np.uint16),
        ...                         voxel_size=(40, 4, 4))
        >>> out = save_volume(vol, d + "/em.ome.zarr")
        >>> back = open_volume(out)
        >>> back.voxel_size, [lv["path"] for lv in back.metadata["levels"]]
        ((40.0, 4.0, 4.0), ['s0', 's1'])
    """
    volume = _as_volume(volume_or_array, axes, voxel_size)
    target = _target_path(uri)
    fmt = _choose_format(target, format)
    if any(n == 0 for n in volume.shape):
        raise InvalidVolumeError(volume.source, f"cannot save an empty volume {volume.shape}")
    if _exists(target) and not overwrite:
        raise FileExistsError(f"{target}: already exists; pass overwrite=True to replace it")
    plan = _pyramid(volume, levels) if fmt == "ome-zarr" else []
    if fmt == "tiff":
        _check_tiff(volume, target)
    with _atomic(target, overwrite) as tmp:
        if fmt == "tiff":
            _write_tiff(volume, tmp)
        else:
            _write_ome_zarr(
                volume, tmp, plan, chunks=chunks, shard=shard, label=label, name=target.name
            )
    return str(target)


# --------------------------------------------------------------------------- arguments


def _as_volume(
    obj: Volume | np.ndarray | da.Array,
    axes: str | Sequence[str] | None,
    voxel_size: Sequence[float] | None,
) -> Volume:
    if isinstance(obj, Volume):
        if axes is not None and tuple(axes) != obj.axes:
            raise ValueError(f"axes={axes!r} given for a Volume with axes {obj.axes}")
        return obj if voxel_size is None else obj.replace(voxel_size=tuple(voxel_size))
    return Volume.from_array(
        obj,
        axes=tuple(a.lower() for a in axes) if axes is not None else None,
        voxel_size=tuple(voxel_size) if voxel_size is not None else None,
    )


def _target_path(uri: str | os.PathLike[str]) -> Path:
    text = os.fspath(uri)
    if text.startswith("file://"):
        text = text[len("file://") :]
    elif "://" in text:
        raise ValueError(f"{text}: save_volume writes local paths only")
    return Path(os.path.abspath(os.path.expanduser(text.rstrip("/"))))


def _choose_format(target: Path, fmt: str | None) -> Format:
    if fmt is not None:
        if fmt not in ("ome-zarr", "tiff"):
            raise ValueError(f"format={fmt!r}: choose 'ome-zarr' or 'tiff'")
        return fmt  # type: ignore[return-value]
    name = target.name.lower()
    if name.endswith(_ZARR_SUFFIXES):
        return "ome-zarr"
    if name.endswith(_TIFF_SUFFIXES):
        return "tiff"
    raise ValueError(
        f"{target}: cannot tell the output format from the name; use a .zarr or .tif suffix "
        "or pass format='ome-zarr' or format='tiff'"
    )


def _exists(path: Path) -> bool:
    return os.path.lexists(path)


# --------------------------------------------------------------------------- atomicity


@contextlib.contextmanager
def _atomic(target: Path, overwrite: bool) -> Iterator[Path]:
    """Yield a sibling temp path; on success move it to ``target``, on any error delete it."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f"{target.name}.partial-{uuid.uuid4().hex[:12]}")
    try:
        yield tmp
        _commit(tmp, target, overwrite)
    except BaseException:  # KeyboardInterrupt too: never leave a partial output behind
        _remove(tmp)
        raise


def _commit(tmp: Path, target: Path, overwrite: bool) -> None:
    if not _exists(target):
        os.rename(tmp, target)
        return
    if not overwrite:  # appeared while we were writing
        raise FileExistsError(f"{target}: already exists; pass overwrite=True to replace it")
    if tmp.is_file() and target.is_file() and not target.is_symlink():
        os.replace(tmp, target)  # atomic for files
        return
    # Directories cannot be swapped atomically: move the old one aside first, then remove it.
    # A crash in between leaves the old data at <name>.old-<uuid>, never a mixed target.
    old = target.with_name(f"{target.name}.old-{uuid.uuid4().hex[:12]}")
    os.rename(target, old)
    os.rename(tmp, target)
    _remove(old)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif _exists(path):
        path.unlink()


# --------------------------------------------------------------------------- OME-Zarr


def _pyramid(volume: Volume, levels: int | None) -> list[tuple[int, ...]]:
    """Per level, the downsampling factor per axis relative to the previous level.

    y and x are halved at every level; z too when its spacing is within 1.5x of the in-plane
    spacing (isotropic FIB-SEM), so anisotropic serial-section data becomes isotropic first.
    With an unknown voxel size z is never downsampled (thin sections are the common case).
    """
    axes = volume.axes
    shape = list(volume.shape)
    vs = dict(volume.voxel_size_by_axis or {})
    iy, ix = axes.index("y"), axes.index("x")
    plan: list[tuple[int, ...]] = [(1,) * len(axes)]
    if levels is not None and levels < 1:
        raise ValueError(f"levels={levels} must be at least 1")
    while True:
        if levels is not None and len(plan) >= levels:
            break
        smallest = min(shape[iy], shape[ix])
        if levels is None and smallest <= PYRAMID_MIN_SIDE:
            break
        if smallest < 2:
            raise ValueError(
                f"levels={levels}: a {volume.shape} volume allows at most {len(plan)} levels"
            )
        factors = []
        for a, n in zip(axes, shape, strict=True):
            halve_z = a == "z" and bool(vs) and n > 1 and vs["z"] < 1.5 * vs["y"]
            factors.append(2 if a in ("y", "x") or halve_z else 1)
        plan.append(tuple(factors))
        shape = [math.ceil(n / f) for n, f in zip(shape, factors, strict=True)]
        for a, f in zip(axes, factors, strict=True):
            if a in vs:
                vs[a] *= f
    return plan


def _chunking(
    shape: Sequence[int],
    axes: Sequence[str],
    itemsize: int,
    chunks: Sequence[int] | None,
    shard: Sequence[int] | bool | None,
) -> tuple[tuple[int, ...], tuple[int, ...] | None]:
    """Inner chunk and shard shapes.

    Default inner chunk 1 x 256 x 256 (one per channel): a 2D slice read decodes only that
    slice's chunks, and a 3D block read (e.g. 32 x 256 x 256) takes consecutive inner chunks
    from one shard file, so neither access pattern reads data it does not need (32^3 chunks
    would read 32 slices to serve one). Shards of 32 x 1024 x 1024 (fewer slices for wide
    dtypes, so a shard stays <= 64 MB) keep the file count low (a 1 TB volume has ~30k
    files) and are the unit one dask task writes, so no two tasks touch the same file.
    """
    ndim = len(axes)
    if chunks is not None:
        if len(chunks) != ndim:
            raise ValueError(f"chunks={tuple(chunks)} needs one value per axis {tuple(axes)}")
        inner = [int(c) for c in chunks]
    else:
        inner = [1 if a in ("c", "z") else 256 for a in axes]
    inner = [max(1, min(c, n)) for c, n in zip(inner, shape, strict=True)]
    if shard is False:
        return tuple(inner), None
    if shard is None or shard is True:
        depth = max(1, 32 * 2 // max(itemsize, 2))  # 32 slices for 1-2 byte types, fewer above
        plane = 1024 if "z" in axes else 4096  # a 2D image gets 4096^2 shards
        want = [1 if a == "c" else depth if a == "z" else plane for a in axes]
        # Whole inner chunks per shard, no bigger than the array needs.
        outer = [
            max(c, min(w // c * c, math.ceil(n / c) * c))
            for w, c, n in zip(want, inner, shape, strict=True)
        ]
    else:
        if len(shard) != ndim:
            raise ValueError(f"shard={tuple(shard)} needs one value per axis {tuple(axes)}")
        outer = [int(s) for s in shard]
        if any(s % c for s, c in zip(outer, inner, strict=True)):
            raise ValueError(f"shard={tuple(outer)} must be a multiple of chunks={tuple(inner)}")
    return tuple(inner), tuple(outer)


def _downsample_block(block: np.ndarray, factors: tuple[int, ...], label: bool) -> np.ndarray:
    if label or block.dtype == bool:
        return np.ascontiguousarray(block[tuple(slice(None, None, f) for f in factors)])
    # Sum neighbour pairs axis by axis (each step halves the data), then divide once. float32
    # sums of <= 8 values are exact for 8/16-bit data; wider types need float64.
    acc: Any = np.float32 if block.dtype.itemsize <= 2 else np.float64
    if np.iscomplexobj(block):
        acc = np.complex128
    total: np.ndarray = block
    count = 1
    for axis, f in enumerate(factors):
        if f == 1:
            continue
        lo = [slice(None)] * block.ndim
        hi = [slice(None)] * block.ndim
        lo[axis], hi[axis] = slice(0, None, 2), slice(1, None, 2)
        total = np.add(total[tuple(lo)], total[tuple(hi)], dtype=acc)
        count *= 2
    mean = total / acc(count)
    if np.issubdtype(block.dtype, np.integer):
        info = np.iinfo(block.dtype)
        mean = np.clip(np.rint(mean), info.min, info.max)
    return mean.astype(block.dtype)


def _downsample(src: da.Array, factors: tuple[int, ...], label: bool) -> da.Array:
    """Halve ``src`` along axes with factor 2, block by block (blocks aligned to even sizes)."""
    if not label and src.dtype != bool:
        # Mean needs complete 2-voxel groups: repeat the last row/column of odd-sized axes.
        pad = [(0, n % f) for n, f in zip(src.shape, factors, strict=True)]
        if any(p for _, p in pad):
            src = da.pad(src, pad, mode="edge")
    # Every block but the last starts at an even index, so block-wise results tile exactly.
    even = tuple(
        _even_chunks(c, n, f) for c, n, f in zip(src.chunks, src.shape, factors, strict=True)
    )
    src = src.rechunk(even)
    out_chunks = tuple(
        tuple(math.ceil(c / f) for c in chunks)
        for chunks, f in zip(src.chunks, factors, strict=True)
    )
    return src.map_blocks(
        _downsample_block,
        factors,
        label,
        chunks=out_chunks,
        dtype=src.dtype,
        meta=np.empty((0,) * src.ndim, src.dtype),
    )


def _even_chunks(chunks: tuple[int, ...], n: int, f: int) -> tuple[int, ...]:
    """Uniform chunk sizes summing to ``n``, each (but the last) a multiple of ``f``."""
    if f == 1:
        return chunks
    size = max(f, chunks[0] + chunks[0] % f)
    return (size,) * (n // size) + ((n % size,) if n % size else ())


def _store(src: da.Array, arr: Any, block: tuple[int, ...]) -> None:
    """Write ``src`` into ``arr`` one group of whole shards at a time.

    Each group is its own dask computation of at most ~`block_bytes` (dask's
    ``array.chunk-size``, or one shard if larger), so memory is bounded by the group and the
    source blocks it touches, whatever the source chunking. (One ``da.store`` of a volume of
    (1, Y, X) slices rechunked to 32-slice shards would keep every slice alive until its last
    shard is done: memory growing with the volume.) Inside a group each shard is written by
    exactly one task, so no two tasks write the same shard file.
    """
    itemsize = src.dtype.itemsize
    budget = max(block_bytes(), math.prod(block) * itemsize)
    group = list(block)
    # Grow the group by whole shards, fastest axis first, while it fits the budget.
    for axis in reversed(range(src.ndim)):
        while group[axis] < src.shape[axis] and math.prod(group) * 2 * itemsize <= budget:
            group[axis] = min(
                group[axis] * 2, math.ceil(src.shape[axis] / block[axis]) * block[axis]
            )
    starts = [range(0, n, g) for n, g in zip(src.shape, group, strict=True)]
    for corner in itertools.product(*starts):
        region = tuple(
            slice(c, min(c + g, n)) for c, g, n in zip(corner, group, src.shape, strict=True)
        )
        da.store(src[region].rechunk(block), arr, regions=region, lock=False, compute=True)


def _write_ome_zarr(
    volume: Volume,
    path: Path,
    plan: list[tuple[int, ...]],
    *,
    chunks: Sequence[int] | None,
    shard: Sequence[int] | bool | None,
    label: bool,
    name: str,
) -> None:
    axes = volume.axes
    dtype = volume.dtype
    itemsize = dtype.itemsize
    # zstd in blosc: good ratio on EM at fast decode; byte shuffle helps multi-byte types.
    codec = BloscCodec(cname="zstd", clevel=5, shuffle="shuffle" if itemsize > 1 else "noshuffle")
    group = zarr.open_group(str(path), mode="w-", zarr_format=3)
    spacing = [
        (volume.voxel_size_by_axis or {}).get(a, 1.0) if a in SPATIAL_AXES else 1.0 for a in axes
    ]
    translation = [0.0] * len(axes)
    datasets = []
    src: da.Array = volume.data
    for k, factors in enumerate(plan):
        if k > 0:
            src = _downsample(src, factors, label)
            if not label:
                # Mean of a 2-voxel group sits between the two input voxel centres.
                translation = [
                    t + (f - 1) / 2 * s
                    for t, f, s in zip(translation, factors, spacing, strict=True)
                ]
            spacing = [s * f for s, f in zip(spacing, factors, strict=True)]
        inner, outer = _chunking(src.shape, axes, itemsize, chunks, shard)
        arr = group.create_array(
            f"s{k}",
            shape=src.shape,
            dtype=dtype,
            chunks=inner,
            shards=outer,
            compressors=[codec],
            fill_value=0,
            dimension_names=list(axes),
        )
        _store(src, arr, outer or inner)
        # Build the next level from what was just written, not by recomputing the source graph.
        src = da.from_array(
            arr,
            chunks=outer or inner,
            name=f"em5m-level-{uuid.uuid4().hex}",
            lock=False,
            meta=np.empty((0,) * len(axes), dtype),
        )
        transforms: list[dict[str, Any]] = [{"type": "scale", "scale": list(spacing)}]
        if any(translation):
            transforms.append({"type": "translation", "translation": list(translation)})
        datasets.append({"path": f"s{k}", "coordinateTransformations": transforms})

    known = volume.voxel_size is not None
    ngff_axes = []
    for a in axes:
        if a == "c":
            ngff_axes.append({"name": "c", "type": "channel"})
        elif known:
            ngff_axes.append({"name": a, "type": "space", "unit": "nanometer"})
        else:  # no unit: the scale is in voxels, and open_volume reports voxel_size=None
            ngff_axes.append({"name": a, "type": "space"})
    stem = name[: -len(".ome.zarr")] if name.endswith(".ome.zarr") else name.rsplit(".", 1)[0]
    # Written last: until now the group is not an image (and it is still at the temp path).
    group.attrs["ome"] = {
        "version": "0.5",
        "multiscales": [
            {
                "name": stem,
                "axes": ngff_axes,
                "datasets": datasets,
                "type": "stride" if label else "mean",
                "metadata": {
                    "writer": "em5m.save_volume",
                    "downsampling": "every 2nd voxel" if label else "2x mean",
                    "label": bool(label),
                },
            }
        ],
    }


# --------------------------------------------------------------------------- TIFF


def _check_tiff(volume: Volume, target: Path) -> None:
    if volume.dtype not in TIFF_DTYPES:
        raise ValueError(
            f"{target}: TIFF cannot carry dtype {volume.dtype} with its voxel size; save as "
            "OME-Zarr (a .zarr path) or cast, e.g. volume.data.astype('float32')"
        )
    if volume.nbytes > MAX_TIFF_BYTES:
        raise ValueError(
            f"{target}: volume is {volume.nbytes / 2**30:.1f} GiB; TIFF output is limited to "
            f"{MAX_TIFF_BYTES / 2**30:.0f} GiB (TIFF is for small outputs): save it as OME-Zarr "
            "(a .zarr path) instead"
        )


def _write_tiff(volume: Volume, path: Path) -> None:
    """ImageJ hyperstack for uint8/uint16/float32 below 2 GB, else OME-TIFF (BigTIFF if big)."""
    data, axes = volume.data, list(volume.axes)
    if "c" in axes and "z" in axes:  # ImageJ and OME page order: z outer, channel inner
        data = data.transpose(1, 0, 2, 3)
        axes = ["z", "c", "y", "x"]
    codes = "".join(axes).upper()
    vs = volume.voxel_size_by_axis
    big = volume.nbytes > BIGTIFF_BYTES
    if volume.dtype in IMAGEJ_DTYPES and not big:
        metadata: dict[str, Any] = {"axes": codes}
        kwargs: dict[str, Any] = {"imagej": True}
        if vs:
            kwargs["resolution"] = (1.0 / vs["x"], 1.0 / vs["y"])
            metadata["unit"] = "nm"
            if "z" in vs:
                metadata["spacing"] = vs["z"]
    else:
        metadata = {"axes": codes}
        kwargs = {"ome": True, "bigtiff": big}
        for a, v in (vs or {}).items():
            metadata[f"PhysicalSize{a.upper()}"] = v
            metadata[f"PhysicalSize{a.upper()}Unit"] = "nm"
    tifffile.imwrite(
        path, _pages(data), shape=data.shape, dtype=data.dtype, metadata=metadata, **kwargs
    )


def _pages(data: da.Array) -> Iterator[np.ndarray]:
    """2D pages in file order, computing slabs of at most `TIFF_SLAB_BYTES` at a time."""
    if data.ndim == 2:
        yield np.asarray(data.compute())
        return
    per_item = max(1, int(np.prod(data.shape[1:])) * data.dtype.itemsize)
    step = max(1, TIFF_SLAB_BYTES // per_item)
    for start in range(0, data.shape[0], step):
        slab = np.asarray(data[start : start + step].compute())
        yield from slab.reshape(-1, *slab.shape[-2:])
