"""Plain values describing guests and command results (no paramiko: cheap to import)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

_TAIL_LINES = 10


@dataclass(frozen=True)
class GuestAddress:
    """Where and as whom to reach a guest over SSH, and which known_hosts pins its key."""

    host: str
    user: str
    key_path: Path
    known_hosts: Path
    port: int = 22
    name: str = ""

    @property
    def label(self) -> str:
        who = f"{self.user}@{self.host}" + (f":{self.port}" if self.port != 22 else "")
        return f"{self.name} ({who})" if self.name else who


@dataclass(frozen=True)
class CommandResult:
    command: str
    exit_code: int
    stdout: str
    stderr: str
    duration_s: float

    @property
    def ok(self) -> bool:
        return self.exit_code == 0

    def describe(self) -> str:
        """One line: the command, its exit code and the end of its stderr (or stdout)."""
        tail = (self.stderr.strip() or self.stdout.strip()).splitlines()[-_TAIL_LINES:]
        shown = " | ".join(tail) if tail else "no output"
        return f"`{short_command(self.command)}` exited {self.exit_code}: {shown}"


def short_command(command: str) -> str:
    one_line = " ".join(command.split())
    return one_line if len(one_line) <= 80 else one_line[:77] + "..."
