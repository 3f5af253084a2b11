"""OLLAMA_NUM_PARALLEL at least N for a concurrency probe, put back afterwards.

Ollama gives each loaded model OLLAMA_NUM_PARALLEL slots (server/sched.go:497) and queues
requests beyond them (llm/llama_server.go:1536); a level of N users against fewer slots
measures the queue, not N users. So the probe reads the running server's value and, only when
it is smaller than N, raises it for the run and restarts Ollama once; afterwards (also after a
failure or Ctrl-C) it puts the old value back with a second restart.

Why a drop-in file of the probe's own over SSH, and not the Ansible role: the role would take a
playbook run (tens of seconds: facts, package and service checks) for one variable, and it
would rewrite the role's own drop-in with a value the lab file does not hold, so the next
`labctl deploy` would see drift. systemd applies drop-ins in lexical order and a later
Environment= of the same name wins, so `zz-labctl-probe.conf` beside the role's `labctl.conf`
overrides it while leaving the role's file byte-identical; removing it puts the role's value
back. The file's name tells an admin who finds it after a killed probe what it is, and the next
concurrency probe removes a stale one.
"""

from __future__ import annotations

import contextlib
import shlex
from collections.abc import Iterator
from typing import Any, Protocol

from provision.errors import GuestError, ProbeError
from provision.progress import Reporter

UNIT = "ollama.service"
DROPIN = "/etc/systemd/system/ollama.service.d/zz-labctl-probe.conf"
API_WAIT_S = 120  # Ollama answers /api/version within a second of starting; 2 min for a slow VM
NO_SERVICE = 3  # exit code of READ_COMMAND when no ollama.service runs (e.g. `ollama serve`)


class _Session(Protocol):
    def run(
        self, command: str, *, stdin: bytes | None = ..., timeout: float | None = ...
    ) -> Any: ...


READ_COMMAND = (
    f"pid=$(systemctl show -p MainPID --value {UNIT} 2>/dev/null); "
    f'[ -n "$pid" ] && [ "$pid" != 0 ] || exit {NO_SERVICE}; '
    'sudo -n cat "/proc/$pid/environ" | tr "\\0" "\\n" | sed -n "s/^OLLAMA_NUM_PARALLEL=//p"; '
    f"[ -e {DROPIN} ] && echo stale-dropin; exit 0"
)


def running_num_parallel(session: _Session) -> tuple[int | None, bool]:
    """(the running ollama.service's OLLAMA_NUM_PARALLEL, whether our drop-in is there).

    Unset means 1 (envconfig.NumParallel's default); None when no ollama.service runs (then
    labctl cannot restart it and leaves it alone).
    """
    done = session.run(READ_COMMAND, timeout=30)
    if done.exit_code == NO_SERVICE:
        return None, False
    if done.exit_code != 0:
        raise ProbeError(f"cannot read Ollama's OLLAMA_NUM_PARALLEL: {done.stderr.strip()}")
    lines = done.stdout.split()
    stale = "stale-dropin" in lines
    values = [line.strip("\"' ") for line in lines if line != "stale-dropin"]
    try:
        return (max(1, int(values[-1])) if values and values[-1] else 1), stale
    except ValueError:
        return 1, stale  # envconfig.Uint falls back to the default on a bad value


def _restart_command(write: str | None, url: str) -> str:
    """Write (or remove) our drop-in, reload systemd, restart Ollama, wait for its API."""
    if write is None:
        change = f"sudo -n rm -f {DROPIN}"
    else:
        change = f"printf %s {shlex.quote(write)} | sudo -n tee {DROPIN} >/dev/null"
    probe_api = shlex.quote(
        "import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)"
    )
    tries = API_WAIT_S * 2
    return (
        f"set -e; sudo -n mkdir -p {DROPIN.rsplit('/', 1)[0]}; {change}; "
        f"sudo -n systemctl daemon-reload; sudo -n systemctl restart {UNIT}; "
        f"for i in $(seq {tries}); do python3 -c {probe_api} {shlex.quote(url + '/api/version')}"
        " 2>/dev/null && exit 0; sleep 0.5; done; exit 1"
    )


def dropin_text(slots: int) -> str:
    return (
        "# Written by `labctl probe --concurrency` for one run and removed after it.\n"
        f'[Service]\nEnvironment="OLLAMA_NUM_PARALLEL={slots}"\n'
    )


@contextlib.contextmanager
def num_parallel_at_least(
    session: _Session, users: int, url: str, reporter: Reporter
) -> Iterator[int | None]:
    """Run the body with OLLAMA_NUM_PARALLEL >= users; yields the value in force (None: unknown)."""
    running, stale = running_num_parallel(session) if users > 1 else (None, False)
    if running is None:
        if users > 1:
            reporter.warn(
                f"no running {UNIT} to set OLLAMA_NUM_PARALLEL={users} on: requests beyond the "
                "server's parallel slots queue (their queue wait shows it)"
            )
        yield None
        return
    if running >= users and not stale:
        yield running
        return
    reporter.step(f"OLLAMA_NUM_PARALLEL {running} -> {users}: restarting Ollama ...")
    _run_or_fail(session, _restart_command(dropin_text(max(users, running)), url), "raise")
    try:
        yield max(users, running)
    finally:
        reporter.step("putting OLLAMA_NUM_PARALLEL back: restarting Ollama ...")
        try:
            _run_or_fail(session, _restart_command(None, url), "put back")
        except (GuestError, ProbeError) as error:
            reporter.warn(f"could not remove {DROPIN}: {error}; remove it and restart Ollama")


def _run_or_fail(session: _Session, command: str, what: str) -> None:
    done = session.run(command, timeout=API_WAIT_S + 60)
    if done.exit_code != 0:
        detail = (done.stderr.strip().splitlines() or [f"exit code {done.exit_code}"])[-1]
        raise ProbeError(f"could not {what} OLLAMA_NUM_PARALLEL on the guest: {detail}")
