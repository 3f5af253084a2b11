"""Soak: many up / SSH check / resize / down cycles, a few at once, then count what leaked.

Runs the simulator as a child process (`python -m provision sim serve`, its default PVE-like
timings) with real container guests (root needed) on bridge lbbr97 / 10.213.97.0/24, prefix
lb97. Each cycle, on its own VM name:
  labctl up NAME --cores 1 --ram 1G --no-deploy
  ssh (the system client, labctl's key, the state dir's known_hosts, strict host key checking):
      nproc and MemTotal in the guest
  labctl resize NAME --cores 2 --ram 2G --reboot, and the same SSH check (expects 2 CPUs / 2G)
  labctl down NAME --yes
`--parallel` cycles run at once. The deploy check is SSH only: `labctl deploy --check` needs
the Ollama release (and its checksum) from a mirror, which this script does not serve.

Before the first cycle and after the last it counts network namespaces, veths, bridges, overlay
and other mounts, the guests' cgroup directories and processes, guest disks, the guest
backend's address leases, labctl's lease blocks (`labctl ls` "is held by" lines), labctl VMs,
known_hosts lines, Ansible inventory hosts, and the simulator's open fds and threads; again
after the simulator stopped for the host-wide ones. Prints progress lines, the table and
"leaks: 0" or the list. Asserts nothing. Run it under the shared lock of the guest tests.

Usage: python -m bench.soak [--cycles 50] [--parallel 4]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

from bench.harness import labctl_env, lacks_root, new_ssh_key
from provision.deploy.runner import default_inventory_path

BRIDGE, SUBNET, PREFIX = "lbbr97", "10.213.97.0/24", "lb97"
CGROUP_ROOT = Path("/sys/fs/cgroup")
Labctl = Callable[..., tuple[int, str, str, float]]
COMMAND_TIMEOUT = 600
SSH_CHECK = "nproc; grep MemTotal /proc/meminfo"


class Interrupted(Exception):
    """The soak was stopped (Ctrl-C, SIGTERM): no new commands start."""


class Processes:
    """The child processes this script runs, so that an interrupt can end them by PID."""

    def __init__(self) -> None:
        self.live: set[subprocess.Popen[str]] = set()
        self.lock = threading.Lock()
        self.stopping = threading.Event()

    def run(
        self, argv: list[str], env: dict[str, str], timeout: float = COMMAND_TIMEOUT
    ) -> tuple[int, str, str, float]:
        """(exit code, stdout, stderr, seconds); a timeout is exit code -9."""
        if self.stopping.is_set():
            raise Interrupted
        began = time.monotonic()
        proc = subprocess.Popen(
            argv,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        with self.lock:
            self.live.add(proc)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            err += f"\n(killed after {timeout:g} s)"
        finally:
            with self.lock:
                self.live.discard(proc)
        return proc.returncode, out, err, time.monotonic() - began

    def stop_all(self) -> None:
        self.stopping.set()
        with self.lock:
            live = list(self.live)
        for proc in live:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
        deadline = time.monotonic() + 15
        for proc in live:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            if proc.poll() is None:
                proc.kill()


# -- the simulator as a child process -----------------------------------------------------------


@dataclass
class Simulator:
    state: Path
    log: Path
    env: dict[str, str]
    proc: subprocess.Popen[bytes] | None = None
    port: int = 0
    fingerprint: str = ""

    def start(self, timeout: float = 300) -> None:
        argv = [
            sys.executable,
            "-m",
            "provision",
            "sim",
            "serve",
            "--port",
            "0",
            "--state",
            str(self.state),
            "--guests",
            "container",
            "--bridge",
            BRIDGE,
            "--prefix",
            PREFIX,
            "--subnet",
            SUBNET,
        ]
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                argv, env=self.env, stdin=subprocess.DEVNULL, stdout=log, stderr=log
            )
        deadline = time.monotonic() + timeout
        while True:
            text = self.log.read_text(errors="replace")
            if "Press Ctrl-C" in text:
                break
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the simulator did not start:\n{text[-3000:]}")
            time.sleep(0.2)
        url = re.search(r"listening on https://[^:]+:(\d+)/", text)
        fingerprint = re.search(r"TLS SHA-256:\s+(\S+)", text)
        if not url or not fingerprint:
            raise RuntimeError(f"cannot read the simulator's banner:\n{text}")
        self.port, self.fingerprint = int(url[1]), fingerprint[1]
        backend = re.search(r"backend:\s+(.*)", text)
        print(f"simulator PID {self.proc.pid} on port {self.port}")
        print(backend[1] if backend else "backend: ?")

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc and self.proc.poll() is None else None

    def stop(self) -> int | None:
        """SIGTERM (the simulator closes its guest backend), SIGKILL after 120 s."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def write_lab(self, path: Path, key: Path) -> None:
        creds = json.loads((self.state / "credentials.json").read_text())
        path.write_text(
            f'[proxmox]\nhost = "127.0.0.1"\nport = {self.port}\n'
            f'token_id = "{creds["token_id"]}"\ntoken_secret = "{creds["token_secret"]}"\n'
            f'fingerprint = "{self.fingerprint}"\n\n[template]\nname = "9000"\n\n'
            f'[ssh]\nuser = "labctl"\nkey = "{key}"\n'
        )
        path.chmod(0o600)


