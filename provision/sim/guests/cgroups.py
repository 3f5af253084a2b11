"""cgroup v1 groups that shape a guest like a VM (cores -> cpuset + CFS quota, RAM -> memory limit).

Layout: /sys/fs/cgroup/<hierarchy>/<root>/vm<VMID> in every hierarchy a guest joins. The
`name=systemd` and `unified` hierarchies matter although they shape nothing: nspawn --keep-unit
creates payload/ and supervisor/ in the *caller's* groups there, so every guest needs its own
(guests.md 2b). Groups are removed deepest first, because nspawn leaves children in them.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import time
from pathlib import Path

from provision.sim.guests.errors import GuestBackendError, GuestsUnavailable

CGROUP_ROOT = Path("/sys/fs/cgroup")
SHAPING = ("cpu", "cpuacct", "cpuset", "memory", "pids")
BOOKKEEPING = ("systemd", "unified")  # name=systemd (v1) and the hybrid layout's cgroup2
HIERARCHIES = SHAPING + BOOKKEEPING
CFS_PERIOD_US = 100_000


def host_cpus() -> list[int]:
    """CPUs this process may use (the cap for a guest's cores)."""
    return sorted(os.sched_getaffinity(0))


def format_cpus(cpus: list[int]) -> str:
    return ",".join(str(c) for c in cpus)


def check_cgroup_v1() -> None:
    """Raise GuestsUnavailable unless the v1 hierarchies the backend uses are mounted."""
    missing = [h for h in HIERARCHIES if not (CGROUP_ROOT / h / "cgroup.procs").exists()]
    if missing:
        if (CGROUP_ROOT / "cgroup.controllers").exists():
            raise GuestsUnavailable(
                "this host uses the cgroup v2 unified layout only; "
                "the guest backend needs cgroup v1 (hybrid) hierarchies"
            )
        raise GuestsUnavailable(f"cgroup v1 hierarchies not mounted: {', '.join(missing)}")


class GuestCgroups:
    """The cgroups of one backend (root group named after the backend's prefix)."""

    def __init__(self, root_name: str) -> None:
        self.root_name = root_name

    # -- paths -----------------------------------------------------------------------------------
    def _dirs(self, rel: str) -> list[Path]:
        """One directory per distinct hierarchy (cpu and cpuacct may be co-mounted)."""
        seen: set[str] = set()
        dirs = []
        for h in HIERARCHIES:
            base = CGROUP_ROOT / h
            real = os.path.realpath(base)
            if real in seen:
                continue
            seen.add(real)
            dirs.append(base / rel)
        return dirs

    def group(self, vmid: int) -> str:
        return f"{self.root_name}/vm{vmid}"

    def path(self, hierarchy: str, vmid: int) -> Path:
        return CGROUP_ROOT / hierarchy / self.group(vmid)

    def procs_files(self, vmid: int) -> list[Path]:
        """cgroup.procs of every hierarchy: the launcher writes its PID into each, then execs."""
        return [d / "cgroup.procs" for d in self._dirs(self.group(vmid))]

    # -- lifecycle -------------------------------------------------------------------------------
    def create(self, vmid: int) -> None:
        for d in self._dirs(self.root_name) + self._dirs(self.group(vmid)):
            d.mkdir(exist_ok=True)
        # cpuset children start with empty cpus/mems and refuse tasks until both are set,
        # parent first.
        cpuset_parent = CGROUP_ROOT / "cpuset"
        for d in (cpuset_parent / self.root_name, self.path("cpuset", vmid)):
            for knob in ("cpuset.mems", "cpuset.cpus"):
                if not (d / knob).read_text().strip():
                    (d / knob).write_text((d.parent / knob).read_text().strip())

    def set_shape(self, vmid: int, cpus: list[int], quota_us: int, memory_bytes: int) -> None:
        """Apply a shape; raises GuestBackendError if memory cannot shrink below current use."""
        _write(self.path("cpuset", vmid) / "cpuset.cpus", format_cpus(cpus))
        _write(self.path("cpu", vmid) / "cpu.cfs_period_us", str(CFS_PERIOD_US))
        _write(self.path("cpu", vmid) / "cpu.cfs_quota_us", str(quota_us))
        try:
            _write(self.path("memory", vmid) / "memory.limit_in_bytes", str(memory_bytes))
        except OSError as exc:
            if exc.errno == errno.EBUSY:
                raise GuestBackendError(
                    f"cannot lower the memory limit to {memory_bytes // 2**20} MiB: "
                    "the guest uses more than that"
                ) from exc
            raise

    def shape(self, vmid: int) -> tuple[str, int, int]:
        """(cpuset.cpus, cfs quota us, memory limit bytes) as the kernel has them."""
        return (
            (self.path("cpuset", vmid) / "cpuset.cpus").read_text().strip(),
            int((self.path("cpu", vmid) / "cpu.cfs_quota_us").read_text()),
            int((self.path("memory", vmid) / "memory.limit_in_bytes").read_text()),
        )

    def cpu_usage_ns(self, vmid: int) -> int:
        return int((self.path("cpuacct", vmid) / "cpuacct.usage").read_text())

    def memory_usage(self, vmid: int) -> int:
        return int((self.path("memory", vmid) / "memory.usage_in_bytes").read_text())

    def oom_kills(self, vmid: int) -> int:
        text = (self.path("memory", vmid) / "memory.oom_control").read_text()
        for line in text.splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
        return 0

    def pids(self, rel: str) -> set[int]:
        """Every process in the group rel (and below), in any hierarchy."""
        found: set[int] = set()
        for d in self._dirs(rel):
            if not d.is_dir():
                continue
            for dirpath, _dirs, files in os.walk(d):
                if "cgroup.procs" in files:
                    with contextlib.suppress(OSError):
                        text = Path(dirpath, "cgroup.procs").read_text()
                        found.update(int(p) for p in text.split())
        return found

    def all_guest_pids(self) -> set[int]:
        """Every process of every guest, read from one hierarchy only (cheap: the pids groups
        have no children, unlike name=systemd where nspawn and the guests nest theirs)."""
        found: set[int] = set()
        root = CGROUP_ROOT / "pids" / self.root_name
        for procs in root.glob("vm*/**/cgroup.procs"):
            with contextlib.suppress(OSError):
                found.update(int(p) for p in procs.read_text().split())
        return found

    def kill_all(self, rel: str, timeout_s: float = 5.0) -> bool:
        """SIGKILL every process in our group rel until it is empty; True when it is."""
        deadline = time.monotonic() + timeout_s
        while True:
            pids = self.pids(rel)
            if not pids:
                return True
            if time.monotonic() > deadline:
                return False
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.05)

    def remove(self, rel: str) -> list[str]:
        """rmdir the group rel and everything below it, deepest first; returns what stayed."""
        stuck: list[str] = []
        for d in self._dirs(rel):
            if not d.is_dir():
                continue
            for dirpath, _dirs, _files in os.walk(d, topdown=False):
                try:
                    os.rmdir(dirpath)
                except OSError as exc:
                    if exc.errno != errno.ENOENT:
                        stuck.append(f"{dirpath}: {exc.strerror}")
        return stuck

    def remove_guest(self, vmid: int) -> list[str]:
        return self.remove(self.group(vmid))

    def remove_root(self) -> list[str]:
        return self.remove(self.root_name)


def _write(path: Path, value: str) -> None:
    with open(path, "w") as fh:
        fh.write(value)
