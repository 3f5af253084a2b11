"""`labctl template create`: parsing and rendering; the work is in provision.pve.template."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from provision.cli import cli
from provision.cli.app import AppContext, pass_app

if TYPE_CHECKING:
    from provision.pve.template import TemplateResult


@cli.group()
def template() -> None:
    """Build the cloud-init template labctl clones."""


@template.command("create")
@click.argument("name")
@click.option(
    "--image",
    default="ubuntu-24.04",
    show_default=True,
    help="ubuntu-24.04 (the noble cloud image) or an http(s) URL with a SHA256SUMS beside it",
)
@click.option("--flavor", default="server", show_default=True, help="server or kubuntu")
@click.option("--storage", help="storage of the template's disks (default: template.storage)")
@click.option("--ip", help="static CIDR for the one boot that builds it, e.g. 192.168.1.50/24")
@click.option("--gateway", help="gateway for --ip")
@pass_app
def create(
    app: AppContext,
    name: str,
    image: str,
    flavor: str,
    storage: str | None,
    ip: str | None,
    gateway: str | None,
) -> None:
    """Download IMAGE to Proxmox VE, boot it once, install the guest agent, make it template NAME.

    Run again with the same NAME, it checks the template instead of rebuilding it.
    """
    from provision.pve.cloud_image import check_arguments, parse_request

    check_arguments(name, image, flavor=flavor, ip=ip, gateway=gateway)  # before the lab file
    request = parse_request(
        name,
        image,
        flavor=flavor,
        storage=storage or str(app.config.get("template.storage")),
        ip=ip,
        gateway=gateway,
        image_base_url=str(app.config.get("template.image_base_url")),
    )
    result = app.lab().create_template(request)
    app.emit(result.to_json(), human=_render(result))


def _render(result: TemplateResult) -> str:
    verb = "created" if result.created else "already there, checked"
    lines = [f"template {result.name} (vmid {result.vmid} on {result.node}): {verb}"]
    lines.append("checks: " + ", ".join(result.checks))
    if result.host_key_fingerprint:
        key = result.host_key_fingerprint
        lines.append(f"first-boot SSH host key (trusted on first use): {key}")
    return "\n".join(lines)
