"""`cloud-init` inside the simulator's guests (Debian 12 containers that have no cloud-init).

Installed as /usr/bin/cloud-init by provision/sim/guests/cloudinit.py, with the units
cloud-init.service (`cloud-init init`, ordered before ssh.service) and cloud-final.service
(`cloud-init modules --mode=final`, after multi-user.target). Python 3 standard library only:
it runs with the guest's python3. It does what cloud-init does to a freshly cloned PVE VM in
the parts labctl can observe, following canonical/cloud-init:

* network stage, once per instance (`cloudinit/config/cc_ssh.py:99-104,155-182`): delete the
  image's host keys (`/etc/ssh/ssh_host_*key*`), generate rsa, ecdsa and ed25519 keys; sshd starts
  after this stage (`systemd/cloud-init-network.service.tmpl:32` Before=sshd.service), but the
  guest agent runs already, so a key read through the agent can find no key yet. How long the
  stage takes to get there is the simulator's `ssh_delay`.
* final stage (`systemd/cloud-final.service:5` After=multi-user.target, so while SSH already
  answers), once per instance (`cloudinit/config/cc_package_update_upgrade_install.py:66-87`,
  `cloudinit/distros/package_management/apt.py:26-36,184-231`): with `package_upgrade: true`
  in the user-data (what PVE writes unless ciupgrade=0), an upgrade that holds the dpkg
  locks (/var/lib/dpkg/lock-frontend, /var/lib/dpkg/lock; fcntl record locks, as apt takes
  them) and keeps a CPU busy for `upgrade_seconds`. The work is simulated: nothing is
  downloaded or installed; its lines in /var/log/cloud-init-output.log say so.
* `cloud-init status [--wait] [--long] [--format json]` (`cloudinit/cmd/status.py:146-256,
  376-392`): "not started" / "running" / "done" from /run/cloud-init/status.json and
  result.json, "error" when a stage recorded errors or one of the two units failed;
  `--wait` prints a dot every 0.25 s until done; exit 0 done, 1 error, 2 degraded.
* `cloud-init clean [--logs] [--seed] [--machine-id]` (`cloudinit/cmd/clean.py`
  `remove_artifacts` and `handle_clean_args`): empties /var/lib/cloud (its seed kept unless
  --seed), --logs removes the logs, --machine-id leaves /etc/machine-id as "uninitialized" on a
  systemd guest, so the next boot is a first boot with a new machine id.

The timings come from /var/lib/cloud/seed/nocloud/labctl-sim.json (not a cloud-init file).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import glob
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from typing import Any

SEED = "/var/lib/cloud/seed/nocloud"
SIM_CONFIG = SEED + "/labctl-sim.json"
RUN_DIR = "/run/cloud-init"
STATUS_FILE = RUN_DIR + "/status.json"
RESULT_FILE = RUN_DIR + "/result.json"
INSTANCES = "/var/lib/cloud/instances"
OUTPUT_LOG = "/var/log/cloud-init-output.log"
DATASOURCE = "DataSourceNoCloud [seed=" + SEED + "]"
KEY_TYPES = ("rsa", "ecdsa", "ed25519")  # cc_ssh.py GENERATE_KEY_NAMES
DPKG_LOCKS = ("/var/lib/dpkg/lock-frontend", "/var/lib/dpkg/lock")  # apt.py APT_LOCK_FILES
UNITS = ("cloud-init.service", "cloud-final.service")
STAGES = ("init", "modules-final")


def log(line: str) -> None:
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    with open(OUTPUT_LOG, "a", encoding="utf-8") as fh:
        fh.write(f"{stamp} {line}\n")


def read_text(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.read()
    except OSError:
        return ""


def instance_id() -> str:
    for line in read_text(SEED + "/meta-data").splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "instance-id":
            return value.strip()
    return "iid-datasource-none"


def user_data() -> dict[str, str]:
    """The top-level scalar keys of the #cloud-config user-data (all this stand-in reads)."""
    values: dict[str, str] = {}
    for line in read_text(SEED + "/user-data").splitlines():
        if not line or line[0] in " \t#-":
            continue
        key, sep, value = line.partition(":")
        if sep:
            values[key.strip()] = value.strip()
    return values


def sim_config() -> dict[str, Any]:
    try:
        data = json.loads(read_text(SIM_CONFIG) or "{}")
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def write_json(path: str, data: dict[str, Any]) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=1)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def load_status() -> dict[str, Any]:
    try:
        data = json.loads(read_text(STATUS_FILE) or "{}")
    except ValueError:
        data = {}
    v1 = data.setdefault("v1", {})
    v1.setdefault("datasource", None)
    v1.setdefault("stage", None)
    for stage in STAGES:
        v1.setdefault(
            stage, {"start": None, "finished": None, "errors": [], "recoverable_errors": {}}
        )
    return data


