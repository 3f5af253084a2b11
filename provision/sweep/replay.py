"""measure() from a table of known results: replay a past sweep, test and benchmark strategies.

`Replay` answers each shape from the table and counts what a real run would have cost (probes and
reboots), so `smart` and `grid` can be compared on the same data without a VM.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from provision.shape import Shape
from provision.sweep.model import Measurement, Status
from provision.sweep.strategy import needs_reboot


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
