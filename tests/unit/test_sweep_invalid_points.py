"""A shape whose guest does not see its cores or RAM is an invalid point: kept with the reason,
never a measurement, tried again when the sweep resumes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from provision.errors import InvalidShape
from provision.shape import Shape
from provision.sweep.loop import SweepLoop, SweepPlan, Worker
from provision.sweep.model import Measurement, Status, Targets, evaluate
from tests.support.reporting import RecordingReporter
from tests.support.sweep_fakes import FakeVm, TableProber
from tests.support.sweep_store import sweep_store_at
from tests.support.sweep_tables import MATRIX

G = 1024
REASON = "invalid point: gemma does not see its shape (nproc says 2 vCPU(s), the VM has 4)"


@dataclass
class FourCoresUnseen(TableProber):
    """The guest of every 4-core shape still sees 2 cores (a CPU limit it ignores)."""

    def measure(self, shape: Shape) -> Measurement:
        if shape.cores == 4:
            self.probed.append(shape)
            raise InvalidShape(REASON)
        return super().measure(shape)


def test_an_unseen_shape_is_an_invalid_point_with_its_reason_and_no_figures(
    tmp_path: Path,
) -> None:
    store = sweep_store_at(tmp_path / "labctl.sqlite")
    vm = FakeVm()
    plan = SweepPlan(vm="gemma", space=MATRIX, targets=Targets(min_tps=10), strategy="grid")

    outcome = SweepLoop(store, [Worker(vm, FourCoresUnseen(vm))], RecordingReporter()).run(plan)

    invalid = [m for m in store.measurements(outcome.record.id) if m.shape.cores == 4]
    assert invalid and all(m.status is Status.INVALID for m in invalid)
    assert all(m.error == REASON and m.eval_tps is None for m in invalid)
    assert evaluate(invalid[0], Targets(min_tps=10)).why == REASON
    assert set(outcome.result.failed) >= set(invalid)  # retried by a resumed sweep
    assert Status.INVALID.unmeasured and not Status.OOM.unmeasured
