"""Run `labctl` the way a user does, in this process or (where that is the point) in a child.

`labctl(...)` is the in-process runner, like httpie's `http()`: it calls `provision.cli.main`,
the console script's own entry point, inside Click's CliRunner isolation (its own stdin, stdout,
stderr and environment), so exit codes and stderr lines are those a user sees. Use
`labctl_process(...)` only where the process boundary is what the test is about (signals,
Ctrl-C, crash logs of a dying process, start-up time, two commands racing).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from click.testing import CliRunner

REPO = Path(__file__).resolve().parents[2]


@dataclass
class CliResult:
    args: list[str]
    code: int
    stdout: str
    stderr: str

    @property
    def json(self) -> Any:
        return json.loads(self.stdout)

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    def __str__(self) -> str:
        return f"labctl {' '.join(self.args)} -> {self.code}\n{self.stdout}\n{self.stderr}"


def _argv(args: tuple[str, ...], config: Path | None) -> list[str]:
    return [*(["--config", str(config)] if config is not None else []), *args]


def labctl(
    *args: str,
    config: Path | None = None,
    state: Path | None = None,
    stdin: str | None = None,
    env: Mapping[str, str] | None = None,
) -> CliResult:
    """`labctl [--config config] args` in this process; LABCTL_* comes only from state/env."""
    from provision.cli import main

    environment: dict[str, str | None] = {k: None for k in os.environ if k.startswith("LABCTL_")}
    if state is not None:
        environment["LABCTL_STATE_DIR"] = str(state)
    environment.update(env or {})
    runner = CliRunner()
    with runner.isolation(input=stdin if stdin is not None else "", env=environment) as (
        out,
        err,
        _,
    ):
        code = main(_argv(args, config))
        sys.stdout.flush()
        sys.stderr.flush()
    return CliResult(list(args), code, out.getvalue().decode(), err.getvalue().decode())


def process_env(state: Path | None = None, env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a child labctl: no LABCTL_* of ours, this checkout importable."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("LABCTL_")}
    environment["PYTHONPATH"] = str(REPO)
    if state is not None:
        environment["LABCTL_STATE_DIR"] = str(state)
    environment.update(env or {})
    return environment


def labctl_process(
    *args: str,
    config: Path | None = None,
    state: Path | None = None,
    stdin: str | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float = 300,
) -> CliResult:
    """`python -m provision [--config config] args` as a child process."""
    done = subprocess.run(
        [sys.executable, "-m", "provision", *_argv(args, config)],
        env=process_env(state, env),
        check=False,
        capture_output=True,
        text=True,
        timeout=timeout,
        input=stdin if stdin is not None else "",
    )
    return CliResult(list(args), done.returncode, done.stdout, done.stderr)


def start_labctl(
    *args: str, config: Path | None = None, state: Path | None = None
) -> subprocess.Popen[str]:
    """A child labctl left running (stdout and stderr piped), for signal and race tests."""
    return subprocess.Popen(
        [sys.executable, "-m", "provision", *_argv(args, config)],
        env=process_env(state),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def one_error_line(stderr: str) -> str:
    """The error line; the test fails if there is not exactly one, or a traceback shows."""
    assert "Traceback" not in stderr
    lines = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, stderr
    return lines[0]


class LabFiles(Protocol):
    """A lab file and a state dir (what tests.support.lab.Lab has)."""

    @property
    def config(self) -> Path: ...

    @property
    def state(self) -> Path: ...


def run_on_terminal(
    lab: LabFiles, args: list[str], answer: str, prompt: bytes = b"[y/N]"
) -> tuple[int, str]:
    """Run labctl with a pseudo-terminal as stdin/stdout; answer its prompt."""
    import pty
    import select

    env = process_env(lab.state)
    pid, fd = pty.fork()
    if pid == 0:  # the child: becomes labctl
        os.execve(
            sys.executable,
            [sys.executable, "-m", "provision", "--config", str(lab.config), *args],
            env,
        )
    seen, answered = b"", False
    while True:
        ready, _, _ = select.select([fd], [], [], 60)
        if not ready:
            break
        try:
            chunk = os.read(fd, 4096)
        except OSError:
            break
        if not chunk:
            break
        seen += chunk
        if not answered and prompt in seen:
            os.write(fd, answer.encode() + b"\n")
            answered = True
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), seen.decode(errors="replace")
