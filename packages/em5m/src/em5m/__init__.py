"""em5m: EM data layer and corpus tooling of EM-SSL.

Public API (imported lazily so that ``import em5m`` stays cheap):

- :class:`Volume`: a lazy EM image/volume with named axes and voxel size.
- :func:`open_volume`, :func:`save_volume`: read any supported format; write OME-Zarr or TIFF.
- :func:`open_source`: the same for remote services (OpenOrganelle, WebKnossos, BossDB, EMPIAR).
- :mod:`em5m.datasets`: the reference EM datasets (``EMSSL_DATA``).
- :mod:`em5m.synth`: procedural EM phantoms with ground truth.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from em5m.errors import (
    DatasetUnavailableError,
    EMDataError,
    InvalidVolumeError,
    UnsupportedFormatError,
    VolumeNotFoundError,
)
from em5m.volume import Volume

__version__ = "0.1.0"

__all__ = [
    "DatasetUnavailableError",
    "EMDataError",
    "InvalidVolumeError",
    "UnsupportedFormatError",
    "Volume",
    "VolumeNotFoundError",
    "__version__",
    "open_source",
    "open_volume",
    "save_volume",
]

if TYPE_CHECKING:
    from em5m.io import open_volume
    from em5m.sources import open_source
    from em5m.write import save_volume


def __getattr__(name: str) -> Any:
    if name == "open_volume":
        from em5m.io import open_volume

        return open_volume
    if name == "save_volume":
        from em5m.write import save_volume

        return save_volume
    if name == "open_source":
        from em5m.sources import open_source

        return open_source
    if name in ("datasets", "synth", "sources", "catalog"):
        import importlib

        return importlib.import_module(f"em5m.{name}")
    raise AttributeError(f"module 'em5m' has no attribute {name!r}")
