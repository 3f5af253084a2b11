"""`labctl init`: write labctl.toml, then check the connection and the template.

The token secret never comes from the command line, where `ps` and the shell history would show
it: init asks for it without echo on a terminal, reads it from stdin (--token-secret-stdin), or
stores a command that prints it (--token-secret-cmd, the lab file's token_secret_cmd).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import click

from provision.cli import cli
from provision.cli.app import AppContext, pass_app
from provision.errors import ConfigError, UsageError

_INIT_TEMPLATE = """\
# labctl lab file. Every key: `labctl --help` and the README's config reference.
# Environment variables override keys: LABCTL_<SECTION>_<KEY>, e.g. LABCTL_PROXMOX_TOKEN_SECRET.

[proxmox]
host = {host}
port = {port}
{node_line}
# API token (Datacenter > Permissions > API Tokens), as USER@REALM!TOKENNAME.
token_id = {token_id}
{secret_line}
# TLS: pin the SHA-256 of the node's certificate (`pvenode cert info` on the host shows it),
# the safe answer to Proxmox's self-signed certificates. Or verify = true (+ ca_bundle).
{tls_lines}

[template]
name = {template}          # template VM to clone: name or VMID
storage = {storage}      # where full clones (--full) go
bridge = {bridge}            # bridge of the VM's first NIC

[ssh]
user = {ssh_user}              # cloud-init user labctl creates and logs in as
key = {ssh_key}   # private key; its .pub goes to cloud-init

[network]
ip = "dhcp"                  # or a CIDR like "192.168.1.50/24" (then set gateway)
# gateway = "192.168.1.1"
# nameserver = "192.168.1.1"

[defaults]
cores = 4
ram = "8G"
cpu_type = "host"            # keeps AVX2 visible to llama.cpp (x86-64-v2-AES hides it)

