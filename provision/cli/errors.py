"""The one place that turns exceptions into a one-line message and an exit code."""

from __future__ import annotations

import logging
import sys
import traceback
from pathlib import Path

import click

from provision.errors import ExitCode, LabctlError, exit_code_for

log = logging.getLogger("labctl")


def report_error(error: BaseException, *, verbosity: int = 0) -> int:
    """Print the error as one line on stderr and return the exit code for it."""
    code = exit_code_for(error)
    if isinstance(error, LabctlError):
        click.echo(f"error: {error}", err=True)
    elif isinstance(error, KeyboardInterrupt):
        click.echo("interrupted", err=True)
    else:
        where = _write_debug_log(error)
        click.echo(f"error: unexpected {type(error).__name__}: {_first_line(error)} "
                   f"(details in {where}; please report it)", err=True)
        if verbosity >= 2:
            # Our own code's traceback: secrets are wrapped in Secret and never show here.
            traceback.print_exception(error, file=sys.stderr)
    return int(code)


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0][:200] if text else ""


def _write_debug_log(error: BaseException) -> Path:
    import tempfile

    with tempfile.NamedTemporaryFile(
        "w", prefix="labctl-error-", suffix=".log", delete=False, encoding="utf-8"
    ) as handle:
        traceback.print_exception(error, file=handle)
    return Path(handle.name)


def click_exit_code(error: click.ClickException) -> int:
    return int(ExitCode.USAGE) if isinstance(error, click.UsageError) else error.exit_code
