"""The lifecycle, deploy and probe path on either target (tests/support/target_lab.py): a real
Proxmox VE when LABCTL_TEST_PVE names its lab file (`./scripts/test.sh -m real_pve`), else the
simulator's container guests with the Ollama test double. The same assertions on both: nothing
here knows which target it runs on, so a test that passes on the simulator and fails on a real
host points at a difference the simulator must learn.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.target_lab import (
    BorrowedBackend,
    TargetLab,
    real_pve_config,
    real_pve_lab,
    sim_config_text,
)

pytestmark = [pytest.mark.real_pve, pytest.mark.slow]


@pytest.fixture(scope="module")
def target(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[TargetLab]:
    work = tmp_path_factory.mktemp("target")
    config = real_pve_config()
    if config is not None:
        with real_pve_lab(config, work) as lab:
            yield lab
        return
    yield from _sim_target(work, request.getfixturevalue("lab"))


def _sim_target(work: Path, guests: Any) -> Iterator[TargetLab]:
    """The simulator over HTTPS on the deploy lab's guests, its lab file pointing at the mirror
    of the Ollama double (guests.md: the simulator's guests have no internet)."""
    from provision.sim.server import SimServer
    from tests.support.lab import FAST, Lab

    settings = {**FAST, "agent_delay": 0.5}
    with SimServer(work / "sim", backend=BorrowedBackend(guests.backend), **settings) as server:
        cli_lab = Lab(server, work, guests.key)
        # the deploy lab's guests get an eighth of their VM's memory (mem_scale 0.125: many
        # guests on one test machine), so the probe's shape check would refuse them; a real
        # PVE's VM sees its own memory and keeps the check on
        config = cli_lab.write(probe={"model": "gemma2:2b", "check_shape": False})
        config.write_text(config.read_text() + sim_config_text(guests.mirror))
        lab = TargetLab(config=config, state=cli_lab.state, real=False)
        try:
            yield lab
        finally:
            lab.remove_test_vms()


def test_up_deploys_probe_measures_and_down_removes(target: TargetLab) -> None:
    name = target.vm("life")
    up = target.run("--json", "up", name, "--cores", "2", "--ram", "4G")
    assert up.code == 0, up
    vm = up.json["vm"]
    assert (vm["name"], vm["cores"], vm["memory_mib"]) == (name, 2, 4096)
    assert vm["ip"]

    listed = target.run("--json", "ls")
    assert listed.code == 0, listed
    (row,) = [v for v in listed.json["vms"] if v["name"] == name]
    assert (row["status"], row["managed"], row["ip"]) == ("running", True, vm["ip"])

    again = target.run("up", name)  # the VM is there and deployed: nothing to change
    assert again.code == 0, again

    probe = target.run("--json", "probe", name, "--runs", "1", "--warmup", "0",
                       "--num-predict", "8")  # fmt: skip
    assert probe.code == 0, probe
    measured = [r for r in probe.json["runs"] if not r["warmup"]]
    assert measured and all(r["ok"] and r["eval_tps"] > 0 for r in measured), probe.json

    down = target.run("down", name, "--yes")
    assert down.code == 0, down
    after = target.run("--json", "ls")
    assert name not in [v["name"] for v in after.json["vms"]]


def test_a_vm_that_labctl_did_not_make_is_left_alone(target: TargetLab) -> None:
    """`down` of a name no labctl VM has: refused, nothing removed (on a real host too)."""
    result = target.run("down", target.vm("absent"), "--yes")
    assert result.code == 4, result
