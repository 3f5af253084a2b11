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

The parts: `nspawn.py` runs one guest (launch, reboot, teardown, cgroup shape), `host.py` holds
and cleans the host resources of the prefix; this module is the `GuestBackend` they make up.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any

from provision.sim.guests import netns
from provision.sim.guests.base import ExitListener, GuestExit, GuestSpec
from provision.sim.guests.capacity import Footprint, GuestsHeld, HostReader, check_capacity
from provision.sim.guests.cgroups import GuestCgroups
from provision.sim.guests.disks import DiskStore
from provision.sim.guests.errors import GuestBackendError, GuestExited, GuestsUnavailable
from provision.sim.guests.host import RUN_DIR, HostResources, check_host, check_names, probe_overlay
from provision.sim.guests.lxcfs import Lxcfs
from provision.sim.guests.nspawn import MIB, GuestRuns, Log, RunningGuest
from provision.sim.guests.template import default_cache_dir, ensure_template

__all__ = [
    "ContainerBackend",
    "GuestBackendError",
    "GuestsUnavailable",
    "resolve_in_root",
    "ssh_banner",
]

FILE_READ_LIMIT = 16 * MIB


class ContainerBackend(GuestRuns, HostResources):
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
        host_reader: HostReader | None = None,
    ) -> None:
        check_names(bridge, prefix)
        if cpu_scale <= 0 or mem_scale <= 0:
            raise ValueError("cpu_scale and mem_scale must be positive")
        self.state_dir = Path(state_dir).resolve()
        self.bridge = bridge
        self.prefix = prefix
        self.cpu_scale = cpu_scale
        self.mem_scale = mem_scale
        self._log: Log = log or (lambda _msg: None)
        self._lock = threading.RLock()
        self._guests: dict[int, RunningGuest] = {}
        self._starting: dict[int, str] = {}  # vmid -> address, while start() prepares it
        self._closed = False
        self._exits: dict[int, GuestExit] = {}
        self._exit_listener: ExitListener | None = None
        self.host_reader = host_reader or HostReader()  # what capacity checks read
        self.footprint = Footprint()
        check_host()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.leases = netns.Leases(subnet, self.state_dir / "leases.json")
        self.cgroups = GuestCgroups(prefix)
        self._run_lock = self._take_prefix_lock()
        self._bridge_created = False
        self._lxcfs: Lxcfs | None = None
        try:
            self._clean_leftovers()
            probe_overlay(self.state_dir)
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
        host, held = self.host_reader.usage(self._guest_pids())
        with self._lock:  # claim the VM and its address; the slow part runs unlocked
            if self._closed:
                raise GuestBackendError("the guest backend is closed")
            if vmid in self._guests or vmid in self._starting:
                raise GuestBackendError(f"VM {vmid} is already running")
            others = len(self._guests) + len(self._starting)
            check_capacity(
                vmid,
                self.memory_limit(spec.memory_mib),
                GuestsHeld(others, *held),
                host,
                self.footprint,
            )
            in_use = {v: g.ip for v, g in self._guests.items()} | dict(self._starting)
            ip = self.leases.assign(vmid, spec.ipconfig0, in_use)
            self._starting[vmid] = ip
        guest = RunningGuest(spec=spec, ip=ip, cores=spec.cores, memory_mib=spec.memory_mib)
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
        self._await_init(guest)

    def _await_init(self, guest: RunningGuest) -> None:
        """Return once the guest's init runs, as PVE's start returns once QEMU runs; raise
        GuestExited if it exited before (the exit listener hears of it too)."""
        guest.booted.wait()
        if guest.stopped.is_set():
            if guest.exit is not None:
                raise GuestExited(guest.exit)
            raise GuestBackendError(f"VM {guest.spec.vmid} was stopped while it started")

    def watch_exits(self, listener: ExitListener) -> None:
        self._exit_listener = listener

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

    def init_pid(self, vmid: int) -> int | None:
        """The host PID of the guest's init (the container's leader), once it runs."""
        guest = self._guests.get(vmid)
        return guest.init_pid if guest else None

    def last_exit(self, vmid: int) -> GuestExit | None:
        """How the VM's guest last stopped on its own (None if it never did)."""
        return self._exits.get(vmid)

    def _guest_pids(self) -> set[int]:
        return self.cgroups.all_guest_pids()

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
