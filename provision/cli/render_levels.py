"""Tables of concurrency levels: `labctl probe --concurrency` and `labctl results --levels`."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from rich.table import Table

from provision.probe.concurrency import LevelStats, ThreadLoad

LEVEL_HEADERS = (
    "threads",
    "users",
    "done",
    "failed",
    "total tok/s",
    "tok/s per user",
    "TTFT p50 s",
    "TTFT p95 s",
    "TTFT max s",
    "ITL p50 ms",
    "ITL p95 ms",
    "queue p50 s",
    "probe CPU %",
)


def _num(value: float | None, digits: int = 2, scale: float = 1.0) -> str:
    return "—" if value is None else f"{value * scale:.{digits}f}"


def _threads(value: int | None) -> str:
    return "auto" if value is None else str(value)


def level_cells(level: Mapping[str, Any]) -> list[str]:
    """One row of LEVEL_HEADERS from a LevelStats.to_json() (or a results row)."""
    return [
        _threads(level["num_thread"]),
        str(level["users"]),
        str(level["completed"]),
        str(level["failed"]),
        _num(level["aggregate_tps"]),
        _num(level["tps_per_user_p50"]),
        _num(level["ttft_p50_s"], 3),
        _num(level["ttft_p95_s"], 3),
        _num(level["ttft_max_s"], 3),
        _num(level["itl_p50_s"], 1, 1000),
        _num(level["itl_p95_s"], 1, 1000),
        _num(level["queue_wait_p50_s"], 3),
        _num(level["agent_cpu_pct"], 2),
    ]


def levels_table(title: str, levels: Iterable[LevelStats]) -> Table:
    table = Table(title=title, title_justify="left", header_style="bold")
    for name in LEVEL_HEADERS:
        table.add_column(name, justify="right")
    for level in levels:
        table.add_row(*level_cells(level.to_json()))
    return table


def thread_loads_line(loads: Iterable[ThreadLoad]) -> str:
    """Each thread count's load, counted apart, and what the runner really ran with."""
    parts = []
    for load in loads:
        if not load.ok:
            parts.append(f"{_threads(load.num_thread)}: load failed ({load.error})")
            continue
        runner = load.runners[0] if load.runners else None
        seen = (
            f"runner -t {runner.argv_threads or 'default'}, -np {runner.argv_parallel or '?'}, "
            f"{runner.tasks} tasks"
            if runner
            else "runner not seen"
        )
        parts.append(f"{_threads(load.num_thread)}: load {_num(load.load_s, 2)} s ({seen})")
    return "loads (not in the levels): " + "; ".join(parts)


def level_rows_table(rows: list[dict[str, Any]]) -> Table:
    table = Table(title="kept concurrency levels", title_justify="left", header_style="bold")
    for name in ("probe", "vm", "shape", "when (UTC)", *LEVEL_HEADERS):
        table.add_column(name, justify="left" if name in ("vm", "shape") else "right")
    for row in rows:
        shape = f"{row['cores']}c/{(row['memory_mib'] or 0) / 1024:g}G/{row['cpu_type']}"
        when = str(row["started_at"] or "")[:16].replace("T", " ")
        table.add_row(str(row["probe_id"]), row["vm_name"], shape, when, *level_cells(row))
    return table
