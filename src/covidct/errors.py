"""Errors and "did you mean ...?" suggestions shared by every module.

Every user-facing failure in covidct is a ``CovidctError`` (a ``ValueError``) whose message names the
file or the value at fault and, where it can, suggests the fix.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class CovidctError(ValueError):
    """A bad input or configuration, reported with a message meant for the user."""


def did_you_mean(name: str, choices: Iterable[str], n: int = 3) -> str:
    """Return ' Did you mean: a, b?' for the closest choices, or '' when none is close."""
    matches = difflib.get_close_matches(str(name), [str(c) for c in choices], n=n, cutoff=0.5)
    return f" Did you mean: {', '.join(matches)}?" if matches else ""


def unknown_name_error(kind: str, name: str, choices: Iterable[str]) -> CovidctError:
    """Build the standard error for an unknown model, stage, dataset or class name."""
    choices = sorted(set(choices))
    return CovidctError(
        f"Unknown {kind} {name!r}.{did_you_mean(name, choices)} Known {kind}s: {', '.join(choices)}."
    )