# -- what is counted ----------------------------------------------------------------------------


def _lines(argv: list[str]) -> list[str]:
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    return [line for line in done.stdout.splitlines() if line.strip()]


def _link_names(kind: str) -> list[str]:
    return [line.split(":")[1].strip().split("@")[0] for line in _lines(
        ["ip", "-o", "link", "show", "type", kind]
    )]  # fmt: skip


def _cgroup_dirs() -> tuple[int, int]:
    """(directories below each hierarchy's PREFIX group, processes in them), hierarchies that
    are mounted together counted once."""
    seen: set[str] = set()
    dirs = procs = 0
    for hierarchy in sorted(CGROUP_ROOT.iterdir()):
        real = os.path.realpath(hierarchy)
        if real in seen or not (hierarchy / PREFIX).is_dir():
            continue
        seen.add(real)
        for root, subdirs, _files in os.walk(hierarchy / PREFIX):
            dirs += len(subdirs)
            if hierarchy.name == "pids":
                with contextlib.suppress(OSError):
                    procs += len((Path(root) / "cgroup.procs").read_text().split())
    return dirs, procs


def _fd_targets(pid: int) -> Counter[str]:
    targets: Counter[str] = Counter()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            targets[re.sub(r"\[\d+\]$", "[]", target)] += 1
    return targets


@dataclass
class Snapshot:
    counts: dict[str, int | None]
    fds: Counter[str] = field(default_factory=Counter)


ROWS = (
    ("netns", f"network namespaces {PREFIX}-*"),
    ("netns_all", "network namespaces (all)"),
    ("veth", f"veths {PREFIX}v*"),
    ("veth_all", "veths (all)"),
    ("bridge", f"bridge {BRIDGE}"),
    ("bridge_all", "bridges (all)"),
    ("overlay", "overlay mounts under the work dir"),
    ("overlay_all", "overlay mounts (all)"),
    ("mounts", "mounts under the work dir (any type)"),
    ("cgroups", f"cgroup dirs under */{PREFIX}/"),
    ("guest_procs", f"processes in {PREFIX}'s cgroups"),
    ("disks", "guest disks (sim state)"),
    ("ip_leases", "guest address leases (sim state)"),
    ("vms", "labctl VMs (labctl ls)"),
    ("all_vms", "VMs of any owner (ls --all)"),
    ("held", "lease blocks ('is held by' lines)"),
    ("known_hosts", "known_hosts lines"),
    ("inventory", "Ansible inventory hosts"),
    ("sim_fds", "simulator open fds"),
    ("sim_threads", "simulator threads"),
)
SIM_ONLY = {"vms", "all_vms", "held", "sim_fds", "sim_threads"}


