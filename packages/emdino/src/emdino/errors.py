"""Errors raised by emdino.

Each error names the model or file it is about and says what to do, so the CLI can print it as one
line. All derive from `EMDinoError`; those about a bad argument also derive from `ValueError`, and
a missing file from `FileNotFoundError`, so plain ``except`` clauses keep working.
"""

from __future__ import annotations


class EMDinoError(Exception):
    """Base class of every emdino error."""


class UnknownModelError(EMDinoError, ValueError):
    """The name is neither a registered model nor an existing file."""


class WeightsNotFoundError(EMDinoError, FileNotFoundError):
    """A model's weights are not in the cache and cannot be downloaded (offline, no URL)."""


class DownloadError(EMDinoError):
    """A download failed (network error, HTTP error, size mismatch)."""


class ChecksumError(EMDinoError, ValueError):
    """A file's sha256 differs from the one recorded for it."""


class CorruptCheckpointError(EMDinoError, ValueError):
    """A checkpoint file cannot be read: truncated, not a checkpoint, or holds no tensors."""


class UnsafeCheckpointError(EMDinoError, ValueError):
    """A checkpoint holds pickled objects other than tensors; it is refused, never executed."""


class WeightsMismatchError(EMDinoError, ValueError):
    """Checkpoint keys or shapes do not fit the architecture (named in the message)."""
