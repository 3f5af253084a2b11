"""One run of a container guest: systemd-nspawn in the guest's netns and cgroups, its shape.

A run starts with `_prepare_run` + `_launch`, is followed by `_monitor` (lxcfs after each boot,
relaunch on an in-guest reboot) and ends with `_teardown_run`. A run that ends without being asked
to (its init exited, crashed or was killed) is reported to the exit listener as a GuestExit with
the tail of the guest's console, which nspawn writes to `<state_dir>/guests/<vmid>/console.log`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from provision.sim.guests import cloudinit, netns
from provision.sim.guests.base import ExitListener, GuestExit, GuestSpec
from provision.sim.guests.cgroups import CFS_PERIOD_US, GuestCgroups, host_cpus
from provision.sim.guests.disks import DiskStore
from provision.sim.guests.errors import GuestBackendError
from provision.sim.guests.lxcfs import Lxcfs, bind_into_guest

MIB = 2**20
MIN_GUEST_MEMORY = 64 * MIB  # below this systemd + sshd do not boot reliably
NSPAWN_REBOOT_EXIT = 133  # nspawn's exit code when the guest ran `systemctl reboot`
NSPAWN_RUN = Path("/run/systemd/nspawn")
CONSOLE_TAIL_LINES = 20
# ANSI colour/cursor sequences systemd writes on a console (its "[  OK  ]" status lines)
_ANSI = re.compile(rb"\x1b\[[0-9;?]*[A-Za-z]")
# nspawn's complaint at every exit here (its own cleanup of the propagate dir, which the
# backend removes itself): not the guest's, so kept out of console tails
_NSPAWN_NOISE = re.compile(r"^Attempted to remove disk file system under .*/nspawn/propagate/")
# the init of a guest whose boot is made to fail: prints its lines on the console and exits
_FAILING_INIT = 'for line in "$@"; do echo "$line"; done; exit 255'

log = logging.getLogger("provision.sim")

Log = Callable[[str], None]

# The launcher joins the guest's cgroups in every hierarchy, then becomes systemd-nspawn.
_JOIN_AND_EXEC = (
    'while [ "$1" != -- ]; do echo $$ > "$1" || exit 125; shift; done; shift; exec "$@"'
)


@dataclass
class RunningGuest:
    """A running (or stopping) guest."""

    spec: GuestSpec
    ip: str
    cores: int
    memory_mib: int
    proc: subprocess.Popen[bytes] | None = None
    init_pid: int | None = None
    started_at: float = 0.0
    boots: int = 0
    stopping: bool = False
    ready: bool = False  # lxcfs bound (or not used): the agent may answer
    stopped: threading.Event = field(default_factory=threading.Event)
    # set once the guest's init runs (start() returns then), or when the run ended before that
    booted: threading.Event = field(default_factory=threading.Event)
    exit: GuestExit | None = None  # why the run ended, when nobody asked it to
    console_offset: int = 0  # where this boot's output starts in console.log
    monitor: threading.Thread | None = None
    cpu_sample: tuple[float, int] | None = None
    console: IO[bytes] | None = None


class GuestRuns:
    """Launching, following and tearing down guests, in the cgroup shape of their VM."""

    state_dir: Path
    bridge: str
    prefix: str
    cpu_scale: float
    mem_scale: float
    leases: netns.Leases
    cgroups: GuestCgroups
    disks: DiskStore
    _lock: threading.RLock
    _guests: dict[int, RunningGuest]
    _closed: bool
    _lxcfs: Lxcfs | None
    _log: Log
    _exits: dict[int, GuestExit]
    _exit_listener: ExitListener | None

    # -- shapes ------------------------------------------------------------------------------------
    def cpu_limits(self, vmid: int, cores: int) -> tuple[list[int], int]:
        """cpuset (capped at the host's CPUs, rotated by vmid to spread guests) and CFS quota."""
        cpus = host_cpus()
        count = max(1, min(cores, len(cpus)))
        first = vmid % len(cpus)
        chosen = sorted(cpus[(first + i) % len(cpus)] for i in range(count))
        quota = int(min(cores * self.cpu_scale, len(cpus)) * CFS_PERIOD_US)
        return chosen, max(quota, 1000)

    def memory_limit(self, memory_mib: int) -> int:
        return max(int(memory_mib * MIB * self.mem_scale), MIN_GUEST_MEMORY)

    def _apply_shape(self, vmid: int, cores: int, memory_mib: int) -> None:
        cpus, quota = self.cpu_limits(vmid, cores)
        self.cgroups.set_shape(vmid, cpus, quota, self.memory_limit(memory_mib))

    # -- one run of a guest ------------------------------------------------------------------------
    def _netns(self, vmid: int) -> str:
        return f"{self.prefix}-{vmid}"

    def _host_if(self, vmid: int) -> str:
        return f"{self.prefix}v{vmid}"

    def _machine(self, vmid: int) -> str:
        return f"{self.prefix}-{vmid}"

    def _guest_dir(self, vmid: int) -> Path:
        d = self.state_dir / "guests" / str(vmid)
        d.mkdir(parents=True, exist_ok=True)
        return d

    def _prepare_run(self, guest: RunningGuest) -> None:
        vmid = guest.spec.vmid
        root = self.disks.root(vmid)
        cloudinit.apply(root, guest.spec, self.disks.instance_id(vmid))
        netns.plug_guest(
            self._netns(vmid),
            self._host_if(vmid),
            self.bridge,
            guest.spec.macaddr.lower(),
            self.leases.cidr(guest.ip),
        )
        self.cgroups.create(vmid)
        self._apply_shape(vmid, guest.cores, guest.memory_mib)

    def _launch(self, guest: RunningGuest) -> None:
        vmid = guest.spec.vmid
        root = self.disks.root(vmid)
        nspawn = [
            "systemd-nspawn",
            "--quiet",
            "-D",
            str(root),
            "-M",
            self._machine(vmid),
            f"--hostname={guest.spec.name}",
            f"--network-namespace-path=/run/netns/{self._netns(vmid)}",
            # no machined/dbus on the host: run unregistered, in the cgroups we put it in
            "--register=no",
            "--keep-unit",
            # the guest's console output goes to console.log (passive would drop it)
            "--console=read-only",
            "--resolv-conf=off",
            "--timezone=off",
            "--link-journal=no",
        ]
        if self._lxcfs:
            nspawn.append(f"--bind-ro={self._lxcfs.mountpoint}:/run/lxcfs")
        if guest.spec.init_failure is None:
            nspawn.append("--boot")
        else:  # a failed boot on purpose (the simulator's boot_failure fault)
            nspawn += ["--", "/bin/sh", "-c", _FAILING_INIT, "init", *guest.spec.init_failure]
        procs = [str(p) for p in self.cgroups.procs_files(vmid)]
        console = open(self._guest_dir(vmid) / "console.log", "ab")  # noqa: SIM115 - kept open
        env = dict(os.environ, SYSTEMD_NSPAWN_LOCK="0")  # no lock files left in /run
        try:
            guest.proc = subprocess.Popen(
                ["sh", "-c", _JOIN_AND_EXEC, "launch", *procs, "--", *nspawn],
                stdin=subprocess.DEVNULL,
                stdout=console,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=env,
            )
        except BaseException:
            console.close()
            raise
        if guest.console:
            guest.console.close()
        guest.console = console
        guest.console_offset = os.fstat(console.fileno()).st_size
        guest.started_at = time.monotonic()
        guest.cpu_sample = None
        guest.init_pid = None
        guest.ready = False
        guest.boots += 1

    def _monitor(self, guest: RunningGuest) -> None:
        """Follow one guest: bind lxcfs after each boot, relaunch on in-guest reboot, clean up,
        and report an exit nobody asked for."""
        vmid = guest.spec.vmid
        while True:
            proc = guest.proc
            assert proc is not None
            self._finish_boot(guest, proc)
            if guest.ready or proc.poll() is None:
                guest.booted.set()
            rc = proc.wait()
            with self._lock:
                unasked = not guest.stopping and not self._closed
                if rc == NSPAWN_REBOOT_EXIT and unasked and self._relaunch(guest):
                    continue
                self._teardown_run(guest)
                if unasked:
                    # reported before the VM is free again, so a listener that marks the VM
                    # stopped can never be overtaken by the next start of the same VM
                    self._report_exit(guest, rc)
                self._guests.pop(vmid, None)
                guest.stopped.set()
                guest.booted.set()
                return

    def _relaunch(self, guest: RunningGuest) -> bool:
        """The guest rebooted itself: boot it again with the current shape (False if that fails)."""
        vmid = guest.spec.vmid
        try:
            self.cgroups.kill_all(self.cgroups.group(vmid))
            cloudinit.apply(self.disks.root(vmid), guest.spec, self.disks.instance_id(vmid))
            self._apply_shape(vmid, guest.cores, guest.memory_mib)
            self._launch(guest)
            return True
        except (GuestBackendError, OSError) as exc:
            self._log(f"VM {vmid}: relaunch after reboot failed: {exc}")
            return False

    def _report_exit(self, guest: RunningGuest, exit_code: int) -> None:
        vmid = guest.spec.vmid
        guest.exit = GuestExit(
            vmid=vmid,
            exit_code=exit_code,
            console_tail=self._console_tail(vmid, guest.console_offset),
            console_log=str(self._console_path(vmid)),
            at=time.time(),
        )
        self._exits[vmid] = guest.exit
        if self._exit_listener is None:
            return
        try:
            self._exit_listener(guest.exit)
        except Exception:  # the guest is gone either way; its cleanup must go on
            log.exception("VM %s: the exit listener failed", vmid)

    def _finish_boot(self, guest: RunningGuest, proc: subprocess.Popen[bytes]) -> None:
        deadline = time.monotonic() + 30
        while guest.init_pid is None and proc.poll() is None and time.monotonic() < deadline:
            guest.init_pid = self._find_init(guest.spec.vmid)
            if guest.init_pid is None:
                time.sleep(0.02)
        if guest.init_pid is None:
            return
        if self._lxcfs:
            try:
                bind_into_guest(guest.init_pid)
            except GuestBackendError as exc:
                if proc.poll() is None:
                    self._log(f"VM {guest.spec.vmid}: {exc}")
        guest.ready = True

    def _find_init(self, vmid: int) -> int | None:
        """The guest's PID 1: the process in its cgroup that is PID 1 of a nested namespace."""
        for pid in self.cgroups.pids(self.cgroups.group(vmid)):
            try:
                status = Path(f"/proc/{pid}/status").read_text()
                comm = Path(f"/proc/{pid}/comm").read_text().strip()
            except OSError:
                continue
            m = re.search(r"^NSpid:\s+(.*)$", status, re.MULTILINE)
            if (
                comm == "systemd"
                and m
                and m.group(1).split()[-1] == "1"
                and len(m.group(1).split()) > 1
            ):
                return pid
        return None

    def _kill(self, guest: RunningGuest) -> None:
        """Pull the plug: SIGKILL the guest's init and nspawn, then anything left in its cgroup."""
        for pid in (guest.init_pid, guest.proc.pid if guest.proc else None):
            if pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        self.cgroups.kill_all(self.cgroups.group(guest.spec.vmid))

    def _teardown_run(self, guest: RunningGuest) -> None:
        vmid = guest.spec.vmid
        self.cgroups.kill_all(self.cgroups.group(vmid))
        if guest.proc and guest.proc.poll() is None:
            guest.proc.kill()
            guest.proc.wait(5)
        if guest.console:
            guest.console.close()
            guest.console = None
        netns.unplug_guest(self._netns(vmid), self._host_if(vmid))
        self.cgroups.remove_guest(vmid)
        self.disks.release(vmid)
        shutil.rmtree(NSPAWN_RUN / "propagate" / self._machine(vmid), ignore_errors=True)

    def _running(self, vmid: int) -> RunningGuest:
        guest = self._guests.get(vmid)
        if guest is None or guest.stopped.is_set():
            raise GuestBackendError(f"VM {vmid} is not running")
        return guest

    def _console_path(self, vmid: int) -> Path:
        return self.state_dir / "guests" / str(vmid) / "console.log"

    def _console_tail(self, vmid: int, offset: int = 0) -> tuple[str, ...]:
        """The last non-empty lines the console printed from offset on, without colours."""
        try:
            with open(self._console_path(vmid), "rb") as fh:
                fh.seek(offset)
                data = fh.read()
        except OSError:
            return ()
        text = _ANSI.sub(b"", data).decode(errors="replace")
        lines = [
            ln.rstrip()
            for ln in re.split(r"[\r\n]+", text)
            if ln.strip() and not _NSPAWN_NOISE.match(ln)
        ]
        return tuple(lines[-CONSOLE_TAIL_LINES:])

    def _console(self, vmid: int) -> str:
        """The last console line, for one-line errors."""
        guest = self._guests.get(vmid)
        tail = self._console_tail(vmid, guest.console_offset if guest else 0)
        return tail[-1] if tail else f"console log {self._console_path(vmid)} is empty"
