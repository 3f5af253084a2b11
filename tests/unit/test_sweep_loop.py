"""The sweep loop with fake VMs: records every point at once, resumes, restores the shape."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from provision.errors import GuestUnreachable, Interrupted, ProxmoxError, UsageError
from provision.shape import NodeCapacity, Shape
from provision.sweep.clones import clone_names, spread_nodes
from provision.sweep.db import SweepStore
from provision.sweep.loop import SweepLoop, SweepPlan, Worker, check_space_fits, result_from_store
from provision.sweep.model import Measurement, Status, Targets
from provision.sweep.service import LevelPoint
from tests.support.reporting import RecordingReporter
from tests.support.sweep_fakes import START, FakeVm, TableProber
from tests.support.sweep_store import sweep_store_at
from tests.support.sweep_tables import MATRIX

G = 1024


@pytest.fixture()
def store(tmp_path: Path) -> SweepStore:
    return sweep_store_at(tmp_path / "labctl.sqlite")


def plan(**changes: object) -> SweepPlan:
    base = SweepPlan(
        vm="gemma",
        space=MATRIX,
        targets=Targets(min_tps=10),
        probe_options={"model": "gemma2:2b", "runs": 3},
    )
    return SweepPlan(**{**base.__dict__, **changes})


def loop_for(store: SweepStore, vm: FakeVm, prober: TableProber) -> SweepLoop:
    return SweepLoop(store, [Worker(vm, prober)], RecordingReporter())


def test_a_sweep_finds_the_minimum_records_every_point_and_restores_the_shape(
    store: SweepStore,
) -> None:
    vm = FakeVm()
    prober = TableProber(vm)
    outcome = loop_for(store, vm, prober).run(plan())
    assert outcome.result.minimum is not None
    assert outcome.result.minimum.shape == Shape(4, 4 * G, "host")
    assert [m.shape for m in store.measurements(outcome.record.id)] == prober.probed
    assert vm.shape == START and outcome.restored
    assert store.get(outcome.record.id).status == "done"
    assert outcome.reboots == vm.reboots


def test_keep_shape_leaves_the_vm_as_the_last_probe_left_it(store: SweepStore) -> None:
    vm = FakeVm()
    loop_for(store, vm, TableProber(vm)).run(plan(keep_shape=True))
    assert vm.shape != START


def test_ctrl_c_restores_the_shape_and_the_rerun_resumes_without_reprobing(
    store: SweepStore,
) -> None:
    vm = FakeVm()
    first = TableProber(vm, interrupt_after=3)
    with pytest.raises(Interrupted, match="run the same command again"):
        loop_for(store, vm, first).run(plan())
    assert vm.shape == START
    [record] = store.all()
    assert record.status == "interrupted"
    assert len(store.measurements(record.id)) == 3

    second = TableProber(vm)
    outcome = loop_for(store, vm, second).run(plan())
    assert outcome.record.id == record.id and outcome.record.resumed
    assert not set(second.probed) & set(first.probed)
    assert outcome.replayed == 3
    other_vm = FakeVm()
    uninterrupted = loop_for(sweep_store_at(":memory:"), other_vm, TableProber(other_vm))
    assert outcome.result.minimum == uninterrupted.run(plan()).result.minimum


def test_a_rerun_restores_the_shape_the_vm_had_when_it_started(store: SweepStore) -> None:
    vm = FakeVm()
    with pytest.raises(Interrupted):
        loop_for(store, vm, TableProber(vm, interrupt_after=2)).run(plan(keep_shape=True))
    left_at = vm.shape
    assert left_at != START  # kept on purpose: the next run returns here, not to START
    loop_for(store, vm, TableProber(vm)).run(plan())
    assert vm.shape == left_at


def test_a_sweep_killed_before_restoring_is_restored_by_the_rerun(store: SweepStore) -> None:
    vm = FakeVm()
    with pytest.raises(Interrupted):
        loop_for(store, vm, TableProber(vm, interrupt_after=2)).run(plan(keep_shape=True))
    [record] = store.all()
    store.db.execute("UPDATE sweeps SET status = 'running' WHERE id = ?", (record.id,))
    assert vm.shape != START  # as a SIGKILL leaves it: status running, VM in a sweep shape
    loop_for(store, vm, TableProber(vm)).run(plan())
    assert vm.shape == START


def test_fresh_starts_a_new_sweep_that_probes_again(store: SweepStore) -> None:
    vm = FakeVm()
    first = loop_for(store, vm, TableProber(vm)).run(plan())
    again = TableProber(vm)
    second = loop_for(store, vm, again).run(plan(fresh=True))
    assert second.record.id != first.record.id
    assert second.record.id.startswith(first.record.id)
    assert len(again.probed) == first.probed > 0


def test_same_arguments_after_a_finished_sweep_probe_nothing(store: SweepStore) -> None:
    vm = FakeVm()
    loop_for(store, vm, TableProber(vm)).run(plan())
    again = TableProber(vm)
    outcome = loop_for(store, vm, again).run(plan())
    assert again.probed == [] and outcome.probed == 0 and outcome.reboots == 0


def test_other_targets_are_another_sweep(store: SweepStore) -> None:
    vm = FakeVm()
    a = loop_for(store, vm, TableProber(vm)).run(plan())
    b = loop_for(store, vm, TableProber(vm)).run(plan(targets=Targets(min_tps=5)))
    assert a.record.id != b.record.id


def test_a_failed_probe_is_recorded_and_tried_again_on_resume(store: SweepStore) -> None:
    vm = FakeVm()
    broken = Shape(4, 32 * G, "host")
    first = loop_for(store, vm, TableProber(vm, fail_on={broken})).run(plan())
    failed = [m for m in store.measurements(first.record.id) if m.status is Status.FAILED]
    assert [m.shape for m in failed] == [broken]
    assert "SSH connection lost" in failed[0].error
    retry = TableProber(vm)
    second = loop_for(store, vm, retry).run(plan())
    assert broken in retry.probed
    assert second.result.failed == ()


def test_vm_not_answering_ssh_after_resize_is_a_failed_point(store: SweepStore) -> None:
    class NoSsh(FakeVm):
        def apply(self, shape: Shape) -> bool:
            rebooted = super().apply(shape)
            if shape.memory_mib == 2 * G:
                raise GuestUnreachable("SSH did not answer within 180 s")
            return rebooted

    vm = NoSsh()
    outcome = loop_for(store, vm, TableProber(vm)).run(plan(strategy="grid"))
    assert {m.shape.memory_mib for m in outcome.result.failed} == {2 * G}


def test_a_proxmox_error_stops_the_sweep_and_still_restores(store: SweepStore) -> None:
    vm = FakeVm(fail_apply_on=Shape(4, 32 * G, "host"))
    with pytest.raises(ProxmoxError):
        loop_for(store, vm, TableProber(vm)).run(plan())
    assert vm.shape == START
    assert store.all()[0].status == "failed"


def test_parallel_workers_share_the_shapes_and_agree_with_one_worker(store: SweepStore) -> None:
    vms = [FakeVm(name="gemma"), FakeVm(name="gemma-2")]
    both_started = threading.Barrier(2)
    probers = [TableProber(vm, rendezvous=both_started) for vm in vms]
    loop = SweepLoop(
        store, [Worker(v, p) for v, p in zip(vms, probers, strict=True)], RecordingReporter()
    )
    outcome = loop.run(plan(strategy="grid"))
    assert all(p.probed for p in probers)
    assert sorted(probers[0].probed + probers[1].probed) == sorted(MATRIX.shapes())
    assert outcome.result.minimum is not None
    assert outcome.result.minimum.shape == Shape(4, 4 * G, "host")
    assert all(vm.shape == START for vm in vms)
    workers = {row[0] for row in store.db.execute("SELECT worker FROM sweep_points")}
    assert workers == {"gemma", "gemma-2"}


def test_the_report_is_rebuilt_from_the_database(store: SweepStore) -> None:
    vm = FakeVm()
    outcome = loop_for(store, vm, TableProber(vm)).run(plan())
    rebuilt = result_from_store(store, store.get(outcome.record.id[:5]))
    assert rebuilt.minimum == outcome.result.minimum
    assert rebuilt.inferred == outcome.result.inferred
    assert rebuilt.measurements == outcome.result.measurements
    assert rebuilt.unprobed == outcome.result.unprobed and rebuilt.unprobed


def test_the_rebuilt_report_shows_every_shape_of_the_matrix_once(store: SweepStore) -> None:
    from provision.report.model import report_from_store

    vm = FakeVm()
    outcome = loop_for(store, vm, TableProber(vm)).run(plan())
    report = report_from_store(store, outcome.record.id)
    assert sorted(r.shape for r in report.rows) == sorted(MATRIX.shapes())
    measured = {r.shape for r in report.rows if r.measurement is not None}
    assert measured == {m.shape for m in outcome.result.measurements}
    assert all(r.why.startswith("not probed: ") for r in report.rows if r.shape not in measured)


def test_unknown_sweep_id_is_a_usage_error(store: SweepStore) -> None:
    with pytest.raises(UsageError, match="no sweep"):
        store.get("deadbeef")


def test_shapes_larger_than_the_node_are_refused_before_anything_changes() -> None:
    node = NodeCapacity("pve1", cpus=8, memory_total_mib=64 * G, memory_free_mib=40 * G)
    with pytest.raises(UsageError, match="12 cores is more than node pve1 has"):
        check_space_fits(MATRIX, node, START)
    small = NodeCapacity("pve1", cpus=16, memory_total_mib=24 * G, memory_free_mib=8 * G)
    with pytest.raises(UsageError, match="RAM is more than node pve1 has free"):
        check_space_fits(MATRIX, small, Shape(2, 4 * G))


def test_clones_are_named_after_the_vm_and_go_to_the_other_nodes_first() -> None:
    assert clone_names("gemma", 3) == ["gemma-2", "gemma-3"]
    assert clone_names("gemma", 1) == []
    assert spread_nodes(["pve1", "pve2", "pve3"], "pve2", 3) == ["pve1", "pve3", "pve2"]
    assert spread_nodes(["pve"], "pve", 2) == ["pve", "pve"]


def test_a_measured_shape_keeps_the_interval_of_its_median_across_a_resume(
    store: SweepStore,
) -> None:
    sweep = store.begin("id-auto", "gemma", {}, None)
    measured = Measurement(
        Shape(2, 4 * G, "host"), Status.OK, eval_tps=10.2, eval_tps_n=9, eval_tps_ci=(9.8, 10.6)
    )
    store.record(sweep.id, measured)
    [kept] = store.measurements(sweep.id)
    assert (kept.eval_tps_n, kept.eval_tps_ci) == (9, (9.8, 10.6))
    assert kept.eval_tps_half_width == pytest.approx(0.4)


def test_a_service_sweep_keeps_each_shapes_concurrency_levels(store: SweepStore) -> None:
    sweep = store.begin("id-service", "gemma", {}, None)
    levels = (
        LevelPoint(1, 0.4, 9.0, 9.0, 1, 0),
        LevelPoint(2, 0.9, 6.1, 12.2, 2, 0),
        LevelPoint(3, 2.4, 4.0, 12.0, 2, 1),
    )
    shape = Shape(2, 4 * G, "host")
    store.record(sweep.id, Measurement(shape, Status.OK, eval_tps=9.0, levels=levels))
    store.record(sweep.id, Measurement(shape, Status.OK, eval_tps=9.1, levels=levels[:2]))
    [kept] = store.measurements(sweep.id)
    assert kept.levels == levels[:2]  # measured again: the new levels replace the old
