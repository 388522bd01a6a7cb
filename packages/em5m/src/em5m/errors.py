"""Errors raised for bad EM input.

Every error names the file (or URI) and says what is wrong with it, so a user never has to read a
traceback from deep inside a reader library to find out which of their files is broken.
"""

from __future__ import annotations

import os


class EMDataError(ValueError):
    """A file or URI could not be used as EM data.

    Args:
        path: the file, directory or URI the problem is about.
        problem: what is wrong, in words a user can act on.

    Examples:
        >>> str(EMDataError("a.tif", "file is truncated"))
        'a.tif: file is truncated'
    """

    def __init__(self, path: str | os.PathLike[str], problem: str) -> None:
        self.path = os.fspath(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class VolumeNotFoundError(EMDataError, FileNotFoundError):
    """The file, directory or array path does not exist."""


class UnsupportedFormatError(EMDataError):
    """No reader recognises the file, or the extension does not match the content."""


class InvalidVolumeError(EMDataError):
    """The data was read but cannot be used: empty, non-finite, unknown axes, bad metadata."""


class DatasetUnavailableError(EMDataError):
    """A registered dataset is not on disk and cannot be downloaded (for example offline)."""
