"""ContainerBackend: the simulator's VMs as real systemd guests (systemd-nspawn containers).

A started VM is `systemd-nspawn --boot` on an overlay clone of a cached Debian 12 template, in its
own network namespace on the backend's bridge, with cgroup v1 limits that follow the VM's shape
and lxcfs making /proc inside tell that shape. See guests.md for the measured facts behind each
choice. Needs root, systemd-nspawn, overlayfs and cgroup v1 (hybrid); otherwise the constructor
raises GuestsUnavailable with one line saying why, and the simulator runs API-only.

Host resources are named after the backend's prefix P (at most 5 characters), so they never
collide with another backend and a crashed run can be cleaned up by the next one with the same P:
netns `P-<vmid>`, host veth `Pv<vmid>`, nspawn machine `P-<vmid>`, cgroups `P/vm<vmid>`, and a
record + lock in /run/labctl-sim/P.{json,lock}.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from provision.sim.guests import cloudinit, netns
from provision.sim.guests.base import GuestSpec
from provision.sim.guests.cgroups import CFS_PERIOD_US, GuestCgroups, check_cgroup_v1, host_cpus
from provision.sim.guests.disks import DiskStore
from provision.sim.guests.errors import GuestBackendError, GuestsUnavailable
from provision.sim.guests.hostcmd import quiet
from provision.sim.guests.lxcfs import Lxcfs, bind_into_guest
from provision.sim.guests.template import default_cache_dir, ensure_template

__all__ = ["ContainerBackend", "GuestBackendError", "GuestsUnavailable"]

MIB = 2**20
MIN_GUEST_MEMORY = 64 * MIB  # below this systemd + sshd do not boot reliably
NSPAWN_REBOOT_EXIT = 133  # nspawn's exit code when the guest ran `systemctl reboot`
RUN_DIR = Path("/run/labctl-sim")
NSPAWN_RUN = Path("/run/systemd/nspawn")
FILE_READ_LIMIT = 16 * MIB

Log = Callable[[str], None]

# The launcher joins the guest's cgroups in every hierarchy, then becomes systemd-nspawn.
_JOIN_AND_EXEC = (
    'while [ "$1" != -- ]; do echo $$ > "$1" || exit 125; shift; done; shift; exec "$@"'
)


@dataclass
class _Guest:
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
    monitor: threading.Thread | None = None
    cpu_sample: tuple[float, int] | None = None
    console: IO[bytes] | None = None


class ContainerBackend:
    """GuestBackend (provision.sim.guests.base) backed by systemd-nspawn containers."""

    def __init__(
        self,
        state_dir: str | os.PathLike[str],
        *,
        bridge: str = "lgbr0",
        subnet: str = "10.213.0.0/24",
        prefix: str = "lgsim",
        cpu_scale: float = 1.0,
        mem_scale: float = 1.0,
        template_cache: str | os.PathLike[str] | None = None,
        lxcfs: bool = True,
        log: Log | None = None,
    ) -> None:
        _check_names(bridge, prefix)
        if cpu_scale <= 0 or mem_scale <= 0:
            raise ValueError("cpu_scale and mem_scale must be positive")
        self.state_dir = Path(state_dir).resolve()
        self.bridge = bridge
        self.prefix = prefix
        self.cpu_scale = cpu_scale
        self.mem_scale = mem_scale
        self._log: Log = log or (lambda _msg: None)
        self._lock = threading.RLock()
        self._guests: dict[int, _Guest] = {}
        self._starting: dict[int, str] = {}  # vmid -> address, while start() prepares it
        self._closed = False
        _check_host()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.leases = netns.Leases(subnet, self.state_dir / "leases.json")
        self.cgroups = GuestCgroups(prefix)
        self._run_lock = self._take_prefix_lock()
        self._bridge_created = False
        self._lxcfs: Lxcfs | None = None
        try:
            self._clean_leftovers()
            _probe_overlay(self.state_dir)
            cache = Path(template_cache) if template_cache else default_cache_dir()
            self.template = ensure_template(cache, log=self._log)
            self.disks = DiskStore(self.state_dir, self.template)
            self._bridge_created = netns.ensure_bridge(bridge, self.leases.host_cidr)
            self._lxcfs_note = "off"
            if lxcfs:
                self._start_lxcfs()
            self._write_record()
            atexit.register(self.close)  # a simulator that exits without close() cleans up too
        except BaseException:
            # undo what this constructor made, so a failed start leaves the host as it was
            if self._lxcfs:
                self._lxcfs.stop()
            self._sweep(self.state_dir, bridge_created=self._bridge_created)
            self._release_prefix_lock()
            raise

    # -- GuestBackend -----------------------------------------------------------------------------
    def describe(self) -> str:
        return (
            f"guests: systemd-nspawn containers on {self.bridge} {self.leases.network} "
            f"(host {self.leases.host_ip}), Debian 12 template {self.template}, "
            f"cpu_scale {self.cpu_scale:g}, mem_scale {self.mem_scale:g}, lxcfs {self._lxcfs_note}"
        )

    def clone_disk(self, source_vmid: int | None, new_vmid: int, linked: bool) -> None:
        self.disks.clone(source_vmid, new_vmid, linked)

    def delete_disk(self, vmid: int) -> None:
        with self._lock:
            if vmid in self._guests:
                raise GuestBackendError(f"VM {vmid} is running; stop it before deleting its disk")
            self.disks.delete(vmid)
            self.leases.release(vmid)

    def start(self, spec: GuestSpec) -> None:
        vmid = spec.vmid
        with self._lock:  # claim the VM and its address; the slow part runs unlocked
            if self._closed:
                raise GuestBackendError("the guest backend is closed")
            if vmid in self._guests or vmid in self._starting:
                raise GuestBackendError(f"VM {vmid} is already running")
            in_use = {v: g.ip for v, g in self._guests.items()} | dict(self._starting)
            ip = self.leases.assign(vmid, spec.ipconfig0, in_use)
            self._starting[vmid] = ip
        guest = _Guest(spec=spec, ip=ip, cores=spec.cores, memory_mib=spec.memory_mib)
        try:
            if not self.disks.exists(vmid):
                self.disks.clone(None, vmid, linked=True)  # a VM created without a clone
            self._prepare_run(guest)
            self._launch(guest)
        except BaseException:
            self._teardown_run(guest)
            with self._lock:
                self._starting.pop(vmid, None)
            raise
        with self._lock:
            self._starting.pop(vmid, None)
            self._guests[vmid] = guest
        guest.monitor = threading.Thread(
            target=self._monitor, args=(guest,), name=f"guest-{vmid}", daemon=True
        )
        guest.monitor.start()

    def shutdown(self, vmid: int, timeout_s: float) -> bool:
        guest = self._guests.get(vmid)
        if guest is None:
            return True
        guest.stopping = True
        if guest.proc and guest.proc.poll() is None:
            # nspawn turns SIGTERM into SIGRTMIN+3 for the guest's systemd: a clean poweroff
            with contextlib.suppress(ProcessLookupError):
                guest.proc.send_signal(signal.SIGTERM)
        return guest.stopped.wait(timeout_s)

    def stop(self, vmid: int) -> None:
        guest = self._guests.get(vmid)
        if guest is None:
            return
        guest.stopping = True
        self._kill(guest)
        if not guest.stopped.wait(15):
            raise GuestBackendError(f"VM {vmid} did not stop after SIGKILL")

    def reshape(self, vmid: int, cores: int, memory_mib: int) -> None:
        with self._lock:
            guest = self._guests.get(vmid)
            if guest is None:
                return  # a stopped guest gets its shape from the spec at the next start
            self._apply_shape(vmid, cores, memory_mib)
            guest.cores, guest.memory_mib = cores, memory_mib

    def is_running(self, vmid: int) -> bool:
        guest = self._guests.get(vmid)
        return guest is not None and not guest.stopped.is_set()

    def agent_ping(self, vmid: int) -> bool:
        """The guest's PID 1 runs (and lxcfs is bound): qemu-guest-agent starts that early in a
        VM's boot, before cloud-init has written host keys and before sshd (see cloudinit.py)."""
        guest = self._guests.get(vmid)
        return guest is not None and guest.ready and not guest.stopped.is_set()

    def network_interfaces(self, vmid: int) -> list[dict[str, Any]]:
        self._running(vmid)
        return netns.guest_interfaces(self._netns(vmid))

    def file_read(self, vmid: int, path: str) -> bytes:
        guest = self._running(vmid)
        # The guest's own view (its mounts included), with symlinks resolved inside the guest.
        root = Path(f"/proc/{guest.init_pid}/root") if guest.init_pid else self.disks.root(vmid)
        target = resolve_in_root(root, path)
        with open(target, "rb") as fh:
            return fh.read(FILE_READ_LIMIT)

    def usage(self, vmid: int) -> tuple[float, int]:
        guest = self._guests.get(vmid)
        if guest is None or guest.stopped.is_set():
            return 0.0, 0
        try:
            cpu_ns = self.cgroups.cpu_usage_ns(vmid)
            mem = self.cgroups.memory_usage(vmid)
        except OSError:
            return 0.0, 0
        now = time.monotonic()
        last = guest.cpu_sample or (guest.started_at, 0)
        guest.cpu_sample = (now, cpu_ns)
        elapsed = now - last[0]
        fraction = (cpu_ns - last[1]) / 1e9 / elapsed if elapsed > 0 else 0.0
        return max(0.0, min(fraction, float(guest.cores))), mem

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            guests = list(self._guests.values())
        atexit.unregister(self.close)
        for guest in guests:
            guest.stopping = True
            self._kill(guest)
        for guest in guests:
            guest.stopped.wait(15)
        if self._lxcfs:
            self._lxcfs.stop()
        self._sweep(self.state_dir, bridge_created=self._bridge_created)
        with contextlib.suppress(OSError):
            (RUN_DIR / f"{self.prefix}.json").unlink()
        self._release_prefix_lock()

    # -- extras used by tests and the simulator ----------------------------------------------------
    def guest_ip(self, vmid: int) -> str | None:
        guest = self._guests.get(vmid)
        return guest.ip if guest else None

    def limits(self, vmid: int) -> tuple[str, int, int]:
        """(cpuset.cpus, CFS quota us, memory limit bytes) the kernel enforces on the guest."""
        self._running(vmid)
        return self.cgroups.shape(vmid)

    def oom_kills(self, vmid: int) -> int:
        self._running(vmid)
        return self.cgroups.oom_kills(vmid)

    def osinfo(self, vmid: int) -> dict[str, str]:
        """QGA guest-get-osinfo from the guest's /etc/os-release and the (shared) kernel."""
        fields: dict[str, str] = {}
        for line in self.file_read(vmid, "/etc/os-release").decode().splitlines():
            key, sep, value = line.partition("=")
            if sep:
                fields[key] = value.strip().strip('"')
        uname = os.uname()
        return {
            "id": fields.get("ID", "linux"),
            "name": fields.get("NAME", "Linux"),
            "version-id": fields.get("VERSION_ID", ""),
            "version": fields.get("VERSION", ""),
            "pretty-name": fields.get("PRETTY_NAME", ""),
            "kernel-release": uname.release,
            "kernel-version": uname.version,
            "machine": uname.machine,
        }

    def boots(self, vmid: int) -> int:
        guest = self._guests.get(vmid)
        return guest.boots if guest else 0

    def wait_ready(self, vmid: int, timeout_s: float = 60.0) -> float:
        """Block until sshd answers with its banner (so cloud-init's host keys are written);
        returns seconds waited (GuestBackendError on timeout)."""
        started = time.monotonic()
        while not (self.agent_ping(vmid) and self._banner(vmid)):
            if not self.is_running(vmid):
                raise GuestBackendError(f"VM {vmid} stopped while booting ({self._console(vmid)})")
            if time.monotonic() - started > timeout_s:
                raise GuestBackendError(f"VM {vmid}: no SSH banner after {timeout_s:.0f} s")
            time.sleep(0.05)
        return time.monotonic() - started

    def _banner(self, vmid: int) -> bool:
        guest = self._guests.get(vmid)
        return guest is not None and ssh_banner(guest.ip, timeout_s=0.5) is not None

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

    def _prepare_run(self, guest: _Guest) -> None:
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

    def _launch(self, guest: _Guest) -> None:
        vmid = guest.spec.vmid
        root = self.disks.root(vmid)
        nspawn = [
            "systemd-nspawn",
            "--boot",
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
            "--console=passive",
            "--resolv-conf=off",
            "--timezone=off",
            "--link-journal=no",
        ]
        if self._lxcfs:
            nspawn.append(f"--bind-ro={self._lxcfs.mountpoint}:/run/lxcfs")
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
        guest.started_at = time.monotonic()
        guest.cpu_sample = None
        guest.init_pid = None
        guest.ready = False
        guest.boots += 1

    def _monitor(self, guest: _Guest) -> None:
        """Follow one guest: bind lxcfs after each boot, relaunch on in-guest reboot, clean up."""
        vmid = guest.spec.vmid
        while True:
            proc = guest.proc
            assert proc is not None
            self._finish_boot(guest, proc)
            rc = proc.wait()
            with self._lock:
                if rc == NSPAWN_REBOOT_EXIT and not guest.stopping and not self._closed:
                    try:
                        self.cgroups.kill_all(self.cgroups.group(vmid))
                        cloudinit.apply(
                            self.disks.root(vmid), guest.spec, self.disks.instance_id(vmid)
                        )
                        self._apply_shape(vmid, guest.cores, guest.memory_mib)
                        self._launch(guest)
                        continue
                    except (GuestBackendError, OSError) as exc:
                        self._log(f"VM {vmid}: relaunch after reboot failed: {exc}")
                self._teardown_run(guest)
                self._guests.pop(vmid, None)
                guest.stopped.set()
                return

    def _finish_boot(self, guest: _Guest, proc: subprocess.Popen[bytes]) -> None:
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

    def _kill(self, guest: _Guest) -> None:
        """Pull the plug: SIGKILL the guest's init and nspawn, then anything left in its cgroup."""
        for pid in (guest.init_pid, guest.proc.pid if guest.proc else None):
            if pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        self.cgroups.kill_all(self.cgroups.group(guest.spec.vmid))

    def _teardown_run(self, guest: _Guest) -> None:
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

    def _running(self, vmid: int) -> _Guest:
        guest = self._guests.get(vmid)
        if guest is None or guest.stopped.is_set():
            raise GuestBackendError(f"VM {vmid} is not running")
        return guest

    def _console(self, vmid: int) -> str:
        log = self.state_dir / "guests" / str(vmid) / "console.log"
        try:
            lines = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
        except OSError:
            return "no console log"
        return lines[-1] if lines else f"console log {log} is empty"

    # -- lxcfs -------------------------------------------------------------------------------------
    def _start_lxcfs(self) -> None:
        if not Lxcfs.available():
            self._lxcfs_note = "off (lxcfs not installed: /proc in guests shows the host)"
            self._log("lxcfs is not installed; /proc inside guests will show the host's shape")
            return
        self._lxcfs = Lxcfs(self.state_dir / "lxcfs", self.state_dir / "lxcfs.log")
        self._lxcfs.start()
        self._lxcfs_note = "on"

    # -- crash safety ------------------------------------------------------------------------------
    def _take_prefix_lock(self) -> IO[str]:
        RUN_DIR.mkdir(parents=True, exist_ok=True)
        fh = open(RUN_DIR / f"{self.prefix}.lock", "a+")  # noqa: SIM115 - held for our lifetime
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "another process"
            fh.close()
            raise GuestsUnavailable(
                f"guest prefix {self.prefix!r} is in use by {holder}; use another prefix"
            ) from None
        fh.truncate(0)
        fh.write(f"pid {os.getpid()}\n")
        fh.flush()
        return fh

    def _release_prefix_lock(self) -> None:
        with contextlib.suppress(OSError):
            fcntl.flock(self._run_lock, fcntl.LOCK_UN)
            self._run_lock.close()

    def _write_record(self) -> None:
        record = {
            "pid": os.getpid(),
            "state_dir": str(self.state_dir),
            "bridge": self.bridge,
            "bridge_created": self._bridge_created,
            "lxcfs_pid": self._lxcfs.pid if self._lxcfs else None,
        }
        (RUN_DIR / f"{self.prefix}.json").write_text(json.dumps(record) + "\n")

    def _clean_leftovers(self) -> None:
        """Undo what a crashed run with the same prefix left (we hold the prefix lock)."""
        path = RUN_DIR / f"{self.prefix}.json"
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            record = {}
        self.cgroups.kill_all(self.prefix)  # every process a guest of this prefix had
        old_state = Path(record.get("state_dir") or self.state_dir)
        if record.get("lxcfs_pid"):
            Lxcfs.kill_recorded(int(record["lxcfs_pid"]), old_state / "lxcfs")
        old_bridge = record.get("bridge") if record.get("bridge_created") else None
        for state in {old_state, self.state_dir}:
            self._sweep(state, bridge_created=False)
        if old_bridge:
            netns.delete_link(old_bridge)
        path.unlink(missing_ok=True)

    def _sweep(self, state_dir: Path, *, bridge_created: bool) -> None:
        """Remove every host resource of this prefix (processes must be gone already)."""
        self.cgroups.kill_all(self.prefix, timeout_s=2)
        for ns in netns.list_netns(f"{self.prefix}-"):
            quiet(["ip", "netns", "del", ns])
        for link in netns.list_links(f"{self.prefix}v"):
            if re.fullmatch(rf"{re.escape(self.prefix)}v\d+", link):
                netns.delete_link(link)
        for mount in _mounts_under(state_dir):
            if not quiet(["umount", mount]):
                quiet(["umount", "-l", mount])
        stuck = self.cgroups.remove_root()
        if stuck:
            self._log(f"cgroups left behind: {'; '.join(stuck)}")
        if bridge_created:
            netns.delete_link(self.bridge)
        propagate = NSPAWN_RUN / "propagate"
        if propagate.is_dir():
            for entry in propagate.iterdir():
                if entry.name.startswith(f"{self.prefix}-"):
                    shutil.rmtree(entry, ignore_errors=True)
        for d in (propagate, NSPAWN_RUN / "locks", NSPAWN_RUN):
            with contextlib.suppress(OSError):
                d.rmdir()  # only if empty: other users of nspawn may still be there


