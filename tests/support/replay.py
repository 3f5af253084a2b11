"""measure() from a table of known results: test and benchmark sweep strategies without a VM.

`Replay` answers each shape from the table and counts what a real run would have cost (probes and
reboots), so `smart` and `grid` can be compared on the same data (tests/unit, bench/sweep.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from provision.shape import Shape
from provision.sweep.model import Measurement, Status
from provision.sweep.strategy import MeasureBatch


@dataclass
class Replay:
    """A measure() answering from `table`; shapes missing from it fail like a lost probe."""

    table: dict[Shape, Measurement]
    start: Shape | None = None
    hot_ram: bool = False
    probed: list[Shape] = field(default_factory=list)
    reboots: int = 0

    @classmethod
    def of(cls, measurements: Iterable[Measurement], start: Shape | None = None) -> Replay:
        return cls({m.shape: m for m in measurements}, start=start)

    def __call__(self, shape: Shape) -> Measurement:
        position = self.probed[-1] if self.probed else self.start
        self.reboots += needs_reboot(position, shape, hot_ram=self.hot_ram)
        self.probed.append(shape)
        known = self.table.get(shape)
        if known is None:
            return Measurement(shape, Status.FAILED, error="shape not in the replayed table")
        return known


def one_at_a_time(measure: Callable[[Shape], Measurement]) -> MeasureBatch:
    """A measure_batch that measures each shape in turn with one measure() function."""

    def measure_batch(batch: list[Shape]) -> Iterable[Measurement]:
        return (measure(shape) for shape in batch)

    return measure_batch


def needs_reboot(before: Shape | None, after: Shape, *, hot_ram: bool = False) -> bool:
    """Whether moving the VM from one shape to the next costs a reboot.

    PVE never hot-plugs `cores` or `cpu`; `memory` only with hotplug=memory and NUMA on. labctl
    treats every change as a reboot (a cold start also re-derives Ollama's thread defaults,
    anchors.md §5.9); `hot_ram` models a VM whose RAM can grow live.
    """
    if before is None or before == after:
        return before is None
    if hot_ram and (before.cores, before.cpu_type) == (after.cores, after.cpu_type):
        return after.memory_mib < before.memory_mib
    return True


def count_reboots(path: Iterable[Shape], start: Shape | None, *, hot_ram: bool = False) -> int:
    """Reboots needed to visit shapes in this order, starting from the VM's current shape."""
    reboots, position = 0, start
    for shape in path:
        reboots += needs_reboot(position, shape, hot_ram=hot_ram)
        position = shape
    return reboots
