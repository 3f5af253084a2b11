"""Sweep reports: the recommendation line, table, CSV, JSON, PNG, HTML and markdown."""

from __future__ import annotations

import base64
import csv
import io
import json
import re
from pathlib import Path

import pytest

from provision.report.export import CSV_COLUMNS, to_csv, to_json
from provision.report.files import write_report
from provision.report.model import SweepReport, build_report, recommendation
from provision.report.plot import render_png
from provision.report.table import render_table
from provision.shape import Shape
from provision.sweep.model import Measurement, Space, Status, Targets
from provision.sweep.strategy import SearchResult, search
from tests.support.replay import Replay, one_at_a_time
from tests.support.sweep_tables import MATRIX, gemma_table

G = 1024
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def sweep_report(
    targets: Targets,
    strategy: str = "smart",
    space: Space = MATRIX,
    table: dict[Shape, Measurement] | None = None,
) -> SweepReport:
    result = search(
        space, targets, one_at_a_time(Replay(table or gemma_table(space))), strategy=strategy
    )
    return build_report(
        sweep_id="ab12cd34",
        vm="gemma",
        status="done",
        created_at="2026-11-25T20:00:00+00:00",
        updated_at="2026-11-25T20:30:00+00:00",
        spec={"strategy": strategy, "probe": {"model": "gemma2:2b"}},
        result=result,
        probes=result.probes,
        reboots=result.probes,
        labctl_version="0.1.0",
    )


def test_recommendation_names_the_minimum_in_one_line() -> None:
    line = sweep_report(Targets(min_tps=10)).recommendation
    assert line == (
        "Minimum: 4 vCPU / 4 GiB (cpu=host): 10.4 tok/s, TTFT 658 ms, 3.0 GiB peak used"
    )


def test_no_shape_meeting_the_target_says_so_and_shows_the_best_seen() -> None:
    line = sweep_report(Targets(min_tps=40)).recommendation
    assert line.startswith(
        "No shape meets every target (eval >= 40 tok/s). Best seen: "
        "12 vCPU / 32 GiB (cpu=host): 12.5 tok/s"
    )


def test_nothing_ran_says_so() -> None:
    shape = Shape(1, 1 * G)
    result = SearchResult(
        Space((1,), (G,), ("host",)),
        Targets(min_tps=1),
        (Measurement(shape, Status.OOM),),
        {},
        None,
        (),
        None,
    )
    assert recommendation(result).endswith("the model did not run on any shape probed")


def test_table_highlights_the_minimum_and_explains_every_miss() -> None:
    text = render_table(sweep_report(Targets(min_tps=10), strategy="grid"))
    minimum_lines = [line for line in text.splitlines() if "<- minimum" in line]
    assert len(minimum_lines) == 1
    assert re.search(r"\b4 .*4 GiB .*host .*10\.4", minimum_lines[0])
    assert "does not fit in RAM (OOM)" in text
    assert "5.9 tok/s < 10" in text
    assert "50 of 50 shapes probed" in text


def test_table_marks_shapes_ruled_out_without_probing() -> None:
    space = Space((2,), (1 * G, 2 * G, 4 * G, 8 * G), ("host",))
    text = render_table(sweep_report(Targets(min_tps=5), space=space))
    assert "not probed" in text and "already lacked memory" in text


def test_a_smart_report_shows_every_shape_of_the_matrix_with_why_it_was_not_probed() -> None:
    report = sweep_report(Targets(min_tps=10))
    assert report.probes < len(MATRIX)
    assert sorted(r.shape for r in report.rows) == sorted(MATRIX.shapes())
    unprobed = [r for r in report.rows if r.measurement is None]
    assert len(unprobed) == len(MATRIX) - report.probes
    assert {r.state for r in unprobed} == {"inferred", "skipped"}
    assert all(r.why.startswith("not probed: ") for r in unprobed)
    eight = next(r for r in report.rows if r.shape == Shape(8, 2 * G, "host"))
    assert eight.why == "not probed: more cores than the minimum"
    assert eight.feasible is None  # not judged: 2 GiB might not fit
    one = next(r for r in report.rows if r.shape == Shape(1, 8 * G, "host"))
    assert one.state == "inferred" and one.feasible is False
    text = render_table(report, width=200)
    assert re.search(r"\b8 .*2 GiB .*host .*- .*not probed: more cores than the minimum", text)
    assert "22 not probed: ruled out by a miss" in text
    assert "21 not probed: cannot beat the minimum" in text


def test_unprobed_shapes_are_rows_without_numbers_in_csv_and_json() -> None:
    report = sweep_report(Targets(min_tps=10))
    rows = list(csv.DictReader(io.StringIO(to_csv(report))))
    assert len(rows) == len(MATRIX)
    skipped = [r for r in rows if r["state"] == "skipped"]
    assert skipped and all(
        r["probed"] == "False"
        and r["feasible"] == ""
        and r["eval_tps"] == ""
        and r["why"].startswith("not probed: ")
        for r in skipped
    )
    document = to_json(report)
    assert len(document["points"]) == len(MATRIX)
    assert sum(p["probed"] for p in document["points"]) == document["stats"]["probes"]
    stats = document["stats"]
    assert stats["ruled_out"] + stats["skipped"] == stats["not_probed"] == len(MATRIX) - 7
    assert all(
        p["eval_tps"] is None and p["peak_used_mib"] is None
        for p in document["points"]
        if not p["probed"]
    )


