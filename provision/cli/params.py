"""Click parameter types shared by several commands."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])


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


def runs_options(highest: int, what: str) -> Callable[[F], F]:
    """`--runs N|auto` and `--max-runs`, as probe and sweep take them."""

    def decorate(command: F) -> F:
        command = click.option(
            "--max-runs",
            type=click.IntRange(6, 1000),
            help="the most runs of --runs auto (default: probe.max_runs, 20)",
        )(command)
        return click.option(
            "--runs",
            type=RunsParam(highest),
            help=f"{what}, or auto: until the median tok/s is known to +-5 %",
        )(command)

    return decorate