@dataclass
class Census:
    work: Path
    sim_state: Path
    labctl_state: Path
    labctl: Labctl

    def snapshot(self, sim_pid: int | None) -> Snapshot:
        counts: dict[str, int | None] = {}
        netns = [line.split()[0] for line in _lines(["ip", "netns", "list"])]
        counts["netns"] = sum(n.startswith(f"{PREFIX}-") for n in netns)
        counts["netns_all"] = len(netns)
        veths = _link_names("veth")
        counts["veth"] = sum(re.fullmatch(rf"{PREFIX}v\d+", v) is not None for v in veths)
        counts["veth_all"] = len(veths)
        bridges = _link_names("bridge")
        counts["bridge"] = bridges.count(BRIDGE)
        counts["bridge_all"] = len(bridges)
        mounts = [line.split() for line in Path("/proc/mounts").read_text().splitlines()]
        work = str(self.work)
        counts["overlay"] = sum(m[2] == "overlay" and m[1].startswith(work) for m in mounts)
        counts["overlay_all"] = sum(m[2] == "overlay" for m in mounts)
        counts["mounts"] = sum(m[1].startswith(work) for m in mounts)
        counts["cgroups"], counts["guest_procs"] = _cgroup_dirs()
        disks = self.sim_state / "guests" / "disks"
        counts["disks"] = len(list(disks.iterdir())) if disks.is_dir() else 0
        leases = self.sim_state / "guests" / "leases.json"
        counts["ip_leases"] = len(json.loads(leases.read_text())) if leases.exists() else 0
        known = self.labctl_state / "known_hosts"
        counts["known_hosts"] = (
            sum(bool(s.strip()) and not s.startswith("#") for s in known.read_text().splitlines())
            if known.exists()
            else 0
        )
        counts["inventory"] = self._inventory_hosts()
        snap = Snapshot(counts)
        for key in SIM_ONLY:
            counts[key] = None
        if sim_pid is not None:
            code, out, _err, _s = self.labctl("--json", "ls")
            counts["vms"] = len(json.loads(out)["vms"]) if code == 0 else None
            code, out, _err, _s = self.labctl("--json", "ls", "--all")
            counts["all_vms"] = len(json.loads(out)["vms"]) if code == 0 else None
            code, out, _err, _s = self.labctl("ls")
            counts["held"] = sum(" is held by " in line for line in out.splitlines())
            snap.fds = _fd_targets(sim_pid)
            counts["sim_fds"] = sum(snap.fds.values())
            counts["sim_threads"] = len(list(Path(f"/proc/{sim_pid}/task").iterdir()))
        return snap

    def _inventory_hosts(self) -> int:
        """Hosts in the inventory labctl writes (one `ansible_host:` line each)."""
        path = default_inventory_path(self.labctl_state)
        if not path.exists():
            return 0
        return sum(
            line.strip().startswith("ansible_host:") for line in path.read_text().splitlines()
        )


# -- cycles -------------------------------------------------------------------------------------


@dataclass
class Cycle:
    n: int
    name: str
    times: dict[str, float] = field(default_factory=dict)
    shapes: list[tuple[int, int]] = field(default_factory=list)
    error: str | None = None


def ssh_shape(
    run: Processes, env: dict[str, str], key: Path, known: Path, ip: str
) -> tuple[int, int]:
    """(CPUs, MiB of MemTotal) as the guest sees itself, over the system ssh client."""
    argv = [
        "ssh", "-F", "/dev/null", "-i", str(key), "-o", "IdentitiesOnly=yes",
        "-o", f"UserKnownHostsFile={known}", "-o", "GlobalKnownHostsFile=/dev/null",
        "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes", "-o", "ConnectTimeout=15",
        f"labctl@{ip}", SSH_CHECK,
    ]  # fmt: skip
    code, out, err, _s = run.run(argv, env, timeout=60)
    if code != 0:
        raise RuntimeError(f"ssh {ip} exited {code}: {err.strip()[-300:]}")
    words = out.split()
    return int(words[0]), int(words[2]) // 1024


