"""One sweep as a report: rows, the minimum, the Pareto frontier and the one-line recommendation.

Every renderer (terminal table, CSV, JSON, PNG, HTML, markdown) works from a SweepReport, so
`labctl sweep` and `labctl report ID` show the same thing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from provision.shape import Shape, format_mib
from provision.sweep.db import SweepStore
from provision.sweep.loop import result_from_store
from provision.sweep.model import Measurement, Status, Targets, evaluate, format_seconds
from provision.sweep.service import serves_line
from provision.sweep.strategy import SearchResult, Skip


@dataclass(frozen=True)
class Row:
    """One shape of the sweep as the report shows it."""

    shape: Shape
    measurement: Measurement | None  # None: not probed (see why)
    feasible: bool | None  # None: not probed and not known either way
    why: str
    is_minimum: bool = False
    on_frontier: bool = False
    is_best_seen: bool = False  # the fastest shape, shown when no shape meets every target
    skip: Skip | None = None  # not probed, and not inferred while searching: why

    @property
    def state(self) -> str:
        """What the plot and the CSV key on: meets | misses | oom | failed (measured), inferred
        (not probed, known to miss the targets), skipped (not probed, could not be the minimum;
        verdict unknown) or unreached (not probed: the sweep stopped first, or a failed probe let
        the search skip it; verdict unknown).
        """
        if self.measurement is None:
            if self.skip is Skip.CANNOT_WIN:
                return "skipped"
            return "unreached" if self.skip is Skip.NOT_REACHED else "inferred"
        if self.measurement.status is Status.OOM:
            return "oom"
        if self.measurement.status.unmeasured:
            return self.measurement.status.value
        return "meets" if self.feasible else "misses"

    @property
    def free_pct(self) -> float | None:
        m = self.measurement
        if m is None or m.mem_total_mib in (None, 0) or m.peak_used_mib is None:
            return None
        total = m.mem_total_mib or 1
        return round(100.0 * (total - m.peak_used_mib) / total, 1)

    def to_dict(self) -> dict[str, Any]:
        m = self.measurement
        return {
            "cores": self.shape.cores,
            "memory_mib": self.shape.memory_mib,
            "cpu_type": self.shape.cpu_type,
            "state": self.state,
            "probed": m is not None,
            "feasible": self.feasible,
            "why": self.why,
            "minimum": self.is_minimum,
            "pareto": self.on_frontier,
            "best_seen": self.is_best_seen,
            "eval_tps": m.eval_tps if m else None,
            "eval_tps_n": m.eval_tps_n if m else None,
            "eval_tps_ci_low": m.eval_tps_ci[0] if m and m.eval_tps_ci else None,
            "eval_tps_ci_high": m.eval_tps_ci[1] if m and m.eval_tps_ci else None,
            "ttft_s": m.ttft_s if m else None,
            "mem_total_mib": m.mem_total_mib if m else None,
            "peak_used_mib": m.peak_used_mib if m else None,
            "free_pct": self.free_pct,
            "error": m.error if m else "",
            "levels": [lv.to_dict() for lv in m.levels] if m else [],
        }


@dataclass(frozen=True)
class SweepReport:
    sweep_id: str
    vm: str
    status: str
    created_at: str
    updated_at: str
    strategy: str
    model: str
    targets: Targets
    result: SearchResult
    rows: tuple[Row, ...]
    recommendation: str
    probes: int
    reboots: int
    labctl_version: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def warnings(self) -> tuple[str, ...]:
        return (*self.result.warnings, *isa_warnings(self.result))

    @property
    def not_probed(self) -> int:
        return len(self.result.space) - self.result.probes

    def count(self, state: str) -> int:
        return sum(1 for r in self.rows if r.state == state)

    @property
    def minimum_row(self) -> Row | None:
        return next((r for r in self.rows if r.is_minimum), None)

    @property
    def best_seen_row(self) -> Row | None:
        return next((r for r in self.rows if r.is_best_seen), None)


def recommendation(result: SearchResult) -> str:
    """`Minimum: 4 vCPU / 4 GiB (cpu=host): 11.2 tok/s, 2.9 GiB peak used` or why there is none."""
    service = result.targets.service
    if result.minimum is not None and service is not None:
        m = result.minimum
        return f"Minimum: {serves_line(m.shape.label, m.levels, service)}{_threads(m)}"
    if result.minimum is not None:
        return f"Minimum: {describe_point(result.minimum)}"
    line = f"No shape meets every target ({result.targets.describe()})"
    if result.best_seen is not None:
        return f"{line}. Best seen: {describe_point(result.best_seen)}"
    if result.measurements:
        return f"{line}; the model did not run on any shape probed"
    return f"{line}; no shape was probed"


def describe_point(m: Measurement) -> str:
    parts = [f"{m.eval_tps:.1f} tok/s" if m.eval_tps is not None else "tok/s not reported"]
    if m.ttft_s is not None:
        parts.append(f"TTFT {format_seconds(m.ttft_s)}")
    if m.peak_used_mib is not None:
        parts.append(f"{_gib(m.peak_used_mib)} peak used")
    return f"{m.shape.label}: " + ", ".join(parts) + _threads(m)


def _threads(m: Measurement) -> str:
    """`, best with num_thread 2 (auto 9.8, 1 6.1, 2 10.4 tok/s)` when several were measured."""
    measured = m.details.get("by_num_thread")
    if not measured:
        return ""
    each = ", ".join(
        f"{threads} {tps:.1f}" if tps is not None else f"{threads} -"
        for threads, tps in measured.items()
    )
    return f", best with num_thread {m.details.get('num_thread')} ({each} tok/s)"


def _gib(mib: int) -> str:
    return f"{mib / 1024:.1f} GiB" if mib >= 1024 else format_mib(mib)


def isa_warnings(result: SearchResult) -> list[str]:
    """cpu types whose guests lacked AVX2 (the probe records the guest-visible flags)."""
    hidden = sorted(
        {m.shape.cpu_type for m in result.measurements if m.details.get("avx2") is False}
    )
    return [
        f"cpu={cpu}: the guest has no AVX2, so llama.cpp falls back to slower code; "
        "cpu=host (or a cpu model with AVX2 such as x86-64-v3) passes it through"
        for cpu in hidden
    ]


def build_report(
    *,
    sweep_id: str,
    vm: str,
    status: str,
    created_at: str,
    updated_at: str,
    spec: dict[str, Any],
    result: SearchResult,
    probes: int,
    reboots: int,
    labctl_version: str = "",
) -> SweepReport:
    rows = _rows(result)
    return SweepReport(
        sweep_id=sweep_id,
        vm=vm,
        status=status,
        created_at=created_at,
        updated_at=updated_at,
        strategy=str(spec.get("strategy", "")),
        model=str(spec.get("probe", {}).get("model", "")),
        targets=result.targets,
        result=result,
        rows=rows,
        recommendation=recommendation(result),
        probes=probes,
        reboots=reboots,
        labctl_version=labctl_version,
    )


def _rows(result: SearchResult) -> tuple[Row, ...]:
    frontier = {m.shape for m in result.pareto}
    minimum = result.minimum.shape if result.minimum else None
    best = result.best_seen.shape if result.best_seen and minimum is None else None
    rows = []
    for m in result.measurements:
        verdict = evaluate(m, result.targets)
        rows.append(
            Row(
                m.shape,
                m,
                verdict.feasible,
                verdict.why,
                m.shape == minimum,
                m.shape in frontier,
                m.shape == best,
            )
        )
    for shape, why in result.inferred.items():
        rows.append(Row(shape, None, False, why))
    for shape, unprobed in result.unprobed.items():  # every shape of the matrix gets a row
        rows.append(
            Row(shape, None, False if unprobed.misses else None, unprobed.why, skip=unprobed.skip)
        )
    order = {t: i for i, t in enumerate(result.space.cpu_types)}
    rows.sort(
        key=lambda r: (order.get(r.shape.cpu_type, len(order)), r.shape.cores, r.shape.memory_mib)
    )
    return tuple(rows)


def report_from_store(store: SweepStore, sweep_id: str) -> SweepReport:
    """Any past sweep, rebuilt from the database alone."""
    record = store.get(sweep_id)
    stats = store.point_stats(record.id)
    return build_report(
        sweep_id=record.id,
        vm=record.vm,
        status=record.status,
        created_at=record.created_at,
        updated_at=record.updated_at,
        spec=record.spec,
        result=result_from_store(store, record),
        probes=stats["probes"],
        reboots=stats["reboots"],
        labctl_version=record.labctl_version,
    )
