"""Local files and directories: anything `em5m.open_volume` reads (``file://`` or a path).

TIFF, PNG/JPEG slice folders, MRC, HDF5 (``file.h5::/raw``), Zarr/OME-Zarr, N5 and neuroglancer
precomputed on disk. The level nearest ``pixel_size_nm`` is chosen from the reader's
``metadata["levels"]``. Local reads are not rate-limited or byte-budgeted (the limits protect
remote services); the options are accepted so one catalog can list every source alike.
"""

from __future__ import annotations

from typing import Any

from em5m.errors import VolumeNotFoundError
from em5m.sources.base import SourceContext, SourceNotFoundError, choose_level, finish_volume
from em5m.volume import Volume

KIND = "local"

OPTIONS = {
    "dataset": "array path inside a container (HDF5, Zarr, N5), like 'file.h5::/raw'",
    "axes": "axis names in stored order when the file lacks them, e.g. 'zyx'",
}


def open_local(
    uri: str,
    *,
    pixel_size_nm: float | None = None,
    options: dict[str, Any] | None = None,
    token: str | None = None,
) -> Volume:
    """Open a local file or directory lazily through `em5m.open_volume`.

    Args:
        uri: a path, ``file://`` URL, ``<container>::<inner>`` or ``<format>://file://...``.
        pixel_size_nm: open the level nearest this in-plane pixel size (multiscale stores).
        options: ``dataset``, ``axes``, ``level`` (others of the common options are accepted
            and ignored).
        token: unused.

    Raises:
        SourceNotFoundError: the path does not exist (also a `VolumeNotFoundError`'s message).
        em5m.EMDataError: what `open_volume` raises for unreadable data.

    Examples:
        >>> import tempfile, numpy as np, tifffile
        >>> p = tempfile.mkdtemp() + "/a.tif"
        >>> tifffile.imwrite(p, np.zeros((2, 8, 8), np.uint8))
        >>> v = open_local(p)
        >>> v.shape, v.metadata["source"], v.metadata["level"]
        ((2, 8, 8), 'local', 0)
    """
    from em5m.io import open_volume

    ctx = SourceContext.create(uri, KIND, options, token=token, extra_options=OPTIONS)
    kwargs = {"dataset": ctx.options.get("dataset"), "axes": ctx.options.get("axes")}
    try:
        volume = open_volume(uri, **kwargs)
    except VolumeNotFoundError as exc:
        raise SourceNotFoundError(uri, exc.problem) from None
    levels = volume.metadata.get("levels") or [{"voxel_size": volume.voxel_size}]
    # One level: nothing to choose (and no voxel size needed to choose it).
    single = len(levels) == 1 and "level" not in ctx.options
    level = 0 if single else choose_level(ctx, levels, pixel_size_nm)
    if level != volume.metadata.get("level", 0):
        volume = open_volume(uri, level=level, **kwargs)
    return finish_volume(volume, ctx, store=volume.metadata.get("path"))
