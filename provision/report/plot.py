"""The sweep plot: eval tok/s against vCPUs, one line per RAM size and cpu type, the target line.

Rendered with matplotlib's Agg backend (no display needed) to PNG bytes.
"""

from __future__ import annotations

import io
import textwrap

import matplotlib

matplotlib.use("Agg")  # before pyplot: never look for a display

import matplotlib.pyplot as plt
from matplotlib.lines import Line2D

from provision.report.model import Row, SweepReport
from provision.shape import format_mib

_LINESTYLES = ("-", "--", ":", "-.")
_MISS_COLOR = "#d62728"


def render_png(report: SweepReport, *, dpi: int = 110) -> bytes:
    """PNG bytes of the plot; an empty sweep still gives a readable (empty) chart."""
    service = report.targets.service is not None
    figure, panels = plt.subplots(
        1, 2 if service else 1, figsize=(16.0 if service else 9.6, 5.6), dpi=dpi, squeeze=False
    )
    try:
        _draw(panels[0][0], report)
        if service:
            _draw_capacity(panels[0][1], report)
        figure.tight_layout()
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png")
        return buffer.getvalue()
    finally:
        plt.close(figure)


def _draw(axes: plt.Axes, report: SweepReport) -> None:
    space = report.result.space
    measured = [r for r in report.rows if r.measurement is not None]
    colors = plt.get_cmap("viridis")
    rams = list(space.ram_mib)
    for type_index, cpu_type in enumerate(space.cpu_types):
        for ram_index, ram in enumerate(rams):
            line = sorted(
                (r for r in measured if r.shape.cpu_type == cpu_type and r.shape.memory_mib == ram),
                key=lambda r: r.shape.cores,
            )
            if line:
                color = colors(0.1 + 0.75 * ram_index / max(len(rams) - 1, 1))
                _draw_line(
                    axes,
                    line,
                    color,
                    _LINESTYLES[type_index % len(_LINESTYLES)],
                    f"{format_mib(ram)}, cpu={cpu_type}",
                )
    _draw_marks(axes, measured, report)
    axes.set_xticks(list(space.cores))
    axes.set_xlabel("vCPUs")
    axes.set_ylabel("eval tok/s (median)")
    tops = [r.measurement.eval_tps or 0.0 for r in measured if r.measurement is not None]
    axes.set_ylim(0, max([*tops, report.targets.min_tps or 0.0, 1.0]) * 1.15)
    axes.grid(True, alpha=0.3)
    axes.set_title(
        f"{report.model or 'model'} on {report.vm}: eval tok/s by vCPUs (sweep {report.sweep_id})",
        fontsize=11,
        loc="left",
    )
    axes.text(
        0.0,
        -0.14,
        textwrap.fill(report.recommendation, 100),
        transform=axes.transAxes,
        fontsize=9.5,
        fontweight="bold",
        color="#1a7f37" if report.result.minimum else "#9a6700",
        va="top",
    )
    _legend(axes, report)


def _draw_line(axes: plt.Axes, line: list[Row], color: object, style: str, label: str) -> None:
    points = [
        (r.shape.cores, r.measurement.eval_tps)
        for r in line
        if r.measurement is not None and r.measurement.eval_tps is not None
    ]
    if points:
        xs, ys = zip(*points, strict=True)
        axes.plot(xs, ys, linestyle=style, color=color, marker="o", markersize=5, label=label)