def _mounts_under(base: Path) -> list[str]:
    """Mount points below base, deepest first."""
    prefix = str(base).rstrip("/") + "/"
    found = []
    with open("/proc/self/mountinfo") as fh:
        for line in fh:
            point = line.split()[4].replace("\\040", " ")
            if point.startswith(prefix):
                found.append(point)
    return sorted(set(found), key=len, reverse=True)


def _check_names(bridge: str, prefix: str) -> None:
    if not re.fullmatch(r"[a-z][a-z0-9]{1,4}", prefix):
        raise ValueError(f"guest prefix {prefix!r}: 2-5 lowercase letters/digits, letter first")
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_-]{0,14}", bridge):
        raise ValueError(f"bridge name {bridge!r}: at most {netns.IFNAMSIZ} characters")


def _check_host() -> None:
    if os.geteuid() != 0:
        raise GuestsUnavailable("container guests need root (netns, overlayfs, cgroups)")
    for tool in ("systemd-nspawn", "ip", "nsenter", "mount", "ssh-keygen"):
        if shutil.which(tool) is None:
            raise GuestsUnavailable(f"{tool} not found (run scripts/sim-host-setup.sh)")
    with open("/proc/filesystems") as fh:
        if not any(line.split()[-1] == "overlay" for line in fh if line.strip()):
            raise GuestsUnavailable("the kernel has no overlayfs")
    check_cgroup_v1()


