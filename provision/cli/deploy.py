"""`labctl deploy NAME`: (re-)run the Ansible playbook that installs Ollama and pulls models."""

from __future__ import annotations

import click

from provision.cli import cli
from provision.cli.app import AppContext, pass_app, wait_option


@cli.command()
@click.argument("name")
@click.option(
    "--model",
    "models",
    multiple=True,
    metavar="MODEL",
    help="model to have on the VM (repeatable; default: the lab file's)",
)
@click.option("--ollama-version", metavar="X.Y.Z", help="Ollama release to install")
@click.option("--check", is_flag=True, help="Ansible check mode: show what would change")
@wait_option
@pass_app
def deploy(
    app: AppContext,
    name: str,
    models: tuple[str, ...],
    ollama_version: str | None,
    check: bool,
    wait: str | None,
) -> None:
    """Install Ollama on VM NAME and pull its models (idempotent: a re-run changes nothing)."""
    from provision.deploy import deploy_guests

    lab = app.lab()
    with app.hold(lab, name, f"deploy {name}", wait):
        address = lab.guest(name)  # a labctl VM, running, its host key pinned
        app.reporter.stage("check" if check else "deploy")
        result = deploy_guests(
            app.config,
            app.state_dir,
            [address],
            reporter=app.reporter,
            models=models or None,
            ollama_version=ollama_version,
            check=check,
        )
    app.emit(result.to_json(), _human(result.to_json()))


def _human(summary: dict[str, object]) -> str:
    changes = summary["changes"]
    assert isinstance(changes, list)
    verb = "would change" if summary["check"] else "changed"
    lines = [f"{verb}: {len(changes)} task(s) in {summary['duration_s']}s"]
    lines.extend(f"  {c['host']}: {c['task']}" for c in changes)
    lines.append(f"artifacts: {summary['artifact_dir']}")
    return "\n".join(lines)
