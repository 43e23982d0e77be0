"""Keyword options checked before use: by name (did-you-mean), by allowed values, and by type.

Dataset loaders take options (``data.options`` in a run config: ``n`` for phantoms, ``groups`` for the
``folder`` dataset, ...). A misspelt or foreign option would otherwise reach the loader as a
``TypeError`` after a run folder exists, and a bad value could be taken silently (``groups: bogus``
read as "image"). ``check_options`` refuses both up front; ``covidct.data.datasets.check_dataset_options``
applies it to a registered loader's signature.
"""

from __future__ import annotations

from covidct.errors import CovidctError, did_you_mean


def check_options(options: dict, known: dict, choices: dict, what: str, where: str = "data.options") -> dict:
    """Check ``options`` against ``known`` (name -> default) and ``choices`` (name -> allowed values).

    Args:
        options: the given options.
        known: the accepted names with their defaults; a value must have its default's type (an int for an
            int default, a number for a float, a string, a bool, a list) unless the default is None.
        choices: allowed values of some options.
        what: what takes them, for the message (e.g. ``dataset 'folder'``).
        where: how the user wrote them, for the message.

    Returns:
        ``options``.

    Raises:
        CovidctError: an unknown name (close names suggested, the known ones listed) or a bad value.
    """
    if options is None:
        return {}
    if not isinstance(options, dict):
        raise CovidctError(f"{where} must be a mapping of loader options, got {options!r}.")
    for key, value in options.items():
        if key not in known:
            listing = ", ".join(sorted(known)) or "none"
            raise CovidctError(
                f"{where}: {what} has no option {key!r}.{did_you_mean(key, known)} Its options: {listing}. Remove it "
                "(on the command line, --set data.options={} drops every option)."
            )
        if key in choices:
            if value not in choices[key]:
                raise CovidctError(
                    f"{where}.{key}={value!r} is not one of {list(choices[key])} for {what}."
                    f"{did_you_mean(str(value), [str(c) for c in choices[key]])}"
                )
            continue
        default = known[key]
        expected = _option_type(default)
        if expected and not _has_type(value, expected):
            raise CovidctError(f"{where}.{key}={value!r} must be {expected} for {what} (default {default!r}).")
    return options


def _option_type(default) -> str:
    if isinstance(default, bool):
        return "true or false"
    if isinstance(default, int):
        return "an integer"
    if isinstance(default, float):
        return "a number"
    if isinstance(default, str):
        return "a string"
    if isinstance(default, (tuple, list)):
        return "a list"
    return ""


def _has_type(value, expected: str) -> bool:
    checks = {
        "true or false": lambda v: isinstance(v, bool),
        "an integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
        "a number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
        "a string": lambda v: isinstance(v, str),
        "a list": lambda v: isinstance(v, (list, tuple)),
    }
    return checks[expected](value)
