"""The pieces of `labctl sweep --parallel`: clone placement, the clones' ownership, progress."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from provision.errors import ProxmoxAPIError
from provision.pve.lifecycle import VmInfo
from provision.shape import NodeCapacity, Shape
from provision.sweep.clones import _up_clone, disown_clones, owned_clones, remove_clones
from provision.sweep.model import parse_space
from provision.sweep.progress import SharedProgress
from tests.support.reporting import RecordingReporter

G = 1024
SPACE = parse_space("1,2", "1G,2G", "host")
INFO = VmInfo(
    name="gemma",
    vmid=100,
    node="pve",
    status="running",
    shape=Shape(2, 2 * G),
    ip="10.0.0.2",
    uptime_s=5,
    tags=("labctl",),
    pending=False,
)


@dataclass
class FakeLab:
    """Clones only onto the template's node, like PVE with a template on local storage."""

    template_node: str = "pve"
    ups: list[tuple[str, str]] = field(default_factory=list)
    vms: set[str] = field(default_factory=set)
    downs: list[str] = field(default_factory=list)

    def node_capacity(self, node: str) -> NodeCapacity:
        return NodeCapacity(node, cpus=8, memory_total_mib=32 * G, memory_free_mib=30 * G)

    def up(self, name: str, shape: Shape, *, node: str, allow_overcommit: bool) -> None:
        self.ups.append((name, node))
        if node != self.template_node:
            raise ProxmoxAPIError(
                f"can't clone VM to node '{node}' (VM uses local storage)", status=500
            )
        self.vms.add(name)

    def managed_names(self) -> list[str]:
        return sorted(self.vms)

    def down(self, name: str) -> None:
        self.downs.append(name)
        self.vms.discard(name)


def test_a_clone_refused_on_another_node_goes_to_the_vms_node_with_a_warning() -> None:
    lab, reporter = FakeLab(), RecordingReporter()
    local_only = _up_clone(
        lab,  # type: ignore[arg-type]
        "gemma-2",
        INFO,
        "pve2",
        SPACE,
        reporter,
        allow_overcommit=False,
    )
    assert local_only and lab.ups == [("gemma-2", "pve2"), ("gemma-2", "pve")]
    [warning] = [m for kind, m in reporter.events if kind == "warn"]
    assert "local storage" in warning and "creating it on pve next to gemma" in warning


def test_a_clone_on_shared_storage_goes_to_the_other_node() -> None:
    lab = FakeLab(template_node="pve2")
    assert not _up_clone(
        lab,  # type: ignore[arg-type]
        "gemma-2",
        INFO,
        "pve2",
        SPACE,
        RecordingReporter(),
        allow_overcommit=False,
    )
    assert lab.ups == [("gemma-2", "pve2")]


def test_other_proxmox_errors_are_not_hidden_by_the_fallback() -> None:
    class Broken(FakeLab):
        def up(self, name: str, shape: Shape, *, node: str, allow_overcommit: bool) -> None:
            raise ProxmoxAPIError("storage 'local-lvm' is full", status=500)

    with pytest.raises(ProxmoxAPIError, match="full"):
        _up_clone(
            Broken(),  # type: ignore[arg-type]
            "gemma-2",
            INFO,
            "pve2",
            SPACE,
            RecordingReporter(),
            allow_overcommit=False,
        )


def test_only_the_clones_a_sweep_made_are_removed(tmp_path: Path) -> None:
    from provision.sweep.clones import _set_owned

    lab = FakeLab(vms={"gemma", "gemma-2", "gemma-3"})
    _set_owned(tmp_path, {"gemma-2"})  # gemma-3 is the user's own VM
    removed, left = remove_clones(
        lab,  # type: ignore[arg-type]
        tmp_path,
        "gemma",
        3,
        RecordingReporter(),
    )
    assert (removed, left) == (["gemma-2"], []) and lab.downs == ["gemma-2"]
    assert owned_clones(tmp_path) == set()


def test_kept_clones_are_never_removed_by_a_later_sweep(tmp_path: Path) -> None:
    from provision.sweep.clones import _set_owned

    lab = FakeLab(vms={"gemma", "gemma-2"})
    _set_owned(tmp_path, {"gemma-2"})
    disown_clones(tmp_path, ["gemma-2"])
    assert remove_clones(
        lab,  # type: ignore[arg-type]
        tmp_path,
        "gemma",
        2,
        RecordingReporter(),
    ) == ([], [])
    assert lab.downs == []


def test_parallel_progress_never_shows_a_line_under_another_workers_stage() -> None:
    base = RecordingReporter()
    shared = SharedProgress(base)
    main, first, second = shared.channel(), shared.channel("gemma"), shared.channel("gemma-2")
    main.stage("sweep")
    first.stage("probe")
    second.stage("probe")
    first.step("run 1/1: 6.8 tok/s")
    main.step("1 vCPU / 2 GiB: meets every target")
    second.warn("slow to answer")
    assert base.events == [
        ("stage", "sweep"),
        ("stage", "gemma probe"),
        ("stage", "gemma-2 probe"),
        ("stage", "gemma probe"),
        ("step", "run 1/1: 6.8 tok/s"),
        ("stage", "sweep"),
        ("step", "1 vCPU / 2 GiB: meets every target"),
        ("warn", "gemma-2: slow to answer"),
    ]


def test_parallel_progress_keeps_each_stage_with_its_steps_under_threads() -> None:
    base = RecordingReporter()
    shared = SharedProgress(base)

    def talk(vm: str) -> None:
        channel = shared.channel(vm)
        for i in range(200):
            channel.stage(f"s{i}")
            channel.step(f"{vm} {i}")

    threads = [threading.Thread(target=talk, args=(vm,)) for vm in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    current = ""
    for kind, text in base.events:
        if kind == "stage":
            current = text
        else:
            vm, i = text.split()
            assert current == f"{vm} s{i}"