def _probe_overlay(state_dir: Path) -> None:
    """Mount a tiny overlay in the state dir: upper dirs on overlayfs (e.g. in Docker) fail."""
    probe = state_dir / ".overlay-probe"
    shutil.rmtree(probe, ignore_errors=True)
    dirs = [probe / d for d in ("lower", "upper", "work", "merged")]
    for d in dirs:
        d.mkdir(parents=True)
    lower, upper, work, merged = dirs
    try:
        proc = subprocess.run(
            [
                "mount",
                "-t",
                "overlay",
                "overlay",
                "-o",
                f"lowerdir={lower},upperdir={upper},workdir={work}",
                str(merged),
            ],
            check=False,
            capture_output=True,
            text=True,
            timeout=30,
        )
        if proc.returncode != 0:
            raise GuestsUnavailable(
                f"cannot mount an overlay with its upper dir under {state_dir} (it must be on "
                "ext4/xfs/btrfs/tmpfs, not overlayfs as inside Docker, nor a network fs)"
            )
        quiet(["umount", str(merged)])
    finally:
        shutil.rmtree(probe, ignore_errors=True)


def ssh_banner(ip: str, port: int = 22, timeout_s: float = 0.5) -> bytes | None:
    """The SSH identification line of ip:port, or None if nothing answers like sshd."""
    try:
        with socket.create_connection((ip, port), timeout=timeout_s) as sock:
            sock.settimeout(timeout_s)
            data = sock.recv(256)
    except OSError:
        return None
    return data.splitlines()[0] if data.startswith(b"SSH-") else None


def resolve_in_root(root: Path, path: str, max_links: int = 40) -> Path:
    """root + path with symlinks resolved as the guest would (absolute links stay inside root)."""
    parts = [p for p in path.split("/") if p not in ("", ".")]
    resolved: list[str] = []
    links = 0
    while parts:
        part = parts.pop(0)
        if part == "..":
            if resolved:
                resolved.pop()
            continue
        candidate = root.joinpath(*resolved, part)
        if candidate.is_symlink():
            links += 1
            if links > max_links:
                raise OSError(f"too many levels of symbolic links: {path}")
            target = os.readlink(candidate)
            if target.startswith("/"):
                resolved = []
            parts = [p for p in target.split("/") if p not in ("", ".")] + parts
            continue
        resolved.append(part)
    final = root.joinpath(*resolved)
    if not final.exists():
        raise FileNotFoundError(f"{path}: no such file in the guest")
    if final.is_dir():
        raise IsADirectoryError(f"{path}: is a directory")
    return final
