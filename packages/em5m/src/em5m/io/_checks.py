"""Validation shared by all readers: axes, empty arrays, NaN/inf, level selection.

Non-finite values are checked in two places, both lazy:

1. at open, a small sample (at most `SAMPLE_BYTES`, from the storage chunk at the centre of the
   volume) is read straight from the reader; NaN/inf there raises at once;
2. every block of the returned dask array passes through `check_finite_block` (a
   ``map_blocks``), which raises `InvalidVolumeError` naming the file and the block when that
   block is computed. The check costs one ``np.isfinite`` pass over data that was just read.

``open_volume(..., check_finite=False)`` turns both off (for maps that use NaN on purpose).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any

import dask.array as da
import numpy as np

from em5m.errors import InvalidVolumeError
from em5m.io._lazy import BlockReader, Region
from em5m.volume import CANONICAL_AXES

#: Upper bound on what the open-time NaN/inf sample reads.
SAMPLE_BYTES = 4 * 2**20

#: Names readers and users write for our axes.
AXIS_ALIASES: dict[str, str] = {
    "x": "x",
    "y": "y",
    "z": "z",
    "c": "c",
    "ch": "c",
    "channel": "c",
    "channels": "c",
    "s": "c",  # tifffile's samples axis (RGB)
    "t": "t",
    "time": "t",
}

AXES_HINT = (
    "pass the axes in array order, e.g. open_volume(uri, axes='czyx') "
    "(names: c=channel, z, y, x, t=time of length 1)"
)


def parse_axes(axes: str | Sequence[str]) -> list[str]:
    """``"czyx"``, ``["c", "z", "y", "x"]`` or ``["channel", ...]`` as a list of names.

    Examples:
        >>> parse_axes("CZYX")
        ['c', 'z', 'y', 'x']
    """
    if isinstance(axes, str):
        return [a.lower() for a in axes]
    return [str(a).lower() for a in axes]


def check_not_empty(source: str, shape: Sequence[int]) -> None:
    """Raise `InvalidVolumeError` if any dimension has length 0."""
    if any(int(s) == 0 for s in shape):
        raise InvalidVolumeError(source, f"array is empty: shape {tuple(shape)} has a zero length")


def check_level(source: str, level: int, n_levels: int) -> None:
    """Raise `InvalidVolumeError` if ``level`` is not one of ``0 .. n_levels-1``."""
    if not 0 <= level < n_levels:
        raise InvalidVolumeError(
            source,
            f"level {level} does not exist; this source has {n_levels} level(s), 0..{n_levels - 1}",
        )


def resolve_axes(
    source: str,
    shape: Sequence[int],
    stored_axes: Sequence[str] | None,
    override: str | Sequence[str] | None,
    squeeze: Sequence[str] = (),
) -> tuple[list[str], list[int], list[int]]:
    """Map stored axis names to canonical ones.

    Args:
        source: named in errors.
        shape: stored shape.
        stored_axes: names in stored order (any case, aliases allowed); None if the file
            does not say.
        override: axes the user passed (wins over ``stored_axes``).
        squeeze: canonical names dropped when their length is 1 (``t`` always is).

    Returns:
        (names per stored dimension, stored dims to drop, permutation of the remaining stored
        dims into canonical order).
    """
    ndim = len(shape)
    if override is not None:
        names = parse_axes(override)
        if len(names) != ndim:
            raise InvalidVolumeError(
                source,
                f"axes={override!r} names {len(names)} axes but the array has shape "
                f"{tuple(shape)}; {AXES_HINT}",
            )
    elif stored_axes is not None:
        names = [str(a).lower() for a in stored_axes]
    elif ndim in (2, 3):
        names = ["y", "x"] if ndim == 2 else ["z", "y", "x"]
    else:
        raise InvalidVolumeError(
            source,
            f"cannot tell the axes of this {ndim}-D array (shape {tuple(shape)}): "
            f"the file has no axis metadata; {AXES_HINT}",
        )
    mapped = []
    for name in names:
        if name not in AXIS_ALIASES:
            raise InvalidVolumeError(
                source, f"unknown axis {name!r} in axes {names} (shape {tuple(shape)}); {AXES_HINT}"
            )
        mapped.append(AXIS_ALIASES[name])
    if len(set(mapped)) != len(mapped):
        raise InvalidVolumeError(source, f"axes {names} name the same axis twice; {AXES_HINT}")
    drop = []
    for i, (name, n) in enumerate(zip(mapped, shape, strict=True)):
        if name == "t" or (name in squeeze and n == 1):
            if n != 1:
                raise InvalidVolumeError(
                    source,
                    f"has {n} time points (axis {names[i]!r}); only single time points "
                    "are supported: select one with axes and slicing before opening",
                )
            drop.append(i)
    kept = [i for i in range(ndim) if i not in drop]
    kept_names = [mapped[i] for i in kept]
    if "y" not in kept_names or "x" not in kept_names:
        raise InvalidVolumeError(
            source, f"axes {names} (shape {tuple(shape)}) lack y and x; {AXES_HINT}"
        )
    order = sorted(kept, key=lambda i: CANONICAL_AXES.index(mapped[i]))
    return mapped, drop, order


def sample_region(shape: Sequence[int], chunks: Sequence[int], itemsize: int) -> Region:
    """The storage chunk at the centre of the array, cropped to at most `SAMPLE_BYTES`.

    Examples:
        >>> sample_region((100, 100), (10, 10), 1)
        (slice(50, 60, None), slice(50, 60, None))
    """
    starts, sizes = [], []
    for n, c in zip(shape, chunks, strict=True):
        c = max(1, min(int(c), int(n)))
        start = (int(n) // 2 // c) * c
        starts.append(start)
        sizes.append(min(c, int(n) - start))
    # Shrink the slowest axes first: keeps the sample a full in-plane tile when possible.
    for axis in range(len(sizes)):
        while math.prod(sizes) * itemsize > SAMPLE_BYTES and sizes[axis] > 1:
            sizes[axis] = max(1, sizes[axis] // 2)
    return tuple(slice(s, s + n) for s, n in zip(starts, sizes, strict=True))


def check_sample_finite(reader: BlockReader) -> None:
    """Read a small sample now and raise `InvalidVolumeError` if it holds NaN or inf."""
    region = sample_region(reader.shape, reader.storage_chunks, reader.dtype.itemsize)
    sample = reader.read(region)
    if not np.isfinite(sample).all():
        where = ", ".join(f"{s.start}:{s.stop}" for s in region)
        raise InvalidVolumeError(
            reader.source,
            f"float data contains NaN/inf values (found in the sample read at "
            f"open, stored region [{where}]); pass check_finite=False to open it anyway",
        )


def check_finite_block(
    block: np.ndarray, *, source: str, axes: tuple[str, ...], block_info: Any = None
) -> np.ndarray:
    """Return ``block`` unchanged, or raise `InvalidVolumeError` naming file, block and voxel."""
    finite = np.isfinite(block)
    if finite.all():
        return block
    bad = tuple(int(i) for i in np.argwhere(~finite)[0])
    offsets = [0] * block.ndim
    where = "?"
    if block_info and None in block_info:
        loc = block_info[None]["array-location"]
        offsets = [int(a) for a, _ in loc]
        where = ", ".join(f"{ax} {a}:{b}" for ax, (a, b) in zip(axes, loc, strict=True))
    voxel = ", ".join(f"{ax}={o + i}" for ax, o, i in zip(axes, offsets, bad, strict=True))
    raise InvalidVolumeError(
        source,
        f"float data contains NaN/inf values in block [{where}] (first at {voxel}); "
        "pass check_finite=False to open_volume to read it anyway",
    )


def with_finite_check(data: da.Array, source: str, axes: tuple[str, ...]) -> da.Array:
    """``data`` whose blocks raise `InvalidVolumeError` on compute if they hold NaN/inf."""
    fn = functools.partial(check_finite_block, source=source, axes=axes)
    return data.map_blocks(fn, dtype=data.dtype, meta=data._meta, token="em5m-finite")
