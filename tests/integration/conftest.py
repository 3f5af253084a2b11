"""The real `labctl` CLI (a subprocess) against the PVE simulator over HTTPS, real proxmoxer.

Two simulators: `api_sim` is API-only (no guests: fast, for errors and refusals up to the guest
stage) and `guest_sim` backs VMs with real systemd-nspawn guests on bridge llbr40
(10.213.40.0/24, prefix ll40), so `up` ends with a real SSH login. Guest tests skip, saying why,
where containers cannot run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from provision.sim.server import SimServer

REPO = Path(__file__).resolve().parents[2]
BRIDGE, SUBNET, PREFIX = "llbr40", "10.213.40.0/24", "ll40"

FAST: dict[str, Any] = {
    "agent_delay": 0.3,
    "agent_timeout": 0.05,
    "auth_failure_delay": 0.0,
    "default_task_duration": 0.05,
    "task_durations": {
        "qmclone": 0.4, "qmconfig": 0.05, "qmstart": 0.1, "qmstop": 0.05, "qmshutdown": 0.1,
        "qmreboot": 0.2, "qmdestroy": 0.05, "resize": 0.05,
    },
}  # fmt: skip


@dataclass
class CliResult:
    args: list[str]
    code: int
    stdout: str
    stderr: str

    @property
    def json(self) -> Any:
        return json.loads(self.stdout)

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    def __str__(self) -> str:
        return f"labctl {' '.join(self.args)} -> {self.code}\n{self.stdout}\n{self.stderr}"


@dataclass
class Lab:
    """A lab file + state dir pointing at one simulator, and a way to run labctl on it."""

    server: SimServer
    dir: Path
    key: Path

    @property
    def config(self) -> Path:
        return self.dir / "labctl.toml"

    @property
    def state(self) -> Path:
        return self.dir / "state"

    def write(self, **sections: dict[str, Any]) -> Path:
        """labctl.toml for this simulator (token auth, pinned certificate) plus overrides."""
        creds = self.server.credentials
        tables: dict[str, dict[str, Any]] = {
            "proxmox": {"host": "127.0.0.1", "port": self.server.port,
                        "token_id": creds["token_id"], "token_secret": creds["token_secret"],
                        "fingerprint": self.server.fingerprint, "timeout": 10},
            "template": {"name": "9000"},
            "ssh": {"user": "labctl", "key": str(self.key)},
            "timeouts": {"agent": 30, "ssh": 60, "clone": 60, "task": 30, "shutdown": 10},
        }
        for section, values in sections.items():
            table = tables.setdefault(section, {})
            for key, value in values.items():
                if value is None:
                    table.pop(key, None)
                else:
                    table[key] = value
        lines: list[str] = []
        for section, values in tables.items():
            lines.append(f"[{section}]")
            lines.extend(f"{k} = {json.dumps(v)}" for k, v in values.items())
            lines.append("")
        self.config.write_text("\n".join(lines))
        self.config.chmod(0o600)
        return self.config

    def run(self, *args: str, state: Path | None = None, stdin: str | None = None,
            timeout: float = 300) -> CliResult:
        env = {k: v for k, v in os.environ.items() if not k.startswith("LABCTL_")}
        env["PYTHONPATH"] = str(REPO)
        env["LABCTL_STATE_DIR"] = str(state or self.state)
        argv = ["--config", str(self.config), *args]
        done = subprocess.run([sys.executable, "-m", "provision", *argv], env=env, check=False,
                              capture_output=True, text=True, timeout=timeout,
                              input=stdin if stdin is not None else "")
        return CliResult(list(args), done.returncode, done.stdout, done.stderr)

    def start(self, *args: str, state: Path | None = None) -> subprocess.Popen[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("LABCTL_")}
        env["PYTHONPATH"] = str(REPO)
        env["LABCTL_STATE_DIR"] = str(state or self.state)
        return subprocess.Popen(
            [sys.executable, "-m", "provision", "--config", str(self.config), *args], env=env,
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    # -- the simulator's side, through its control API and raw HTTPS ----------------------

    def api(self, method: str, path: str, **kwargs: Any) -> Any:
        creds = self.server.credentials
        url = self.server.url + (path if path.startswith("/_sim") else "/api2/json" + path)
        response = requests.request(
            method, url, timeout=10, verify=str(self.server.cert_path),
            headers={"Authorization": f"PVEAPIToken={creds['token_id']}={creds['token_secret']}"},
            **kwargs)
        response.raise_for_status()
        return response.json()["data"]

    def fault(self, **spec: Any) -> None:
        self.api("POST", "/_sim/faults", json=spec)

    def clear_faults(self) -> None:
        self.api("DELETE", "/_sim/faults")

    def empty(self) -> None:
        """Leave the simulator as a module's next test expects it: no faults, no VMs."""
        self.clear_faults()
        for vm in self.vms():
            path = f"/nodes/{vm['node']}/qemu/{vm['vmid']}"
            if vm.get("status") == "running":
                self.api("POST", path + "/status/stop")
                _wait_stopped(self, path)
            self.api("DELETE", path)

    def vms(self) -> list[dict[str, Any]]:
        return [r for r in self.api("GET", "/cluster/resources", params={"type": "vm"})
                if not r.get("template")]

    def vm_named(self, name: str) -> dict[str, Any] | None:
        found = [r for r in self.vms() if r.get("name") == name]
        return found[0] if found else None


