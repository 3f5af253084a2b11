"""The real `labctl` CLI against the PVE simulator over HTTPS, real proxmoxer.

Two simulators: `api_sim` (tests/support/fixtures/sim_lab.py) is API-only (no guests: fast, for
errors and refusals up to the guest stage) and `guest_sim` backs VMs with real systemd-nspawn
guests on bridge llbr40 (10.213.40.0/24, prefix ll40), so `up` ends with a real SSH login. Guest
tests skip, saying why, where containers cannot run. labctl runs in the test's process
(tests.support.cli.labctl) unless a test is about the process itself.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from provision.sim.server import SimServer
from tests.support.lab import FAST, Lab, guest_backend

BRIDGE, SUBNET, PREFIX = "llbr40", "10.213.40.0/24", "ll40"


@pytest.fixture(scope="module")
def guest_sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimServer]:
    base = tmp_path_factory.mktemp("guest-sim")
    backend = guest_backend(base / "guests", BRIDGE, SUBNET, PREFIX)
    settings = {**FAST, "agent_delay": 0.5}
    with SimServer(base / "sim", backend=backend, **settings) as server:
        yield server


@pytest.fixture
def guest_lab(guest_sim: SimServer, tmp_path: Path, ssh_key: Path) -> Iterator[Lab]:
    lab = Lab(guest_sim, tmp_path, ssh_key)
    lab.write()
    yield lab
    lab.empty()


@pytest.fixture
def make_lab(tmp_path: Path, ssh_key: Path) -> Callable[[SimServer, str], Lab]:
    def make(server: SimServer, name: str) -> Lab:
        directory = tmp_path / name
        directory.mkdir()
        lab = Lab(server, directory, ssh_key)
        lab.write()
        return lab

    return make
