"""labctl's command line: parsing and rendering only; the work lives in the library."""

from __future__ import annotations

import sys
from collections.abc import Sequence

import click

from provision import __version__
from provision.cli.app import AppContext
from provision.cli.errors import click_exit_code, report_error
from provision.errors import EXIT_CODE_HELP

_EPILOG = "Exit codes: " + "; ".join(f"{int(c)} {h}" for c, h in EXIT_CODE_HELP.items())


@click.group(context_settings={"help_option_names": ["-h", "--help"]}, epilog=_EPILOG)
@click.option("--config", "config_path", metavar="FILE", envvar="LABCTL_CONFIG",
              help="lab file (default: ./labctl.toml)")
@click.option("--json", "json_output", is_flag=True, help="print one JSON document on stdout")
@click.option("-v", "--verbose", "verbosity", count=True, help="more detail (-vv: debug)")
@click.option("-q", "--quiet", is_flag=True, help="no progress output")
@click.option("--state-dir", metavar="DIR", envvar="LABCTL_STATE_DIR",
              help="labctl's state (default: $XDG_STATE_HOME/labctl)")
@click.version_option(__version__, "--version", prog_name="labctl")
@click.pass_context
def cli(ctx: click.Context, config_path: str | None, json_output: bool, verbosity: int,
        quiet: bool, state_dir: str | None) -> None:
    """Find the smallest Proxmox VE VM that runs a small language model on CPU."""
    ctx.obj = AppContext(config_path=config_path, json_output=json_output,
                         verbosity=verbosity, quiet=quiet, state_dir_override=state_dir)


def _register_commands() -> None:
    # Each module adds its commands to `cli`; imported here so `--help` lists them all.
    from provision.cli import lifecycle, probe, sim, sweep  # noqa: F401


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: run the CLI and map every outcome to an exit code."""
    _register_commands()
    args = list(sys.argv[1:] if argv is None else argv)
    verbosity = sum(a.count("v") for a in args if a.startswith("-v") and set(a[1:]) == {"v"})
    try:
        cli.main(args=args, prog_name="labctl", standalone_mode=False)
    except click.exceptions.Exit as done:
        return int(done.exit_code)
    except click.Abort:
        click.echo("aborted", err=True)
        return 130
    except click.ClickException as error:
        error.show()
        return click_exit_code(error)
    except (Exception, KeyboardInterrupt) as error:  # noqa: BLE001 - the one mapping point
        return report_error(error, verbosity=verbosity)
    return 0
