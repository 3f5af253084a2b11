"""The one place that turns exceptions into a one-line message and an exit code."""

from __future__ import annotations

import os
import platform
import sys
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import click

from provision import __version__
from provision.errors import ExitCode, LabctlError, exit_code_for

CRASH_LOGS_KEPT = 20  # older crash logs are removed, so a crash loop cannot fill the disk


def report_error(
    error: BaseException, *, verbosity: int = 0, crash_dir: Callable[[], Path] | None = None
) -> int:
    """Print the error as one line on stderr and return the exit code for it.

    An unexpected error (a bug) also leaves its traceback in a crash log under `crash_dir()`,
    the state dir's crash/, whose name the line gives.
    """
    code = exit_code_for(error)
    if isinstance(error, LabctlError):
        click.echo(f"error: {error}", err=True)
    elif isinstance(error, KeyboardInterrupt):
        click.echo("interrupted", err=True)
    else:
        click.echo(
            f"error: unexpected {type(error).__name__}: {_first_line(error)} "
            f"({_crash_log_note(error, crash_dir)}; please report it)",
            err=True,
        )
        if verbosity >= 2:
            # Our own code's traceback: secrets are wrapped in Secret and never show here.
            traceback.print_exception(error, file=sys.stderr)
    return int(code)


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0][:200] if text else ""


def _crash_log_note(error: BaseException, crash_dir: Callable[[], Path] | None) -> str:
    """Where the traceback went, for the error line; the reason when it could not be written."""
    if crash_dir is None:
        return "run with -vv for the traceback"
    try:
        return f"details in {_write_crash_log(error, crash_dir())}"
    except OSError as failure:
        return f"no crash log: {failure.strerror or failure}; run with -vv for the traceback"


def _write_crash_log(error: BaseException, directory: Path) -> Path:
    """crash-<UTC time>-<pid>.log in `directory`, mode 600 (only its user reads tracebacks);
    then all but the newest CRASH_LOGS_KEPT crash logs are removed."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
    path = directory / f"crash-{stamp}-{os.getpid()}.log"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(f"labctl {__version__}, Python {platform.python_version()}, {stamp}\n\n")
        traceback.print_exception(error, file=handle)
    _prune_crash_logs(directory, CRASH_LOGS_KEPT)
    return path


def _prune_crash_logs(directory: Path, keep: int) -> None:
    logs = sorted(path.name for path in directory.glob("crash-*.log"))  # names start with the time
    for old in logs[: max(len(logs) - keep, 0)]:
        # missing_ok: another labctl may be pruning at the same moment
        (directory / old).unlink(missing_ok=True)


def click_exit_code(error: click.ClickException) -> int:
    return int(ExitCode.USAGE) if isinstance(error, click.UsageError) else error.exit_code
