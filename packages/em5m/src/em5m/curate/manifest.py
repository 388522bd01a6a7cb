"""The tile manifest: one parquet row per kept tile, enough to find it and to rebuild it.

Columns (`MANIFEST_SCHEMA`):

- where it is stored: ``key`` (WebDataset key, unique), ``shard``;
- where it came from: ``dataset_id``, ``uri``, ``source_format``, ``source_options`` (JSON),
  ``channel``, ``level``, ``axis`` (xy/xz/yz), ``slice`` (index along the sliced axis, level
  voxels), ``bbox_level`` and ``bbox_level0`` (``z0, z1, y0, y1, x0, x1``, half-open, in the
  sampled level and in level-0 voxels), ``voxel_size_nm`` and ``level_voxel_size_nm``
  (``z, y, x``; z is null for stacks of independent 2D images), ``voxel_size_origin``;
- how it was made: ``target_pixel_size_nm``, ``pixel_size_nm`` (real, rows/cols), ``tile_size``,
  ``src_tile`` (level voxels per tile, rows/cols), ``resample`` ("none"/"area"), ``source_dtype``,
  ``std_low``/``std_high``/``std_percentiles``/``std_method`` (the uint8 window);
- what it is: ``dhash`` (uint64), the filter features (``f_<name>``), ``learned_score``;
- provenance: ``modality``, ``species``, ``organ``, ``tissue``, ``licence``, ``citation``,
  ``doi``, ``unit`` (work unit key), ``index`` (position in the corpus order).

`check_manifest` validates a table or file against it (types, nulls, unique keys, box shapes).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from em5m.curate.filters import FEATURES

_STR = pa.string()
_F64 = pa.float64()
_I64 = pa.int64()
_I32 = pa.int32()

#: Columns shared by unit parts, the manifest and the removed-tiles table.
TILE_FIELDS: list[pa.Field] = [
    pa.field("key", _STR, nullable=False),
    pa.field("dataset_id", _STR, nullable=False),
    pa.field("uri", _STR, nullable=False),
    pa.field("source_format", _STR),
    pa.field("source_options", _STR, nullable=False),
    pa.field("channel", _I32),
    pa.field("level", _I32, nullable=False),
    pa.field("axis", _STR, nullable=False),
    pa.field("slice", _I64, nullable=False),
    pa.field("bbox_level", pa.list_(_I64, 6), nullable=False),
    pa.field("bbox_level0", pa.list_(_I64, 6), nullable=False),
    pa.field("voxel_size_nm", pa.list_(_F64, 3), nullable=False),
    pa.field("level_voxel_size_nm", pa.list_(_F64, 3), nullable=False),
    pa.field("voxel_size_origin", _STR, nullable=False),
    pa.field("target_pixel_size_nm", _F64, nullable=False),
    pa.field("pixel_size_nm", pa.list_(_F64, 2), nullable=False),
    pa.field("tile_size", _I32, nullable=False),
    pa.field("src_tile", pa.list_(_I32, 2), nullable=False),
    pa.field("resample", _STR, nullable=False),
    pa.field("source_dtype", _STR, nullable=False),
    pa.field("std_low", _F64, nullable=False),
    pa.field("std_high", _F64, nullable=False),
    pa.field("std_percentiles", pa.list_(_F64, 2), nullable=False),
    pa.field("std_method", _STR, nullable=False),
    pa.field("dhash", pa.uint64(), nullable=False),
    *[pa.field(f"f_{name}", pa.float32(), nullable=False) for name in FEATURES],
    pa.field("learned_score", pa.float32()),
    pa.field("modality", _STR, nullable=False),
    pa.field("species", _STR, nullable=False),
    pa.field("organ", _STR),
    pa.field("tissue", _STR),
    pa.field("licence", _STR, nullable=False),
    pa.field("citation", _STR, nullable=False),
    pa.field("doi", _STR),
    pa.field("unit", _STR, nullable=False),
]

#: A unit's part: every sampled tile, why it was removed ("" = kept) and where its PNG is.
UNIT_SCHEMA = pa.schema(
    [
        *TILE_FIELDS,
        pa.field("reason", _STR, nullable=False),
        pa.field("blob_offset", _I64, nullable=False),
        pa.field("blob_length", _I64, nullable=False),
    ]
)

#: The corpus manifest (``manifest.parquet``): kept tiles in corpus order.
MANIFEST_SCHEMA = pa.schema(
    [
        pa.field("index", _I64, nullable=False),
        *TILE_FIELDS[:1],
        pa.field("shard", _STR, nullable=False),
        *TILE_FIELDS[1:],
    ],
    metadata={b"em5m.manifest_version": b"1"},
)

#: Tiles that were sampled but left out (``removed.parquet``), with the reason.
REMOVED_SCHEMA = pa.schema(
    [
        *TILE_FIELDS,
        pa.field("reason", _STR, nullable=False),
        pa.field("duplicate_of", _STR),
    ]
)


class ManifestSchemaError(ValueError):
    """A manifest does not match `MANIFEST_SCHEMA` or breaks one of its invariants."""


def check_manifest(manifest: pa.Table | str | os.PathLike[str]) -> pa.Table:
    """Validate a manifest table (or parquet file) and return it.

    Checks: every column of `MANIFEST_SCHEMA` present with its type, no nulls in non-nullable
    columns, unique keys without dots, ``index`` equal to 0..N-1, boxes with start < stop,
    non-empty licence and citation.

    Raises:
        ManifestSchemaError: listing every problem found.

    Examples:
        >>> import pyarrow as pa
        >>> check_manifest(MANIFEST_SCHEMA.empty_table()).num_rows
        0
    """
    table = manifest if isinstance(manifest, pa.Table) else pq.read_table(Path(manifest))
    problems = []
    for field in MANIFEST_SCHEMA:
        if field.name not in table.column_names:
            problems.append(f"missing column {field.name!r}")
            continue
        col = table.column(field.name)
        if not col.type.equals(field.type):
            problems.append(f"column {field.name!r} has type {col.type}, expected {field.type}")
        if not field.nullable and col.null_count:
            problems.append(f"column {field.name!r} has {col.null_count} nulls")
    extra = set(table.column_names) - set(MANIFEST_SCHEMA.names)
    if extra:
        problems.append(f"unexpected columns {sorted(extra)}")
    if not problems and table.num_rows:
        keys = table.column("key").to_pylist()
        if len(set(keys)) != len(keys):
            problems.append("keys are not unique")
        if any("." in k or "/" in k for k in keys):
            problems.append("keys contain '.' or '/'")
        if table.column("index").to_pylist() != list(range(table.num_rows)):
            problems.append("index is not 0..N-1 in order")
        for name in ("bbox_level", "bbox_level0"):
            box = np.asarray(table.column(name).to_pylist(), np.int64)
            if (box[:, 1::2] <= box[:, 0::2]).any():
                problems.append(f"{name} has a start >= stop")
        for name in ("licence", "citation"):
            if any(not str(v).strip() for v in table.column(name).to_pylist()):
                problems.append(f"{name} has blank values")
    if problems:
        raise ManifestSchemaError("manifest does not match the schema: " + "; ".join(problems))
    return table
