"""Error hierarchy.

Every error a user can cause is a :class:`MetaregError`; each also subclasses the builtin
exception it is closest to, so ``except ValueError`` keeps working for callers that do not know
metareg.  Messages say what was expected, what came, and how to fix it: the CLI prints them as one
line and exits with status 2.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = [
    "MetaregError",
    "ConfigError",
    "UnknownNameError",
    "DuplicateNameError",
    "PluginError",
    "IncompatibleError",
    "OutputError",
    "ShapeError",
    "DataError",
    "did_you_mean",
]


class MetaregError(Exception):
    """Base class of every error metareg raises on purpose."""


class ConfigError(MetaregError, ValueError):
    """A hyperparameter or option is unknown, of the wrong type, or out of range."""


class UnknownNameError(MetaregError, KeyError):
    """A registry lookup found nothing under the name asked for."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class DuplicateNameError(MetaregError, ValueError):
    """Two plugins registered the same name."""


class PluginError(MetaregError, RuntimeError):
    """A plugin failed to load or declared something invalid."""


class IncompatibleError(MetaregError, ValueError):
    """An algorithm cannot run on the benchmark (or backbone) asked for."""


class OutputError(MetaregError, OSError):
    """The output directory cannot be created or written."""


class ShapeError(MetaregError, ValueError):
    """A tensor argument has the wrong rank, shape, dtype or device."""


class DataError(MetaregError, OSError):
    """A dataset folder is missing or laid out wrongly, or one of its files cannot be read."""


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """Return ``" Did you mean 'x'?"`` for the closest choice, or ``""`` when none is close."""
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return f" Did you mean '{close[0]}'?" if close else ""
