"""Writing a sweep report to files: HTML (self-contained), markdown + PNG, PNG, CSV, JSON."""

from __future__ import annotations

import json
from pathlib import Path

from provision.report.document import render_html, render_markdown
from provision.report.export import to_csv, to_json
from provision.report.model import SweepReport
from provision.report.plot import render_png


def default_path(state_dir: Path, sweep_id: str, fmt: str) -> Path:
    """<state>/reports/<sweep id>/report.<fmt>: where `labctl sweep` leaves its report."""
    return state_dir / "reports" / sweep_id / f"report.{fmt}"


def write_report(report: SweepReport, path: Path, fmt: str) -> list[Path]:
    """Write the report in one format; returns every file written (markdown brings its PNG)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "html":
        _write(path, render_html(report, render_png(report)))
        return [path]
    if fmt == "md":
        image = path.with_suffix(".png")
        image.write_bytes(render_png(report))
        _write(path, render_markdown(report, image.name))
        return [path, image]
    if fmt == "png":
        path.write_bytes(render_png(report))
        return [path]
    if fmt == "csv":
        _write(path, to_csv(report))
        return [path]
    if fmt == "json":
        _write(path, json.dumps(to_json(report), indent=2) + "\n")
        return [path]
    raise ValueError(f"unknown report format {fmt!r}")


def _write(path: Path, text: str) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(text, encoding="utf-8")
    temporary.replace(path)  # a reader never sees half a report
