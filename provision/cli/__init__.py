"""labctl's command line: parsing and rendering only; the work lives in the library."""

from __future__ import annotations

import importlib
import itertools
import sys
from collections.abc import Sequence

import click

from provision import __version__
from provision.cli.app import AppContext
from provision.cli.errors import click_exit_code, report_error
from provision.errors import EXIT_CODE_HELP

_EPILOG = "Exit codes: " + "; ".join(f"{int(c)} {h}" for c, h in EXIT_CODE_HELP.items())

# command -> (module under provision.cli that defines it, one-line summary for `labctl --help`).
# Modules are imported only when their command runs, so `labctl --help` stays fast: importing
# them all (rich, proxmoxer, the probe) would triple its start-up time.
COMMANDS: dict[str, tuple[str, str]] = {
    "init": ("init", "Write labctl.toml, then check the connection and the template."),
    "doctor": ("doctor", "Check the Proxmox VE node, the template and the lab file for labctl."),
    "up": ("lifecycle", "Create or reconcile a VM at a shape, until SSH answers; then deploy."),
    "ls": ("lifecycle", "List labctl's VMs: name, vmid, node, status, shape, IP, uptime."),
    "resize": ("lifecycle", "Change the cores / RAM / cpu type of a VM."),
    "down": ("lifecycle", "Shut down and destroy a VM that labctl created."),
    "deploy": ("deploy", "Install Ollama and pull the models on a VM with Ansible."),
    "probe": ("probe", "Measure tokens/s, time to first token, load and memory inside a VM."),
    "results": ("probe", "Show the probe runs kept in labctl's results database."),
    "sweep": ("sweep", "Find the smallest shape of a VM that meets every target."),
    "report": ("sweep", "Show or write the report of a past sweep."),
    "sim": ("sim", "The built-in Proxmox VE simulator."),
    "template": ("template", "Build the cloud-init template from a cloud image (Ubuntu 24.04)."),
}


class LazyGroup(click.Group):
    """A group whose commands are imported on first use (Click's lazy-loading pattern)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(COMMANDS) | set(self.commands))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in COMMANDS:
            importlib.import_module(f"provision.cli.{COMMANDS[cmd_name][0]}")
        return self.commands.get(cmd_name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, COMMANDS[name][1]) for name in sorted(COMMANDS)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(
    cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]}, epilog=_EPILOG
)
@click.option(
    "--config",
    "config_path",
    metavar="FILE",
    envvar="LABCTL_CONFIG",
    help="lab file (default: ./labctl.toml)",
)
@click.option("--json", "json_output", is_flag=True, help="print one JSON document on stdout")
@click.option("-v", "--verbose", "verbosity", count=True, help="more detail (-vv: debug)")
@click.option("-q", "--quiet", is_flag=True, help="no progress output")
@click.option(
    "--state-dir",
    metavar="DIR",
    envvar="LABCTL_STATE_DIR",
    help="labctl's state (default: $XDG_STATE_HOME/labctl)",
)
@click.version_option(__version__, "--version", prog_name="labctl")
@click.pass_context
def cli(
    ctx: click.Context,
    config_path: str | None,
    json_output: bool,
    verbosity: int,
    quiet: bool,
    state_dir: str | None,
) -> None:
    """Find the smallest Proxmox VE VM that runs a small language model on CPU."""
    from provision.cli.log_setup import configure_logging, reset_logging
    from provision.cli.signals import interrupt_on_sigterm

    app = ctx.ensure_object(AppContext)  # main() made it, to find the state dir after a crash
    app.config_path, app.json_output, app.verbosity = config_path, json_output, verbosity
    app.quiet, app.state_dir_override = quiet, state_dir
    # Every command, whichever module defines it: -v/-vv log lines (secrets redacted) and
    # SIGTERM handled like Ctrl-C; both undone when the command ends.
    configure_logging(verbosity)
    ctx.call_on_close(reset_logging)
    ctx.call_on_close(interrupt_on_sigterm())


def _check_negative_wait(args: list[str]) -> None:
    """`--wait -1`: Click reads a value starting with '-' after an option whose value is
    optional as an unknown option '-1' (a multi-line usage error); check it as --wait would."""
    for option, value in itertools.pairwise(args):
        if option == "--wait" and value[:1] == "-" and value[1:2].isdigit():
            from provision.pve.lease import parse_wait

            parse_wait(value)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: run the CLI and map every outcome to an exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    verbosity = sum(a.count("v") for a in args if a.startswith("-v") and set(a[1:]) == {"v"})
    app = AppContext()
    try:
        _check_negative_wait(args)
        cli.main(args=args, prog_name="labctl", standalone_mode=False, obj=app)
    except click.exceptions.Exit as done:
        return int(done.exit_code)
    except click.Abort:
        click.echo("aborted", err=True)
        return 130
    except click.ClickException as error:
        error.show()
        return click_exit_code(error)
    except (Exception, KeyboardInterrupt) as error:  # noqa: BLE001 - the one mapping point
        return report_error(error, verbosity=verbosity, crash_dir=lambda: app.state_dir / "crash")
    return 0
