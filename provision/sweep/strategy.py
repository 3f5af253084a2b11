"""Search strategies over `measure(shape) -> Measurement`: pure, no VM, no database.

A strategy is a generator that yields batches of shapes to measure; the driver (`search`) measures
them through whatever `measure_batch` it is given (fake in tests, the VM loop in the CLI) and
records each measurement in the SearchState the strategy reads. Batches let `--parallel N`
measure N shapes at once; with one worker every batch is measured in order.

`grid` measures every shape. `smart` relies on two facts about a model on CPU (anchors.md §5.3):

  A1  RAM is a threshold: at fixed cores and cpu type, more RAM never turns a shape that meets
      the targets into one that does not (the model fits from some size on; tok/s does not drop
      with more RAM). So a shape that does not fit (OOM, or below the free-memory target) makes
      every smaller RAM with the same cores and cpu type infeasible, without probing them.
  A2  Cores are monotone up to a plateau: at fixed RAM and cpu type, more cores never lower eval
      tok/s or raise TTFT (beyond noise). Decode saturates memory bandwidth, so it flattens.

Per cpu type (in the order given), smart bisects the core counts at the largest RAM for the first
core count that meets every target; bisection measures both sides of the boundary, so the boundary
is confirmed by its neighbour. At that core count it bisects RAM for the smallest size that still
meets every target. Later cpu types only search shapes that could beat the best found so far.
Measured tok/s that contradicts A2 is reported as a warning (rerun with --strategy grid).

Every shape left unprobed is explained from the same two facts (`explain_unprobed`): either a
measured miss with at least as many cores and as much RAM rules it out, or it cannot beat the
minimum (more cores, or as many cores and more RAM).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Generator, Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from provision.shape import Shape
from provision.sweep.model import Measurement, Space, Status, Targets, Verdict, evaluate

Search = Generator[list[Shape], None, None]
MeasureBatch = Callable[[list[Shape]], Iterable[Measurement]]
NON_MONOTONE_TOLERANCE = 0.10  # tok/s noise between repeated probes of one shape


@dataclass
class SearchState:
    """Everything measured or inferred so far; strategies read it between batches."""

    targets: Targets
    measured: dict[Shape, Measurement] = field(default_factory=dict)
    inferred: dict[Shape, str] = field(default_factory=dict)  # shape -> why it is infeasible
    order: list[Shape] = field(default_factory=list)  # measurement order

    def verdict(self, shape: Shape) -> Verdict | None:
        if shape in self.measured:
            return evaluate(self.measured[shape], self.targets)
        if shape in self.inferred:
            return Verdict(False, (self.inferred[shape],), memory_bound=True)
        return None

    def known(self, shape: Shape) -> bool | None:
        """True/False when the shape is known to meet / miss the targets, None when unknown."""
        verdict = self.verdict(shape)
        return None if verdict is None else verdict.feasible

    def record(self, measurement: Measurement, space: Space) -> None:
        shape = measurement.shape
        self.measured[shape] = measurement
        self.inferred.pop(shape, None)
        self.order.append(shape)
        verdict = evaluate(measurement, self.targets)
        if verdict.memory_bound:
            for ram in space.ram_mib:
                smaller = shape.with_(memory_mib=ram)
                if ram < shape.memory_mib and smaller not in self.measured:
                    self.inferred.setdefault(
                        smaller, f"not probed: {shape.label} already lacked memory"
                    )


def grid(space: Space, state: SearchState, width: int) -> Search:
    """Measure every shape not measured yet, in one batch."""
    pending = [shape for shape in space.shapes() if shape not in state.measured]
    if pending:
        yield pending


def smart(space: Space, state: SearchState, width: int) -> Search:
    """Bisect cores at the largest RAM, then RAM at the boundary core count (see module doc)."""
    best: Shape | None = None
    top_ram = space.ram_mib[-1]
    for cpu_type in space.cpu_types:
        cores = [c for c in space.cores if best is None or c <= best.cores]
        at = yield from first_true([Shape(c, top_ram, cpu_type) for c in cores], state, width)
        if at == len(cores):
            continue  # no core count at the largest RAM meets the targets (or beats `best`)
        found_cores = cores[at]
        rams = [
            r
            for r in space.ram_mib
            if best is None or found_cores < best.cores or r <= best.memory_mib
        ]
        at_ram = yield from first_true(
            [Shape(found_cores, r, cpu_type) for r in rams], state, width
        )
        if at_ram == len(rams):
            continue
        candidate = Shape(found_cores, rams[at_ram], cpu_type)
        if best is None or (candidate.cores, candidate.memory_mib) < (best.cores, best.memory_mib):
            best = candidate


def first_true(
    shapes: list[Shape], state: SearchState, width: int
) -> Generator[list[Shape], None, int]:
    """Index of the first shape meeting the targets in a monotone list (len() when none does).

    Measures up to `width` evenly spaced unknown shapes per batch (width 1 = bisection). At the
    end the shape found and the one before it are both known, so the boundary is confirmed.
    """
    low, high = 0, len(shapes)
    while True:
        low, high = _narrow(shapes, state, low, high)
        if low >= high:
            return low
        count = min(max(width, 1), high - low)
        span = high - low
        picks = sorted({low + (j + 1) * span // (count + 1) for j in range(count)})
        yield [shapes[i] for i in picks]


def _narrow(shapes: list[Shape], state: SearchState, low: int, high: int) -> tuple[int, int]:
    """Shrink [low, high) with what is already known: misses move low up, a hit caps high."""
    for index in range(low, high):
        known = state.known(shapes[index])
        if known is True:
            return low, index
        if known is False:
            low = index + 1
    return low, high


STRATEGIES: dict[str, Callable[[Space, SearchState, int], Search]] = {"smart": smart, "grid": grid}


class Skip(StrEnum):
    """Why the search left a shape unprobed."""

    RULED_OUT = "ruled_out"  # a measured miss with as many or more cores and RAM: it misses too
    CANNOT_WIN = "cannot_win"  # cannot be the minimum (more cores, or as many and more RAM)
    NOT_REACHED = "not_reached"  # the search stopped before it, or skipped it after a failed probe


@dataclass(frozen=True)
class Unprobed:
    """Why a shape of the space needed no probe (neither measured nor inferred while searching)."""

    why: str  # "not probed: ..."
    skip: Skip

    @property
    def misses(self) -> bool:
        """Known to miss the targets (otherwise its verdict is unknown)."""
        return self.skip is Skip.RULED_OUT


@dataclass(frozen=True)
class SearchResult:
    """The outcome of a search: what was measured, what was inferred, and the answer."""

    space: Space
    targets: Targets
    measurements: tuple[Measurement, ...]  # in measurement order
    inferred: dict[Shape, str]
    minimum: Measurement | None
    pareto: tuple[Measurement, ...]
    best_seen: Measurement | None
    warnings: tuple[str, ...] = ()
    unprobed: dict[Shape, Unprobed] = field(default_factory=dict)  # the rest of the space

    @property
    def probes(self) -> int:
        return len(self.measurements)

    @property
    def failed(self) -> tuple[Measurement, ...]:
        return tuple(m for m in self.measurements if m.status.unmeasured)


def search(
    space: Space,
    targets: Targets,
    measure_batch: MeasureBatch,
    *,
    strategy: str = "smart",
    width: int = 1,
    start: Shape | None = None,
) -> SearchResult:
    """Run a strategy to the end, measuring through `measure_batch`."""
    state = SearchState(targets)
    position = start
    for batch in STRATEGIES[strategy](space, state, width):
        for measurement in measure_batch(order_for_reboots(batch, position)):
            state.record(measurement, space)
            position = measurement.shape
    return summarize(space, targets, state.order, state.measured, state.inferred)


def summarize(
    space: Space,
    targets: Targets,
    order: list[Shape],
    measured: dict[Shape, Measurement],
    inferred: dict[Shape, str],
) -> SearchResult:
    measurements = tuple(measured[s] for s in dict.fromkeys(order))
    feasible = [m for m in measurements if evaluate(m, targets).feasible]
    least = minimum(feasible, space)
    return SearchResult(
        space=space,
        targets=targets,
        measurements=measurements,
        inferred=dict(inferred),
        minimum=least,
        pareto=pareto_frontier(feasible),
        best_seen=best_seen(measurements),
        warnings=tuple(monotonicity_warnings(measurements)),
        unprobed=explain_unprobed(space, targets, measured, inferred, least),
    )


NOT_REACHED = "not probed: the search had not reached it"  # an interrupted sweep


def explain_unprobed(
    space: Space,
    targets: Targets,
    measured: Mapping[Shape, Measurement],
    inferred: Mapping[Shape, str],
    least: Measurement | None,
) -> dict[Shape, Unprobed]:
    """Why each shape neither measured nor inferred was not probed, by the search's own rules.

    A measured miss rules out every shape of its cpu type with no more cores and no more RAM
    (A1 + A2: the rule `_narrow` and `SearchState.record` apply). Otherwise a shape with more
    cores than the minimum, or as many cores and more RAM, cannot be the minimum, which is why
    smart stops once a boundary is confirmed. Anything else the search had not reached yet.
    """
    misses = [m for m in measured.values() if not evaluate(m, targets).feasible]
    reasons: dict[Shape, Unprobed] = {}
    for shape in space.shapes():
        if shape in measured or shape in inferred:
            continue
        reasons[shape] = (
            _ruled_out(shape, misses, targets)
            or _beaten(shape, least)
            or Unprobed(NOT_REACHED, Skip.NOT_REACHED)
        )
    return reasons


def _ruled_out(shape: Shape, misses: list[Measurement], targets: Targets) -> Unprobed | None:
    """The nearest measured miss with at least as many cores and as much RAM, as a reason.

    A failed probe counts as a miss while searching, but it proves nothing about the shapes it
    let the search skip, so those stay unknown (the rerun retries the failed probe).
    """
    covering = [
        m
        for m in misses
        if m.shape.cpu_type == shape.cpu_type
        and m.shape.cores >= shape.cores
        and m.shape.memory_mib >= shape.memory_mib
    ]
    measured = [m for m in covering if not m.status.unmeasured]
    if not covering:
        return None
    nearest = min(measured or covering, key=lambda m: (m.shape.cores, m.shape.memory_mib))
    if nearest.status.unmeasured:
        return Unprobed(
            f"not probed: the probe of {nearest.shape.label} "
            f"{'failed' if nearest.status is Status.FAILED else 'was invalid'} and counted as "
            "a miss; run the sweep again to retry it",
            Skip.NOT_REACHED,
        )
    if nearest.status is Status.OOM:
        return Unprobed(f"not probed: ruled out by OOM at {nearest.shape.label}", Skip.RULED_OUT)
    return Unprobed(
        f"not probed: ruled out by {nearest.shape.label}, which missed "
        f"({evaluate(nearest, targets).why})",
        Skip.RULED_OUT,
    )


def _beaten(shape: Shape, least: Measurement | None) -> Unprobed | None:
    """Why a shape cannot be the minimum (fewest cores, then least RAM), or None if it could."""
    if least is None:
        return None
    best = least.shape  # highlighted on its own row: the reason need not repeat it
    if shape.cores > best.cores:
        return Unprobed("not probed: more cores than the minimum", Skip.CANNOT_WIN)
    if shape.cores == best.cores and shape.memory_mib > best.memory_mib:
        return Unprobed("not probed: more RAM than the minimum", Skip.CANNOT_WIN)
    if (shape.cores, shape.memory_mib) == (best.cores, best.memory_mib):
        return Unprobed("not probed: cannot beat the minimum (same size)", Skip.CANNOT_WIN)
    return None


def minimum(feasible: list[Measurement], space: Space) -> Measurement | None:
    """Fewest cores, then least RAM; ties go to more tok/s, then the cpu type listed first."""

    def key(m: Measurement) -> tuple[int, int, float, int]:
        type_rank = (
            space.cpu_types.index(m.shape.cpu_type)
            if m.shape.cpu_type in space.cpu_types
            else len(space.cpu_types)
        )
        return (m.shape.cores, m.shape.memory_mib, -(m.eval_tps or 0.0), type_rank)

    return min(feasible, key=key, default=None)


def pareto_frontier(points: list[Measurement]) -> tuple[Measurement, ...]:
    """Points no other point beats on cores, RAM and tok/s at once."""

    def dominates(a: Measurement, b: Measurement) -> bool:
        a_tps, b_tps = a.eval_tps or 0.0, b.eval_tps or 0.0
        no_worse = (
            a.shape.cores <= b.shape.cores
            and a.shape.memory_mib <= b.shape.memory_mib
            and a_tps >= b_tps
        )
        better = (
            a.shape.cores < b.shape.cores
            or a.shape.memory_mib < b.shape.memory_mib
            or a_tps > b_tps
        )
        return no_worse and better

    frontier = [p for p in points if not any(dominates(q, p) for q in points)]
    return tuple(
        sorted(frontier, key=lambda m: (m.shape.cores, m.shape.memory_mib, m.shape.cpu_type))
    )


def best_seen(measurements: Iterable[Measurement]) -> Measurement | None:
    """The fastest shape that ran (smaller wins a tie): what to show when no shape qualifies."""
    ran = [m for m in measurements if m.status is Status.OK and m.eval_tps is not None]
    return min(
        ran, key=lambda m: (-(m.eval_tps or 0.0), m.shape.cores, m.shape.memory_mib), default=None
    )


def monotonicity_warnings(measurements: Iterable[Measurement]) -> list[str]:
    """Measured tok/s that drops with more cores at the same RAM and cpu type (contradicts A2)."""
    lines: dict[tuple[int, str], list[Measurement]] = {}
    for m in measurements:
        if m.status is Status.OK and m.eval_tps is not None:
            lines.setdefault((m.shape.memory_mib, m.shape.cpu_type), []).append(m)
    warnings = []
    for points in lines.values():
        points.sort(key=lambda m: m.shape.cores)
        for fewer, more in itertools.pairwise(points):
            if (more.eval_tps or 0.0) < (fewer.eval_tps or 0.0) * (1 - NON_MONOTONE_TOLERANCE):
                warnings.append(
                    f"{more.shape.label} measured {more.eval_tps:.1f} tok/s, less than "
                    f"{fewer.shape.cores} vCPU ({fewer.eval_tps:.1f}); the smart search assumes "
                    "more cores are never slower (host overcommitted?); check with --strategy grid"
                )
    return warnings


def order_for_reboots(batch: list[Shape], start: Shape | None) -> list[Shape]:
    """Visit the VM's current shape first, then group by cpu type and cores, RAM ascending.

    Each group is one (cpu type, cores) setting, so a VM that can hot-plug RAM needs one reboot
    per group, and ascending RAM means a too-small size fails before the larger ones run.
    """
    if len(batch) <= 1:
        return list(batch)
    type_rank = {t: i for i, t in enumerate(dict.fromkeys(s.cpu_type for s in batch))}
    ordered = sorted(batch, key=lambda s: (type_rank[s.cpu_type], s.cores, s.memory_mib))
    if start is not None:
        same_group = [
            s
            for s in ordered
            if (s.cpu_type, s.cores) == (start.cpu_type, start.cores)
            and s.memory_mib >= start.memory_mib
        ]
        rest = [s for s in ordered if s not in same_group]
        ordered = same_group + rest
    return ordered
