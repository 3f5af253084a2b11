"""State that survives restarts, the initial cluster, and several nodes."""

from __future__ import annotations

import json
import stat
from pathlib import Path
from typing import Any

import proxmoxer
import pytest

from provision.sim.server import SimServer
from tests.support.sim_api import FAST, Raw, changed_settings, token_api, wait


def test_a_fresh_state_has_the_cloud_init_template(fresh_sim: SimServer) -> None:
    prox = token_api(fresh_sim)
    config = prox.nodes("pve").qemu(9000).config.get()
    assert config["name"] == "ubuntu-2404-cloud"
    assert config["template"] == 1
    assert config["scsi0"] == "local-lvm:base-9000-disk-0,size=3584M"
    assert config["ide2"] == "local-lvm:vm-9000-cloudinit,media=cdrom"
    assert config["serial0"] == "socket" and config["ostype"] == "l26"
    storages = {s["storage"]: s for s in prox.nodes("pve").storage.get()}
    assert "images" in storages["local-lvm"]["content"]
    assert "images" not in storages["local"]["content"]


def test_credentials_are_private_and_match_the_server(fresh_sim: SimServer) -> None:
    path = fresh_sim.credentials_path
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    stored = json.loads(path.read_text())
    assert stored["token_id"] == "root@pam!labctl"
    assert stored["token_secret"] == fresh_sim.credentials["token_secret"]


def test_node_status_reports_memory_and_cpus_in_bytes(fresh_sim: SimServer) -> None:
    prox = token_api(fresh_sim)
    status = prox.nodes("pve").status.get()
    assert status["cpuinfo"]["cpus"] == 16
    assert status["memory"]["total"] == 64 * 1024**3
    assert status["memory"]["free"] == status["memory"]["total"] - status["memory"]["used"]


def _clone_and_start(prox: Any, name: str, **config: Any) -> tuple[int, str, str]:
    """A clone of the template, configured and started: (vmid, clone UPID, start UPID)."""
    vmid = int(prox.cluster.nextid.get())
    clone = prox.nodes("pve").qemu(9000).clone.post(newid=vmid, name=name)
    wait(prox, clone)
    if config:
        prox.nodes("pve").qemu(vmid).config.put(**config)
    start = prox.nodes("pve").qemu(vmid).status.start.post()
    wait(prox, start)
    return vmid, clone, start


def test_vms_and_credentials_survive_a_restart_and_running_vms_come_back_stopped(
    tmp_path: Path,
) -> None:
    state = tmp_path / "state"
    with SimServer(state, **FAST) as first:
        prox = token_api(first)
        vmid, _clone, _start = _clone_and_start(prox, "keeper", cores=3)
        creds, fingerprint = first.credentials, first.fingerprint
    with SimServer(state, **FAST) as second:
        assert (second.credentials, second.fingerprint) == (creds, fingerprint)
        prox = token_api(second)
        config = prox.nodes("pve").qemu(vmid).config.get()
        assert (config["name"], config["cores"]) == ("keeper", 3)
        assert prox.nodes("pve").qemu(vmid).status.current.get()["status"] == "stopped"
        assert int(prox.cluster.nextid.get()) == vmid + 1


def test_finished_tasks_survive_a_restart_with_their_final_status_and_log(
    tmp_path: Path,
) -> None:
    state = tmp_path / "state"
    with SimServer(state, **FAST) as first:
        prox = token_api(first)
        _vmid, clone, start = _clone_and_start(prox, "tasks")
        logs = {upid: prox.nodes("pve").tasks(upid).log.get() for upid in (clone, start)}
    saved = json.loads((state / "state.json").read_text())
    assert {t["upid"]: t["status"] for t in saved["tasks"]}[clone] == "stopped"
    with SimServer(state, **FAST) as second:
        prox = token_api(second)
        for upid in (clone, start):
            status = prox.nodes("pve").tasks(upid).status.get()
            assert (status["status"], status["exitstatus"]) == ("stopped", "OK")
            assert prox.nodes("pve").tasks(upid).log.get() == logs[upid]


def test_two_nodes_share_one_vmid_space_but_keep_their_own_vms(sim: SimServer, prox: Any) -> None:
    assert [n["node"] for n in prox.nodes.get()] == ["pve", "pve2"]
    assert prox.nodes("pve2").status.get()["cpuinfo"]["cpus"] == 16
    assert prox.nodes("pve2").qemu.get() == []
    with pytest.raises(proxmoxer.ResourceException) as caught:
        prox.nodes("pve2").qemu(9000).config.get()
    assert caught.value.content == (
        "Configuration file 'nodes/pve2/qemu-server/9000.conf' does not exist"
    )
    kinds = {r["type"] for r in prox.cluster.resources.get()}
    assert kinds == {"qemu", "node", "storage"}
    nodes = [r["node"] for r in prox.cluster.resources.get(type="node")]
    assert nodes == ["pve", "pve2"]


def test_cluster_resources_show_the_clone_lock_and_current_shape(prox: Any, raw: Raw) -> None:
    vmid = int(prox.cluster.nextid.get())
    with changed_settings(raw, task_durations={"qmclone": 2.0}):
        upid = prox.nodes("pve").qemu(9000).clone.post(newid=vmid)
    entry = next(r for r in prox.cluster.resources.get(type="vm") if r["vmid"] == vmid)
    assert entry["lock"] == "clone"
    assert (entry["id"], entry["node"], entry["type"]) == (f"qemu/{vmid}", "pve", "qemu")
    wait(prox, upid)
    entry = next(r for r in prox.cluster.resources.get(type="vm") if r["vmid"] == vmid)
    assert "lock" not in entry
    assert (entry["maxcpu"], entry["maxmem"], entry["template"]) == (2, 2048 * 1024**2, 0)


def test_a_corrupt_state_file_is_reported_with_its_path(tmp_path: Path) -> None:
    (tmp_path / "state.json").write_text("{not json")
    with pytest.raises(ValueError, match="state.json: not a simulator state file"):
        SimServer(tmp_path).start()


def test_more_nodes_on_restart_adds_them(tmp_path: Path) -> None:
    with SimServer(tmp_path, **FAST):
        pass
    with SimServer(tmp_path, nodes=3, **FAST) as server:
        assert [n["node"] for n in token_api(server).nodes.get()] == ["pve", "pve2", "pve3"]
