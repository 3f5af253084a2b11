"""The real ShapeController and Prober: a labctl VM on Proxmox, probed over SSH.

`LabShapeController` resizes through provision.pve.lifecycle.Lab (which reboots so the pending
cores/RAM/cpu type apply, then waits for the guest agent and SSH). `LabProber` probes
and keeps the probe in the results database through provision.probe.record, as `labctl probe`
does; the sweep point links to it by probe_id.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from provision.errors import ModelDoesNotFit, ProbeError
from provision.progress import Reporter
from provision.shape import Shape
from provision.sweep.model import Measurement, Status
from provision.sweep.service import LevelPoint

if TYPE_CHECKING:
    from provision.probe.concurrency import LevelStats
    from provision.probe.result import ProbeOptions, ProbeResult
    from provision.pve.lifecycle import Lab

MIB = 1024 * 1024
OLLAMA_START_RETRY_S = 5.0  # after a reboot, ollama.service may start a moment after sshd


@dataclass
class LabShapeController:
    lab: Lab
    name: str
    allow_overcommit: bool = False

    def current_shape(self) -> Shape:
        return self.lab.find(self.name).shape

    def apply(self, shape: Shape) -> bool:
        result = self.lab.resize(
            self.name, shape, reboot=True, allow_overcommit=self.allow_overcommit
        )
        return bool(result.rebooted)


@dataclass
class LabProber:
    lab: Lab
    name: str
    options: ProbeOptions
    state_dir: Path
    reporter: Reporter
    kept_options: dict[str, Any]

    def measure(self, shape: Shape) -> Measurement:
        try:
            return self._measure_once(shape)
        except ProbeError as error:
            if isinstance(error, ModelDoesNotFit) or "not running" not in str(error):
                raise
            time.sleep(OLLAMA_START_RETRY_S)
            return self._measure_once(shape)

    def _measure_once(self, shape: Shape) -> Measurement:
        from provision import store
        from provision.probe.record import record_probe

        info = self.lab.find(self.name)
        address = self.lab.guest(self.name)
        vm = store.VmRecord(
            name=info.name,
            vmid=info.vmid,
            node=info.node,
            cores=shape.cores,
            memory_mib=shape.memory_mib,
            cpu_type=shape.cpu_type,
        )
        recorded = record_probe(
            self.state_dir,
            vm,
            address,
            self.options,
            self.reporter,
            stored_options=self.kept_options,
        )
        details = {"probe_id": recorded.probe_id, "node": info.node, "vm": info.name}
        if recorded.did_not_fit is not None:
            error = recorded.did_not_fit
            return Measurement(
                shape,
                Status.OOM,
                mem_total_mib=None,
                error=str(error),
                details={**details, "oom_figure": error.figure},
            )
        return measurement_from_probe(shape, recorded.completed(), details)


def measurement_from_probe(
    shape: Shape, result: ProbeResult, details: dict[str, Any]
) -> Measurement:
    """Medians of the measured runs; peak memory used is the worst run (what must fit)."""
    summary = result.summary
    eval_tps, ttft, peak = (
        summary.get("eval_tps"),
        summary.get("ttft_s"),
        summary.get("peak_mem_used"),
    )
    facts = result.facts
    total_bytes = facts.mem_total_bytes if facts is not None else None
    extra = dict(details)
    if facts is not None:
        extra.update(
            {
                "vcpus": facts.vcpus,
                "cpu_model": facts.cpu_model,
                "avx2": facts.has_flag("avx2"),
                "fma": facts.has_flag("fma"),
            }
        )
    if result.levels:
        return measurement_from_levels(shape, result, extra)
    if eval_tps is None:
        reasons = "; ".join(r.error for r in result.runs if r.error) or "no run succeeded"
        return Measurement(shape, Status.FAILED, error=reasons, details=extra)
    return Measurement(
        shape,
        Status.OK,
        eval_tps=round(eval_tps.median, 2),
        ttft_s=round(ttft.median, 3) if ttft else None,
        mem_total_mib=int(total_bytes // MIB) if total_bytes else None,
        peak_used_mib=int(peak.max // MIB) if peak else None,
        details=extra,
        eval_tps_n=eval_tps.n,
        eval_tps_ci=(
            (round(eval_tps.ci_low, 2), round(eval_tps.ci_high, 2))
            if eval_tps.ci_low is not None and eval_tps.ci_high is not None
            else None
        ),
    )


def measurement_from_levels(
    shape: Shape, result: ProbeResult, details: dict[str, Any]
) -> Measurement:
    """The probe measured levels (users at once, runner thread counts) instead of single runs.

    Per thread count: the shape's tok/s and TTFT are one user's alone, its peak the worst
    level's, and every level is kept for the service targets. With several thread counts the
    shape counts with its best (the most tokens/s at its busiest level); details say which and
    what each gave.
    """
    by_threads: dict[int | None, list[LevelStats]] = {}
    for level in result.levels:
        by_threads.setdefault(level.num_thread, []).append(level)
    total_bytes = result.facts.mem_total_bytes if result.facts is not None else None
    candidates = {
        threads: _from_one_thread_count(shape, levels, total_bytes, details)
        for threads, levels in by_threads.items()
    }
    if len(candidates) == 1:
        return next(iter(candidates.values()))
    best = max(candidates, key=lambda threads: _busiest_tps(candidates[threads]))
    chosen = candidates[best]
    chosen.details["num_thread"] = _threads_text(best)
    chosen.details["by_num_thread"] = {
        _threads_text(threads): m.eval_tps for threads, m in candidates.items()
    }
    return chosen


def _from_one_thread_count(
    shape: Shape, stats: list[LevelStats], total_bytes: int | None, details: dict[str, Any]
) -> Measurement:
    levels = tuple(
        LevelPoint(
            users=lv.users,
            ttft_p95_s=lv.ttft_p95_s,
            tps_per_user=lv.tps_per_user_p50,
            aggregate_tps=lv.aggregate_tps,
            completed=lv.completed,
            failed=lv.failed,
        )
        for lv in stats
    )
    if not any(lv.completed for lv in stats):
        errors = "; ".join(e for lv in stats for e in lv.errors) or "no request succeeded"
        return Measurement(shape, Status.FAILED, error=errors, details=dict(details), levels=levels)
    alone = next((lv for lv in stats if lv.users == 1), None)
    peaks = [lv.peak_mem_used for lv in stats if lv.peak_mem_used is not None]
    return Measurement(
        shape,
        Status.OK,
        eval_tps=_rounded(alone.tps_per_user_p50 if alone else None, 2),
        ttft_s=_rounded(alone.ttft_p50_s if alone else None, 3),
        mem_total_mib=int(total_bytes // MIB) if total_bytes else None,
        peak_used_mib=int(max(peaks) // MIB) if peaks else None,
        details=dict(details),
        levels=levels,
    )


def _busiest_tps(measurement: Measurement) -> float:
    """Tokens/s of all users together at the busiest level (one user's when there is one)."""
    if measurement.status is not Status.OK or not measurement.levels:
        return -1.0
    return max(measurement.levels, key=lambda lv: lv.users).aggregate_tps or 0.0


def _threads_text(threads: int | None) -> str:
    return "auto" if threads is None else str(threads)


def _rounded(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)
