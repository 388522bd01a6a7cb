"""Corpus curation: a catalog of EM datasets -> deduplicated, sharded 2D tiles + parquet manifest.

Public API:

- `curate` (with `CurateConfig`): the whole run (plan, dask work units, dedup, shards, report).
- `read_tile`: rebuild one tile from its manifest row (re-reads the source).
- `check_manifest`, `MANIFEST_SCHEMA`: the manifest's pyarrow schema and its validator.
- `tile_features`, `classify`, `FilterThresholds`, `load_thresholds`: the informativeness filter.
- `dhash`, `HammingIndex`, `candidate_pairs`, `greedy_keep`, `max_shift_correlation`: dedup.
- `REFERENCE_CATALOG`: catalog of the development data in ``EMSSL_DATA``.

See docs/em5m/curate.md.
"""

from __future__ import annotations

from importlib import resources

from em5m.curate.assemble import DedupConfig
from em5m.curate.dedup import (
    HammingIndex,
    candidate_pairs,
    dhash,
    embedding_duplicates,
    greedy_keep,
    max_shift_correlation,
)
from em5m.curate.filters import FilterThresholds, classify, load_thresholds, tile_features
from em5m.curate.manifest import MANIFEST_SCHEMA, ManifestSchemaError, check_manifest
from em5m.curate.pipeline import CurateConfig, curate
from em5m.curate.retile import read_tile
from em5m.curate.sample import SampleOptions, VoxelMetadataError

#: Catalog YAML of the development datasets (expands ``${EMSSL_DATA}``).
REFERENCE_CATALOG = resources.files("em5m.curate").joinpath("catalogs/emssl_data.yaml")

__all__ = [
    "MANIFEST_SCHEMA",
    "REFERENCE_CATALOG",
    "CurateConfig",
    "DedupConfig",
    "FilterThresholds",
    "HammingIndex",
    "ManifestSchemaError",
    "SampleOptions",
    "VoxelMetadataError",
    "candidate_pairs",
    "check_manifest",
    "classify",
    "curate",
    "dhash",
    "embedding_duplicates",
    "greedy_keep",
    "load_thresholds",
    "max_shift_correlation",
    "read_tile",
    "tile_features",
]
