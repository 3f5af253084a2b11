"""`labctl sim serve`: the built-in Proxmox VE simulator."""

from __future__ import annotations

from pathlib import Path

import click

from provision.cli import cli


@cli.group()
def sim() -> None:
    """The built-in Proxmox VE simulator (for trying labctl without a Proxmox host)."""


@sim.command("serve")
@click.option("--port", default=8006, show_default=True, type=click.IntRange(0, 65535))
@click.option("--host", default="127.0.0.1", show_default=True, help="listen address")
@click.option("--state", "state", default="./sim-state", show_default=True,
              type=click.Path(file_okay=False, path_type=Path), help="simulator state directory")
@click.option("--nodes", default=1, show_default=True, type=click.IntRange(1, 16))
@click.option("--guests", type=click.Choice(["container", "none"]), default="container",
              show_default=True, help="back VMs with real container guests, or API only")
def serve(port: int, host: str, state: Path, nodes: int, guests: str) -> None:
    """Serve the PVE API over HTTPS until Ctrl-C."""
    from provision.sim.server import serve as run_server

    run_server(state_dir=state, host=host, port=port, nodes=nodes, guests=guests)
