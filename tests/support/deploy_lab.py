"""A real guest + the Ollama double's mirror, for tests/deploy and bench/deploy.py.

Boots systemd-nspawn guests through the simulator's ContainerBackend on this helper's own
network (bridge ldbr30, 10.213.30.0/24, prefix ld30), serves the double's release and model
registry on the bridge's host address, and pins each guest's SSH host key (read through the
guest agent's file-read, as labctl does) into a known_hosts file.
"""

from __future__ import annotations

import contextlib
import itertools
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from provision.deploy import DeployHost, DeployOptions, SshSettings, forget_hosts
from provision.deploy.inventory import control_path_dir
from provision.sim.guests.base import GuestSpec
from provision.sim.guests.container import ContainerBackend
from tests.doubles import OllamaMirror, PublishedModel, Release, prepare_mirror

BRIDGE, SUBNET, PREFIX = "ldbr30", "10.213.30.0/24", "ld30"
MODEL = "gemma2:2b"
MODEL_BYTES = 48 << 20  # small "weights": pulls and loads in well under a second here
GUEST_USER = "labuser"

_vmids = itertools.count(300)


@dataclass
class Lab:
    """One backend, one mirror, one SSH identity; guests come and go."""

    backend: ContainerBackend
    mirror: OllamaMirror
    release: Release
    models: list[PublishedModel]
    key: Path
    known_hosts: Path
    state_dir: Path

    @property
    def inventory(self) -> Path:
        """The shared inventory (what labctl writes to inventory/labctl.yml)."""
        return self.state_dir / "inventory" / "labctl.yml"

    @property
    def ssh(self) -> SshSettings:
        return SshSettings(private_key=self.key, known_hosts=self.known_hosts)

    def options(self, **overrides: object) -> DeployOptions:
        """DeployOptions pointing the role at the mirror (release + model registry)."""
        fields: dict[str, object] = {
            "models": (MODEL,),
            "ollama_version": self.release.version,
            "download_base_url": self.mirror.download_base_url,
            "environment": {"OLLAMA_DOUBLE_REGISTRY": self.mirror.url},
        }
        fields.update(overrides)
        return DeployOptions(**fields)  # type: ignore[arg-type]

    def boot(self, name: str | None = None, cores: int = 2, memory_mib: int = 4096) -> DeployHost:
        """A fresh linked clone, started, answering SSH, its host key pinned."""
        vmid = next(_vmids)
        spec = GuestSpec(
            vmid=vmid,
            name=name or f"ld30vm{vmid}",
            cores=cores,
            memory_mib=memory_mib,
            ciuser=GUEST_USER,
            sshkeys=(self.key.with_suffix(".pub").read_text().strip(),),
            ipconfig0="ip=dhcp",
            macaddr=f"BC:24:11:30:{vmid // 256:02X}:{vmid % 256:02X}",
        )
        # The backend re-uses a destroyed guest's address; the host's ARP entry for it still
        # names the old guest's MAC for up to ~30 s (reported to the guest backend's owner).
        subprocess.run(["ip", "neigh", "flush", "dev", BRIDGE], check=False, capture_output=True)
        t0 = time.monotonic()
        self.backend.clone_disk(None, vmid, linked=True)
        t1 = time.monotonic()
        self.backend.start(spec)
        t2 = time.monotonic()
        self.backend.wait_ready(vmid, timeout_s=60)
        self.timings.append(("boot", vmid, t1 - t0, t2 - t1, time.monotonic() - t2))
        ip = self.backend.guest_ip(vmid)
        assert ip is not None
        for kind in ("ed25519", "ecdsa", "rsa"):
            try:
                line = self.backend.file_read(vmid, f"/etc/ssh/ssh_host_{kind}_key.pub")
            except FileNotFoundError:
                continue
            key_type, blob = line.decode().split()[:2]
            with self.known_hosts.open("a") as fh:
                fh.write(f"{ip} {key_type} {blob}\n")
        self._vmids.append(vmid)
        return DeployHost(name=spec.name, address=ip, user=GUEST_USER)

    def vmid_of(self, host: DeployHost) -> int:
        for vmid in self._vmids:
            if self.backend.guest_ip(vmid) == host.address:
                return vmid
        raise KeyError(host.name)

    def ssh_run(self, host: DeployHost, command: str) -> subprocess.CompletedProcess[str]:
        """Run a command in the guest with the system ssh client, pinned like Ansible."""
        t0 = time.monotonic()
        done = subprocess.run(
            [
                "ssh",
                "-i",
                str(self.key),
                "-o",
                "IdentitiesOnly=yes",
                "-o",
                "StrictHostKeyChecking=yes",
                "-o",
                f"UserKnownHostsFile={self.known_hosts}",
                "-o",
                "BatchMode=yes",
                f"{host.user}@{host.address}",
                command,
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        self.timings.append(("ssh", 0, time.monotonic() - t0, 0.0, 0.0))
        return done

    def close_ssh_masters(self, host: DeployHost) -> int:
        """Close Ansible's ControlPersist connections to host (as 60 s of idleness would), so
        the next deploy pays for a fresh SSH connection. Returns how many were open."""
        closed = 0
        directory = Path(control_path_dir(host, self.ssh)).expanduser()
        for socket in directory.glob("*") if directory.is_dir() else ():
            done = subprocess.run(
                ["ssh", "-O", "exit", "-o", f"ControlPath={socket}", "x"],
                capture_output=True,
                timeout=30,
                check=False,
            )
            closed += done.returncode == 0
        return closed

    def destroy(self, host: DeployHost) -> None:
        """What `labctl down` does: the guest goes, and so does its inventory entry."""
        forget_hosts(self.state_dir, [host.name], self.ssh, inventory_out=self.inventory)
        vmid = self.vmid_of(host)
        t0 = time.monotonic()
        self.backend.stop(vmid)
        t1 = time.monotonic()
        self.backend.delete_disk(vmid)
        self.timings.append(("destroy", vmid, t1 - t0, time.monotonic() - t1, 0.0))
        self._vmids.remove(vmid)

    def close(self) -> None:
        for vmid in list(self._vmids):
            with contextlib.suppress(Exception):  # best effort; backend.close() sweeps the rest
                self.backend.stop(vmid)
                self.backend.delete_disk(vmid)
        self._vmids.clear()

    def __post_init__(self) -> None:
        self._vmids: list[int] = []
        self.timings: list[tuple[str, int, float, float, float]] = []  # for slow-suite digging


@contextmanager
def lab(workdir: Path, model_bytes: int = MODEL_BYTES) -> Iterator[Lab]:
    """Backend + mirror + key under workdir; everything is torn down on exit."""
    workdir.mkdir(parents=True, exist_ok=True)
    key = workdir / "id_ed25519"
    if not key.exists():
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    known_hosts = workdir / "known_hosts"
    known_hosts.write_text("")
    release, models = prepare_mirror(workdir / "mirror", models={MODEL: model_bytes})
    backend = ContainerBackend(
        workdir / "guests", bridge=BRIDGE, subnet=SUBNET, prefix=PREFIX, mem_scale=0.125
    )
    try:
        mirror = OllamaMirror(workdir / "mirror", host=str(backend.leases.host_ip)).start()
        the_lab = Lab(backend, mirror, release, models, key, known_hosts, workdir / "state")
        try:
            yield the_lab
        finally:
            the_lab.close()
            mirror.stop()
    finally:
        backend.close()
