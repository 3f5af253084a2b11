"""`labctl probe` and `labctl results`: measure a VM, show what was kept."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table
from rich.text import Text

from provision.cli import cli
from provision.cli.app import AppContext, pass_app, wait_option
from provision.cli.params import runs_options
from provision.errors import UsageError
from provision.probe.parse import RunResult
from provision.probe.result import ProbeResult
from provision.probe.stats import Stat


@cli.command()
@click.argument("name")
@click.option("--model", help="model to run (default: probe.model of the lab file)")
@runs_options("measured runs (default: probe.runs)")
@click.option("--warmup", type=click.IntRange(0, 100), help="warm-up runs, not counted")
@click.option("--num-predict", type=click.IntRange(1, 1_000_000), help="tokens to generate")
@click.option(
    "--num-thread",
    metavar="N[,N...]",
    help="Ollama num_thread, or a list to measure (auto,1,2,4); each value reloads the model",
)
@click.option("--num-ctx", type=click.IntRange(16, 1 << 21), help="Ollama num_ctx (reloads)")
@click.option(
    "--prompt-file", type=click.Path(dir_okay=False, path_type=Path), help="file holding the prompt"
)
@click.option("--cold", is_flag=True, help="unload the model before each measured run")
@click.option(
    "--concurrency",
    metavar="N[,N...]",
    help="simultaneous users per level (1,2,4): each level runs --runs times",
)
@click.option("--json", "json_flag", is_flag=True, help="print one JSON document on stdout")
@wait_option
@pass_app
def probe(
    app: AppContext,
    name: str,
    model: str | None,
    runs: int | str | None,
    max_runs: int | None,
    warmup: int | None,
    num_predict: int | None,
    num_thread: str | None,
    num_ctx: int | None,
    prompt_file: Path | None,
    cold: bool,
    concurrency: str | None,
    json_flag: bool,
    wait: str | None,
) -> None:
    """Measure tokens/s, time to first token, load and memory inside VM NAME."""
    from provision import store
    from provision.probe.options import check_level_bounds, options_from_config
    from provision.probe.record import record_probe

    app.json_output = app.json_output or json_flag
    options = options_from_config(
        app.config,
        model=model,
        runs=runs,
        max_runs=max_runs,
        warmup=warmup,
        num_predict=num_predict,
        num_thread=num_thread,
        num_ctx=num_ctx,
        prompt_file=prompt_file,
        cold=cold,
        concurrency=concurrency,
    )
    lab = app.lab()
    with app.hold(lab, name, f"probe {name}", wait):
        info = lab.find(name)
        check_level_bounds(options, info.shape.cores, info.shape.memory_mib)
        address = lab.guest(name)
        vm = store.VmRecord(
            name=info.name,
            vmid=info.vmid,
            node=info.node,
            cores=info.shape.cores,
            memory_mib=info.shape.memory_mib,
            cpu_type=info.shape.cpu_type,
        )
        recorded = record_probe(app.state_dir, vm, address, options, app.reporter)
    result = recorded.completed()
    document = result.to_json()
    document["vm"] = info.to_json()
    document["probe_id"] = recorded.probe_id
    app.emit(document, human=render_probe(result, shape=info.shape.label))


@cli.command()
@click.option("--vm", "vm_name", metavar="NAME", help="only runs of this VM")
@click.option("--all", "include_warmup", is_flag=True, help="include warm-up runs")
@click.option("--json", "json_flag", is_flag=True, help="one JSON document on stdout")
@click.option("--csv", "csv_flag", is_flag=True, help="CSV on stdout")
@click.option(
    "--levels", "levels_flag", is_flag=True, help="concurrency levels instead of runs (table, CSV)"
)
@pass_app
def results(
    app: AppContext,
    vm_name: str | None,
    include_warmup: bool,
    json_flag: bool,
    csv_flag: bool,
    levels_flag: bool,
) -> None:
    """Show the probe runs (or, with --levels, the concurrency levels) kept in labctl's results
    database; --json carries both."""
    from provision import store

    if json_flag and csv_flag:
        raise UsageError("choose one of --json and --csv")
    rows = store.kept_runs(app.state_dir, vm_name, include_warmup=include_warmup)
    levels = store.kept_levels(app.state_dir, vm_name)
    if csv_flag:
        if levels_flag:
            click.echo(rows_to_csv(levels, store.LEVEL_COLUMNS), nl=False)
        else:
            click.echo(rows_to_csv(rows), nl=False)
        return
    app.json_output = app.json_output or json_flag
    shown = levels if levels_flag else rows
    if not shown and not app.json_output:
        where = f" for VM {vm_name}" if vm_name else ""
        what = "concurrency levels" if levels_flag else "probe runs"
        app.say(f"no {what} kept{where} yet: run `labctl probe NAME`")
        return
    human = render_level_rows(levels) if levels_flag else render_results(rows)
    app.emit({"runs": rows, "levels": levels}, human=human)


def rows_to_csv(rows: list[dict[str, Any]], columns: tuple[str, ...] | None = None) -> str:
    from provision.store import RESULT_COLUMNS

    buffer = io.StringIO()
    fields = list(columns or RESULT_COLUMNS)
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if v is None else v for k, v in row.items()})
    return buffer.getvalue()


# -- rendering ----------------------------------------------------------------------------


def _num(value: float | None, digits: int = 1, unit: str = "") -> str:
    return "—" if value is None else f"{value:.{digits}f}{unit}"


def _size(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value / 2**30:.2f} GiB" if value >= 2**30 else f"{value / 2**20:.0f} MiB"


def _console(width: int = 120) -> Console:
    return Console(
        file=io.StringIO(), force_terminal=False, no_color=True, width=width, highlight=False
    )


def _text(console: Console) -> str:
    return str(console.file.getvalue()).rstrip("\n")  # type: ignore[attr-defined]


CACHE_BUST_TEXT = {
    "nonce-first": "a per-run nonce before the chat template's first token (no cached prefix)",
    "nonce-in-prompt": "a per-run nonce leading the prompt (the template's first tokens may "
    "be cached and counted)",
    "unload+nonce-first": "model unloaded before each run + a per-run nonce before the chat "
    "template",
    "unload+nonce-in-prompt": "model unloaded before each run + a per-run nonce leading the prompt",
    "nonce": "a new first prompt line per run",
    "unload+nonce": "model unloaded before each run + a new first prompt line per run",
}


def render_probe(result: ProbeResult, *, shape: str = "") -> str:
    console = _console()
    facts = result.facts
    if facts is not None:
        avx2 = {True: "yes", False: "NO", None: "?"}[facts.has_flag("avx2")]
        processor = facts.ps.processor if facts.ps else "not reported"
        console.print(
            Text(
                f"{result.vm} {shape}: {facts.vcpus} vCPU {facts.cpu_model or ''} (AVX2 {avx2}), "
                f"{_size(facts.mem_total_bytes)} RAM, kernel {facts.kernel}"
            )
        )
        console.print(
            Text(
                f"Ollama {facts.ollama_version}: {facts.model.name} "
                f"{(facts.model.digest or '')[:12]} ({_size(facts.model.size_bytes)}), {processor}"
            )
        )
    if result.options.measures_levels:
        _print_levels(console, result)
    else:
        console.print(_runs_table(result))
        console.print(_summary_table(result))
    cache = CACHE_BUST_TEXT.get(result.cache_bust, result.cache_bust)
    overhead = result.sampler_overhead()
    console.print(
        Text(
            f"prompt cache defeated by: {cache}; sampler: >= {_num(overhead['min_sample_hz'])} Hz, "
            f"<= {_num(overhead['max_cpu_pct_of_one_core'], 2)} % of one core",
            style="dim",
        )
    )
    return _text(console)


def _print_levels(console: Console, result: ProbeResult) -> None:
    from provision.cli.render_levels import levels_table, thread_loads_line

    facts = result.facts
    if facts is not None and facts.topology is not None:
        console.print(
            Text(
                f"CPU topology seen by the guest: {facts.topology.label}; nproc {facts.vcpus}; "
                f"OLLAMA_NUM_PARALLEL {result.num_parallel or '?'}"
            )
        )
    console.print(Text(thread_loads_line(result.thread_loads)))
    title = (
        f"{result.options.model} on {result.vm}: concurrency levels "
        f"({result.options.runs} repeat(s) each, {result.options.num_predict} tokens per request)"
    )
    console.print(levels_table(title, result.levels))


def render_level_rows(rows: list[dict[str, Any]]) -> str:
    from provision.cli.render_levels import level_rows_table

    console = _console(200)
    console.print(level_rows_table(rows))
    return _text(console)


def _runs_table(result: ProbeResult) -> Table:
    table = Table(
        title=f"{result.options.model} on {result.vm}: runs",
        title_justify="left",
        header_style="bold",
    )
    for name in (
        "run",
        "load",
        "eval tok/s",
        "prompt tok/s",
        "TTFT s",
        "load s",
        "peak used",
        "peak RSS",
        "peak load",
        "busiest core %",
        "result",
    ):
        table.add_column(
            name,
            justify="left" if name in ("run", "load", "result") else "right",
            no_wrap=name == "run",
        )
    for run in result.runs:
        table.add_row(
            *_run_cells(run, result.options.num_predict), style="dim" if run.warmup else None
        )
    return table


def _run_cells(run: RunResult, num_predict: int) -> list[str]:
    label = f"{run.index + 1}" + (" (warm-up)" if run.warmup else "")
    outcome = "ok" if run.ok else ("OOM-killed" if run.oom_likely else f"failed: {run.error}")
    if run.ended_early(num_predict):
        outcome = f"ok, EOS at {run.metrics.eval_count}/{num_predict}"
    return [
        label,
        run.load_kind or "—",
        _num(run.eval_tps, 2),
        _num(run.prompt_tps, 1),
        _num(run.ttft_s, 3),
        _num(run.load_s, 3),
        _size(run.peaks.peak_mem_used),
        _size(run.peaks.peak_rss),
        _num(run.peaks.peak_load1, 2),
        _num(run.peaks.peak_busiest_core_pct, 0),
        outcome,
    ]


_SUMMARY_ROWS = (
    ("eval tok/s", "eval_tps", lambda v: _num(v, 2)),
    ("prompt tok/s", "prompt_tps", lambda v: _num(v, 1)),
    ("TTFT s", "ttft_s", lambda v: _num(v, 3)),
    ("load s (cold)", "load_s_cold", lambda v: _num(v, 3)),
    ("load s (warm)", "load_s_warm", lambda v: _num(v, 3)),
    ("peak memory used", "peak_mem_used", _size),
    ("peak Ollama RSS", "peak_rss", _size),
    ("peak load (1 min)", "peak_load1", lambda v: _num(v, 2)),
)


def _summary_table(result: ProbeResult) -> Table:
    summary = result.summary
    counted = sum(1 for r in result.measured if r.ok)
    table = Table(
        title=f"summary of {counted} measured run(s) (warm-up not counted)",
        title_justify="left",
        header_style="bold",
    )
    for name in ("metric", "median", "± 95 % CI", "min", "max"):
        table.add_column(name, justify="left" if name == "metric" else "right")
    for label, key, fmt in _SUMMARY_ROWS:
        value: Stat | None = summary[key]
        if value is None:
            empty = {"load_s_cold": "no cold run", "load_s_warm": "no warm run"}
            table.add_row(label, empty.get(key, "not reported"), "", "", "")
        else:
            half = value.half_width
            spread = "n < 6" if half is None else f"± {fmt(half)}"
            table.add_row(label, fmt(value.median), spread, fmt(value.min), fmt(value.max))
    if result.options.runs_auto:
        table.caption = result.precision_note()
    return table


def render_results(rows: list[dict[str, Any]]) -> str:
    console = _console(160)
    table = Table(title="kept probe runs", title_justify="left", header_style="bold")
    for name in (
        "probe",
        "vm",
        "shape",
        "node",
        "model",
        "when (UTC)",
        "run",
        "eval tok/s",
        "prompt tok/s",
        "TTFT s",
        "load s",
        "peak used",
        "peak RSS",
        "result",
    ):
        table.add_column(
            name,
            justify="right"
            if "/" in name or name.endswith(" s") or name.startswith("peak")
            else "left",
            no_wrap=name in ("shape", "when (UTC)"),
        )
    for row in rows:
        shape = f"{row['cores']}c/{(row['memory_mib'] or 0) / 1024:g}G/{row['cpu_type']}"
        outcome = "ok" if row["ok"] else ("OOM" if row["oom"] else f"failed: {row['error']}")
        table.add_row(
            str(row["probe_id"]),
            row["vm_name"],
            shape,
            row["node"] or "—",
            row["model"],
            str(row["started_at"] or "")[:16].replace("T", " "),
            str(row["run_index"] + 1),
            _num(row["eval_tps"], 2),
            _num(row["prompt_tps"], 1),
            _num(row["ttft_s"], 3),
            _num(row["load_s"], 3),
            _size(row["peak_mem_used_bytes"]),
            _size(row["peak_rss_bytes"]),
            Text(outcome, style="" if row["ok"] else "red"),
        )
    console.print(table)
    return _text(console)
