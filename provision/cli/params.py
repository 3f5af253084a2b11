"""Click options shared by several commands."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])


def runs_options(what: str) -> Callable[[F], F]:
    """`--runs N|auto` and `--max-runs`, as probe and sweep take them. `--runs` is checked by
    the library (provision.probe.options.run_count), so a bad one is a one-line error."""

    def decorate(command: F) -> F:
        command = click.option(
            "--max-runs",
            type=click.IntRange(6, 1000),
            help="the most runs of --runs auto (default: probe.max_runs, 20)",
        )(command)
        return click.option(
            "--runs",
            metavar="N|auto",
            help=f"{what}, or auto: until the median tok/s is known to +-5 %",
        )(command)

    return decorate
