"""The sweep as a document: self-contained HTML (plot embedded as base64) or markdown.

Templates live in templates/report/ (shipped in the wheel as provision/_data/templates/report/).
"""

from __future__ import annotations

import base64
from typing import Any

import jinja2

from provision import paths
from provision.report.capacity import capacity_cells, capacity_levels
from provision.report.export import to_json
from provision.report.model import SweepReport
from provision.report.table import cells, summary_line
from provision.shape import format_mib


def _environment(autoescape: bool) -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(paths.templates_dir() / "report")),
        autoescape=autoescape,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )


def _context(report: SweepReport) -> dict[str, Any]:
    rows = [
        {
            "cells": [str(c) for c in cells(row)],
            "state": row.state,
            "probed": row.measurement is not None,
            "minimum": row.is_minimum,
            "best": row.is_best_seen,
        }
        for row in report.rows
    ]
    space = report.result.space
    space_text = (
        f"cores {', '.join(map(str, space.cores))}; "
        f"RAM {', '.join(format_mib(r) for r in space.ram_mib)}; "
        f"cpu type {', '.join(space.cpu_types)}"
    )
    return {
        "report": report,
        "data": to_json(report),
        "rows": rows,
        "space": space_text,
        "summary": summary_line(report),
        "capacity": (
            {"levels": capacity_levels(report), "rows": capacity_cells(report)}
            if report.targets.service is not None
            else None
        ),
        "headers": [
            "vCPU",
            "RAM",
            "cpu type",
            "eval tok/s",
            "TTFT",
            "peak used",
            "free",
            "verdict",
        ],
    }


def render_html(report: SweepReport, png: bytes) -> str:
    """One HTML file that needs nothing else: the plot is a data: URI."""
    image = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
    return _environment(True).get_template("report.html.j2").render(**_context(report), image=image)


def render_markdown(report: SweepReport, png_name: str) -> str:
    """Markdown beside its PNG (`png_name` is the image's path relative to the .md file)."""
    return (
        _environment(False).get_template("report.md.j2").render(**_context(report), image=png_name)
    )
