"""A lab file + state dir pointing at one PVE simulator, and a way to run labctl on it.

`Lab.run` runs labctl in this process (tests.support.cli.labctl) unless the Lab was made with
`in_process=False`; `Lab.run_process` and `Lab.start` always start a child `python -m provision`.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from provision.sim.server import SimServer
from tests.support.cli import REPO, CliResult, labctl, labctl_process, start_labctl
from tests.support.readme_pveum import access_spec, readme_commands

__all__ = ["FAST", "REPO", "CliResult", "Lab", "guest_backend", "wait_gone", "wait_stopped"]

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
class Lab:
    """A lab file + state dir pointing at one simulator, and a way to run labctl on it."""

    server: SimServer
    dir: Path
    key: Path
    in_process: bool = True

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
        }  # fmt: skip
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

    def run(
        self, *args: str, state: Path | None = None, stdin: str | None = None, timeout: float = 300
    ) -> CliResult:
        """labctl on this lab: in this process, or a child when the Lab says so."""
        if not self.in_process:
            return self.run_process(*args, state=state, stdin=stdin, timeout=timeout)
        return labctl(*args, config=self.config, state=state or self.state, stdin=stdin)

    def run_process(
        self, *args: str, state: Path | None = None, stdin: str | None = None, timeout: float = 300
    ) -> CliResult:
        """labctl on this lab as a child process (where the process boundary is tested)."""
        return labctl_process(
            *args, config=self.config, state=state or self.state, stdin=stdin, timeout=timeout
        )

    def start(self, *args: str, state: Path | None = None) -> subprocess.Popen[str]:
        return start_labctl(*args, config=self.config, state=state or self.state)

    # -- the simulator's side, through its control API and raw HTTPS ----------------------

    def api(self, method: str, path: str, **kwargs: Any) -> Any:
        creds = self.server.credentials
        url = self.server.url + (path if path.startswith("/_sim") else "/api2/json" + path)
        response = requests.request(
            method, url, timeout=10, verify=str(self.server.cert_path),
            headers={"Authorization": f"PVEAPIToken={creds['token_id']}={creds['token_secret']}"},
            **kwargs)  # fmt: skip
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
                wait_stopped(self, path)
            self.api("DELETE", path)
        wait_gone(self)

    def vms(self) -> list[dict[str, Any]]:
        return [r for r in self.api("GET", "/cluster/resources", params={"type": "vm"})
                if not r.get("template")]  # fmt: skip

    def vm_named(self, name: str) -> dict[str, Any] | None:
        found = [r for r in self.vms() if r.get("name") == name]
        return found[0] if found else None


def wait_stopped(lab: Lab, path: str) -> None:
    for _ in range(100):
        if lab.api("GET", path + "/status/current")["status"] == "stopped":
            return
        time.sleep(0.05)


def wait_gone(lab: Lab, timeout_s: float = 10.0) -> None:
    """Until the destroy tasks have run: labctl started in-process at once would see them."""
    deadline = time.monotonic() + timeout_s
    while lab.vms() and time.monotonic() < deadline:
        time.sleep(0.05)


def guest_backend(
    state: Path,
    bridge: str,
    subnet: str,
    prefix: str,
    mem_scale: float = 0.125,
    needs: str = "container guests need root",
) -> Any:
    """A ContainerBackend on its own bridge; skips the test (saying why) where it cannot run."""
    if os.geteuid() != 0:
        pytest.skip(needs)
    from provision.sim.guests.container import ContainerBackend
    from provision.sim.guests.errors import GuestsUnavailable

    try:
        return ContainerBackend(
            state, bridge=bridge, subnet=subnet, prefix=prefix, mem_scale=mem_scale
        )
    except GuestsUnavailable as error:
        pytest.skip(f"container guests unavailable here: {error}")


def clone_untagged(lab: Lab, name: str) -> int:
    """A VM made outside labctl (cloned straight through the API, no `labctl` tag): its vmid."""
    newid = int(lab.api("GET", "/cluster/nextid"))
    lab.api("POST", "/nodes/pve/qemu/9000/clone", data={"newid": newid, "name": name})
    for _ in range(100):
        vm = lab.vm_named(name)
        if vm is not None and not vm.get("lock"):
            break
    return newid


def use_readme_token(lab: Lab, without: str | None = None, **sections: dict[str, Any]) -> str:
    """Replay README's pveum commands (minus one privilege) and point the lab file at the token."""
    spec = access_spec(readme_commands())
    if without is not None:
        privs = spec["roles"]["LabctlRole"].split()
        spec["roles"]["LabctlRole"] = " ".join(p for p in privs if p != without)
    (token_id,) = spec["tokens"]
    data = lab.api("POST", "/_sim/access", json=spec)
    lab.write(
        proxmox={"token_id": token_id, "token_secret": data["tokens"][token_id]["value"]},
        timeouts={"agent": 10, "ssh": 1, "shutdown": 1},
        **sections,
    )
    return str(token_id)
