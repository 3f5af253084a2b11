"""A sweep report as one JSON document or as CSV (one row per shape)."""

from __future__ import annotations

import csv
import io
from typing import Any

from provision.report.model import Row, SweepReport

CSV_COLUMNS = (
    "cores",
    "memory_mib",
    "cpu_type",
    "state",
    "feasible",
    "minimum",
    "pareto",
    "eval_tps",
    "eval_tps_n",
    "eval_tps_ci_low",
    "eval_tps_ci_high",
    "ttft_s",
    "mem_total_mib",
    "peak_used_mib",
    "free_pct",
    "why",
    "probed",
)


def to_json(report: SweepReport) -> dict[str, Any]:
    result = report.result
    minimum = report.minimum_row
    best = result.best_seen
    return {
        "sweep": {
            "id": report.sweep_id,
            "vm": report.vm,
            "status": report.status,
            "created_at": report.created_at,
            "updated_at": report.updated_at,
            "strategy": report.strategy,
            "model": report.model,
            "labctl_version": report.labctl_version,
            "space": result.space.to_dict(),
            "targets": report.targets.to_dict(),
        },
        "recommendation": report.recommendation,
        "minimum": minimum.to_dict() if minimum else None,
        "best_seen": _row_of(report, best.shape).to_dict() if best else None,
        "pareto": [r.to_dict() for r in report.rows if r.on_frontier],
        "stats": {
            "shapes": len(result.space),
            "probes": report.probes,
            "reboots": report.reboots,
            "not_probed": report.not_probed,
            "ruled_out": report.count("inferred"),
            "skipped": report.count("skipped"),
            "unreached": report.count("unreached"),
            "failed": len(result.failed),
        },
        "points": [r.to_dict() for r in report.rows],
        "warnings": list(report.warnings),
    }


def _row_of(report: SweepReport, shape: object) -> Row:
    return next(r for r in report.rows if r.shape == shape)


def to_csv(report: SweepReport) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(
        buffer, fieldnames=CSV_COLUMNS, extrasaction="ignore", lineterminator="\n"
    )
    writer.writeheader()
    for row in report.rows:
        writer.writerow({k: ("" if v is None else v) for k, v in row.to_dict().items()})
    return buffer.getvalue()
