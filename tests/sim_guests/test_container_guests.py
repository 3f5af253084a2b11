"""Real systemd-nspawn guests behave like freshly cloned, shaped VMs."""

from __future__ import annotations

import base64
import dataclasses
import http.server
import threading
import time

import paramiko
import pytest

from provision.sim.guests.container import ContainerBackend
from provision.sim.guests.errors import GuestBackendError

pytestmark = pytest.mark.guests

MIB = 2**20


def test_guest_answers_ssh_with_the_host_key_the_agent_reads(boot, pinned) -> None:  # type: ignore[no-untyped-def]
    guest = boot(name="gemma")
    rc, out, err = guest.ssh("hostname; id -un; sudo -n id -u; cat ~/.ssh/authorized_keys")
    assert rc == 0, err
    hostname, user, root_uid, keys = out.split("\n", 3)
    assert (hostname, user, root_uid) == ("gemma", "labuser", "0")
    assert guest.spec.sshkeys[0] in keys
    # the key file_read returned is the one sshd serves: paramiko with RejectPolicy accepted it
    # above; the same client with another pinned key must refuse the server
    client = pinned(guest.backend, guest.vmid)
    # any other ed25519 key will do as the "wrong" pin: the user's own public key
    wrong_blob = guest.key.with_suffix(".pub").read_text().split()[1]
    wrong = paramiko.Ed25519Key(data=base64.b64decode(wrong_blob))
    client.get_host_keys().add(guest.ip, "ssh-ed25519", wrong)
    with pytest.raises(paramiko.SSHException):
        client.connect(
            guest.ip,
            username="labuser",
            key_filename=str(guest.key),
            look_for_keys=False,
            allow_agent=False,
            timeout=10,
        )
    client.close()


def test_guest_is_a_booted_systemd_host_on_its_own_address(boot) -> None:  # type: ignore[no-untyped-def]
    guest = boot(ipconfig0="ip=10.213.20.77/24,gw=10.213.20.1")
    assert guest.ip == "10.213.20.77"
    rc, out, err = guest.ssh(
        "systemctl is-system-running --wait; cat /proc/1/comm; ip -4 -o addr show eth0;"
        " ip route show default | wc -l; cat /etc/machine-id"
    )
    assert rc == 0, err
    state, pid1, addr, default_routes, machine_id = out.split("\n")[:5]
    assert (state, pid1) == ("running", "systemd")
    assert "10.213.20.77/24" in addr
    assert default_routes == "0"  # guests reach only their bridge
    assert len(machine_id) == 32
    ifaces = {i["name"]: i for i in guest.backend.network_interfaces(guest.vmid)}
    assert set(ifaces) == {"lo", "eth0"}
    assert ifaces["eth0"]["hardware-address"] == guest.spec.macaddr.lower()
    ipv4 = [a for a in ifaces["eth0"]["ip-addresses"] if a["ip-address-type"] == "ipv4"]
    assert ipv4 == [{"ip-address-type": "ipv4", "ip-address": "10.213.20.77", "prefix": 24}]
    osinfo = guest.backend.osinfo(guest.vmid)
    assert (osinfo["id"], osinfo["version-id"]) == ("debian", "12")


def test_shape_inside_the_guest_is_the_vms_scaled_and_capped_shape(boot) -> None:  # type: ignore[no-untyped-def]
    guest = boot(cores=12, memory_mib=4096)  # mem_scale 0.125 -> 512 MiB, cores capped at host
    backend: ContainerBackend = guest.backend
    host_cpus = len(backend.cpu_limits(guest.vmid, 64)[0])
    rc, out, err = guest.ssh(
        "nproc; grep -c ^processor /proc/cpuinfo; free -m | awk '/Mem:/{print $2}';"
        " awk '/MemTotal/{print $2}' /proc/meminfo"
    )
    assert rc == 0, err
    nproc, cpuinfo, free_total, memtotal_kb = (int(x) for x in out.split())
    assert nproc == cpuinfo == host_cpus
    assert memtotal_kb == 512 * 1024 and free_total == 512
    _cpus, quota, limit = backend.limits(guest.vmid)
    assert limit == 512 * MIB and quota == host_cpus * 100_000


def test_memory_limit_oom_kills_a_hog_and_the_guest_survives(boot) -> None:  # type: ignore[no-untyped-def]
    guest = boot(memory_mib=512)  # -> 64 MiB
    hog = "python3 -c 'b=[]\nwhile True: b.append(bytearray(8<<20))'; echo exit=$?"
    _rc, out, _ = guest.ssh(hog, timeout=60)
    assert out.strip() == "exit=137"  # SIGKILL by the memory cgroup's OOM killer
    assert guest.backend.oom_kills(guest.vmid) >= 1
    rc, out, err = guest.ssh("systemctl is-system-running")
    assert rc == 0, err
    assert out.strip() == "running"


def test_reshape_changes_cpus_and_memory_of_a_running_guest(boot) -> None:  # type: ignore[no-untyped-def]
    guest = boot(cores=2, memory_mib=2048)
    guest.backend.reshape(guest.vmid, cores=1, memory_mib=1024)
    cpus, quota, limit = guest.backend.limits(guest.vmid)
    assert (quota, limit) == (100_000, 128 * MIB)
    assert "," not in cpus and "-" not in cpus
    # lxcfs refreshes its view of the cgroup at once for memory and cpus
    rc, out, err = guest.ssh("nproc; awk '/MemTotal/{print $2}' /proc/meminfo")
    assert rc == 0, err
    assert out.split() == ["1", str(128 * 1024)]