# VMs of this lab: `labctl up` with no name brings each to its shape.
# [vm.gemma]
# cores = 8
# ram = "16G"
"""


def _toml_str(value: str) -> str:
    """A TOML basic string: JSON's escapes are TOML's, control characters included."""
    return json.dumps(value, ensure_ascii=False)


_SECRET_ON_COMMAND_LINE = (
    "--token-secret no longer takes the secret on the command line, where ps and the shell "
    "history show it: pipe it in with --token-secret-stdin, store a command that prints it with "
    "--token-secret-cmd, or leave both out to be asked on the terminal"
)


@cli.command()
@click.option("--host", prompt="Proxmox host", help="PVE API host name or address")
@click.option("--port", default=8006, show_default=True, type=int)
@click.option(
    "--token-id", prompt="API token id (USER@REALM!NAME)", help="API token id, e.g. root@pam!labctl"
)
@click.option(
    "--token-secret-stdin",
    is_flag=True,
    help="read the token secret from stdin (its first line) and store it in the file "
    "(mode 600). Without this or --token-secret-cmd, init asks on a terminal "
    "(input hidden; empty: set LABCTL_PROXMOX_TOKEN_SECRET later)",
)
@click.option(
    "--token-secret-cmd",
    metavar="COMMAND",
    default=None,
    help="store a command that prints the token secret, e.g. 'pass show pve/labctl'",
)
@click.option("--token-secret", "secret_argument", hidden=True, default=None)
@click.option("--fingerprint", default=None, help="SHA-256 of the server certificate to pin")
@click.option(
    "--verify/--no-verify",
    default=None,
    help="verify the certificate against CAs instead of pinning",
)
@click.option(
    "--template", default="ubuntu-2404-cloud", show_default=True, help="template VM: name or VMID"
)
@click.option("--node", default="", help="node for new VMs (default: most free RAM)")
@click.option("--storage", default="local-lvm", show_default=True)
@click.option("--bridge", default="vmbr0", show_default=True)
@click.option("--ssh-user", default="ubuntu", show_default=True)
@click.option("--ssh-key", default="~/.ssh/id_ed25519", show_default=True)
@click.option("--force", is_flag=True, help="overwrite an existing lab file")
@click.option("--no-check", is_flag=True, help="only write the file")
@pass_app
def init(
    app: AppContext,
    host: str,
    port: int,
    token_id: str,
    token_secret_stdin: bool,
    token_secret_cmd: str | None,
    secret_argument: str | None,
    fingerprint: str | None,
    verify: bool | None,
    template: str,
    node: str,
    storage: str,
    bridge: str,
    ssh_user: str,
    ssh_key: str,
    force: bool,
    no_check: bool,
) -> None:
    """Write labctl.toml, then check the connection and that the template exists.

    The token secret is asked for on a terminal (input hidden), read from stdin with
    --token-secret-stdin, or left to a command with --token-secret-cmd; never an argument.
    """
    if secret_argument is not None:
        raise UsageError(_SECRET_ON_COMMAND_LINE)
    if token_secret_stdin and token_secret_cmd:
        raise UsageError("give --token-secret-stdin or --token-secret-cmd, not both")
    path = Path(app.config_path or "labctl.toml")
    if path.exists() and not force:
        raise UsageError(f"{path} exists; use --force to overwrite it")
    tls = _tls_lines(fingerprint, verify)
    token_secret = _read_token_secret(
        from_stdin=token_secret_stdin, asked=not token_secret_cmd and sys.stdin.isatty()
    )
    text = _INIT_TEMPLATE.format(
        host=_toml_str(host),
        port=port,
        node_line=f"node = {_toml_str(node)}"
        if node
        else '# node = "pve"             # default: the online node with most free RAM',
        token_id=_toml_str(token_id),
        secret_line=_secret_lines(token_secret, token_secret_cmd),
        tls_lines=tls,
        template=_toml_str(template),
        storage=_toml_str(storage),
        bridge=_toml_str(bridge),
        ssh_user=_toml_str(ssh_user),
        ssh_key=_toml_str(ssh_key),
    )
    _write_private(path, text, secret=bool(token_secret))
    app.say(f"wrote {path}" + (" (mode 600: it holds the token secret)" if token_secret else ""))
    result: dict[str, Any] = {"path": str(path), "checked": False}
    if not no_check:
        result.update(_check_connection(app, path))
    app.emit(result, None)


def _tls_lines(fingerprint: str | None, verify: bool | None) -> str:
    if fingerprint:
        from provision.pve.client import format_fingerprint, normalize_fingerprint

        return f"fingerprint = {_toml_str(format_fingerprint(normalize_fingerprint(fingerprint)))}"
    if verify is False:
        raise UsageError(
            "--no-verify without --fingerprint would trust any server; "
            "pin the certificate with --fingerprint"
        )
    return (
        'verify = true\n# ca_bundle = "/etc/ssl/certs/pve-root-ca.pem"\n# fingerprint = "AB:CD:..."'
    )


def _read_token_secret(*, from_stdin: bool, asked: bool) -> str:
    """The secret from stdin's first line, or typed at a hidden prompt; "" when not given."""
    if from_stdin:
        secret = sys.stdin.readline().strip()
        if not secret:
            raise UsageError(
                "--token-secret-stdin: stdin held no secret (give it on the first "
                "line, e.g. `pass show pve/labctl | labctl init ...`)"
            )
        return secret
    if asked:
        typed: str = click.prompt(
            "API token secret (input hidden; empty: set LABCTL_PROXMOX_TOKEN_SECRET later)",
            default="",
            show_default=False,
            hide_input=True,
            err=True,
        )
        return typed.strip()
    return ""


def _secret_lines(token_secret: str, command: str | None) -> str:
    if token_secret:
        return f"token_secret = {_toml_str(token_secret)}"
    if command:
        return f"token_secret_cmd = {_toml_str(command)}"
    return (
        "# token_secret: prefer LABCTL_PROXMOX_TOKEN_SECRET or token_secret_cmd\n"
        '# token_secret_cmd = "pass show pve/labctl"'
    )


def _write_private(path: Path, text: str, *, secret: bool) -> None:
    mode = 0o600 if secret else 0o644
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def _check_connection(app: AppContext, path: Path) -> dict[str, Any]:
    from provision.config import load_config
    from provision.pve.client import PveClient

    app.config_path = str(path)
    config = load_config(str(path))
    client = PveClient.from_config(config)
    version = client.get("version") or {}
    resources = client.get("cluster/resources", type="vm") or []
    wanted = str(config.get("template.name"))
    found = [
        r
        for r in resources
        if (wanted.isdigit() and int(r.get("vmid", 0)) == int(wanted)) or r.get("name") == wanted
    ]
    app.say(f"connected: Proxmox VE {version.get('version', '?')}")
    if not found:
        raise ConfigError(
            f"connected, but template {wanted!r} was not found on the cluster",
            hint=f"edit template.name in {path}",
        )
    entry = found[0]
    kind = "template" if int(entry.get("template", 0) or 0) else "VM (not a template)"
    app.say(f"template {wanted}: {kind} {entry.get('vmid')} on {entry.get('node')}")
    return {
        "checked": True,
        "pve_version": version.get("version"),
        "template": {
            "vmid": entry.get("vmid"),
            "node": entry.get("node"),
            "is_template": bool(int(entry.get("template", 0) or 0)),
        },
    }
