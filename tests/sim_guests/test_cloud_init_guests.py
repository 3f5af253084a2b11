"""The guests' cloud-init: host keys a moment after the agent answers, the first-boot package
upgrade (CPU, dpkg lock) and `cloud-init status --wait`, as on a freshly cloned PVE VM."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from provision.sim.guests.container import ContainerBackend, ssh_banner
from tests.support.guests import make_spec, next_vmid, ssh_run

pytestmark = pytest.mark.guests

HOST_KEY = "/etc/ssh/ssh_host_ed25519_key.pub"
APT_INSTALL = "sudo -n apt-get install -y --no-download zstd 2>&1; echo rc=$?"


@pytest.fixture
def started(backend: ContainerBackend) -> Iterator[list[int]]:
    vmids: list[int] = []
    yield vmids
    for vmid in reversed(vmids):
        backend.stop(vmid)
        backend.delete_disk(vmid)


def test_host_keys_appear_after_the_agent_answers_and_sshd_waits_for_them(
    backend: ContainerBackend, ssh_key: Path, started: list[int]
) -> None:
    vmid = next_vmid()
    spec = make_spec(vmid, ssh_key, ssh_keys_delay=2.5)
    backend.clone_disk(None, vmid, linked=True)
    backend.start(spec)
    started.append(vmid)
    deadline = time.monotonic() + 30
    while not backend.agent_ping(vmid):
        assert time.monotonic() < deadline, "the agent never answered"
        time.sleep(0.05)
    # The agent answers, cloud-init's ssh module has not run yet: no host key, no sshd.
    with pytest.raises(FileNotFoundError):
        backend.file_read(vmid, HOST_KEY)
    assert ssh_banner(str(backend.guest_ip(vmid))) is None
    waited = backend.wait_ready(vmid, timeout_s=30)
    assert waited > 1.0
    key = backend.file_read(vmid, HOST_KEY)
    assert key.split()[0] == b"ssh-ed25519" and key.split()[2] == f"root@{spec.name}".encode()
    # the key read through the "agent" is the key sshd serves (ssh_run pins it, RejectPolicy)
    rc, out, err = ssh_run(backend, vmid, "labuser", ssh_key, "cloud-init status --long", 30)
    assert rc == 0, err
    assert out.startswith("status: done\n") and "errors: []" in out


def test_package_upgrade_keeps_the_dpkg_lock_and_a_cpu_busy_until_cloud_init_is_done(
    boot: Callable[..., Any],
) -> None:
    guest = boot(package_upgrade=True, upgrade_seconds=6.0)
    backend: ContainerBackend = guest.backend
    rc, out, _err = guest.ssh(APT_INSTALL)
    assert "Could not get lock /var/lib/dpkg/lock-frontend" in out and "rc=100" in out, out
    rc, out, _err = guest.ssh("cloud-init status; ps -eo comm | grep -c '^apt-get$'")
    assert rc == 0 and out.split() == ["status:", "running", "1"], out
    backend.usage(guest.vmid)
    time.sleep(1.0)
    cpu, _mem = backend.usage(guest.vmid)
    assert cpu > 0.5, f"the upgrade should keep about one CPU busy, saw {cpu:.2f}"
    started = time.monotonic()
    rc, out, err = guest.ssh("cloud-init status --wait", timeout=60)
    assert rc == 0, err
    assert out.rstrip("\n").endswith("status: done") and out.startswith(".")
    assert time.monotonic() - started > 1.0
    _rc, out, _err = guest.ssh(APT_INSTALL)
    assert "rc=0" in out and "zstd is already the newest version" in out, out
    _rc, log, _err = guest.ssh("cat /var/log/cloud-init-output.log")
    assert "(simulated) upgrade done" in log


def test_without_package_upgrade_nothing_runs_after_ssh_answers(boot) -> None:  # type: ignore[no-untyped-def]
    guest = boot()
    started = time.monotonic()
    rc, out, err = guest.ssh(
        "cloud-init status --wait; grep -c simulated /var/log/cloud-init-output.log; " + APT_INSTALL
    )
    assert rc == 0, err
    assert time.monotonic() - started < 10
    lines = out.splitlines()
    assert lines[0] == "status: done" and lines[1] == "0" and "rc=0" in out, out


def test_status_exit_codes_follow_cloud_init(boot) -> None:  # type: ignore[no-untyped-def]
    guest = boot()
    script = (
        "import json; p='/run/cloud-init/status.json'; d=json.load(open(p)); "
        "d['v1']['modules-final']['recoverable_errors']={'WARNING': ['Package upgrade failed']}; "
        "json.dump(d, open(p, 'w'))"
    )
    rc, out, err = guest.ssh(f'sudo -n python3 -c "{script}"; cloud-init status --long')
    assert rc == 2, (out, err)  # degraded: recoverable errors
    assert "status: done" in out and "extended_status: degraded done" in out
    assert "Package upgrade failed" in out
    script = script.replace(
        "['recoverable_errors']={'WARNING': ['Package upgrade failed']}", "['errors']=['boom']"
    )
    rc, out, _err = guest.ssh(f'sudo -n python3 -c "{script}"; cloud-init status')
    assert (rc, out.strip()) == (1, "status: error")