def cycle(n: int, run: Processes, labctl: Labctl, ssh: Callable[[str], tuple[int, int]]) -> Cycle:
    result = Cycle(n, f"soak{n:02d}")
    name = result.name
    created = False

    def step(label: str, *args: str) -> str:
        code, out, err, seconds = labctl(*args)
        result.times[label] = seconds
        if code != 0:
            tail = " | ".join(err.strip().splitlines()[-3:])
            raise RuntimeError(f"{label} exited {code}: {tail}")
        return out

    try:
        out = step("up", "--json", "up", name, "--cores", "1", "--ram", "1G", "--no-deploy")
        created = True
        ip = json.loads(out)["vm"]["ip"]
        began = time.monotonic()
        result.shapes.append(ssh(ip))
        result.times["ssh"] = time.monotonic() - began
        step("resize", "resize", name, "--cores", "2", "--ram", "2G", "--reboot")
        began = time.monotonic()
        result.shapes.append(ssh(ip))
        result.times["ssh2"] = time.monotonic() - began
        cpus, mib = result.shapes[-1]
        if cpus != 2 or abs(mib - 2048) > 64:
            result.error = f"the guest sees {cpus} CPU / {mib} MiB after the resize"
        step("down", "down", name, "--yes")
        created = False
    except Interrupted:
        result.error = "interrupted"
    except (RuntimeError, ValueError, KeyError, IndexError) as error:
        result.error = str(error)
    if created and not run.stopping.is_set():
        with contextlib.suppress(Interrupted):
            code, _out, err, _s = labctl("down", name, "--yes")
            if code != 0:
                result.error = f"{result.error}; down after it exited {code}: {err[-200:]}"
    return result


def print_cycle(c: Cycle, done: int, total: int, began: float) -> None:
    times = ", ".join(f"{k} {v:.1f}s" for k, v in c.times.items())
    shapes = " -> ".join(f"{cpus} CPU/{mib} MiB" for cpus, mib in c.shapes)
    status = f"FAILED: {c.error}" if c.error else "ok"
    print(
        f"[{time.monotonic() - began:6.0f}s] {done}/{total} {c.name}: {times}; {shapes}; {status}",
        flush=True,
    )


def leaks(before: Snapshot, after: Snapshot, idle: Snapshot, stopped: Snapshot) -> list[str]:
    found = []
    for key, label in ROWS:
        b, a = before.counts.get(key), after.counts.get(key)
        if b is not None and a is not None and a > b:
            found.append(f"{label}: {b} -> {a}")
    for key, label in ROWS:
        if key in SIM_ONLY or key in ("known_hosts", "inventory", "disks", "ip_leases"):
            continue
        i, s = idle.counts.get(key), stopped.counts.get(key)
        if i is not None and s is not None and s > i:
            found.append(f"{label} after the simulator stopped: {i} -> {s}")
    extra = after.fds - before.fds
    if extra:
        found.append(
            "simulator fds not there before: "
            + ", ".join(f"{t} x{n}" for t, n in extra.most_common(8))
        )
    return found


