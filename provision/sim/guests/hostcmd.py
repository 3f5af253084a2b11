"""Running host commands (ip, mount, debootstrap, ...) with one-line errors."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence

from provision.sim.guests.errors import GuestBackendError


def run(
    argv: Sequence[str],
    *,
    check: bool = True,
    timeout: float = 60.0,
    input_text: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run argv, capture output; on failure raise GuestBackendError naming the command."""
    try:
        proc = subprocess.run(
            list(argv),
            check=False,
            capture_output=True,
            text=True,
            timeout=timeout,
            input=input_text,
            stdin=None if input_text is not None else subprocess.DEVNULL,
        )
    except FileNotFoundError as exc:
        raise GuestBackendError(f"{argv[0]}: command not found") from exc
    except subprocess.TimeoutExpired as exc:
        raise GuestBackendError(f"{' '.join(argv)}: timed out after {timeout:.0f} s") from exc
    if check and proc.returncode != 0:
        detail = (proc.stderr.strip() or proc.stdout.strip()).splitlines()
        last = detail[-1] if detail else f"exit code {proc.returncode}"
        raise GuestBackendError(f"{' '.join(argv)}: {last}")
    return proc


def quiet(argv: Sequence[str], timeout: float = 30.0) -> bool:
    """Run a best-effort cleanup command; True if it succeeded. Never raises."""
    try:
        proc = subprocess.run(
            list(argv),
            check=False,
            capture_output=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return proc.returncode == 0
