"""One lab-file value against its declared type: the check every key of the lab file goes through.

TOML gives values their own types, and Python would happily turn the wrong ones into something
else (`tuple("gemma2:2b")` is nine characters, `bool("false")` is True). So a value is checked
before anything uses it, and a wrong one is a one-line ConfigError naming the file, the key, what
was expected and what was found.
"""

from __future__ import annotations

import datetime
import json
from typing import Any

from provision.errors import ConfigError


class RunCount:
    """The type of `probe.runs`: a whole number of runs, or the string "auto"."""

    shown = 'int or "auto"'  # its name in the lab-file reference


_EXPECTED: dict[type, str] = {
    RunCount: 'a whole number or "auto"',
    str: "a string",
    int: "a whole number",
    bool: "true or false",
    list: "a list of strings",
    dict: "a table",
}


def check_value(where: str, path: str, expected: type, value: Any, *, secret: bool = False) -> Any:
    """`value` itself when it has the `expected` type, else a ConfigError saying both.

    `where` names the lab file, `path` the key (`proxmox.port`, `vm.gemma.models`). The value
    of a `secret` key is never quoted, only its kind.
    """
    if _matches(expected, value):
        return value
    found = _kind(value) if secret else describe(value)
    raise ConfigError(
        f"{where}: {path} must be {_EXPECTED.get(expected, expected.__name__)}, got {found}"
    )


def _matches(expected: type, value: Any) -> bool:
    if expected is RunCount:
        return value == "auto" or _matches(int, value)
    if expected is int:
        return isinstance(value, int) and not isinstance(value, bool)  # bool is an int subclass
    if expected is list:
        return isinstance(value, list) and all(isinstance(item, str) for item in value)
    return isinstance(value, expected)


def describe(value: Any) -> str:
    """What the file holds, in TOML's words: `the string "false"`, `a list holding 1`."""
    if isinstance(value, list):
        odd = [item for item in value if not isinstance(item, str)]
        return f"a list holding {describe(odd[0])}" if odd else "a list of strings"
    if isinstance(value, bool):
        return f"the boolean {json.dumps(value)}"
    if isinstance(value, str):
        shown = value if len(value) <= 60 else value[:57] + "..."
        return f"the string {json.dumps(shown)}"
    if isinstance(value, int | float):
        return f"the number {value}"
    return _kind(value)


def _kind(value: Any) -> str:
    kinds: tuple[tuple[type | tuple[type, ...], str], ...] = (
        (bool, "a boolean"),
        (str, "a string"),
        ((int, float), "a number"),
        (list, "a list"),
        (dict, "a table"),
        ((datetime.date, datetime.time), "a date or time"),
    )
    for kind, words in kinds:
        if isinstance(value, kind):
            return words
    return type(value).__name__
