"""One test, two targets: a lab on a real Proxmox VE (LABCTL_TEST_PVE=path/to/labctl.toml) or
on the simulator, for the tests marked `real_pve`.

On a real host the tests use the user's lab file as it is (a copy, so labctl's state goes to the
test's own directory), create only VMs named `labctl-test-*` (labctl tags every VM it makes) and
remove every labctl-test-* VM labctl made when the module ends. On the simulator the same tests
run against container guests and the Ollama test double's mirror (tests/support/deploy_lab.py).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support.cli import CliResult, labctl

ENV = "LABCTL_TEST_PVE"
PREFIX = "labctl-test-"
PASSED_ENV = "LABCTL_PROXMOX_"  # e.g. LABCTL_PROXMOX_TOKEN_SECRET for the real host


class BorrowedBackend:
    """A session's guest backend lent to a SimServer (which closes what it owns on stop)."""

    def __init__(self, backend: Any) -> None:
        self._backend = backend

    def __getattr__(self, name: str) -> Any:
        return getattr(self._backend, name)

    def close(self) -> None:
        """The lender closes it at the end of the session."""


@dataclass
class TargetLab:
    """A lab file + state dir on one target; `real` says whether it is a real Proxmox VE."""

    config: Path
    state: Path
    real: bool

    def run(self, *args: str) -> CliResult:
        # labctl() drops LABCTL_* from the environment; a real host's secret may live there
        passed = {k: v for k, v in os.environ.items() if k.startswith(PASSED_ENV) and self.real}
        return labctl(*args, config=self.config, state=self.state, env=passed)

    @staticmethod
    def vm(name: str) -> str:
        """Every VM these tests make is called labctl-test-<name>, on both targets."""
        return PREFIX + name

    def remove_test_vms(self) -> None:
        """`labctl down` every labctl-test-* VM labctl made (labctl refuses untagged ones)."""
        listed = self.run("--json", "ls")
        if listed.code != 0:
            return
        for vm in listed.json.get("vms", []):
            if str(vm.get("name", "")).startswith(PREFIX) and vm.get("managed"):
                self.run("down", str(vm["name"]), "--yes")


def real_pve_config() -> Path | None:
    """The lab file LABCTL_TEST_PVE names, checked; None when the variable is not set."""
    value = os.environ.get(ENV, "").strip()
    if not value:
        return None
    path = Path(value).expanduser()
    if not path.is_file():
        raise RuntimeError(f"{ENV}={value}: no such lab file")
    with path.open("rb") as handle:
        tomllib.load(handle)  # a broken file fails here, not in the middle of a test
    return path


@contextlib.contextmanager
def real_pve_lab(config: Path, work: Path) -> Iterator[TargetLab]:
    """The user's lab file, copied (mode 600, it may hold a secret), with its own state dir."""
    copy = work / "labctl.toml"
    shutil.copyfile(config, copy)
    copy.chmod(0o600)
    lab = TargetLab(config=copy, state=work / "state", real=True)
    try:
        yield lab
    finally:
        lab.remove_test_vms()


def sim_config_text(mirror: Any) -> str:
    """What a user with a local mirror of the Ollama double adds to the simulator's lab file."""
    return (
        f'\n[deploy]\nollama_base_url = "{mirror.download_base_url}"\n'
        f"extra_vars = {{ ollama_environment = {{ OLLAMA_DOUBLE_REGISTRY = "
        f'"{mirror.url}" }} }}\n'
    )
