"""Can the host hold one more guest? Checked before each start, so a start the host cannot honour
is refused with one line naming the limit and the fix instead of a guest that hangs at boot.

Every guest runs as root on the host (no user namespace), so all guests of every simulator on
the machine share root's inotify limits (fs.inotify.max_user_instances / max_user_watches) with
whatever else root runs. When they are used up, the next guest's systemd exits at boot with
"Failed to create control group inotify object: Too many open files". Memory and PIDs are the
host's; addresses are checked where they are leased (netns.Leases).

The checks read /proc only: the limits, `anon_inode:inotify` descriptors of root's processes
(and their watches in fdinfo), MemAvailable, and the thread count of /proc/loadavg.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from provision.sim.guests.errors import HostCapacityError

MIB = 2**20
SETUP_HINT = "run scripts/sim-host-setup.sh"


@dataclass(frozen=True)
class Footprint:
    """What one guest holds on the host. Measured on Debian 12 guests (guests/README.md):
    8 inotify instances (systemd 5, dbus, logind, agetty 1 each) with 26 watches and 7 tasks
    once booted; a boot briefly runs more tasks (generators, cloud-init, ssh-keygen)."""

    inotify_instances: int = 8
    inotify_watches: int = 32
    tasks: int = 32


@dataclass(frozen=True)
class HostUsage:
    """The host's limits and what is in use now (inotify: root's, all processes)."""

    inotify_instances_max: int
    inotify_instances_used: int
    inotify_watches_max: int
    inotify_watches_used: int
    mem_available: int  # bytes
    tasks_max: int  # min(kernel.pid_max, kernel.threads-max)
    tasks: int  # threads running now


@dataclass(frozen=True)
class GuestsHeld:
    """What this backend's guests hold now."""

    guests: int  # running or starting, not counting the one asked for
    inotify_instances: int
    inotify_watches: int


class HostReader:
    """Reads HostUsage from /proc; tests hand the backend a reader with other numbers."""

    def __init__(self, proc: Path = Path("/proc")) -> None:
        self.proc = proc

    def usage(self, guest_pids: Iterable[int] = ()) -> tuple[HostUsage, tuple[int, int]]:
        """The host's usage, and (instances, watches) held by guest_pids among it."""
        per_pid = self._inotify_per_pid()
        ours = set(guest_pids)
        held = [per_pid[pid] for pid in ours if pid in per_pid]
        usage = HostUsage(
            inotify_instances_max=self._int("sys/fs/inotify/max_user_instances"),
            inotify_instances_used=sum(i for i, _ in per_pid.values()),
            inotify_watches_max=self._int("sys/fs/inotify/max_user_watches"),
            inotify_watches_used=sum(w for _, w in per_pid.values()),
            mem_available=self._mem_available(),
            tasks_max=min(self._int("sys/kernel/pid_max"), self._int("sys/kernel/threads-max")),
            tasks=self._tasks(),
        )
        return usage, (sum(i for i, _ in held), sum(w for _, w in held))

    def _int(self, rel: str) -> int:
        return int((self.proc / rel).read_text().split()[0])

    def _mem_available(self) -> int:
        for line in (self.proc / "meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
        return 0

    def _tasks(self) -> int:
        """Threads in the system: the `running/total` field of /proc/loadavg."""
        return int((self.proc / "loadavg").read_text().split()[3].split("/")[1])

    def _inotify_per_pid(self) -> dict[int, tuple[int, int]]:
        """pid -> (inotify instances, watches) for the processes that hold any and count
        against our user's limit (root's, when guests run)."""
        uid = os.geteuid()
        found: dict[int, tuple[int, int]] = {}
        for entry in os.scandir(self.proc):
            if not entry.name.isdigit():
                continue
            try:
                if entry.stat().st_uid != uid:
                    continue
                fds = os.listdir(f"{entry.path}/fd")
            except OSError:
                continue  # gone, or not ours to read
            instances = watches = 0
            for fd in fds:
                try:
                    if os.readlink(f"{entry.path}/fd/{fd}") != "anon_inode:inotify":
                        continue
                    with open(f"{entry.path}/fdinfo/{fd}") as info:
                        watches += sum(1 for line in info if line.startswith("inotify wd:"))
                    instances += 1
                except OSError:
                    continue
            if instances:
                found[int(entry.name)] = (instances, watches)
        return found


def check_capacity(
    vmid: int,
    memory_bytes: int,
    held: GuestsHeld,
    host: HostUsage,
    footprint: Footprint = Footprint(),
) -> None:
    """Raise HostCapacityError unless the host can hold one more guest of memory_bytes."""
    after = held.guests + 1
    _check_inotify(
        vmid,
        after,
        "instances",
        "fs.inotify.max_user_instances",
        ours=held.inotify_instances,
        used=host.inotify_instances_used,
        limit=host.inotify_instances_max,
        each=footprint.inotify_instances,
    )
    _check_inotify(
        vmid,
        after,
        "watches",
        "fs.inotify.max_user_watches",
        ours=held.inotify_watches,
        used=host.inotify_watches_used,
        limit=host.inotify_watches_max,
        each=footprint.inotify_watches,
    )
    if memory_bytes > host.mem_available:
        raise HostCapacityError(
            f"cannot start VM {vmid}: its memory limit of {memory_bytes // MIB} MiB is more than "
            f"the host's {host.mem_available // MIB} MiB available (MemAvailable) (stop other "
            "guests or start the simulator with a smaller --mem-scale)"
        )
    if host.tasks + footprint.tasks > host.tasks_max:
        raise HostCapacityError(
            f"cannot start VM {vmid}: the host runs {host.tasks} tasks and a booting guest "
            f"needs ~{footprint.tasks} more, kernel.pid_max/threads-max allow {host.tasks_max} "
            "(raise them with sysctl, or stop guests)"
        )


def _check_inotify(
    vmid: int, after: int, what: str, sysctl: str, *, ours: int, used: int, limit: int, each: int
) -> None:
    """Guests need `each` per guest (or what they hold now plus one more, if that is more);
    everything else root holds stays in use."""
    others = max(0, used - ours)
    need = max(after * each, ours + each)
    if others + need <= limit:
        return
    besides = f" besides the {others} the host uses" if others else ""
    raise HostCapacityError(
        f"cannot start VM {vmid}: {_guests(after)} ~{need} inotify {what}{besides}, "
        f"{sysctl} is {limit} ({SETUP_HINT})"
    )


def _guests(count: int) -> str:
    return "1 guest needs" if count == 1 else f"{count} guests need"
