"""Fixtures: a simulator on loopback (HTTPS, NoGuestBackend), real proxmoxer and raw requests
(helpers in tests/support/sim_api.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from provision.sim.server import SimServer
from tests.support.sim_api import FAST, Raw, token_api, wait


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimServer]:
    server = SimServer(tmp_path_factory.mktemp("sim"), nodes=2, **FAST)
    with server:
        yield server


@pytest.fixture
def fresh_sim(tmp_path: Path) -> Iterator[SimServer]:
    with SimServer(tmp_path / "state", **FAST) as server:
        yield server


@pytest.fixture(scope="module")
def prox(sim: SimServer) -> Any:
    return token_api(sim)


@pytest.fixture(scope="module")
def raw(sim: SimServer) -> Raw:
    return Raw(sim)


@pytest.fixture(autouse=True)
def _no_leftover_faults(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    if "sim" in request.fixturenames:
        server: SimServer = request.getfixturevalue("sim")
        assert server.cluster is not None
        server.cluster.faults.clear()


@pytest.fixture
def new_vm(prox: Any) -> Callable[..., int]:
    """Clone the template (linked) and wait; returns the new VMID."""

    def make(**params: Any) -> int:
        vmid = int(prox.cluster.nextid.get())
        upid = prox.nodes("pve").qemu(9000).clone.post(newid=vmid, **params)
        assert wait(prox, upid)["exitstatus"] == "OK"
        return vmid

    return make


@pytest.fixture
def running_vm(prox: Any, new_vm: Callable[..., int]) -> int:
    vmid = new_vm()
    assert wait(prox, prox.nodes("pve").qemu(vmid).status.start.post())["exitstatus"] == "OK"
    return vmid
