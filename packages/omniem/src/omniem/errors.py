"""Errors of omniem; each message names the file or argument and what is wrong."""

from __future__ import annotations


class OmniEMError(Exception):
    """Base class of omniem's errors."""


class ModelFileError(OmniEMError, ValueError):
    """A model file is missing, unreadable or does not fit its configuration."""


class UnknownModelError(OmniEMError, KeyError):
    """No registered model of that name."""

    def __str__(self) -> str:  # KeyError quotes its message; show it plainly
        return str(self.args[0]) if self.args else ""
