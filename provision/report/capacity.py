"""A service sweep's capacity table: one row per measured shape, one column per number of users,
each cell the p95 time to first token and each user's eval tok/s, marked when the per-user
targets hold."""

from __future__ import annotations

from typing import Any

from rich.table import Table

from provision.report.model import SweepReport
from provision.sweep.service import LevelPoint, ServiceTargets, level_reasons, most_users_served


def capacity_levels(report: SweepReport) -> tuple[int, ...]:
    """Every concurrency level measured on any shape, in order."""
    found = {lv.users for row in report.rows if row.measurement for lv in row.measurement.levels}
    return tuple(sorted(found))


def capacity_cells(report: SweepReport) -> list[dict[str, Any]]:
    """Per measured shape: its label and one text cell per level (`-` where not measured)."""
    service = report.targets.service
    assert service is not None
    levels = capacity_levels(report)
    rows = []
    for row in report.rows:
        m = row.measurement
        if m is None or not m.levels:
            continue
        by_users = {lv.users: lv for lv in m.levels}
        rows.append(
            {
                "shape": row.shape.label,
                "minimum": row.is_minimum,
                "cells": [_cell(by_users.get(users), service) for users in levels],
                "serves": _users(most_users_served(m.levels, service)),
            }
        )
    return rows


def _cell(level: LevelPoint | None, service: ServiceTargets) -> str:
    if level is None:
        return "-"
    ttft = "-" if level.ttft_p95_s is None else f"{level.ttft_p95_s:.2f} s"
    each = "-" if level.tps_per_user is None else f"{level.tps_per_user:.1f}"
    failed = f", {level.failed} failed" if level.failed else ""
    mark = "ok" if not level_reasons(level, service) else "miss"
    return f"{ttft} / {each}{failed} {mark}"


def capacity_table(report: SweepReport) -> Table | None:
    """The rich table of capacity_cells, or None for a sweep without --users."""
    if report.targets.service is None:
        return None
    table = Table(
        title="capacity: p95 TTFT / eval tok/s each, by users at once "
        f"(targets: {report.targets.service.describe()})",
        title_justify="left",
        header_style="bold",
    )
    table.add_column("shape", justify="left")
    for users in capacity_levels(report):
        table.add_column(_users(users), justify="right")
    table.add_column("serves", justify="right")
    for row in capacity_cells(report):
        table.add_row(
            row["shape"],
            *row["cells"],
            row["serves"],
            style="bold green" if row["minimum"] else None,
        )
    return table


def _users(count: int) -> str:
    return f"{count} user{'s' if count != 1 else ''}"
