"""The lab file (labctl.toml): one declaration per key, env overrides, secrets.

Every key is declared once in KEYS with its type, default and help; the README's reference
table is generated from it (tests/unit/test_config.py keeps the two in sync). Environment
variables override the file: LABCTL_<SECTION>_<KEY> (e.g. LABCTL_PROXMOX_TOKEN_SECRET). VMs
are declared as [vm.NAME] tables whose keys are declared in provision/config_vms.py.
"""

from __future__ import annotations

import os
import shlex
import stat
import subprocess
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from provision.config_values import RunCount, check_value
from provision.config_vms import (
    VmSpec,
    parse_vms,
    validate_vm_name,  # noqa: F401 - callers import it from here
)
from provision.errors import ConfigError
from provision.shape import (
    DEFAULT_CPU_TYPE,
    DEFAULT_DISK_GIB,
    Shape,
    parse_cores,
    parse_disk_gib,
    parse_ram,
)

DEFAULT_CONFIG_NAME = "labctl.toml"


class Secret:
    """A string that never shows itself in repr/str/logs/tracebacks."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('********')"

    __str__ = __repr__

    def __bool__(self) -> bool:
        return bool(self._value)


@dataclass(frozen=True)
class Key:
    section: str
    name: str
    type: type
    default: Any
    help: str
    secret: bool = False

    @property
    def env(self) -> str:
        return f"LABCTL_{self.section}_{self.name}".upper()

    @property
    def path(self) -> str:
        return f"{self.section}.{self.name}"


KEYS: tuple[Key, ...] = (
    Key("proxmox", "host", str, "", "Proxmox VE API host name or address"),
    Key("proxmox", "port", int, 8006, "Proxmox VE API port"),
    Key("proxmox", "node", str, "", "node for new VMs; empty = the online node with most free RAM"),
    Key("proxmox", "token_id", str, "", "API token id, e.g. root@pam!labctl (token auth)"),
    Key(
        "proxmox",
        "token_secret",
        str,
        "",
        "API token secret (prefer env or token_secret_cmd)",
        secret=True,
    ),
    Key(
        "proxmox",
        "token_secret_cmd",
        str,
        "",
        "command printing the token secret, e.g. `pass show pve/labctl`",
    ),
    Key("proxmox", "user", str, "", "user@realm for ticket (password) auth"),
    Key(
        "proxmox",
        "password",
        str,
        "",
        "password for ticket auth (prefer env or password_cmd)",
        secret=True,
    ),
    Key("proxmox", "password_cmd", str, "", "command printing the password"),
    Key("proxmox", "verify", bool, True, "verify the server's TLS certificate against CAs"),
    Key("proxmox", "ca_bundle", str, "", "CA bundle (PEM) to verify the server with"),
    Key(
        "proxmox",
        "fingerprint",
        str,
        "",
        "SHA-256 fingerprint of the server certificate to pin (Proxmox's self-signed cert)",
    ),
    Key("proxmox", "timeout", int, 30, "seconds per API request"),
    Key("template", "name", str, "ubuntu-2404-cloud", "template VM to clone: name or VMID"),
    Key("template", "storage", str, "local-lvm", "storage for full clones"),
    Key("template", "bridge", str, "vmbr0", "bridge of the VM's first NIC"),
    Key(
        "template",
        "ciupgrade",
        bool,
        False,
        "PVE's ciupgrade for new VMs: true has cloud-init upgrade all packages at first boot "
        "(PVE's default); labctl waits for cloud-init before deploying either way",
    ),
    Key(
        "template",
        "image_base_url",
        str,
        "",
        "mirror of https://cloud-images.ubuntu.com for `template create --image ubuntu-24.04`; "
        "empty = the official site",
    ),
    Key(
        "template",
        "local_debs",
        list,
        [],
        "`template create`: .deb files to install in the VM instead of qemu-guest-agent from its "
        "package mirror (offline sites, the simulator), dependencies first",
    ),
    Key("ssh", "user", str, "ubuntu", "cloud-init user labctl creates and logs in as"),
    Key("ssh", "key", str, "~/.ssh/id_ed25519", "private key; its .pub is given to cloud-init"),
    Key("network", "ip", str, "dhcp", "ipconfig0 address: dhcp or CIDR like 192.168.1.50/24"),
    Key("network", "gateway", str, "", "IPv4 gateway for a static address"),
    Key("network", "nameserver", str, "", "DNS server(s) for cloud-init"),
    Key("defaults", "cores", int, 4, "vCPUs of a VM when neither CLI nor [vm.NAME] say"),
    Key("defaults", "ram", str, "8G", "RAM of a VM when neither CLI nor [vm.NAME] say"),
    Key("defaults", "cpu_type", str, DEFAULT_CPU_TYPE, "Proxmox cpu type (host keeps AVX2)"),
    Key(
        "defaults",
        "disk",
        str,
        "",
        f"grow the boot disk to this size (grow only); empty = {DEFAULT_DISK_GIB}G for new VMs, "
        "a template disk already bigger stays",
    ),
    Key("timeouts", "clone", int, 600, "seconds to wait for a clone task"),
    Key("timeouts", "task", int, 120, "seconds to wait for other tasks"),
    Key("timeouts", "agent", int, 300, "seconds to wait for the guest agent to report an IP"),
    Key(
        "timeouts",
        "ssh",
        int,
        180,
        "seconds to wait until SSH answers, then again for cloud-init to finish",
    ),
    Key("timeouts", "shutdown", int, 120, "seconds of graceful shutdown before a hard stop"),
    Key("deploy", "models", list, ["gemma2:2b"], "models pulled by the playbook"),
    Key("deploy", "ollama_version", str, "", "Ollama version to install; empty = role default"),
    Key(
        "deploy",
        "ollama_base_url",
        str,
        "",
        "mirror for the Ollama release download; empty = the official download",
    ),
    Key("deploy", "extra_vars", dict, {}, "extra Ansible variables (role variables ollama_*)"),
    Key("probe", "model", str, "gemma2:2b", "model the probe runs"),
    Key(
        "probe",
        "runs",
        RunCount,
        3,
        'measured runs per probe; "auto" = until the median tok/s is known to +-5 %',
    ),
    Key("probe", "max_runs", int, 20, 'the most measured runs of runs = "auto"'),
    Key("probe", "warmup", int, 1, "warm-up runs (not counted)"),
    Key("probe", "num_predict", int, 128, "tokens to generate per run"),
    Key("probe", "prompt", str, "", "prompt text; empty = labctl's default prompt"),
    Key(
        "probe",
        "concurrency",
        str,
        "",
        "simultaneous users per level, e.g. 1,2,4; empty = one stream per run",
    ),
    Key("probe", "num_thread", str, "", "runner threads, e.g. auto,1,2,4; empty = Ollama's choice"),
    Key(
        "probe",
        "check_shape",
        bool,
        True,
        "refuse to measure a guest not seeing the VM's cores and RAM (false: a stand-in host)",
    ),
)

_SECTIONS = {k.section for k in KEYS}


@dataclass(frozen=True)
class LabConfig:
    """The whole lab file after defaults, env overrides and validation."""

    values: Mapping[str, Any]
    vms: Mapping[str, VmSpec] = field(default_factory=dict)
    path: Path | None = None

    def get(self, path: str) -> Any:
        return self.values[path]

    def secret(self, path: str) -> Secret:
        value = self.values[path]
        return value if isinstance(value, Secret) else Secret(str(value or ""))

    def vm_spec(self, name: str) -> VmSpec | None:
        return self.vms.get(name)

    def default_shape(self) -> Shape:
        disk = self.get("defaults.disk")
        return Shape(
            cores=parse_cores(self.get("defaults.cores")),
            memory_mib=parse_ram(self.get("defaults.ram")),
            cpu_type=self.get("defaults.cpu_type"),
            disk_gib=parse_disk_gib(disk) if disk else None,
        )


def find_config_path(explicit: str | None) -> Path | None:
    if explicit:
        return Path(explicit)
    env = os.environ.get("LABCTL_CONFIG")
    if env:
        return Path(env)
    candidate = Path.cwd() / DEFAULT_CONFIG_NAME
    return candidate if candidate.exists() else None


def load_config(explicit_path: str | None = None, *, required: bool = True) -> LabConfig:
    """Read, merge with defaults and env, validate. Raises ConfigError with the key path."""
    path = find_config_path(explicit_path)
    raw: dict[str, Any] = {}
    if path is not None:
        raw = _read_toml(path)
    elif required:
        raise ConfigError(
            f"no lab file: {DEFAULT_CONFIG_NAME} not found in {Path.cwd()}",
            hint="run `labctl init` or pass --config",
        )
    values = _merge(raw, path)
    vms = parse_vms(raw.get("vm", {}), values, _where(path))
    config = LabConfig(values=values, vms=vms, path=path)
    _resolve_secrets(config, path)
    return config


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"lab file {path} does not exist") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path}: invalid TOML: {error}") from None
    except OSError as error:
        raise ConfigError(f"cannot read {path}: {error.strerror}") from None


def _where(path: Path | None) -> str:
    """How errors name the lab file (no file: only defaults and the environment)."""
    return str(path) if path else "config"


def _merge(raw: dict[str, Any], path: Path | None) -> dict[str, Any]:
    where = _where(path)
    for section, table in raw.items():
        if section == "vm":
            continue
        if section not in _SECTIONS:
            raise ConfigError(f"{where}: unknown section [{section}]")
        if not isinstance(table, dict):
            raise ConfigError(f"{where}: {section} must be a table")
        known = {k.name for k in KEYS if k.section == section}
        for name in table:
            if name not in known:
                raise ConfigError(f"{where}: unknown key {section}.{name}")
    values: dict[str, Any] = {}
    for key in KEYS:
        value = raw.get(key.section, {}).get(key.name, key.default)
        env_value = os.environ.get(key.env)
        if env_value is not None:
            value = _from_env(key, env_value)
        values[key.path] = _check_type(key, value, where)
    return values


def _from_env(key: Key, text: str) -> Any:
    if key.type is bool:
        lowered = text.strip().lower()
        if lowered in {"1", "true", "yes", "on"}:
            return True
        if lowered in {"0", "false", "no", "off"}:
            return False
        raise ConfigError(f"{key.env}: expected true/false, got {text!r}")
    if key.type is int or (key.type is RunCount and text.strip() != "auto"):
        try:
            return int(text)
        except ValueError:
            raise ConfigError(f"{key.env}: expected a whole number, got {text!r}") from None
    if key.type is RunCount:
        return "auto"
    if key.type is list:
        return [part.strip() for part in text.split(",") if part.strip()]
    if key.type is dict:
        raise ConfigError(f"{key.env}: tables cannot be set from the environment")
    return text


def _check_type(key: Key, value: Any, where: str) -> Any:
    checked = check_value(where, key.path, key.type, value, secret=key.secret)
    return Secret(str(checked)) if key.secret else checked


def _resolve_secrets(config: LabConfig, path: Path | None) -> None:
    """Fill secrets from *_cmd; refuse a lab file holding a secret readable by others."""
    values = dict(config.values)
    for secret_key, cmd_key in (
        ("proxmox.token_secret", "proxmox.token_secret_cmd"),
        ("proxmox.password", "proxmox.password_cmd"),
    ):
        command = values[cmd_key]
        if command and not config.secret(secret_key):
            values[secret_key] = Secret(_run_secret_command(str(command), cmd_key))
    if path is not None and _file_holds_secret(path):
        mode = path.stat().st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ConfigError(
                f"{path} holds a secret and is readable by group/others",
                hint=f"run: chmod 600 {path}",
            )
    object.__setattr__(config, "values", values)


def _file_holds_secret(path: Path) -> bool:
    raw = _read_toml(path)
    return any(raw.get(k.section, {}).get(k.name) for k in KEYS if k.secret)


def _run_secret_command(command: str, key: str) -> str:
    try:
        done = subprocess.run(
            shlex.split(command), capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        raise ConfigError(f"{key}: could not run the command: {error}") from None
    if done.returncode != 0:
        # stderr of a password manager may be useful and holds no secret; stdout might.
        raise ConfigError(f"{key}: command exited {done.returncode}: {done.stderr.strip()[:200]}")
    secret = done.stdout.strip().splitlines()[0] if done.stdout.strip() else ""
    if not secret:
        raise ConfigError(f"{key}: command printed nothing")
    return secret
