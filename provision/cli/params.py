"""Click parameter types shared by several commands."""

from __future__ import annotations

from typing import Any

import click


class RunsParam(click.ParamType):
    """`--runs`: a whole number of measured runs in [1, highest], or `auto`."""

    name = "N|auto"

    def __init__(self, highest: int) -> None:
        self.highest = highest

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, int) or value == "auto":
            return value
        try:
            runs = int(value)
        except ValueError:
            self.fail(f'{value!r} is neither a whole number nor "auto"', param, ctx)
        if not 1 <= runs <= self.highest:
            self.fail(f"{runs} is not in the range 1-{self.highest}", param, ctx)
        return runs
