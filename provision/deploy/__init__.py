"""Deploy Ollama and the models onto VMs with Ansible (playbooks/site.yml via ansible-runner)."""

from provision.deploy.inventory import DeployHost, SshSettings
from provision.deploy.lab import deploy_after_up, deploy_guests, deploy_options, ssh_settings
from provision.deploy.results import DeployResult, HostStats, TaskOutcome
from provision.deploy.runner import (
    DeployOptions,
    default_inventory_path,
    deploy,
    forget_hosts,
    new_run_id,
)

__all__ = [
    "DeployHost",
    "DeployOptions",
    "DeployResult",
    "HostStats",
    "SshSettings",
    "TaskOutcome",
    "default_inventory_path",
    "deploy",
    "deploy_after_up",
    "deploy_guests",
    "deploy_options",
    "forget_hosts",
    "new_run_id",
    "ssh_settings",
]