def test_the_plot_draws_only_measured_shapes() -> None:
    import matplotlib.pyplot as plt
    import numpy as np

    from provision.report.plot import _draw

    report = sweep_report(Targets(min_tps=10))
    figure, axes = plt.subplots()
    try:
        _draw(axes, report)
        plotted = {
            (float(x), float(y))
            for line in axes.lines
            if line.get_marker() == "o"
            for x, y in np.asarray(line.get_xydata())
        }
    finally:
        plt.close(figure)
    measured = {
        (m.shape.cores, m.eval_tps) for m in report.result.measurements if m.eval_tps is not None
    }
    assert plotted == measured


def test_html_and_markdown_grey_out_the_shapes_not_probed(tmp_path: Path) -> None:
    report = sweep_report(Targets(min_tps=10))
    [html_path] = write_report(report, tmp_path / "r.html", "html")
    html = html_path.read_text()
    assert html.count("<tr class=") == len(MATRIX)
    assert html.count('class="skipped unprobed"') == 21
    assert html.count('class="inferred unprobed"') == 22
    assert "not probed: more cores than the minimum" in html
    markdown = write_report(report, tmp_path / "r.md", "md")[0].read_text()
    assert markdown.count("\n| ") == len(MATRIX) + 1  # the header, then one line per shape
    assert "| _not probed: more cores than the minimum_ |" in markdown


def test_csv_has_one_row_per_shape_shown_and_the_documented_columns() -> None:
    report = sweep_report(Targets(min_tps=10), strategy="grid")
    rows = list(csv.DictReader(io.StringIO(to_csv(report))))
    assert tuple(rows[0]) == CSV_COLUMNS
    assert len(rows) == len(MATRIX)
    minimum = [r for r in rows if r["minimum"] == "True"]
    assert [(r["cores"], r["memory_mib"], r["cpu_type"]) for r in minimum] == [
        ("4", "4096", "host")
    ]
    oom = next(r for r in rows if r["state"] == "oom")
    assert oom["eval_tps"] == ""  # not reported, never 0


def test_json_document_carries_answer_frontier_points_and_cost() -> None:
    document = json.loads(json.dumps(to_json(sweep_report(Targets(min_tps=10)))))
    assert document["minimum"]["cores"] == 4
    assert document["recommendation"].startswith("Minimum: 4 vCPU")
    assert document["stats"]["probes"] <= len(MATRIX) // 2
    assert document["sweep"]["targets"]["min_tps"] == 10
    assert all(p["feasible"] for p in document["pareto"])


def test_png_is_a_real_image_also_without_any_point() -> None:
    assert render_png(sweep_report(Targets(min_tps=10))).startswith(PNG_MAGIC)
    empty = build_report(
        sweep_id="x",
        vm="gemma",
        status="running",
        created_at="",
        updated_at="",
        spec={},
        result=SearchResult(MATRIX, Targets(), (), {}, None, (), None),
        probes=0,
        reboots=0,
    )
    assert render_png(empty).startswith(PNG_MAGIC)


def test_html_is_self_contained_with_the_plot_embedded(tmp_path: Path) -> None:
    [path] = write_report(sweep_report(Targets(min_tps=10)), tmp_path / "r.html", "html")
    html = path.read_text()
    image = re.search(r'src="data:image/png;base64,([^"]+)"', html)
    assert image and base64.b64decode(image.group(1)).startswith(PNG_MAGIC)
    assert not re.search(r'(src|href)="(https?:|//|/)', html)  # nothing fetched from elsewhere
    assert "Minimum: 4 vCPU / 4 GiB (cpu=host)" in html
    assert 'class="meets minimum"' in html


def test_html_escapes_what_it_shows(tmp_path: Path) -> None:
    report = sweep_report(Targets(min_tps=10))
    hostile = build_report(
        sweep_id="<b>x</b>",
        vm="<script>",
        status="done",
        created_at="",
        updated_at="",
        spec={"strategy": "smart"},
        result=report.result,
        probes=1,
        reboots=1,
    )
    [path] = write_report(hostile, tmp_path / "r.html", "html")
    assert "<script>" not in path.read_text()


def test_markdown_references_its_png_beside_it(tmp_path: Path) -> None:
    written = write_report(sweep_report(Targets(min_tps=10)), tmp_path / "sweep.md", "md")
    assert [p.name for p in written] == ["sweep.md", "sweep.png"]
    text = written[0].read_text()
    assert "![eval tok/s by vCPUs](sweep.png)" in text
    assert "| **4** | **4 GiB** | **host** |" in text
    assert written[1].read_bytes().startswith(PNG_MAGIC)


@pytest.mark.parametrize("fmt", ["csv", "json", "png"])
def test_every_format_writes_a_file(tmp_path: Path, fmt: str) -> None:
    [path] = write_report(sweep_report(Targets(min_tps=10)), tmp_path / f"r.{fmt}", fmt)
    assert path.stat().st_size > 0


def test_a_cpu_type_that_hides_avx2_is_called_out() -> None:
    table = gemma_table()
    for shape, m in list(table.items()):
        avx2 = shape.cpu_type == "host"
        table[shape] = Measurement(
            m.shape,
            m.status,
            m.eval_tps,
            m.ttft_s,
            m.mem_total_mib,
            m.peak_used_mib,
            m.error,
            {"avx2": avx2},
        )
    report = sweep_report(Targets(min_tps=10), table=table)
    [warning] = report.warnings
    assert warning.startswith("cpu=x86-64-v2-AES: the guest has no AVX2")
    assert warning in render_table(report) and warning in to_json(report)["warnings"]
