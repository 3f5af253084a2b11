"""close() and a crashed run leave nothing behind on the host (own bridge lgbr21 / prefix lg21)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from provision.sim.guests.container import ContainerBackend
from provision.sim.guests.errors import GuestsUnavailable
from provision.sim.guests.lxcfs import is_dead, lxcfs_mounts, unmount_dead

pytestmark = pytest.mark.guests

REPO = Path(__file__).resolve().parents[2]
BRIDGE2, SUBNET2, PREFIX2 = "lgbr21", "10.213.21.0/24", "lg21"  # not the session backend's


def alive(pids: object) -> list[int]:
    """PIDs still running (a zombie has exited; reaping it is its new parent's business)."""
    living = []
    for pid in pids:  # type: ignore[attr-defined]
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        if stat.rsplit(")", 1)[1].split()[0] != "Z":
            living.append(pid)
    return living


def host_leftovers(prefix: str, bridge: str, state_dir: Path) -> list[str]:
    """Everything of a backend that could outlive it on the host."""
    found = [
        f"cgroup {h}"
        for h in os.listdir("/sys/fs/cgroup")
        if os.path.exists(f"/sys/fs/cgroup/{h}/{prefix}")
    ]
    netns_dir = Path("/run/netns")
    if netns_dir.is_dir():
        found += [f"netns {n}" for n in os.listdir(netns_dir) if n.startswith(f"{prefix}-")]
    found += [
        f"link {n}"
        for n in os.listdir("/sys/class/net")
        if n == bridge or n.startswith(f"{prefix}v")
    ]
    with open("/proc/self/mountinfo") as fh:
        found += [f"mount {ln.split()[4]}" for ln in fh if str(state_dir) in ln.split()[4]]
    propagate = Path("/run/systemd/nspawn/propagate")
    if propagate.is_dir():
        found += [f"nspawn {n}" for n in os.listdir(propagate) if n.startswith(f"{prefix}-")]
    return found


def test_close_leaves_nothing_behind(tmp_path: Path, spec_for, root_only: None) -> None:  # type: ignore[no-untyped-def]
    try:
        backend = ContainerBackend(tmp_path, bridge=BRIDGE2, subnet=SUBNET2, prefix=PREFIX2)
    except GuestsUnavailable as exc:
        pytest.skip(f"guests unavailable: {exc}")
    try:
        for vmid in (301, 302):
            backend.clone_disk(None, vmid, linked=True)
            backend.start(spec_for(vmid))
        for vmid in (301, 302):
            backend.wait_ready(vmid)
        pids = backend.cgroups.pids(PREFIX2)
        assert pids
    finally:
        backend.close()
    assert host_leftovers(PREFIX2, BRIDGE2, tmp_path) == []
    assert alive(pids) == []


def test_a_new_backend_cleans_up_after_a_crashed_one(  # type: ignore[no-untyped-def]
    tmp_path: Path, ssh_key: Path, spec_for, root_only: None
) -> None:
    # A simulator process boots a guest and dies by SIGKILL, without close().
    script = textwrap.dedent(f"""
        import os, signal
        from pathlib import Path
        from provision.sim.guests.base import GuestSpec
        from provision.sim.guests.container import ContainerBackend
        b = ContainerBackend({str(tmp_path)!r}, bridge={BRIDGE2!r}, subnet={SUBNET2!r},
                             prefix={PREFIX2!r})
        b.clone_disk(None, 311, linked=True)
        key = Path({str(ssh_key)!r} + ".pub").read_text().strip()
        b.start(GuestSpec(vmid=311, name="crashy", cores=1, memory_mib=1024, ciuser="labuser",
                          sshkeys=(key,)))
        b.wait_ready(311)
        print(" ".join(str(p) for p in b.cgroups.pids({PREFIX2!r})), flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.run(
        [sys.executable, "-c", script],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    if proc.returncode != -signal.SIGKILL:
        if "GuestsUnavailable" in proc.stderr:
            pytest.skip(proc.stderr.strip().splitlines()[-1])
        pytest.fail(f"crash script failed: {proc.stderr[-2000:]}")
    orphans = [int(p) for p in proc.stdout.split()]
    assert alive(orphans), "the guest should outlive the crashed simulator"
    assert host_leftovers(PREFIX2, BRIDGE2, tmp_path) != []

    backend = ContainerBackend(tmp_path, bridge=BRIDGE2, subnet=SUBNET2, prefix=PREFIX2)
    try:
        assert alive(orphans) == []
        assert backend.cgroups.pids(PREFIX2) == set()
        # the disk survived the crash and boots again, on its old address
        backend.start(spec_for(311))
        backend.wait_ready(311)
    finally:
        backend.close()
    assert host_leftovers(PREFIX2, BRIDGE2, tmp_path) == []


def test_a_dead_lxcfs_left_by_a_run_killed_whole_is_unmounted(  # type: ignore[no-untyped-def]
    tmp_path: Path, backend, root_only: None
) -> None:
    # Every process of the run dies at once (a stopped job): the simulator by SIGKILL, then its
    # lxcfs. Nobody unmounted, and the FUSE mount answers "Transport endpoint is not connected".
    script = textwrap.dedent(f"""
        import os, signal
        from provision.sim.guests.container import ContainerBackend
        b = ContainerBackend({str(tmp_path)!r}, bridge={BRIDGE2!r}, subnet={SUBNET2!r},
                             prefix={PREFIX2!r})
        print(b._lxcfs.pid if b._lxcfs else "", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.run(
        [sys.executable, "-c", script],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    if proc.returncode != -signal.SIGKILL:
        pytest.fail(f"crash script failed: {proc.stderr[-2000:]}")
    if not proc.stdout.strip():
        pytest.skip("lxcfs is not installed")
    os.kill(int(proc.stdout), signal.SIGKILL)
    wait_gone(int(proc.stdout))
    mount = tmp_path / "lxcfs"
    assert lxcfs_mounts(tmp_path) == [mount] and is_dead(mount)
    with pytest.raises(OSError, match="not connected|connection abort"):
        os.listdir(mount)

    assert unmount_dead(tmp_path) == [mount]
    assert lxcfs_mounts(tmp_path) == []
    # a live lxcfs (the session backend's) is left alone
    assert len(lxcfs_mounts(backend.state_dir)) == 1
    assert unmount_dead(backend.state_dir) == []
    ContainerBackend(tmp_path, bridge=BRIDGE2, subnet=SUBNET2, prefix=PREFIX2).close()
    assert host_leftovers(PREFIX2, BRIDGE2, tmp_path) == []


def wait_gone(pid: int) -> None:
    for _ in range(200):
        if not alive([pid]):
            return
        time.sleep(0.02)
    pytest.fail(f"process {pid} survived SIGKILL")


def test_a_prefix_in_use_is_refused(tmp_path: Path, root_only: None) -> None:
    try:
        first = ContainerBackend(tmp_path / "a", bridge=BRIDGE2, subnet=SUBNET2, prefix=PREFIX2)
    except GuestsUnavailable as exc:
        pytest.skip(f"guests unavailable: {exc}")
    try:
        with pytest.raises(GuestsUnavailable, match="in use"):
            ContainerBackend(tmp_path / "b", bridge=BRIDGE2, subnet=SUBNET2, prefix=PREFIX2)
    finally:
        first.close()


def test_without_root_the_backend_says_why_in_one_line(tmp_path: Path) -> None:
    script = textwrap.dedent(f"""
        from provision.sim.guests.container import ContainerBackend
        from provision.sim.guests.errors import GuestsUnavailable
        try:
            ContainerBackend({str(tmp_path)!r}, bridge="lgbr21", subnet="10.213.21.0/24",
                             prefix="lg21")
        except GuestsUnavailable as exc:
            print(exc)
    """)
    if os.geteuid() == 0:
        argv = [
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            sys.executable,
            "-c",
            script,
        ]
    else:
        argv = [sys.executable, "-c", script]
    env = {**os.environ, "PYTHONPATH": str(REPO)}  # `provision` importable from cwd /
    proc = subprocess.run(
        argv, check=False, capture_output=True, text=True, timeout=60, cwd="/", env=env
    )
    assert proc.stdout.strip() == "container guests need root (netns, overlayfs, cgroups)", (
        proc.stderr
    )


def test_a_state_dir_on_overlayfs_is_refused_and_nothing_is_left(
    tmp_path: Path, root_only: None
) -> None:
    layers = [tmp_path / d for d in ("lower", "upper", "work", "merged")]
    for d in layers:
        d.mkdir()
    lower, upper, work, merged = layers
    subprocess.run(
        [
            "mount",
            "-t",
            "overlay",
            "overlay",
            "-o",
            f"lowerdir={lower},upperdir={upper},workdir={work}",
            str(merged),
        ],
        check=True,
    )
    try:
        with pytest.raises(GuestsUnavailable, match="cannot mount an overlay"):
            ContainerBackend(merged / "state", bridge=BRIDGE2, subnet=SUBNET2, prefix=PREFIX2)
    finally:
        subprocess.run(["umount", str(merged)], check=True)
    assert host_leftovers(PREFIX2, BRIDGE2, tmp_path) == []
