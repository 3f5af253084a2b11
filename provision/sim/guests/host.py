"""What a container backend holds on the host, and cleaning it up after a crash.

The prefix lock and record in /run/labctl-sim, lxcfs, and the sweep that removes every netns,
veth, mount and cgroup of the prefix; plus the checks that the host can run guests at all.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import IO

from provision.sim.guests import netns
from provision.sim.guests.cgroups import GuestCgroups, check_cgroup_v1
from provision.sim.guests.errors import GuestsUnavailable
from provision.sim.guests.hostcmd import quiet
from provision.sim.guests.lxcfs import Lxcfs
from provision.sim.guests.nspawn import NSPAWN_RUN, Log

RUN_DIR = Path("/run/labctl-sim")


class HostResources:
    """The prefix's lock, record, lxcfs and crash cleanup."""

    state_dir: Path
    bridge: str
    prefix: str
    cgroups: GuestCgroups
    _run_lock: IO[str]
    _bridge_created: bool
    _lxcfs: Lxcfs | None
    _lxcfs_note: str
    _log: Log

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


def check_names(bridge: str, prefix: str) -> None:
    if not re.fullmatch(r"[a-z][a-z0-9]{1,4}", prefix):
        raise ValueError(f"guest prefix {prefix!r}: 2-5 lowercase letters/digits, letter first")
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_-]{0,14}", bridge):
        raise ValueError(f"bridge name {bridge!r}: at most {netns.IFNAMSIZ} characters")


def check_host() -> None:
    if os.geteuid() != 0:
        raise GuestsUnavailable("container guests need root (netns, overlayfs, cgroups)")
    for tool in ("systemd-nspawn", "ip", "nsenter", "mount", "ssh-keygen"):
        if shutil.which(tool) is None:
            raise GuestsUnavailable(f"{tool} not found (run scripts/sim-host-setup.sh)")
    with open("/proc/filesystems") as fh:
        if not any(line.split()[-1] == "overlay" for line in fh if line.strip()):
            raise GuestsUnavailable("the kernel has no overlayfs")
    check_cgroup_v1()


def probe_overlay(state_dir: Path) -> None:
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
