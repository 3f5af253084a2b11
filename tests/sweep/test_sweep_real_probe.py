"""The sweep loop with the real prober: provision.probe over a real OpenSSH server on 127.0.0.1,
the real agent, the Ollama TEST DOUBLE, and labctl's real database.

Only the Proxmox side is a stand-in (a VM whose shape is a value), so this checks the plumbing
from probe to sweep point: numbers, memory, the probe rows each point links to, and OOM.
Loopback only; no guest networks.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from provision import store
from provision.errors import ModelDoesNotFit
from provision.guest import GuestAddress
from provision.probe.record import kept_options
from provision.probe.result import ProbeOptions
from provision.shape import Shape
from provision.sweep.db import SweepStore
from provision.sweep.lab import LabProber
from provision.sweep.loop import SweepLoop, SweepPlan, Worker
from provision.sweep.model import Space, Status, Targets, evaluate
from provision.sweep.service import ServiceTargets, with_service_levels
from tests.support.installed_double import DoubleOllama
from tests.support.reporting import RecordingReporter
from tests.support.sshd import LocalSshd
from tests.support.sweep_fakes import FakeVm

G = 1024


@dataclass
class Info:
    name: str
    vmid: int
    node: str
    shape: Shape


@dataclass
class LoopbackLab:
    """What LabProber asks of a Lab: the VM's facts and its SSH address (a local sshd)."""

    vm: FakeVm
    address: GuestAddress

    def find(self, name: str) -> Info:
        return Info(name, 100, "pve", self.vm.shape)

    def guest(self, name: str) -> GuestAddress:
        return self.address


def loopback_sweep(
    address: GuestAddress,
    tmp_path: Path,
    options: ProbeOptions,
    targets: Targets,
    cores: tuple[int, ...] = (1, 2),
) -> tuple[SweepStore, Any]:
    """A grid sweep of `cores` x 4 GiB whose probes run over SSH on this host (the VM's
    stand-in, 2 vCPU / 4 GiB and never reshaped); the store and the loop's outcome."""
    vm = FakeVm(shape=Shape(2, 4 * G))
    prober = LabProber(
        LoopbackLab(vm, address),  # type: ignore[arg-type]
        "gemma",
        options,
        tmp_path,
        RecordingReporter(),
        kept_options(options),
    )
    sweeps = SweepStore(store.connect(tmp_path))
    plan = SweepPlan(
        vm="gemma", space=Space(cores, (4 * G,), ("host",)), targets=targets, strategy="grid"
    )
    return sweeps, SweepLoop(sweeps, [Worker(vm, prober)], RecordingReporter()).run(plan)


def test_a_sweep_with_the_real_probe_records_points_linked_to_their_probe_runs(
    local_sshd: LocalSshd, ollama_double: DoubleOllama, tmp_path: Path
) -> None:
    # this host stands in for the VM and is not reshaped: its guest-side shape check is off
    options = ProbeOptions(
        runs=2, warmup=0, num_predict=16, ollama_url=ollama_double.url, check_shape=False
    )
    sweeps, outcome = loopback_sweep(local_sshd.address, tmp_path, options, Targets(min_tps=0.1))

    points = sweeps.measurements(outcome.record.id)
    assert [p.shape.cores for p in points] == [2, 1]  # the VM's own shape first: no reboot
    for point in points:
        assert point.status is Status.OK and point.eval_tps and point.eval_tps > 0
        assert point.ttft_s is not None and point.ttft_s > 0
        assert point.mem_total_mib and point.peak_used_mib
        assert 0 < point.peak_used_mib < point.mem_total_mib
    linked = sweeps.db.execute(
        "SELECT p.cores, p.status, COUNT(r.id) FROM sweep_points s JOIN probes p "
        "ON p.id = s.probe_id JOIN probe_runs r ON r.probe_id = p.id "
        "WHERE s.sweep_id = ? GROUP BY p.id ORDER BY s.seq",
        (outcome.record.id,),
    ).fetchall()
    assert [tuple(row) for row in linked] == [(2, "ok", 2), (1, "ok", 2)]
    assert outcome.result.minimum is not None and outcome.result.minimum.shape.cores == 1


def test_the_runner_killed_for_memory_becomes_an_oom_point(
    local_sshd: LocalSshd, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import provision.probe.run as probe_run

    def out_of_memory(*args: object, **kwargs: object) -> None:
        raise ModelDoesNotFit(
            "gemma2:2b does not fit in RAM on gemma (runner OOM-killed)",
            figure="OOM-killed while loading, Ollama held 0.9 GiB of 1.0 GiB",
        )

    monkeypatch.setattr(probe_run, "probe", out_of_memory)
    vm = FakeVm(shape=Shape(2, 1 * G))
    prober = LabProber(
        LoopbackLab(vm, local_sshd.address),  # type: ignore[arg-type]
        "gemma",
        ProbeOptions(),
        tmp_path,
        RecordingReporter(),
        {},
    )
    measurement = prober.measure(Shape(2, 1 * G))
    assert measurement.status is Status.OOM
    assert evaluate(measurement, Targets(min_tps=1)).why == (
        "does not fit in RAM (OOM-killed while loading, Ollama held 0.9 GiB of 1.0 GiB)"
    )
    status = (
        store.connect(tmp_path)
        .execute("SELECT status FROM probes WHERE id = ?", (measurement.details["probe_id"],))
        .fetchone()
    )
    assert status[0] == "oom"


def test_a_service_sweep_probes_each_shape_at_its_user_levels_and_keeps_them(
    local_sshd: LocalSshd, ollama_double: DoubleOllama, tmp_path: Path
) -> None:
    service = ServiceTargets(users=2, max_ttft_p95_s=120.0, min_tps_per_user=0.01)
    options = with_service_levels(
        ProbeOptions(
            runs=1, warmup=0, num_predict=8, ollama_url=ollama_double.url, check_shape=False
        ),
        service,
    )
    assert options.concurrency == (1, 2)
    targets = Targets(service=service)
    sweeps, outcome = loopback_sweep(local_sshd.address, tmp_path, options, targets)

    points = sweeps.measurements(outcome.record.id)  # as a resumed sweep or a report reads them
    for point in points:
        assert point.status is Status.OK, point
        assert [(lv.users, lv.completed, lv.failed) for lv in point.levels] == [
            (1, 1, 0),
            (2, 2, 0),
        ]
        assert all(lv.ttft_p95_s and lv.tps_per_user for lv in point.levels)
        assert point.eval_tps == pytest.approx(point.levels[0].tps_per_user, abs=0.01)  # alone
        assert evaluate(point, targets).feasible
    minimum = outcome.result.minimum
    assert minimum is not None and minimum.shape.cores == 1


def test_a_sweep_over_thread_counts_loads_each_and_keeps_the_best(
    local_sshd: LocalSshd, ollama_double: DoubleOllama, tmp_path: Path
) -> None:
    options = ProbeOptions(
        runs=1,
        warmup=0,
        num_predict=8,
        ollama_url=ollama_double.url,
        check_shape=False,
        thread_counts=(None, 1),
    )
    sweeps, outcome = loopback_sweep(
        local_sshd.address, tmp_path, options, Targets(min_tps=0.1), cores=(2,)
    )

    [point] = sweeps.measurements(outcome.record.id)
    assert point.status is Status.OK
    assert set(point.details["by_num_thread"]) == {"auto", "1"}
    best = point.details["by_num_thread"][point.details["num_thread"]]
    assert point.eval_tps == best == max(point.details["by_num_thread"].values())
