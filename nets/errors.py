"""Typed errors of the project.

Every error a user can cause derives from :class:`AnytimeError`, so the command
line can print one clear line for all of them and library users can catch one
base class.  They live in ``nets`` because it is the bottom of the dependency
order (``nets`` <- ``anytime`` <- ``scheduler`` <- ``simulator``).
"""

from __future__ import annotations


class AnytimeError(Exception):
    """Base class of every error caused by bad input to the project."""


class SpecError(AnytimeError, ValueError):
    """A sub-network name or (depth, width) pair is malformed or out of range."""


class UnknownNetError(AnytimeError, KeyError):
    """No network is registered under the requested name."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else ""


class RegistryError(AnytimeError):
    """A network name was registered twice."""


class CheckpointError(AnytimeError):
    """A checkpoint is missing, corrupt, or belongs to another configuration."""


class DataError(AnytimeError):
    """A data set is missing or not in a layout the loader understands."""


class ConfigError(AnytimeError, ValueError):
    """A configuration value is out of its valid range."""