@pytest.fixture(scope="session")
def ssh_key(tmp_path_factory: pytest.TempPathFactory) -> Path:
    key = tmp_path_factory.mktemp("keys") / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    return key


@pytest.fixture(scope="module")
def api_sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimServer]:
    with SimServer(tmp_path_factory.mktemp("api-sim"), **FAST) as server:
        yield server


@pytest.fixture
def api_lab(api_sim: SimServer, tmp_path: Path, ssh_key: Path) -> Iterator[Lab]:
    lab = Lab(api_sim, tmp_path, ssh_key)
    lab.write()
    yield lab
    lab.empty()


def _wait_stopped(lab: Lab, path: str) -> None:
    import time

    for _ in range(100):
        if lab.api("GET", path + "/status/current")["status"] == "stopped":
            return
        time.sleep(0.05)


def _guest_backend(state: Path) -> Any:
    if os.geteuid() != 0:
        pytest.skip("container guests need root")
    from provision.sim.guests.container import ContainerBackend
    from provision.sim.guests.errors import GuestsUnavailable

    try:
        return ContainerBackend(state, bridge=BRIDGE, subnet=SUBNET, prefix=PREFIX,
                                mem_scale=0.125)
    except GuestsUnavailable as error:
        pytest.skip(f"container guests unavailable here: {error}")


@pytest.fixture(scope="module")
def guest_sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimServer]:
    base = tmp_path_factory.mktemp("guest-sim")
    backend = _guest_backend(base / "guests")
    settings = {**FAST, "agent_delay": 0.5}
    with SimServer(base / "sim", backend=backend, **settings) as server:
        yield server


@pytest.fixture
def guest_lab(guest_sim: SimServer, tmp_path: Path, ssh_key: Path) -> Iterator[Lab]:
    lab = Lab(guest_sim, tmp_path, ssh_key)
    lab.write()
    yield lab
    lab.clear_faults()
    for vm in lab.vms():
        path = f"/nodes/{vm['node']}/qemu/{vm['vmid']}"
        if vm.get("status") == "running":
            lab.api("POST", path + "/status/stop")
            _wait_stopped(lab, path)
        lab.api("DELETE", path)


@pytest.fixture
def make_lab(tmp_path: Path, ssh_key: Path) -> Callable[[SimServer, str], Lab]:
    def make(server: SimServer, name: str) -> Lab:
        directory = tmp_path / name
        directory.mkdir()
        lab = Lab(server, directory, ssh_key)
        lab.write()
        return lab

    return make
