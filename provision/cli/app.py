"""What every command shares: the AppContext in ctx.obj, output helpers and the stderr reporter."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any, TextIO

import click

if TYPE_CHECKING:  # imported when first used, to keep `labctl --help` fast
    from pathlib import Path

    from provision.config import LabConfig
    from provision.pve.lease import VmLease
    from provision.pve.lifecycle import Lab


@dataclass
class StderrReporter:
    """Progress lines on stderr: `[  3.2s] clone: waiting for task ...`."""

    quiet: bool = False
    verbosity: int = 0
    stream: TextIO = field(default_factory=lambda: sys.stderr)
    _start: float = field(default_factory=time.monotonic)
    _stage: str = ""

    def _line(self, text: str) -> None:
        elapsed = time.monotonic() - self._start
        self.stream.write(f"[{elapsed:6.1f}s] {text}\n")
        self.stream.flush()

    def stage(self, name: str) -> None:
        self._stage = name
        if not self.quiet:
            self._line(f"{name} ...")

    def step(self, message: str) -> None:
        if not self.quiet:
            prefix = f"{self._stage}: " if self._stage else ""
            self._line(f"{prefix}{message}")

    def warn(self, message: str) -> None:
        self.stream.write(f"warning: {message}\n")
        self.stream.flush()


@dataclass
class AppContext:
    """Global options, resolved lazily so `labctl --help` stays fast."""

    config_path: str | None = None
    json_output: bool = False
    verbosity: int = 0
    quiet: bool = False
    state_dir_override: str | None = None

    @cached_property
    def reporter(self) -> StderrReporter:
        return StderrReporter(quiet=self.quiet, verbosity=self.verbosity)

    @cached_property
    def config(self) -> LabConfig:
        from provision.config import load_config

        return load_config(self.config_path)

    @cached_property
    def state_dir(self) -> Path:
        from provision import paths

        return paths.state_dir(self.state_dir_override)

    def lab(self) -> Lab:
        """The Lab for the lab file, state dir and reporter (imports the Proxmox client)."""
        from provision.pve.lifecycle import Lab

        return Lab(self.config, self.state_dir, self.reporter)

    def hold(self, lab: Lab, name: str, command: str, wait: str | None) -> VmLease:
        """The lease of VM `name` for `command`, to hold with `with` (--wait's value parsed)."""
        from provision.pve.lease import parse_wait

        return lab.lease(name, command, parse_wait(wait))

    def emit(self, data: Any, human: str | None = None) -> None:
        """--json: one JSON document on stdout. Otherwise the human rendering on stdout."""
        if self.json_output:
            import json  # here, not at the top: `labctl --help` never needs it

            click.echo(json.dumps(data, indent=2, sort_keys=False, default=str))
        elif human is not None:
            click.echo(human)

    def say(self, message: str) -> None:
        """A people-facing message: stderr, unless --quiet."""
        if not self.quiet:
            click.echo(message, err=True)


pass_app = click.make_pass_decorator(AppContext)

# --wait [SECONDS]: a bare --wait waits up to 600 s (provision/pve/lease.py parse_wait)
wait_option = click.option(
    "--wait",
    "wait",
    is_flag=False,
    flag_value="",
    default=None,
    metavar="[SECONDS]",
    help="when another labctl command holds the VM, wait for it (a bare --wait: up to 10 min) "
    "instead of failing at once",
)

# --jobs N: how many VMs `down --all` and `up` (every VM of the lab file) work on at once
jobs_option = click.option(
    "--jobs",
    "jobs_text",
    metavar="N",
    help="work on N VMs at once (default 8); one VM failing does not stop the others",
)
