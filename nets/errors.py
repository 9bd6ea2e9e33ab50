"""Typed errors of the project.

Every error a user can cause derives from :class:`AnytimeError`, so the command
line can print one clear line for all of them and library users can catch one
base class.  They live in ``nets`` because it is the bottom of the dependency
order (``nets`` <- ``anytime`` <- ``scheduler`` <- ``simulator``).
"""

from __future__ import annotations


class AnytimeError(Exception):
    """Base class of every error caused by bad input to the project.

    ``exit_status`` is what the command line exits with: 2 for usage and input
    errors (the default), 3 for a budget or allocation that cannot be met;
    I/O and internal errors, which are not AnytimeErrors, exit 1.
    """

    exit_status = 2


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


class TrainingDivergedError(AnytimeError):
    """The training loss became NaN or infinite; the last good checkpoint is kept."""

    exit_status = 1  # the settings were valid; the run itself failed


class OutputError(AnytimeError):
    """An output destination is not the tool's to write: it holds someone
    else's files, another run is writing it, or it cannot be written."""
