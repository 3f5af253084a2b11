"""Deploy from labctl's own settings: the lab file's [deploy] and [ssh], the state dir's pins.

The glue between `labctl up` / `labctl deploy` and deploy(): which key, which pinned
known_hosts, which models and Ollama version, which mirror.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from provision.config import LabConfig
from provision.deploy.inventory import DeployHost, SshSettings
from provision.deploy.results import DeployResult
from provision.deploy.runner import DeployOptions, deploy
from provision.errors import DeployError
from provision.guest.types import GuestAddress
from provision.progress import Reporter


def ssh_settings(config: LabConfig, state_dir: Path) -> SshSettings:
    """labctl's key and the known_hosts where `up` pinned each VM's host key."""
    return SshSettings(
        private_key=Path(str(config.get("ssh.key"))).expanduser(),
        known_hosts=state_dir / "known_hosts",
    )


def deploy_options(
    config: LabConfig,
    *,
    vm_name: str | None = None,
    models: Sequence[str] | None = None,
    ollama_version: str | None = None,
    check: bool = False,
) -> DeployOptions:
    """[deploy] of the lab file, the VM's own `models` if declared, then command-line values."""
    chosen = models
    if not chosen and vm_name is not None:
        spec = config.vm_spec(vm_name)
        chosen = spec.models if spec is not None else None
    if not chosen:
        chosen = tuple(config.get("deploy.models"))
    extra = dict(config.get("deploy.extra_vars") or {})
    return DeployOptions(
        models=tuple(chosen),
        ollama_version=ollama_version or str(config.get("deploy.ollama_version") or "") or None,
        download_base_url=str(config.get("deploy.ollama_base_url") or "") or None,
        role_vars=extra,
        check=check,
    )


def host_for(address: GuestAddress) -> DeployHost:
    return DeployHost(
        name=address.name or address.host,
        address=address.host,
        user=address.user,
        port=address.port,
    )


def deploy_guests(
    config: LabConfig,
    state_dir: Path,
    addresses: Sequence[GuestAddress],
    *,
    reporter: Reporter,
    models: Sequence[str] | None = None,
    ollama_version: str | None = None,
    check: bool = False,
    run_id: str | None = None,
) -> DeployResult:
    """Run the playbook on these guests (GuestAddress from Lab.guest(), key already pinned)."""
    name = addresses[0].name if len(addresses) == 1 else None
    options = deploy_options(
        config, vm_name=name, models=models, ollama_version=ollama_version, check=check
    )
    return deploy(
        [host_for(a) for a in addresses],
        ssh_settings(config, state_dir),
        state_dir=state_dir,
        options=options,
        reporter=reporter,
        run_id=run_id,
    )


def deploy_after_up(app: Any, info: Any) -> DeployResult:
    """`labctl up` -> deploy: app is the CLI's AppContext (config, state_dir, reporter), info the
    VmInfo `up` returned (running, its host key pinned in <state>/known_hosts)."""
    if not info.ip:
        raise DeployError(
            f"VM {info.name} has no address to deploy to",
            hint=f"labctl deploy {info.name} once the guest agent reports one",
        )
    config: LabConfig = app.config
    address = GuestAddress(
        host=str(info.ip),
        user=str(config.get("ssh.user")),
        key_path=Path(str(config.get("ssh.key"))).expanduser(),
        known_hosts=app.state_dir / "known_hosts",
        name=str(info.name),
    )
    return deploy_guests(config, app.state_dir, [address], reporter=app.reporter)
