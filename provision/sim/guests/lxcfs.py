"""lxcfs: makes /proc/meminfo, cpuinfo, stat, ... inside a guest show its cgroup shape.

One lxcfs per backend, mounted under the backend's state dir. The whole mount is bound read-only
into each guest at /run/lxcfs (nspawn cannot bind single files from a FUSE mount), and after
boot the files are bound over /proc from inside the guest's mount namespace (guests.md 2b/3b).

A FUSE mount outlives its daemon: when every process of a run is killed at once (a stopped
job, SIGKILL), nobody unmounts, and the mount answers "Transport endpoint is not connected"
to whoever walks the directory next (pytest removing old temp dirs, `rm -r`). The next backend
of the same prefix unmounts it (`kill_recorded`); `unmount_dead` clears such mounts of any
prefix below a directory.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

from provision.sim.guests.errors import GuestBackendError
from provision.sim.guests.hostcmd import quiet, run

GUEST_MOUNT = "/run/lxcfs"
FSTYPE = "fuse.lxcfs"
PROC_FILES = ("meminfo", "cpuinfo", "stat", "loadavg", "uptime", "swaps", "diskstats")


def is_mountpoint(path: Path) -> bool:
    target = str(path)
    with open("/proc/self/mountinfo") as fh:
        return any(line.split()[4] == target for line in fh)


class Lxcfs:
    def __init__(self, mountpoint: Path, log_path: Path) -> None:
        self.mountpoint = mountpoint
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    @staticmethod
    def available() -> bool:
        return shutil.which("lxcfs") is not None and Path("/dev/fuse").exists()

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def start(self, timeout_s: float = 10.0) -> None:
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        if is_mountpoint(self.mountpoint):
            quiet(["umount", "-l", str(self.mountpoint)])
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                # -l: per-guest loadavg; --enable-cfs: CPU count from the CFS quota too
                [
                    "lxcfs",
                    "-f",
                    "-l",
                    "--enable-cfs",
                    "-p",
                    f"{self.mountpoint}.pid",
                    str(self.mountpoint),
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout_s
        while not (self.mountpoint / "proc/meminfo").exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise GuestBackendError(f"lxcfs did not come up (see {self.log_path})")
            time.sleep(0.05)

    def stop(self) -> None:
        """Unmount, then SIGKILL: lxcfs takes 2-4 s to honour SIGTERM and keeps no state."""
        if is_mountpoint(self.mountpoint) and not quiet(["umount", str(self.mountpoint)]):
            quiet(["umount", "-l", str(self.mountpoint)])
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        self.proc = None
        with contextlib.suppress(OSError):
            os.unlink(f"{self.mountpoint}.pid")

    @staticmethod
    def kill_recorded(pid: int, mountpoint: Path) -> None:
        """Crash cleanup: end an lxcfs a previous run recorded (only if it is still lxcfs)."""
        if is_mountpoint(mountpoint) and not quiet(["umount", str(mountpoint)]):
            quiet(["umount", "-l", str(mountpoint)])
        with contextlib.suppress(OSError):
            if Path(f"/proc/{pid}/comm").read_text().strip() == "lxcfs":
                os.kill(pid, signal.SIGKILL)
                for _ in range(100):  # until it is gone or a zombie (its parent was init)
                    stat = Path(f"/proc/{pid}/stat").read_text()
                    if stat.rsplit(")", 1)[1].split()[0] == "Z":
                        break
                    time.sleep(0.02)
        with contextlib.suppress(OSError):
            os.unlink(f"{mountpoint}.pid")


def lxcfs_mounts(under: Path) -> list[Path]:
    """The lxcfs mount points below `under`, from this mount namespace's table."""
    prefix = str(under).rstrip("/") + "/"
    found = []
    with open("/proc/self/mountinfo") as fh:
        for line in fh:
            fields = line.split()
            fstype = fields[fields.index("-") + 1]  # after the optional fields' separator
            point = fields[4].replace("\\040", " ")
            if fstype == FSTYPE and point.startswith(prefix):
                found.append(Path(point))
    return found


def is_dead(mountpoint: Path) -> bool:
    """Its lxcfs is gone: reading the mount fails with ENOTCONN, or ECONNABORTED once the kernel
    aborted the connection (a stat may still be answered from the attribute cache). An lxcfs
    that its pid file names and that still runs is alive without asking the mount (a stuck one
    would not answer)."""
    with contextlib.suppress(OSError, ValueError):
        if _runs_lxcfs(int(Path(f"{mountpoint}.pid").read_text().strip())):
            return False
    try:
        os.listdir(mountpoint)
    except OSError as exc:
        return exc.errno in (errno.ENOTCONN, errno.ECONNABORTED)
    return False


def _runs_lxcfs(pid: int) -> bool:
    """pid is a running lxcfs (a killed one stays a zombie until its parent reaps it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    comm, state = stat.split(" (", 1)[1].rsplit(") ", 1)
    return comm == "lxcfs" and state.split()[0] != "Z"


def unmount_dead(under: Path) -> list[Path]:
    """Unmount every lxcfs mount below `under` whose lxcfs is dead; returns those unmounted."""
    removed = []
    for point in lxcfs_mounts(under):
        if is_dead(point) and (
            quiet(["umount", str(point)]) or quiet(["umount", "-l", str(point)])
        ):
            removed.append(point)
    return removed


def bind_into_guest(init_pid: int) -> None:
    """Bind the lxcfs files over the guest's /proc files, inside the guest's mount namespace."""
    script = " && ".join(
        f"mount --bind {GUEST_MOUNT}/proc/{name} /proc/{name}" for name in PROC_FILES
    )
    try:
        run(["nsenter", "-t", str(init_pid), "-m", "sh", "-c", script], timeout=10)
    except GuestBackendError as exc:
        raise GuestBackendError(f"binding lxcfs into the guest failed: {exc}") from exc