def _draw_marks(axes: plt.Axes, measured: list[Row], report: SweepReport) -> None:
    """Misses ringed red; OOM and failed probes as red crosses on the axis; the minimum starred."""
    for row in measured:
        m = row.measurement
        assert m is not None
        if row.state in ("oom", "failed", "invalid") or m.eval_tps is None:
            axes.scatter(
                [row.shape.cores], [0], marker="x", color=_MISS_COLOR, s=60, zorder=4, clip_on=False
            )
        elif row.state == "misses":
            axes.scatter(
                [row.shape.cores],
                [m.eval_tps],
                marker="o",
                facecolors="none",
                edgecolors=_MISS_COLOR,
                s=120,
                linewidths=1.5,
                zorder=4,
            )
    minimum = report.minimum_row
    if minimum is not None and minimum.measurement is not None:
        tps = minimum.measurement.eval_tps or 0.0
        axes.scatter(
            [minimum.shape.cores],
            [tps],
            marker="*",
            s=380,
            color="#f2b807",
            edgecolors="black",
            linewidths=0.8,
            zorder=5,
        )
        axes.annotate(
            f"minimum\n{minimum.shape.label}",
            (minimum.shape.cores, tps),
            textcoords="offset points",
            xytext=(12, -30),
            fontsize=8.5,
        )
    best = report.best_seen_row
    if best is not None and best.measurement is not None:
        tps = best.measurement.eval_tps or 0.0
        axes.scatter([best.shape.cores], [tps], marker="D", s=110, color="#9a6700", zorder=5)
        axes.annotate(
            f"best seen\n{best.shape.label}",
            (best.shape.cores, tps),
            textcoords="offset points",
            xytext=(-150, 10),
            fontsize=8.5,
        )
    if report.targets.min_tps is not None:
        axes.axhline(report.targets.min_tps, color=_MISS_COLOR, linestyle="--", linewidth=1.2)
        axes.text(
            1.0,
            report.targets.min_tps,
            f" target {report.targets.min_tps:g} tok/s",
            transform=axes.get_yaxis_transform(),
            color=_MISS_COLOR,
            va="bottom",
            ha="right",
            fontsize=9,
        )


def _legend(axes: plt.Axes, report: SweepReport) -> None:
    handles, _ = axes.get_legend_handles_labels()
    extra = [
        Line2D(
            [],
            [],
            marker="o",
            linestyle="",
            markerfacecolor="none",
            markeredgecolor=_MISS_COLOR,
            markersize=9,
            label="misses a target",
        ),
        Line2D([], [], marker="x", linestyle="", color=_MISS_COLOR, label="OOM / probe failed"),
    ]
    if report.best_seen_row is not None:
        extra.append(
            Line2D(
                [],
                [],
                marker="D",
                linestyle="",
                color="#9a6700",
                label="best seen (no shape meets the targets)",
            )
        )
    if report.minimum_row is not None:
        extra.append(
            Line2D(
                [],
                [],
                marker="*",
                linestyle="",
                color="#f2b807",
                markeredgecolor="black",
                markersize=13,
                label="minimum",
            )
        )
    axes.legend(
        handles=[*handles, *extra],
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),
        fontsize=8.5,
        frameon=False,
        title="RAM, cpu type",
        title_fontsize=9,
    )


def _draw_capacity(axes: plt.Axes, report: SweepReport) -> None:
    """A service sweep: p95 TTFT against users at once, one line per measured shape, and the
    TTFT target as a dashed line."""
    service = report.targets.service
    assert service is not None
    colors = plt.get_cmap("tab10")
    lines = [r for r in report.rows if r.measurement is not None and r.measurement.levels]
    for index, row in enumerate(lines):
        assert row.measurement is not None
        points = [
            (lv.users, lv.ttft_p95_s) for lv in row.measurement.levels if lv.ttft_p95_s is not None
        ]
        if points:
            xs, ys = zip(*points, strict=True)
            axes.plot(
                xs,
                ys,
                marker="o",
                color=colors(index % 10),
                linewidth=2.5 if row.is_minimum else 1.2,
                label=row.shape.label + (" (minimum)" if row.is_minimum else ""),
            )
    if service.max_ttft_p95_s is not None:
        axes.axhline(service.max_ttft_p95_s, color=_MISS_COLOR, linestyle="--", linewidth=1)
    axes.set_xticks(list(service.levels))
    axes.set_xlabel("users at once")
    axes.set_ylabel("time to first token, p95 (s)")
    axes.set_ylim(bottom=0)
    axes.grid(True, alpha=0.3)
    axes.set_title(f"p95 TTFT by users ({service.describe()})", fontsize=11, loc="left")
    if lines:
        axes.legend(fontsize=8, loc="upper left")
