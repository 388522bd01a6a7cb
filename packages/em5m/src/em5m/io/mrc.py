"""MRC / CCP4 reader (``.mrc``, ``.rec``, ``.st``, ``.ali``, ``.map``, ``.mrcs``).

The data block is memory-mapped with mrcfile, so opening costs a header read and a block costs
only the pages it touches. Voxel size comes from the header (cell / grid, in Angstrom) and is
converted to nm; a zero cell means "not recorded" and gives ``voxel_size=None``. MRC2014 mode 0
is *signed* int8 (some software writes unsigned bytes into mode 0; we keep the standard reading
and say so in ``metadata["mrc_mode"]``).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence

import mrcfile

from em5m.errors import InvalidVolumeError, UnsupportedFormatError
from em5m.io._build import build_volume
from em5m.io._checks import check_level
from em5m.io._lazy import SliceableReader, file_state
from em5m.io._sniff import describe, sniff
from em5m.io._units import round_sig
from em5m.volume import Volume

EXTENSIONS: tuple[str, ...] = (".mrc", ".mrcs", ".rec", ".st", ".ali", ".preali", ".map", ".ccp4")


def can_open(path: str) -> bool:
    """True for a file with an MRC extension or the MRC2014 ``MAP `` id."""
    return os.path.isfile(path) and (path.lower().endswith(EXTENSIONS) or sniff(path) == "mrc")


def open(  # noqa: A001 - the reader protocol is ``open(uri) -> Volume``
    path: str,
    *,
    level: int = 0,
    dataset: str | None = None,
    axes: str | Sequence[str] | None = None,
    check_finite: bool = True,
) -> Volume:
    """Open an MRC file lazily (memory-mapped).

    Args:
        path: the file.
        level: must be 0.
        dataset: not used (must be None).
        axes: override axes (default: z, y, x; y, x for a single image).
        check_finite: NaN/inf checks for float modes.

    Examples:
        >>> import tempfile, numpy as np, mrcfile
        >>> p = tempfile.mkdtemp() + "/t.mrc"
        >>> with mrcfile.new(p) as m:
        ...     m.set_data(np.zeros((2, 4, 4), np.int16)); m.voxel_size = (10.0, 8.0, 8.0)
        >>> open(p).voxel_size   # header is x, y, z in Angstrom; Volume is z, y, x in nm
        (0.8, 0.8, 1.0)
    """
    check_level(path, level, 1)
    if dataset is not None:
        raise InvalidVolumeError(path, "MRC files have no inner datasets (dataset= given)")
    kind = sniff(path)
    if kind == "empty":
        raise UnsupportedFormatError(path, "file is empty (0 bytes)")
    if kind not in ("mrc", None):
        raise UnsupportedFormatError(
            path,
            f"the extension says MRC but the content looks like {describe(kind)}; "
            "rename the file to match its content",
        )
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            # permissive: old (pre-2014) files lack the map id; we judge the header ourselves.
            mrc = mrcfile.mmap(path, mode="r", permissive=True)
        data = mrc.data
        header = mrc.header
        voxel = mrc.voxel_size
        mrc.close()  # the memmap keeps its own mapping open; no file handle is held
    except Exception as exc:
        raise InvalidVolumeError(
            path, f"not a readable MRC file ({type(exc).__name__}: {exc})"
        ) from None
    if data is None:
        problems = "; ".join(str(w.message) for w in caught) or "header is invalid"
        raise InvalidVolumeError(path, f"not a valid MRC file: {problems}")
    if kind is None and caught:
        # No MAP id and mrcfile complained: most likely not an MRC file at all.
        problems = "; ".join(str(w.message) for w in caught)
        raise UnsupportedFormatError(
            path, f"does not look like an MRC file (no 'MAP ' id at byte 208): {problems}"
        )

    vs = {"x": float(voxel.x) / 10.0, "y": float(voxel.y) / 10.0, "z": float(voxel.z) / 10.0}
    voxel_nm = {k: (round_sig(v) if v > 0 else None) for k, v in vs.items()}
    if all(v is None for v in voxel_nm.values()):
        voxel_nm = None
    mode = int(header.mode)
    metadata = {
        "format": "mrc",
        "mrc_mode": mode,
        "mrc_mode_note": "mode 0 is signed int8 per MRC2014" if mode == 0 else "",
        "voxel_size_source": "mrc-header (Angstrom)" if voxel_nm else "none",
        "grid": (int(header.nx), int(header.ny), int(header.nz)),
        "space_group": int(header.ispg),
    }
    # Files are stored slice-contiguous: one z slice is the natural storage chunk.
    storage = data.shape if data.ndim == 2 else (1, *data.shape[1:])
    reader = SliceableReader(path, data, storage, keepalive=None, state=file_state(path))
    stored_axes = ["y", "x"] if data.ndim == 2 else ["z", "y", "x"] if data.ndim == 3 else None
    return build_volume(
        reader,
        stored_axes=stored_axes,
        voxel_size=voxel_nm,
        metadata=metadata,
        axes=axes,
        check_finite=check_finite,
    )
