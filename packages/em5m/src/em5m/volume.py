"""The `Volume`: the one object every EM-SSL layer passes around.

A volume is a lazy dask array plus what a microscopist needs to interpret it: named axes, the
physical voxel size and where it came from. Nothing here reads pixels; computing a region does.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import dask.array as da
import numpy as np

#: Canonical axis order. Readers transpose to it; a volume holds an ordered subset of it.
CANONICAL_AXES: tuple[str, ...] = ("c", "z", "y", "x")
SPATIAL_AXES: tuple[str, ...] = ("z", "y", "x")


@dataclass(frozen=True)
class Volume:
    """A lazily read EM image or volume.

    Args:
        data: dask array; one dimension per entry of ``axes``.
        axes: axis names in array order, an ordered subset of ``("c", "z", "y", "x")``
            that always contains ``y`` and ``x``.
        voxel_size: physical size in nm of one voxel along each *spatial* axis, in array order
            (``(z, y, x)`` for a volume, ``(y, x)`` for an image); ``None`` when the source does not
            say. Nothing guesses it silently.
        source: the URI or path the data was read from (``"<memory>"`` for arrays).
        metadata: reader-specific facts (format, multiscale levels, original dtype, ...).

    Examples:
        >>> import numpy as np
        >>> v = Volume.from_array(np.zeros((4, 8, 8), np.uint8), voxel_size=(40, 4, 4))
        >>> v.axes, v.shape, v.voxel_size_by_axis
        (('z', 'y', 'x'), (4, 8, 8), {'z': 40.0, 'y': 4.0, 'x': 4.0})
    """

    data: da.Array
    axes: tuple[str, ...]
    voxel_size: tuple[float, ...] | None = None
    source: str = "<memory>"
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        axes = tuple(self.axes)
        object.__setattr__(self, "axes", axes)
        if len(axes) != self.data.ndim:
            raise ValueError(f"axes {axes} do not match array with {self.data.ndim} dimensions")
        if len(set(axes)) != len(axes) or any(a not in CANONICAL_AXES for a in axes):
            raise ValueError(f"axes {axes} must be distinct names from {CANONICAL_AXES}")
        if [a for a in CANONICAL_AXES if a in axes] != list(axes):
            raise ValueError(f"axes {axes} are not in canonical order {CANONICAL_AXES}")
        if "y" not in axes or "x" not in axes:
            raise ValueError(f"axes {axes} must contain 'y' and 'x'")
        if self.voxel_size is not None:
            vs = tuple(float(v) for v in self.voxel_size)
            if len(vs) != len(self.spatial_axes):
                raise ValueError(
                    f"voxel_size {vs} needs one value per spatial axis {self.spatial_axes}"
                )
            if not all(np.isfinite(v) and v > 0 for v in vs):
                raise ValueError(f"voxel_size {vs} must be positive and finite")
            object.__setattr__(self, "voxel_size", vs)

    @classmethod
    def from_array(
        cls,
        array: Any,
        *,
        axes: tuple[str, ...] | str | None = None,
        voxel_size: tuple[float, ...] | None = None,
        source: str = "<memory>",
        metadata: dict[str, Any] | None = None,
        chunks: Any = "auto",
    ) -> Volume:
        """Wrap a numpy/dask array. Default axes: ``yx`` (2D), ``zyx`` (3D), ``czyx`` (4D)."""
        data = array if isinstance(array, da.Array) else da.from_array(np.asarray(array), chunks)
        if axes is None:
            defaults = {2: ("y", "x"), 3: ("z", "y", "x"), 4: ("c", "z", "y", "x")}
            if data.ndim not in defaults:
                raise ValueError(f"cannot infer axes for a {data.ndim}-D array; pass axes=")
            axes = defaults[data.ndim]
        return cls(data, tuple(axes), voxel_size, source, dict(metadata or {}))

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self.data.shape)

    @property
    def dtype(self) -> np.dtype:
        return self.data.dtype

    @property
    def ndim(self) -> int:
        return self.data.ndim

    @property
    def spatial_axes(self) -> tuple[str, ...]:
        return tuple(a for a in self.axes if a in SPATIAL_AXES)

    @property
    def voxel_size_by_axis(self) -> dict[str, float] | None:
        if self.voxel_size is None:
            return None
        return dict(zip(self.spatial_axes, self.voxel_size, strict=True))

    @property
    def nbytes(self) -> int:
        return int(self.data.nbytes)

    def replace(self, **changes: Any) -> Volume:
        """A copy with some fields changed (``data``, ``axes``, ``voxel_size``, ...)."""
        return replace(self, **changes)

    def compute(self) -> np.ndarray:
        """Read the whole volume into memory. Only for volumes known to be small."""
        return np.asarray(self.data.compute())

    def __repr__(self) -> str:
        return (
            f"Volume(shape={self.shape}, axes={''.join(self.axes)}, dtype={self.dtype}, "
            f"voxel_size={self.voxel_size}, source={self.source!r})"
        )
