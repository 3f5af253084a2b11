"""`labctl sweep` and `labctl report`: find the minimum VM shape, show any past sweep."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from provision.cli import cli
from provision.cli.app import AppContext, pass_app, wait_option
from provision.cli.params import runs_options
from provision.errors import SweepError, UsageError

if TYPE_CHECKING:
    from provision.report.model import SweepReport


@cli.command()
@click.argument("name")
@click.option("--cores", metavar="LIST", required=True, help="core counts: 1,2,4,8 or 2-12")
@click.option("--ram", metavar="LIST", required=True, help="RAM sizes: 2G,4G,8G")
@click.option(
    "--cpu-type",
    "cpu_types",
    metavar="LIST",
    help="Proxmox cpu types to compare, e.g. host,x86-64-v2-AES (default: the VM's)",
)
@click.option("--min-tps", metavar="N", help="target: median eval tokens/s at least N")
@click.option("--max-ttft", metavar="TIME", help="target: median time to first token, e.g. 2s")
@click.option(
    "--min-free-mem",
    metavar="PCT|SIZE",
    help="target: memory free at the probe's peak, e.g. 15% (of MemTotal) or 1G",
)
@click.option(
    "--users",
    type=int,
    metavar="N",
    help="size for a service: probe each shape with 1..N users at once; the minimum serves N",
)
@click.option("--max-ttft-p95", metavar="TIME", help="with --users: p95 time to first token")
@click.option("--min-tps-per-user", metavar="N", help="with --users: eval tok/s of each user")
@click.option(
    "--strategy",
    type=click.Choice(["smart", "grid"]),
    default="smart",
    show_default=True,
    help="smart: bisect using the monotone structure; grid: all",
)
@click.option(
    "--parallel",
    type=click.IntRange(1, 8),
    default=1,
    show_default=True,
    help="measure on N VMs at once: clones NAME-2..NAME-N (on other nodes when the "
    "template can go there), deploys them like NAME, removes them at the end",
)
@click.option(
    "--keep-clones",
    is_flag=True,
    help="with --parallel N >= 2 (refused without): keep the clones (put back to "
    "NAME's shape) after the sweep",
)
@click.option("--fresh", is_flag=True, help="ignore earlier results of this same sweep")
@click.option("--keep-shape", is_flag=True, help="leave the VM in the last shape probed")
@click.option("--allow-overcommit", is_flag=True, help="allow shapes larger than the node")
@click.option("--model", help="model to run (default: probe.model of the lab file)")
@runs_options("measured runs per shape")
@click.option(
    "--num-thread",
    metavar="LIST",
    help="runner thread counts to measure at each shape (auto,1,2,4; each reloads the "
    "model): a shape counts with its best",
)
@click.option("--warmup", type=click.IntRange(0, 10), help="warm-up runs per shape")
@click.option("--num-predict", type=click.IntRange(1, 1_000_000), help="tokens per run")
@click.option(
    "--prompt-file", type=click.Path(dir_okay=False, path_type=Path), help="file holding the prompt"
)
@click.option(
    "--report",
    "report_format",
    type=click.Choice(["html", "md"]),
    default="html",
    show_default=True,
    help="the report file written at the end",
)
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="report file (default: <state>/reports/SWEEP_ID/report.html)",
)
@click.option("--json", "json_flag", is_flag=True, help="print one JSON document on stdout")
@wait_option
@pass_app
def sweep(
    app: AppContext,
    name: str,
    cores: str,
    ram: str,
    cpu_types: str | None,
    min_tps: str | None,
    max_ttft: str | None,
    min_free_mem: str | None,
    users: int | None,
    max_ttft_p95: str | None,
    min_tps_per_user: str | None,
    strategy: str,
    parallel: int,
    keep_clones: bool,
    fresh: bool,
    keep_shape: bool,
    allow_overcommit: bool,
    model: str | None,
    runs: int | str | None,
    max_runs: int | None,
    num_thread: str | None,
    warmup: int | None,
    num_predict: int | None,
    prompt_file: Path | None,
    report_format: str,
    out: Path | None,
    json_flag: bool,
    wait: str | None,
) -> None:
    """Find the smallest shape of VM NAME that meets every target.

    Each shape: resize (reboot), wait for SSH, probe, record. Results are kept as they come: the
    same command run again resumes. Exit 8 when no shape meets the targets or probes failed.

    --parallel N clones NAME-2..NAME-N for the sweep, deploys them like NAME and splits the
    shapes among the N VMs. The clones are removed when the sweep ends (done, failed or Ctrl-C;
    a killed sweep run again reuses them); --keep-clones keeps them, and `labctl down NAME-2`
    removes one later. A VM named NAME-2 that you made yourself is used but never removed.
    """
    from provision.probe.options import check_level_bounds, options_from_config
    from provision.probe.record import identity_options, kept_options
    from provision.pve.lease import parse_wait
    from provision.sweep.loop import SweepPlan, check_space_fits
    from provision.sweep.model import parse_space, parse_targets
    from provision.sweep.service import parse_service, with_service_levels
    from provision.sweep.session import SweepSession, running_vm

    app.json_output = app.json_output or json_flag
    # Everything the user typed is checked before the VM is touched.
    if keep_clones and parallel < 2:
        raise UsageError(
            "--keep-clones needs --parallel N (N >= 2): only a parallel sweep makes clones to keep"
        )
    wait_s = parse_wait(wait)
    space = parse_space(cores, ram, cpu_types or "host")
    service = parse_service(users, max_ttft_p95, min_tps_per_user)
    targets = parse_targets(min_tps, max_ttft, min_free_mem, space, service)
    options = options_from_config(
        app.config,
        model=model,
        runs=runs,
        max_runs=max_runs,
        warmup=warmup,
        num_predict=num_predict,
        prompt_file=prompt_file,
        num_thread=num_thread,
    )
    options = with_service_levels(options, service)
    check_level_bounds(options, max(space.cores), max(space.ram_mib))
    lab = app.lab()
    info = running_vm(lab, name)
    if cpu_types is None:
        space = parse_space(cores, ram, info.shape.cpu_type)
    if not allow_overcommit:
        check_space_fits(space, lab.node_capacity(info.node), info.shape)
    plan = SweepPlan(
        vm=name,
        space=space,
        targets=targets,
        strategy=strategy,
        probe_options=identity_options(options),
        fresh=fresh,
        keep_shape=keep_shape,
    )
    session = SweepSession(
        app.config,
        app.state_dir,
        lab,
        options,
        kept_options(options),
        app.reporter,
        notify=app.say,
        parallel=parallel,
        keep_clones=keep_clones,
        allow_overcommit=allow_overcommit,
        wait_s=wait_s,
    )
    done = session.run(info, plan)
    _finish(app, done.store, done.sweep_id, report_format, out, done.clones.to_json())


def _finish(
    app: AppContext,
    store: Any,
    sweep_id: str,
    report_format: str,
    out: Path | None,
    clones: dict[str, list[str]],
) -> None:
    from provision.report.export import to_json
    from provision.report.files import default_path, write_report
    from provision.report.model import report_from_store
    from provision.report.table import render_table

    report = report_from_store(store, sweep_id)
    files = write_report(
        report, out or default_path(app.state_dir, sweep_id, report_format), report_format
    )
    document = to_json(report)
    document["report_files"] = [str(f) for f in files]
    document["clones"] = clones
    app.emit(document, human=render_table(report, color=sys.stdout.isatty()))
    app.say(f"report: {files[0]}")
    _raise_for_outcome(report)


def _raise_for_outcome(report: SweepReport) -> None:
    """Exit 8 when the sweep gives no answer or one that failed probes may have hidden."""
    result = report.result
    if result.failed:
        first = result.failed[0]
        raise SweepError(
            f"{len(result.failed)} shape(s) could not be probed ({first.shape.label}:"
            f" {first.error}); the same command again retries them"
        )
    if result.minimum is None:
        raise SweepError(report.recommendation)


@cli.command()
@click.argument("sweep_id", required=False)
@click.option("--html", "fmt", flag_value="html", help="self-contained HTML (plot embedded)")
@click.option("--md", "fmt", flag_value="md", help="markdown, with the plot as a PNG beside it")
@click.option("--png", "fmt", flag_value="png", help="the plot alone")
@click.option("--csv", "fmt", flag_value="csv", help="one row per shape")
@click.option("--json", "fmt", flag_value="json", help="one JSON document")
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="write here (html/md/png default: <state>/reports/SWEEP_ID/)",
)
@click.option("--list", "list_sweeps", is_flag=True, help="list the sweeps kept")
@pass_app
def report(
    app: AppContext, sweep_id: str | None, fmt: str | None, out: Path | None, list_sweeps: bool
) -> None:
    """Show or write the report of sweep SWEEP_ID (any unique prefix; default: the latest).

    With no SWEEP_ID and no format, list the sweeps kept.
    """
    from provision.report.export import to_csv, to_json
    from provision.report.files import default_path, write_report
    from provision.report.model import report_from_store
    from provision.report.table import render_table
    from provision.sweep.db import open_store

    store = open_store(app.state_dir)
    if list_sweeps or (sweep_id is None and fmt is None):
        _list(app, store)
        return
    if sweep_id is None:  # a format without an id: the latest sweep
        kept = store.all()
        if not kept:
            raise UsageError("no sweeps kept yet: run `labctl sweep NAME --cores ... --ram ...`")
        sweep_id = kept[-1].id
    the_report = report_from_store(store, sweep_id)
    if fmt in ("html", "md", "png") or (fmt is not None and out is not None):
        assert fmt is not None
        path = out or default_path(app.state_dir, the_report.sweep_id, fmt)
        files = write_report(the_report, path, fmt)
        app.emit({"report_files": [str(f) for f in files]}, human=str(files[0]))
    elif fmt == "csv":
        click.echo(to_csv(the_report), nl=False)
    elif fmt == "json" or app.json_output:
        app.json_output = True
        app.emit(to_json(the_report))
    else:
        click.echo(render_table(the_report, color=sys.stdout.isatty()))


def _list(app: AppContext, store: Any) -> None:
    from provision.report.model import report_from_store

    reports = [report_from_store(store, record.id) for record in store.all()]
    rows = [
        {
            "id": r.sweep_id,
            "vm": r.vm,
            "status": r.status,
            "strategy": r.strategy,
            "probes": r.probes,
            "created_at": r.created_at,
            "recommendation": r.recommendation,
        }
        for r in reports
    ]
    if not rows and not app.json_output:
        app.say("no sweeps kept yet: run `labctl sweep NAME --cores ... --ram ...`")
        return
    human = "\n".join(
        f"{r['id']:<12} {r['vm']:<12} {r['status']:<11} {r['strategy']:<6} "
        f"{r['probes']:>3} probes  {r['recommendation']}"
        for r in rows
    )
    app.emit(rows, human=human)
