"""`labctl up` on the simulator deploys Ollama (the double, from the mirror); `up` again is a
no-op deploy; the inventory it writes works with plain Ansible tools.

The real CLI in a subprocess, the real simulator over HTTPS, a real container guest on this
helper's bridge (ldbr30), the real playbook through ansible-runner.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.guests import system_ssh

pytestmark = [pytest.mark.e2e, pytest.mark.guests, pytest.mark.slow]


class _Borrowed:
    """The session's guest backend lent to a SimServer (which closes what it owns on stop)."""

    def __init__(self, backend: Any) -> None:
        self._backend = backend

    def __getattr__(self, name: str) -> Any:
        return getattr(self._backend, name)

    def close(self) -> None:
        """The deploy lab owns the backend and closes it at the end of the session."""


@pytest.fixture(scope="module")
def sim_lab(lab: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The real simulator over HTTPS, backed by the deploy lab's guests and mirror."""
    from provision.sim.server import SimServer
    from tests.support.lab import FAST, Lab

    work = tmp_path_factory.mktemp("up-deploys")
    settings = {**FAST, "agent_delay": 0.5}
    with SimServer(work / "sim", backend=_Borrowed(lab.backend), **settings) as server:
        cli_lab = Lab(server, work, lab.key)
        config = cli_lab.write()
        # what a user with a local mirror writes; the registry variable is the double's
        config.write_text(
            config.read_text()
            + (
                f'\n[deploy]\nollama_base_url = "{lab.mirror.download_base_url}"\n'
                f"extra_vars = {{ ollama_environment = {{ OLLAMA_DOUBLE_REGISTRY = "
                f'"{lab.mirror.url}" }} }}\n'
            )
        )
        yield cli_lab


def deploy_summary(stderr: str) -> tuple[int, int]:
    match = re.search(r"deploy finished in [\d.]+s \(gemma ok=(\d+) changed=(\d+)\)", stderr)
    assert match, stderr[-2000:]
    return int(match[1]), int(match[2])


def test_up_deploys_then_up_again_changes_nothing(sim_lab: Any) -> None:
    first = sim_lab.run("up", "gemma", "--cores", "2", "--ram", "4G", timeout=600)
    assert first.code == 0, first
    # the template's 3.5 GiB disk (a stock Ubuntu 24.04 cloud image's) is too small for Ollama
    assert "scsi0 grown from 3G to 32G" in first.stderr
    assert deploy_summary(first.stderr)[1] > 0
    assert re.search(r"gemma: changed +Pull the missing models\.", first.stderr)

    again = sim_lab.run("up", "gemma", timeout=600)
    assert again.code == 0, again
    assert deploy_summary(again.stderr)[1] == 0

    inventory = sim_lab.state / "inventory" / "labctl.yml"
    listed = json.loads(
        subprocess.run(
            ["ansible-inventory", "-i", str(inventory), "--list"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    gemma = listed["_meta"]["hostvars"]["gemma"]
    target = f"{gemma['ansible_user']}@{gemma['ansible_host']}"
    ssh = system_ssh(sim_lab.key, sim_lab.state / "known_hosts", target, "ollama list")
    listing = subprocess.run(ssh, capture_output=True, text=True, timeout=60, check=False)
    assert "gemma2:2b" in listing.stdout, listing.stderr

    down = sim_lab.run("down", "gemma", "--yes")
    assert down.code == 0, down
