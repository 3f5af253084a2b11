"""`labctl sweep` through the real CLI against the API-only simulator (no guests).

What can be checked without a guest: bad input and shapes larger than the node are refused
before the VM is touched, a missing or stopped VM is a clear error, and a sweep whose shapes
cannot be reached over SSH records every point as failed, exits 8 and still puts the VM's
configuration back to the shape it had.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.lab import Lab

GIB = 2**30


@pytest.fixture
def vm(api_lab: Lab) -> dict[str, Any]:
    api_lab.write(timeouts={"agent": 5, "ssh": 1})
    created = api_lab.run("up", "sw", "--cores", "2", "--ram", "2G", "--no-deploy")
    assert created.code == 5, created  # no SSH host key in the API-only simulator
    found = api_lab.vm_named("sw")
    assert found is not None
    return found


def config_of(lab: Lab, vm: dict[str, Any]) -> dict[str, Any]:
    return lab.api("GET", f"/nodes/{vm['node']}/qemu/{vm['vmid']}/config")


def test_shapes_larger_than_the_node_are_refused_before_the_vm_changes(
    api_lab: Lab, vm: dict[str, Any]
) -> None:
    before = config_of(api_lab, vm)
    result = api_lab.run("sweep", "sw", "--cores", "1,2,32", "--ram", "1G,2G", "--min-tps", "5")
    assert result.code == 2, result
    assert "32 cores is more than node" in result.stderr
    assert config_of(api_lab, vm)["cores"] == before["cores"]
    assert config_of(api_lab, vm)["memory"] == before["memory"]


def test_a_vm_that_does_not_exist_is_a_proxmox_error(api_lab: Lab) -> None:
    result = api_lab.run("sweep", "nosuch", "--cores", "1", "--ram", "1G")
    assert result.code == 4, result
    assert "nosuch" in result.stderr and "Traceback" not in result.stderr


def test_unreachable_shapes_are_failed_points_exit_8_and_the_shape_is_put_back(
    api_lab: Lab, vm: dict[str, Any]
) -> None:
    result = api_lab.run("sweep", "sw", "--cores", "1,2", "--ram", "1G", "--min-tps", "5", "--json")
    assert result.code == 8, result
    document = result.json
    measured = [p for p in document["points"] if p["probed"]]
    assert measured and {p["state"] for p in measured} == {"failed"}
    for point in document["points"]:  # the others: skipped because of the failure, not judged
        if not point["probed"]:
            assert point["state"] == "unreached" and point["feasible"] is None, point
            assert "failed and counted as a miss" in point["why"]
    assert "could not be probed" in result.stderr
    config = config_of(api_lab, vm)
    assert (int(config["cores"]), int(config["memory"])) == (2, 2048)
