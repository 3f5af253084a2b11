"""`labctl doctor`: one row per check of the node, the template and the lab file."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from provision.cli import cli
from provision.cli.app import AppContext, pass_app
from provision.cli.render import table
from provision.errors import DoctorFound

if TYPE_CHECKING:
    from provision.pve.doctor import Check


@cli.command()
@click.option("--json", "json_flag", is_flag=True, help="print one JSON document on stdout")
@pass_app
def doctor(app: AppContext, json_flag: bool) -> None:
    """Check the Proxmox VE node, the template and the lab file for labctl.

    Exit code 0 when no check found a problem (warnings allowed), else 3.
    """
    from provision.pve.doctor import PROBLEM, WARNING, run_checks

    app.json_output = app.json_output or json_flag
    checks = run_checks(app.config)
    problems = sum(c.status == PROBLEM for c in checks)
    warnings = sum(c.status == WARNING for c in checks)
    document = {
        "checks": [c.to_json() for c in checks],
        "problems": problems,
        "warnings": warnings,
    }
    app.emit(document, human=render_checks(checks, problems, warnings))
    if problems:
        raise DoctorFound(f"doctor found {problems} problem{'s' if problems > 1 else ''}")


def render_checks(checks: list[Check], problems: int, warnings: int) -> str:
    """A table: status, check, and what was seen (with the fix under it when there is one)."""
    rows = [["STATUS", "CHECK", "DETAIL / FIX"]]
    for check in checks:
        rows.append([check.status, check.name, check.detail])
        if check.fix:
            rows.append(["", "", f"fix: {check.fix}"])
    summary = f"{problems} problem(s), {warnings} warning(s)"
    return table(rows) + "\n" + summary
