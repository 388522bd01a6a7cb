"""Failures as named errors, and the run report (``report.json`` + a printed summary).

A failure never stops a run: it is recorded with the error's class name, a kind a user can act
on, the dataset and (for a work unit) the unit key.

=========================  ===========================================================
kind                       errors
=========================  ===========================================================
``access_denied``          `SourceAuthError` (token missing or refused)
``unreachable_source``     `VolumeNotFoundError`, `DatasetUnavailableError`,
                           `SourceUnavailableError` (incl. not found), network errors
``byte_budget``            `ByteBudgetExceeded` (raise the entry's ``max_bytes``)
``unsupported_source``     `UnsupportedSourceError` (unknown scheme, bad option)
``wrong_voxel_metadata``   `VoxelMetadataError`
``missing_licence``        `MissingLicenceError`
``invalid_entry``          `InvalidCatalogEntryError` (other invalid catalog fields)
``corrupt_file``           `UnsupportedFormatError`, `InvalidVolumeError`, `IntegrityError`
``internal_error``         anything else (a bug: please report it)
=========================  ===========================================================
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from em5m.catalog import InvalidCatalogEntryError, MissingLicenceError
from em5m.curate.sample import VoxelMetadataError
from em5m.errors import (
    DatasetUnavailableError,
    InvalidVolumeError,
    UnsupportedFormatError,
    VolumeNotFoundError,
)
from em5m.sources.base import (
    ByteBudgetExceeded,
    IntegrityError,
    SourceAuthError,
    SourceUnavailableError,
    UnsupportedSourceError,
)

_KINDS: list[tuple[str, tuple[type[BaseException], ...]]] = [
    ("access_denied", (SourceAuthError,)),
    (
        "unreachable_source",
        (
            VolumeNotFoundError,
            DatasetUnavailableError,
            SourceUnavailableError,
            ConnectionError,
            TimeoutError,
        ),
    ),
    ("byte_budget", (ByteBudgetExceeded,)),
    ("unsupported_source", (UnsupportedSourceError,)),
    ("corrupt_file", (IntegrityError,)),
    ("wrong_voxel_metadata", (VoxelMetadataError,)),
    ("missing_licence", (MissingLicenceError,)),
    ("invalid_entry", (InvalidCatalogEntryError,)),
    ("corrupt_file", (UnsupportedFormatError, InvalidVolumeError)),
]
# Remote connectors (em5m.sources) may add their own EMDataError subclasses; their names say
# which kind they are.
_NAME_HINTS = [
    (
        "unreachable_source",
        ("Unreachable", "Connection", "Timeout", "NotFound", "Unavailable", "Network"),
    ),
    ("access_denied", ("Auth", "Permission", "Forbidden", "Token")),
]


def error_kind(err: BaseException | str) -> str:
    """The report kind of an error (instance, or class name for errors seen in other processes).

    Examples:
        >>> error_kind(VolumeNotFoundError("/x", "no such file")), error_kind("MissingLicenceError")
        ('unreachable_source', 'missing_licence')
    """
    if isinstance(err, str):
        for kind, classes in _KINDS:
            if any(c.__name__ == err for c in classes):
                return kind
        name = err
    else:
        for kind, classes in _KINDS:
            if isinstance(err, classes):
                return kind
        name = "".join(c.__name__ for c in type(err).__mro__)
    for kind, hints in _NAME_HINTS:
        if any(h in name for h in hints):
            return kind
    return "internal_error"


def failure(
    stage: str, err: BaseException, *, dataset: str | None = None, unit: str | None = None
) -> dict[str, Any]:
    """A failure record: ``{stage, dataset, unit, error, kind, message}``."""
    return {
        "stage": stage,
        "dataset": dataset,
        "unit": unit,
        "error": type(err).__name__,
        "kind": error_kind(err),
        "message": str(err),
    }


def summarize(report: Mapping[str, Any]) -> str:
    """A short human-readable summary of a report (what `em5m curate` prints)."""
    lines = [
        f"curated {report['totals']['kept']} tiles into {len(report['shards'])} shard(s) "
        f"at {report['out']} ({report['elapsed_s']:.1f} s, "
        f"{report['totals']['sampled'] / max(report['elapsed_s'], 1e-9):.0f} sampled tiles/s)",
        f"{'dataset':28s} {'sampled':>8s} {'kept':>7s} {'filtered':>9s} {'dedup':>6s}  status",
    ]
    for name, d in report["datasets"].items():
        lines.append(
            f"{name[:28]:28s} {d['sampled']:8d} {d['kept']:7d} {sum(d['filtered'].values()):9d} "
            f"{d['deduplicated']:6d}  {d['status']}"
        )
    failures: Sequence[Mapping[str, Any]] = report["failures"]
    if failures:
        lines.append(f"{len(failures)} failure(s) (the rest of the run completed):")
        for f in failures:
            where = f["unit"] or f["dataset"] or "?"
            lines.append(f"  [{f['kind']}] {where}: {f['error']}: {f['message']}")
    return "\n".join(lines)


def dumps(report: Mapping[str, Any]) -> str:
    return json.dumps(report, indent=2, sort_keys=False, default=str)