@contextlib.contextmanager
def stage(name: str) -> Iterator[list[str]]:
    """Record the stage in status.json like cloud-init; errors raised inside are recorded."""
    status = load_status()
    status["v1"]["stage"] = name
    status["v1"][name]["start"] = time.time()
    write_json(STATUS_FILE, status)
    errors: list[str] = []
    try:
        yield errors
    except Exception as error:  # noqa: BLE001 - recorded, as cloud-init records a stage failure
        errors.append(f"{type(error).__name__}: {error}")
        log(traceback.format_exc())
    status = load_status()
    status["v1"]["stage"] = None
    status["v1"]["datasource"] = DATASOURCE
    status["v1"][name]["finished"] = time.time()
    status["v1"][name]["errors"] = errors
    write_json(STATUS_FILE, status)
    if name == "modules-final":
        every = [e for s in STAGES for e in status["v1"][s].get("errors", [])]
        write_json(RESULT_FILE, {"v1": {"datasource": DATASOURCE, "errors": every}})


def once_per_instance(module: str, work: Callable[[], None]) -> None:
    """cloud-init's PER_INSTANCE frequency: a semaphore file per instance id."""
    sem = os.path.join(INSTANCES, instance_id(), "sem", f"config_{module}")
    if os.path.exists(sem):
        return
    work()
    os.makedirs(os.path.dirname(sem), exist_ok=True)
    with open(sem, "w", encoding="utf-8") as fh:
        fh.write(f"{os.getpid()}: {time.time()}\n")


def config_ssh() -> None:
    """cc_ssh: remove the image's host keys, then generate new ones (sshd waits for this)."""
    time.sleep(max(0.0, float(sim_config().get("ssh_delay", 0.0))))
    for path in glob.glob("/etc/ssh/ssh_host_*key*"):
        os.unlink(path)
    for kind in KEY_TYPES:
        keyfile = f"/etc/ssh/ssh_host_{kind}_key"
        subprocess.run(
            ["ssh-keygen", "-q", "-t", kind, "-N", "", "-f", keyfile],
            check=True,
            stdin=subprocess.DEVNULL,
        )
        log(f"Generating public/private {kind} key pair: {keyfile}")


def installed_packages() -> list[str]:
    names = []
    for line in read_text("/var/lib/dpkg/status").splitlines():
        if line.startswith("Package: "):
            names.append(line.split(":", 1)[1].strip())
    return names or ["base-files"]


def config_package_update_upgrade_install() -> None:
    """package_upgrade: take the dpkg locks as apt does, then work for `upgrade_seconds`."""
    if user_data().get("package_upgrade", "").lower() not in ("true", "yes", "on", "1"):
        return
    seconds = max(0.0, float(sim_config().get("upgrade_seconds", 6.0)))
    with contextlib.ExitStack() as held:
        for path in DPKG_LOCKS:
            handle = held.enter_context(open(path, "a"))
            fcntl.lockf(handle, fcntl.LOCK_EX)  # waits, as cloud-init waits for the apt lock
        with contextlib.suppress(OSError), open("/proc/self/comm", "w") as comm:
            comm.write("apt-get")  # what `ps` and apt's "held by process N (...)" show
        log(
            "Running apt-get dist-upgrade (simulated by the PVE simulator: nothing is "
            f"downloaded or installed; {seconds:g} s of work holding the dpkg lock)"
        )
        packages = installed_packages()
        deadline = time.monotonic() + seconds
        digest = hashlib.sha256()
        next_line, n = 0.0, 0
        while time.monotonic() < deadline:
            for _ in range(2000):
                digest.update(digest.digest())
            if time.monotonic() >= next_line:
                name = packages[n % len(packages)]
                log(f"(simulated) Unpacking {name} ...")
                n += 1
                next_line = time.monotonic() + 0.5
        log(f"(simulated) upgrade done after {seconds:g} s")


def unit_failed() -> bool:
    """cloud-init's systemd_failed(): a failed unit means status 'error' (status.py:317-373)."""
    for unit in UNITS:
        try:
            out = subprocess.run(
                ["systemctl", "show", "--property=ActiveState,SubState", unit],
                capture_output=True,
                text=True,
                check=False,
            ).stdout
        except OSError:
            return False
        states = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
        if "failed" in (states.get("ActiveState"), states.get("SubState")):
            return True
    return False


