"""`labctl up` on the simulator deploys Ollama (the double, from the mirror); `up` again is a
no-op deploy; the inventory it writes works with plain Ansible tools.

The real CLI in a subprocess, the real simulator over HTTPS, a real container guest on this
helper's bridge (ldbr30), the real playbook through ansible-runner.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.guests, pytest.mark.slow]


@pytest.fixture(scope="module")
def sim_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    if os.geteuid() != 0:
        pytest.skip("container guests need root")
    from provision.sim.guests.container import ContainerBackend
    from provision.sim.guests.errors import GuestsUnavailable
    from provision.sim.server import SimServer
    from tests.deploy.harness import BRIDGE, PREFIX, SUBNET
    from tests.doubles import OllamaMirror, prepare_mirror
    from tests.integration.conftest import FAST, Lab

    work = tmp_path_factory.mktemp("up-deploys")
    key = work / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    prepare_mirror(work / "mirror", models={"gemma2:2b": 48 << 20})
    try:
        backend = ContainerBackend(work / "guests", bridge=BRIDGE, subnet=SUBNET, prefix=PREFIX)
    except GuestsUnavailable as exc:
        pytest.skip(f"guests unavailable: {exc}")
    mirror = OllamaMirror(work / "mirror", host=str(backend.leases.host_ip)).start()
    try:
        with SimServer(work / "sim", backend=backend, **{**FAST, "agent_delay": 0.5}) as server:
            lab = Lab(server, work, key)
            config = lab.write()
            # what a user with a local mirror writes; the registry variable is the double's
            config.write_text(config.read_text() + (
                f'\n[deploy]\nollama_base_url = "{mirror.download_base_url}"\n'
                f'extra_vars = {{ ollama_environment = {{ OLLAMA_DOUBLE_REGISTRY = '
                f'"{mirror.url}" }} }}\n'))
            yield lab
    finally:
        mirror.stop()
        backend.close()


def deploy_summary(stderr: str) -> tuple[int, int]:
    match = re.search(r"deploy finished in [\d.]+s \(gemma ok=(\d+) changed=(\d+)\)", stderr)
    assert match, stderr[-2000:]
    return int(match[1]), int(match[2])


def test_up_deploys_then_up_again_changes_nothing(sim_lab: Any) -> None:
    first = sim_lab.run("up", "gemma", "--cores", "2", "--ram", "4G", timeout=600)
    assert first.code == 0, first
    assert deploy_summary(first.stderr)[1] > 0
    assert re.search(r"gemma: changed +Pull the missing models\.", first.stderr)

    again = sim_lab.run("up", "gemma", timeout=600)
    assert again.code == 0, again
    assert deploy_summary(again.stderr)[1] == 0

    inventory = sim_lab.state / "inventory" / "labctl.yml"
    listed = json.loads(subprocess.run(["ansible-inventory", "-i", str(inventory), "--list"],
                                       capture_output=True, text=True, check=True).stdout)
    gemma = listed["_meta"]["hostvars"]["gemma"]
    ssh = ["ssh", "-i", str(sim_lab.key), "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes",
           "-o", "StrictHostKeyChecking=yes",
           "-o", f"UserKnownHostsFile={sim_lab.state / 'known_hosts'}",
           f"{gemma['ansible_user']}@{gemma['ansible_host']}", "ollama list"]
    listing = subprocess.run(ssh, capture_output=True, text=True, timeout=60, check=False)
    assert "gemma2:2b" in listing.stdout, listing.stderr

    down = sim_lab.run("down", "gemma", "--yes")
    assert down.code == 0, down
