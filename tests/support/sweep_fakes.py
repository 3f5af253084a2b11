"""Stand-ins for a sweep's VM and prober: shapes as values (or in a file), answers from tables.

`FakeVm` and `TableProber` drive the sweep loop without Proxmox or a probe (tests/unit,
tests/sweep). `FileVm`, `CountingProber` and `resume_plan` serve the resume-after-SIGKILL test,
whose child process imports them from here.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from pathlib import Path

from provision.errors import ProbeError, ProxmoxError
from provision.shape import Shape
from provision.sweep.loop import SweepPlan
from provision.sweep.model import Measurement, Targets, shape_from_dict, shape_to_dict
from tests.support.sweep_tables import MATRIX, gemma_table

G = 1024
START = Shape(12, 32 * G, "host")


@dataclass
class FakeVm:
    """A VM that only has a shape; counts reboots like a PVE VM without hotplug."""

    name: str = "gemma"
    shape: Shape = START
    reboots: int = 0
    fail_apply_on: Shape | None = None
    history: list[Shape] = field(default_factory=list)

    def current_shape(self) -> Shape:
        return self.shape

    def apply(self, shape: Shape) -> bool:
        if shape == self.fail_apply_on:
            raise ProxmoxError("config update failed")
        if shape == self.shape:
            return False
        self.shape = shape
        self.reboots += 1
        self.history.append(shape)
        return True


@dataclass
class TableProber:
    """Answers from the gemma table; can be told to fail or to stop the sweep after n probes."""

    vm: FakeVm
    table: dict[Shape, Measurement] = field(default_factory=gemma_table)
    interrupt_after: int | None = None
    fail_on: set[Shape] = field(default_factory=set)
    probed: list[Shape] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    rendezvous: threading.Barrier | None = None  # parallel workers: all probe once before any

    def measure(self, shape: Shape) -> Measurement:
        assert self.vm.shape == shape, "probed a VM that was not reshaped first"
        if self.rendezvous is not None and not self.probed:
            self.rendezvous.wait(timeout=30)
        with self.lock:
            if self.interrupt_after is not None and len(self.probed) >= self.interrupt_after:
                raise KeyboardInterrupt
            self.probed.append(shape)
        if shape in self.fail_on:
            raise ProbeError("SSH connection lost during run 2")
        return self.table[shape]


@dataclass
class FileVm:
    """A VM whose shape lives in a file: what a killed process leaves behind stays there."""

    path: Path
    name: str = "gemma"
    applied: list[Shape] = field(default_factory=list)

    def current_shape(self) -> Shape:
        return shape_from_dict(json.loads(self.path.read_text()))

    def apply(self, shape: Shape) -> bool:
        changed = shape != self.current_shape()
        self.path.write_text(json.dumps(shape_to_dict(shape)))
        self.applied.append(shape)
        return changed


@dataclass
class CountingProber:
    probed: list[Shape] = field(default_factory=list)

    def measure(self, shape: Shape) -> Measurement:
        self.probed.append(shape)
        return gemma_table()[shape]


def resume_plan() -> SweepPlan:
    return SweepPlan(
        vm="gemma", space=MATRIX, targets=Targets(min_tps=10), probe_options={"model": "gemma2:2b"}
    )