def status_details() -> tuple[str, str, list[str], dict[str, list[str]], str]:
    """(running status, condition, errors, recoverable errors, description)."""
    v1: dict[str, Any] = {}
    if os.path.exists(STATUS_FILE):
        v1 = load_status()["v1"]
    errors: list[str] = []
    recoverable: dict[str, list[str]] = {}
    for name in STAGES:
        info = v1.get(name) or {}
        errors.extend(info.get("errors") or [])
        for level, items in (info.get("recoverable_errors") or {}).items():
            recoverable.setdefault(level, []).extend(items)
    if os.path.exists(STATUS_FILE) and not os.path.exists(RESULT_FILE):
        running = "running"
    elif os.path.exists(RESULT_FILE):
        running = "done"
    else:
        running = "not started"
    description = v1.get("datasource") or (
        f"Running in stage: {v1['stage']}" if v1.get("stage") else "Enabled by systemd"
    )
    if running == "running" and unit_failed():
        running = "done"
        errors.append(
            "Failed due to systemd unit failure. Ensure all cloud-init services are "
            "enabled, and check 'systemctl' or 'journalctl' for more information."
        )
        description = "Failed due to systemd unit failure"
    condition = "error" if errors else ("degraded" if recoverable else "healthy")
    return running, condition, errors, recoverable, description


def status(wait: bool, long: bool, fmt: str) -> int:
    running, condition, errors, recoverable, description = status_details()
    while wait and running in ("not started", "running"):
        if fmt == "tabular":
            sys.stdout.write(".")
            sys.stdout.flush()
        time.sleep(0.25)
        running, condition, errors, recoverable, description = status_details()
    if condition == "error":
        shown, extended = "error", f"error - {running}"
    elif condition == "degraded":
        shown, extended = running, f"degraded {running}"
    else:
        shown, extended = running, running
    if fmt == "json":
        print(
            json.dumps(
                {
                    "status": shown,
                    "extended_status": extended,
                    "detail": description,
                    "errors": errors,
                    "recoverable_errors": recoverable,
                    "boot_status_code": "enabled-by-generator",
                    "datasource": "nocloud",
                },
                indent=2,
                sort_keys=True,
            )
        )
    else:
        print(f"status: {shown}")
        if long:
            errs = "".join(f"\n\t- {e}" for e in errors) or " []"
            recs = (
                "".join(
                    f"\n{k}:" + "".join(f"\n\t- {i}" for i in v) for k, v in recoverable.items()
                )
                or " {}"
            )
            print(
                f"extended_status: {extended}\nboot_status_code: enabled-by-generator\n"
                f"detail: {description}\nerrors:{errs}\nrecoverable_errors:{recs}"
            )
    if condition == "error":
        return 1
    if condition == "degraded":
        return 2
    return 0


def clean(logs: bool, seed: bool, machine_id: bool) -> int:
    """What a template's last boot runs so that its clones boot as new instances."""
    base = "/var/lib/cloud"
    for entry in glob.glob(base + "/*"):
        if entry == base + "/seed" and not seed:
            continue
        if os.path.isdir(entry) and not os.path.islink(entry):
            shutil.rmtree(entry, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry)
    if logs:
        for path in ("/var/log/cloud-init.log", OUTPUT_LOG):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
    if machine_id:
        with open("/etc/machine-id", "w", encoding="utf-8") as fh:
            fh.write("uninitialized\n")
    return 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="cloud-init")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("init")
    modules = commands.add_parser("modules")
    modules.add_argument("--mode", choices=["config", "final"], default="config")
    show = commands.add_parser("status")
    show.add_argument("-w", "--wait", action="store_true")
    show.add_argument("-l", "--long", action="store_true")
    show.add_argument("--format", choices=["tabular", "json"], default="tabular")
    wipe = commands.add_parser("clean")
    wipe.add_argument("-l", "--logs", action="store_true")
    wipe.add_argument("-s", "--seed", action="store_true")
    wipe.add_argument("--machine-id", action="store_true")
    args = parser.parse_args(argv)
    if args.command == "clean":
        return clean(args.logs, args.seed, args.machine_id)
    if args.command == "status":
        return status(args.wait, args.long, args.format)
    if args.command == "init":
        with stage("init"):
            once_per_instance("ssh", config_ssh)
        return 0
    if args.mode == "final":
        with stage("modules-final"):
            once_per_instance(
                "package_update_upgrade_install", config_package_update_upgrade_install
            )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