def table(columns: list[tuple[str, Snapshot]]) -> None:
    head = "".join(f"{name:>13}" for name, _ in columns)
    print(f"{'':<40}{head}")
    for key, label in ROWS:
        cells = []
        for _name, snap in columns:
            value = snap.counts.get(key)
            cells.append(f"{'-' if value is None else value:>13}")
        print(f"{label:<40}{''.join(cells)}")


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--cycles", type=int, default=50)
    parser.add_argument("--parallel", type=int, default=4)
    args = parser.parse_args()
    if lacks_root("soak"):
        return 2
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    env = labctl_env()
    procs = Processes()
    with tempfile.TemporaryDirectory(prefix="labctl-soak-") as tmp:
        base = Path(tmp)
        key = new_ssh_key(base)
        sim = Simulator(base / "sim", base / "sim.log", env)
        lab = base / "labctl.toml"
        state = base / "state"
        env["LABCTL_STATE_DIR"] = str(state)

        def labctl(*args: str) -> tuple[int, str, str, float]:
            argv = [sys.executable, "-m", "provision", "--config", str(lab), *args]
            return procs.run(argv, env)

        counter = Census(base, sim.state, state, labctl)
        idle = counter.snapshot(None)
        try:
            sim.start()
            sim.write_lab(lab, key)
            return soak(args, procs, sim, counter, idle, key, state, env, labctl)
        except KeyboardInterrupt:
            print("interrupted: stopping the commands, down --all, stopping the simulator")
            return 130
        finally:
            procs.stop_all()
            procs.stopping.clear()
            if sim.pid is not None:
                code, _out, err, _s = labctl("down", "--all", "--yes")
                if code != 0:
                    print(f"cleanup: down --all exited {code}: {err[-500:]}")
            sim_code = sim.stop()
            if sim_code not in (0, None):
                print(f"the simulator exited {sim_code}; its log's end:")
                print(sim.log.read_text(errors="replace")[-2000:])


def soak(
    args: argparse.Namespace,
    procs: Processes,
    sim: Simulator,
    counter: Census,
    idle: Snapshot,
    key: Path,
    state: Path,
    env: dict[str, str],
    labctl: Labctl,
) -> int:
    before = counter.snapshot(sim.pid)
    print(
        f"{args.cycles} cycles, {args.parallel} at once: up --no-deploy, ssh check, "
        "resize --cores 2 --ram 2G --reboot, ssh check, down",
        flush=True,
    )

    def ssh(ip: str) -> tuple[int, int]:
        return ssh_shape(procs, env, key, state / "known_hosts", ip)

    results: list[Cycle] = []
    began = time.monotonic()
    pool = ThreadPoolExecutor(args.parallel)
    try:
        pending = {pool.submit(cycle, n, procs, labctl, ssh) for n in range(1, args.cycles + 1)}
        while pending:
            done, pending = wait(pending, timeout=1, return_when=FIRST_COMPLETED)
            for future in done:
                results.append(future.result())
                print_cycle(results[-1], len(results), args.cycles, began)
    except BaseException:  # Ctrl-C: end the running commands, start no new cycle
        procs.stop_all()
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown()
    wall = time.monotonic() - began
    after = counter.snapshot(sim.pid)
    failed = [c for c in results if c.error]
    print()
    print(
        f"{len(results) - len(failed)}/{len(results)} cycles ok in {wall:.0f} s "
        f"({wall / max(1, len(results)) * args.parallel:.1f} s per cycle with {args.parallel} "
        "at once)"
    )
    for label in ("up", "ssh", "resize", "ssh2", "down"):
        values = [c.times[label] for c in results if label in c.times]
        if values:
            print(
                f"  {label:<7} median {statistics.median(values):5.1f} s, max {max(values):5.1f} s"
            )
    for c in failed:
        print(f"  {c.name}: {c.error}")
    code, _out, err, _s = labctl("down", "--all", "--yes")  # only leftovers of failed cycles
    if code != 0:
        print(f"down --all exited {code}: {err[-300:]}")
    final = counter.snapshot(sim.pid)
    if final.counts != after.counts:
        print("(a final down --all changed the counts; the table shows them after it)")
        after = final
    sim_code = sim.stop()
    stopped = counter.snapshot(None)
    print()
    table([("no sim", idle), ("before", before), ("after", after), ("sim stopped", stopped)])
    print(f"(simulator exit code {sim_code})")
    for label, snap in (("before", before), ("after", after)):
        kinds = ", ".join(f"{t} x{n}" for t, n in sorted(snap.fds.items()))
        print(f"simulator fds {label}: {kinds}")
    found = leaks(before, after, idle, stopped)
    print(f"leaks: {len(found)}" + "".join(f"\n  {line}" for line in found))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
