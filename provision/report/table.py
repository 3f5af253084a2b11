"""The terminal view of a sweep: one row per shape, the minimum highlighted, the recommendation."""

from __future__ import annotations

import io

from rich.console import Console
from rich.table import Table
from rich.text import Text

from provision.report.capacity import capacity_table
from provision.report.model import Row, SweepReport
from provision.shape import format_mib
from provision.sweep.model import Measurement, format_seconds

_STATE_STYLE = {
    "meets": "green",
    "misses": "yellow",
    "oom": "red",
    "failed": "red",
    "invalid": "red",
    "inferred": "dim",
    "skipped": "dim italic",
    "unreached": "dim italic",
}


def render_table(report: SweepReport, *, color: bool = False, width: int = 110) -> str:
    """The table, the recommendation and the sweep's cost, as text (ANSI colours if asked)."""
    console = Console(
        file=io.StringIO(), force_terminal=color, no_color=not color, width=width, highlight=False
    )
    console.print(_table(report))
    capacity = capacity_table(report)
    if capacity is not None:
        console.print(capacity)
    style = "bold green" if report.result.minimum else "bold yellow"
    console.print(Text(report.recommendation, style=style), soft_wrap=True)
    console.print(Text(summary_line(report), style="dim"), soft_wrap=True)
    for warning in report.warnings:
        console.print(Text(f"warning: {warning}", style="yellow"), soft_wrap=True)
    output = console.file.getvalue()  # type: ignore[attr-defined]
    return str(output).rstrip("\n")


def summary_line(report: SweepReport) -> str:
    result = report.result
    ruled_out, skipped = report.count("inferred"), report.count("skipped")
    parts = [
        (
            f"sweep {report.sweep_id} ({report.strategy}, {report.status}): "
            f"{report.probes} of {len(result.space)} shapes probed, {report.reboots} reboots"
        )
    ]
    if ruled_out:
        parts.append(
            f"{ruled_out} not probed: ruled out by a miss with as many or more cores and RAM"
        )
    if skipped:
        parts.append(f"{skipped} not probed: cannot beat the minimum")
    if report.count("unreached"):
        parts.append(
            f"{report.count('unreached')} not probed: not reached (the sweep stopped, "
            "or a probe failed)"
        )
    if result.failed:
        invalid = sum(1 for m in result.failed if m.status.value == "invalid")
        parts.append(
            f"{len(result.failed) - invalid} probes failed"
            if not invalid
            else (
                f"{len(result.failed)} probes failed or invalid ({invalid} invalid: the guest did "
                "not see its shape)"
            )
        )
    parts.append(f"targets: {report.targets.describe()}")
    return "; ".join(parts)


def _table(report: SweepReport) -> Table:
    table = Table(
        title=f"{report.model or 'model'} on {report.vm}: sweep {report.sweep_id}",
        title_justify="left",
        header_style="bold",
    )
    for name, justify in (
        ("vCPU", "right"),
        ("RAM", "right"),
        ("cpu type", "left"),
        ("eval tok/s", "right"),
        ("TTFT", "right"),
        ("peak used", "right"),
        ("free", "right"),
        ("verdict", "left"),
    ):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for row in report.rows:
        style = "bold green" if row.is_minimum else "bold" if row.is_best_seen else None
        table.add_row(*cells(row), style=style)
    return table


def cells(row: Row) -> list[str | Text]:
    m = row.measurement
    verdict = Text(row.why, style=_STATE_STYLE[row.state])
    if row.is_minimum:
        verdict = Text(f"<- minimum: {row.why}", style="bold green")
    elif row.is_best_seen:
        verdict = Text(f"<- best seen: {row.why}", style="bold yellow")
    elif row.on_frontier:
        verdict.append(" (Pareto)", style="cyan")
    return [
        str(row.shape.cores),
        format_mib(row.shape.memory_mib),
        row.shape.cpu_type,
        _tps(m),
        format_seconds(m.ttft_s) if m and m.ttft_s is not None else "-",
        format_mib(m.peak_used_mib) if m and m.peak_used_mib is not None else "-",
        f"{row.free_pct:.0f}%" if row.free_pct is not None else "-",
        verdict,
    ]


def _tps(m: Measurement | None) -> str:
    """Median eval tok/s, with `± half-width` of its 95 % interval when there is one."""
    if m is None or m.eval_tps is None:
        return "-"
    half = m.eval_tps_half_width
    return f"{m.eval_tps:.1f}" if half is None else f"{m.eval_tps:.1f} ± {half:.1f}"