def test_in_guest_reboot_comes_back_with_same_identity_and_shape(boot) -> None:  # type: ignore[no-untyped-def]
    guest = boot(cores=1, memory_mib=1024)
    backend: ContainerBackend = guest.backend
    key_before = backend.file_read(guest.vmid, "/etc/ssh/ssh_host_ed25519_key.pub")
    guest.ssh(
        "sudo -n systemd-run --on-active=0.3 --timer-property=AccuracySec=10ms systemctl reboot"
    )
    deadline = time.monotonic() + 30
    while backend.boots(guest.vmid) < 2:
        assert time.monotonic() < deadline, "guest did not relaunch after reboot"
        time.sleep(0.1)
    backend.wait_ready(guest.vmid, timeout_s=30)
    assert backend.is_running(guest.vmid)
    assert backend.file_read(guest.vmid, "/etc/ssh/ssh_host_ed25519_key.pub") == key_before
    rc, out, err = guest.ssh("cut -d. -f1 /proc/uptime; nproc; hostname")
    assert rc == 0, err
    uptime, nproc, hostname = out.split()
    assert int(uptime) < 20 and nproc == "1" and hostname == guest.spec.name
    assert backend.limits(guest.vmid)[2] == 128 * MIB


def test_shutdown_powers_off_cleanly_and_stop_pulls_the_plug(boot) -> None:  # type: ignore[no-untyped-def]
    guest = boot()
    backend: ContainerBackend = guest.backend
    host_key = backend.file_read(guest.vmid, "/etc/ssh/ssh_host_ed25519_key.pub")
    assert backend.shutdown(guest.vmid, timeout_s=20) is True
    assert not backend.is_running(guest.vmid) and not backend.agent_ping(guest.vmid)
    assert backend.usage(guest.vmid) == (0.0, 0)
    backend.start(guest.spec)  # the disk kept its state: same host key after a cold boot
    backend.wait_ready(guest.vmid)
    assert backend.file_read(guest.vmid, "/etc/ssh/ssh_host_ed25519_key.pub") == host_key
    _used_cpu, used_mem = backend.usage(guest.vmid)
    assert used_mem > 5 * MIB
    backend.stop(guest.vmid)
    assert not backend.is_running(guest.vmid)
    with pytest.raises(GuestBackendError):
        backend.file_read(guest.vmid, "/etc/hostname")


def test_poweroff_inside_stops_the_vm_and_new_keys_arrive_at_next_boot(boot) -> None:  # type: ignore[no-untyped-def]
    guest = boot()
    backend: ContainerBackend = guest.backend
    guest.ssh("sudo -n systemd-run --on-active=0.2 --timer-property=AccuracySec=10ms poweroff")
    deadline = time.monotonic() + 20
    while backend.is_running(guest.vmid):
        assert time.monotonic() < deadline, "guest did not power off"
        time.sleep(0.1)
    extra = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIIqDEymXa6Vv5Rkr4g0+Jb8YB8u1FzY8nvY3W3wzBoX9 extra"
    backend.start(dataclasses.replace(guest.spec, sshkeys=(*guest.spec.sshkeys, extra)))
    backend.wait_ready(guest.vmid)
    rc, out, err = guest.ssh("cat ~/.ssh/authorized_keys")
    assert rc == 0, err
    assert out.splitlines() == [guest.spec.sshkeys[0], extra]


def test_full_clone_copies_the_disk_and_linked_clone_shares_the_base(boot) -> None:  # type: ignore[no-untyped-def]
    first = boot()
    first.ssh("echo kept | sudo -n tee /etc/marker >/dev/null && sync")
    backend: ContainerBackend = first.backend
    backend.shutdown(first.vmid, timeout_s=20)
    full = boot(linked=False, source=first.vmid)
    linked = boot(linked=True, source=None)
    assert full.ssh("cat /etc/marker")[1] == "kept\n"
    assert linked.ssh("cat /etc/marker")[0] != 0
    # a clone is a new instance: its own host key and machine-id
    keys = {
        backend.file_read(g.vmid, "/etc/ssh/ssh_host_ed25519_key.pub").split()[1]
        for g in (full, linked)
    }
    assert len(keys) == 2
    assert backend.disks.meta(full.vmid)["kind"] == "full"  # type: ignore[index]
    assert backend.disks.meta(linked.vmid)["kind"] == "overlay"  # type: ignore[index]


def test_file_read_resolves_guest_symlinks_inside_the_guest(boot) -> None:  # type: ignore[no-untyped-def]
    guest = boot()
    guest.ssh(
        "sudo -n ln -s /etc/hostname /tmp/abs-link && sudo -n ln -s ../../etc/hostname /tmp/rel"
    )
    name = (guest.spec.name + "\n").encode()
    assert guest.backend.file_read(guest.vmid, "/tmp/abs-link") == name
    assert guest.backend.file_read(guest.vmid, "/tmp/rel") == name
    with pytest.raises(FileNotFoundError):
        guest.backend.file_read(guest.vmid, "/no/such/file")


def test_guest_reaches_the_hosts_bridge_address_and_nothing_beyond(boot) -> None:  # type: ignore[no-untyped-def]
    guest = boot()
    host_ip = str(guest.backend.leases.host_ip)

    class Mirror(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b"mirror ok"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer((host_ip, 0), Mirror)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        port = server.server_address[1]
        rc, out, err = guest.ssh(f"curl -sS --max-time 5 http://{host_ip}:{port}/")
        assert (rc, out) == (0, "mirror ok"), err
        # anything outside the bridge's subnet has no route (no default route, no forwarding)
        rc, _out, err = guest.ssh("ip route get 198.51.100.7")
        assert rc != 0 and "unreachable" in err.lower()
    finally:
        server.shutdown()
        server.server_close()
