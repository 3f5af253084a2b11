"""The sweep loop: resize -> wait for SSH -> probe -> record, with resume and shape restore.

Written against two small protocols so it runs the same with the real VM (provision.sweep.lab)
and with fakes in tests. Every measured shape is committed to SQLite before the next one starts;
running the same sweep again replays those from the database instead of probing them again.
With several workers (--parallel N, one VM each) the shapes of a batch go into one queue that
every worker pulls from; only the main thread touches the database.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from provision.errors import GuestError, Interrupted, InvalidShape, ProbeError, SweepError
from provision.progress import Reporter
from provision.shape import NodeCapacity, Shape, check_fits, format_mib
from provision.sweep.db import SweepRecord, SweepStore
from provision.sweep.model import (
    Measurement,
    Space,
    Status,
    Targets,
    evaluate,
    sweep_identity,
)
from provision.sweep.strategy import SearchResult, SearchState, search, summarize


class ShapeController(Protocol):
    """Puts one VM into a shape and returns once it answers SSH."""

    name: str

    def current_shape(self) -> Shape: ...

    def apply(self, shape: Shape) -> bool:
        """Reshape the VM (reboot if needed) and wait for SSH; True when it rebooted."""
        ...


class Prober(Protocol):
    """Probes the model on the VM in its current shape."""

    def measure(self, shape: Shape) -> Measurement:
        """Status OOM when the model does not fit; raises ProbeError/GuestError otherwise."""
        ...


@dataclass(frozen=True)
class Worker:
    controller: ShapeController
    prober: Prober
    disposable: bool = False  # a clone removed after the sweep: no point restoring its shape
    reporter: Reporter | None = None  # its own progress channel (parallel); None: the loop's


@dataclass(frozen=True)
class SweepPlan:
    vm: str
    space: Space
    targets: Targets
    strategy: str = "smart"
    probe_options: dict[str, Any] = field(default_factory=dict)
    fresh: bool = False
    keep_shape: bool = False

    @property
    def identity(self) -> str:
        return sweep_identity(self.vm, self.space, self.targets, self.probe_options)

    def spec(self, workers: int) -> dict[str, Any]:
        return {
            "space": self.space.to_dict(),
            "targets": self.targets.to_dict(),
            "probe": self.probe_options,
            "strategy": self.strategy,
            "parallel": workers,
        }


@dataclass
class SweepOutcome:
    record: SweepRecord
    result: SearchResult
    probed: int = 0  # shapes probed in this run
    replayed: int = 0  # shapes taken from the database (resume)
    reboots: int = 0  # reboots in this run, restore included
    restored: bool = False


def check_space_fits(space: Space, node: NodeCapacity, current: Shape | None) -> None:
    """Refuse a sweep whose largest shape the node cannot give (before anything changes)."""
    largest = Shape(max(space.cores), max(space.ram_mib), space.cpu_types[0])
    reserved = current.memory_mib if current is not None else 0
    check_fits(largest, node, already_reserved_mib=reserved)


class SweepLoop:
    """Runs one sweep plan on one or more VMs."""

    def __init__(self, store: SweepStore, workers: list[Worker], reporter: Reporter) -> None:
        if not workers:
            raise SweepError("a sweep needs at least one VM")
        self.store = store
        self.workers = workers
        self.reporter = reporter

    def run(self, plan: SweepPlan) -> SweepOutcome:
        originals = {w.controller.name: w.controller.current_shape() for w in self.workers}
        record = self.store.begin(
            plan.identity,
            plan.vm,
            plan.spec(len(self.workers)),
            originals[self.workers[0].controller.name],
            fresh=plan.fresh,
        )
        if record.original_shape is not None:  # after a kill: what the killed run found
            originals[self.workers[0].controller.name] = record.original_shape
        cached = {
            m.shape: m for m in self.store.measurements(record.id) if not m.status.unmeasured
        }  # failed and invalid probes are tried again
        outcome = SweepOutcome(record, _empty_result(plan))
        self.reporter.stage("sweep")
        self.reporter.step(
            f"sweep {record.id} on {plan.vm}: {len(plan.space)} shapes, "
            f"strategy {plan.strategy}, targets: {plan.targets.describe()}"
            + (
                f" (resuming, {len(cached)} shapes already measured)"
                if record.resumed and cached
                else ""
            )
        )
        status = "failed"
        try:
            outcome.result = search(
                plan.space,
                plan.targets,
                lambda batch: self._measure(batch, record, cached, plan, outcome),
                strategy=plan.strategy,
                width=len(self.workers),
                start=self.workers[0].controller.current_shape(),
            )
            status = "done"
        except KeyboardInterrupt:
            status = "interrupted"
            raise Interrupted(
                f"sweep {record.id} interrupted; run the same command again to resume it"
            ) from None
        finally:
            self.store.finish(record.id, status)
            if not plan.keep_shape:
                outcome.restored = self._restore(originals, outcome, quiet_errors=status != "done")
        return outcome

    def _measure(
        self,
        batch: list[Shape],
        record: SweepRecord,
        cached: dict[Shape, Measurement],
        plan: SweepPlan,
        outcome: SweepOutcome,
    ) -> Iterator[Measurement]:
        to_probe = []
        for shape in batch:
            if shape in cached:
                outcome.replayed += 1
                self.reporter.step(
                    f"{shape.label}: already measured, {evaluate(cached[shape], plan.targets).why}"
                )
                yield cached[shape]
            else:
                to_probe.append(shape)
        if len(self.workers) == 1:
            results: Iterable[tuple[Measurement, bool, str, float]] = (
                _probe_one(self.workers[0], shape, self.reporter) for shape in to_probe
            )
        else:
            results = _probe_parallel(self.workers, to_probe, self.reporter)
        for measurement, rebooted, worker, seconds in results:
            self.store.record(
                record.id, measurement, rebooted=rebooted, worker=worker, duration_s=seconds
            )
            outcome.probed += 1
            outcome.reboots += rebooted
            self.reporter.step(
                f"{measurement.shape.label}: {_summary(measurement)} -> "
                f"{evaluate(measurement, plan.targets).why}"
            )
            yield measurement

    def _restore(
        self, originals: dict[str, Shape], outcome: SweepOutcome, *, quiet_errors: bool
    ) -> bool:
        restored = False
        for worker in self.workers:
            if worker.disposable:
                continue
            original = originals[worker.controller.name]
            try:
                if worker.controller.current_shape() == original:
                    continue
                self.reporter.stage("restore")
                self.reporter.step(f"putting {worker.controller.name} back to {original.label}")
                outcome.reboots += worker.controller.apply(original)
                restored = True
            except GuestError as error:  # the shape is applied; only the guest is slow to answer
                self.reporter.warn(
                    f"{worker.controller.name} is back to {original.label} but "
                    f"did not answer after the reboot: {error}"
                )
                restored = True
            except Exception as error:  # never hide the sweep's own error
                if not quiet_errors:
                    raise
                self.reporter.warn(
                    f"could not restore {worker.controller.name} to {original.label}: {error}"
                )
        return restored


def _probe_one(
    worker: Worker, shape: Shape, reporter: Reporter
) -> tuple[Measurement, bool, str, float]:
    """Apply and probe one shape; probe and guest failures become a FAILED measurement."""
    name = worker.controller.name
    started = time.monotonic()
    rebooted = False
    if worker.reporter is not None:  # the channel names the VM already
        worker.reporter.stage(f"shape {shape.label}")
    else:
        reporter.stage(f"shape {shape.label} on {name}")
    try:
        rebooted = worker.controller.apply(shape)
        measurement = worker.prober.measure(shape)
    except InvalidShape as error:
        measurement = Measurement(shape, Status.INVALID, error=str(error))
    except (ProbeError, GuestError) as error:
        measurement = Measurement(shape, Status.FAILED, error=str(error))
    return measurement, rebooted, name, round(time.monotonic() - started, 1)


def _probe_parallel(
    workers: list[Worker], shapes: list[Shape], reporter: Reporter
) -> Iterator[tuple[Measurement, bool, str, float]]:
    """Workers pull shapes from one queue; results are yielded in the order they finish."""
    todo: queue.Queue[Shape] = queue.Queue()
    for shape in shapes:
        todo.put(shape)
    done: queue.Queue[tuple[Measurement, bool, str, float] | BaseException] = queue.Queue()
    stop = threading.Event()

    def work(worker: Worker) -> None:
        while not stop.is_set():
            try:
                shape = todo.get_nowait()
            except queue.Empty:
                return
            try:
                done.put(_probe_one(worker, shape, reporter))
            except BaseException as error:  # noqa: BLE001 - handed to the main thread
                done.put(error)
                return

    threads = [
        threading.Thread(target=work, args=(w,), daemon=True, name=f"sweep-{w.controller.name}")
        for w in workers
    ]
    for thread in threads:
        thread.start()
    try:
        for _ in shapes:
            item = done.get()
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()  # workers finish the shape they are on; nothing new starts
        for thread in threads:
            thread.join()


def _summary(m: Measurement) -> str:
    if m.status is Status.OOM:
        return f"does not fit ({m.details.get('oom_figure') or 'OOM'})"
    if m.status.unmeasured:
        return f"{m.status.value} ({m.error})"
    parts = [f"{m.eval_tps:.1f} tok/s" if m.eval_tps is not None else "tok/s not reported"]
    if m.ttft_s is not None:
        parts.append(f"TTFT {m.ttft_s:.2f} s")
    if m.peak_used_mib is not None:
        parts.append(f"{format_mib(m.peak_used_mib)} peak used")
    return ", ".join(parts)


def _empty_result(plan: SweepPlan) -> SearchResult:
    return SearchResult(plan.space, plan.targets, (), {}, None, (), None)


def result_from_store(store: SweepStore, record: SweepRecord) -> SearchResult:
    """Rebuild a sweep's result from the database (labctl report)."""
    space = Space.from_dict(record.spec["space"])
    targets = Targets.from_dict(record.spec["targets"])
    state = SearchState(targets)
    for measurement in store.measurements(record.id):
        state.record(measurement, space)
    return summarize(space, targets, state.order, state.measured, state.inferred)
