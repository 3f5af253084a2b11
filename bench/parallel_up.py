"""Benchmark: N `labctl up --no-deploy` at once (default 20) against one `up` alone.

Starts the simulator in this process (its default PVE-like timings: clone 2 s, start 1 s, agent
5 s after start, 3 s for a silent agent's answer, 3 pvedaemon workers) with real container
guests (root needed) on bridge lbbr97 / 10.213.97.0/24, prefix lb97. Times one
`labctl up NAME --cores 1 --ram 1G --no-deploy` alone (after one warm-up), brings it down, then
starts N such `up`s at once as separate processes with distinct names and waits for all.

Prints how many succeeded, the single time, the slowest, the median and slowest/single, then
where the time went:
- per stage (labctl's `[12.3s] stage ...` progress lines), single vs the N at once;
- start-up + exit of each labctl process (wall time minus the `elapsed_s` of `--json`);
- CPU seconds over the parallel phase: the labctl processes (wait4), the simulator (this
  process), the simulator's helper commands, the guests (their cpuacct group), the rest of the
  host, against what the host's CPUs could give;
- the simulator's requests: count, handler time and the wait for a pvedaemon worker per kind;
- guest boot: start request to the first agent answer, and to the address labctl used.
Then `labctl down --all --yes` and how long it took. Asserts nothing.

Usage: python -m bench.parallel_up [--count 20] [--cores 1] [--ram 1G] [--warmup 1] [--rounds 1]

With --rounds R the single and the N at once are measured R times (each round its own single
up, so the ratio is paired) and the ratios and their median are printed at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import re
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.harness import labctl_env, lacks_root, new_ssh_key
from provision.sim.server import SimServer

BRIDGE, SUBNET, PREFIX = "lbbr97", "10.213.97.0/24", "lb97"
STAGE_RE = re.compile(r"^\[\s*([0-9.]+)s\] ([a-z][a-z -]*) \.\.\.$")
VM_PATH_RE = re.compile(r"/nodes/[^/]+/qemu/(\d+)(/.*)?$")
TICKS = os.sysconf("SC_CLK_TCK")


# -- labctl processes ---------------------------------------------------------------------------


@dataclass
class Run:
    """One labctl process: its wall time, exit code, CPU (from wait4) and output."""

    label: str
    argv: list[str]
    out: Path
    err: Path
    started: float = 0.0
    ended: float = 0.0
    code: int | None = None
    cpu_s: float = 0.0
    proc: subprocess.Popen[bytes] | None = None

    @property
    def wall(self) -> float:
        return self.ended - self.started

    @property
    def stdout(self) -> str:
        return self.out.read_text(errors="replace") if self.out.exists() else ""

    @property
    def stderr(self) -> str:
        return self.err.read_text(errors="replace") if self.err.exists() else ""

    def document(self) -> dict[str, Any]:
        try:
            value = json.loads(self.stdout)
        except ValueError:
            return {}
        return value if isinstance(value, dict) else {}


class Launcher:
    """Starts labctl processes with their output in files and reaps each with wait4, so every
    process's own CPU time is known. Kills what is still running on close()."""

    def __init__(self, labctl: list[str], env: dict[str, str], logs: Path) -> None:
        self.labctl = labctl
        self.env = env
        self.logs = logs
        self.running: dict[int, Run] = {}
        self._lock = threading.Lock()
        self._count = 0

    def start(self, label: str, *args: str) -> tuple[Run, threading.Thread]:
        with self._lock:
            self._count += 1
            stem = self.logs / f"{self._count:03d}-{label}"
        run = Run(label, [*self.labctl, *args], stem.with_suffix(".out"), stem.with_suffix(".err"))
        with run.out.open("wb") as out, run.err.open("wb") as err:
            run.started = time.monotonic()
            run.proc = subprocess.Popen(
                run.argv, env=self.env, stdin=subprocess.DEVNULL, stdout=out, stderr=err
            )
        with self._lock:
            self.running[run.proc.pid] = run
        reaper = threading.Thread(target=self._reap, args=(run,), daemon=True)
        reaper.start()
        return run, reaper

    def _reap(self, run: Run) -> None:
        assert run.proc is not None
        _pid, status, usage = os.wait4(run.proc.pid, 0)
        run.ended = time.monotonic()
        run.code = os.waitstatus_to_exitcode(status)
        run.proc.returncode = run.code
        run.cpu_s = usage.ru_utime + usage.ru_stime
        with self._lock:
            self.running.pop(run.proc.pid, None)

    def run(self, label: str, *args: str) -> Run:
        run, reaper = self.start(label, *args)
        reaper.join()
        return run

    def close(self) -> None:
        with self._lock:
            left = list(self.running.values())
        for run in left:
            if run.proc is not None and run.code is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(run.proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for run in left:
            while run.code is None and time.monotonic() < deadline:
                time.sleep(0.1)
            if run.proc is not None and run.code is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(run.proc.pid, signal.SIGKILL)


def stages(stderr: str, elapsed: float | None) -> dict[str, float]:
    """Seconds per stage from the progress lines; the last stage ends at `elapsed`."""
    marks = [(float(m[1]), m[2]) for m in map(STAGE_RE.match, stderr.splitlines()) if m]
    result: dict[str, float] = defaultdict(float)
    for (at, name), (nxt, _) in itertools.pairwise(marks):
        result[name] += nxt - at
    if marks and elapsed is not None:
        result[marks[-1][1]] += max(0.0, elapsed - marks[-1][0])
    return dict(result)


# -- the simulator's side -----------------------------------------------------------------------


@dataclass
class Request:
    method: str
    path: str
    began: float
    ended: float
    ok: bool
    worker_wait: float


@dataclass
class RequestLog:
    """Every API request the simulator handled: wraps SimApp.dispatch and the pvedaemon pool."""

    requests: list[Request] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _local: threading.local = field(default_factory=threading.local)

    def install(self, app: Any) -> None:
        dispatch: Callable[[Any], Any] = app.dispatch
        worker: Callable[[str], Any] = app.daemon.worker
        local = self._local

        @contextlib.contextmanager
        def timed_worker(node: str) -> Iterator[None]:
            asked = time.monotonic()
            with worker(node):
                local.wait += time.monotonic() - asked
                yield

        def timed_dispatch(request: Any) -> Any:
            local.wait = 0.0
            began = time.monotonic()
            ok = False
            try:
                response = dispatch(request)
                ok = True
                return response
            finally:
                done = Request(
                    request.method, request.path, began, time.monotonic(), ok, local.wait
                )
                with self._lock:
                    self.requests.append(done)

        setattr(app.daemon, "worker", timed_worker)  # noqa: B010 - an instance override
        setattr(app, "dispatch", timed_dispatch)  # noqa: B010

    def between(self, start: float, end: float) -> list[Request]:
        with self._lock:
            return [r for r in self.requests if start <= r.began <= end]


def kind(method: str, path: str) -> str:
    m = VM_PATH_RE.search(path)
    rest = (m[2] or "") if m else ""
    if "/agent/" in path:
        return f"agent {path.rsplit('/', 1)[-1]}"
    if "/tasks/" in path:
        return "task status/log"
    if rest == "/status/current":
        return "VM status"
    if rest.startswith("/status/"):
        return f"{method} {rest[1:]}"
    if rest in ("/clone", "/config", "/resize", "/pending"):
        return f"{method} {rest[1:]}"
    if m and not rest:
        return f"{method} VM"
    return f"{method} {path.removeprefix('/api2/json')}"


# -- host CPU -----------------------------------------------------------------------------------


@dataclass
class CpuSample:
    at: float
    host_busy: float  # seconds of all CPUs not idle (/proc/stat)
    own: float  # this process (the simulator)
    children: float  # reaped children (labctl processes, helper commands)
    guests: float  # the guests' cpuacct group

    @classmethod
    def now(cls) -> CpuSample:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
        values = [int(v) for v in fields]
        idle = values[3] + values[4]  # idle + iowait
        busy = (sum(values[:8]) - idle) / TICKS  # without guest/guest_nice (inside user)
        own = resource.getrusage(resource.RUSAGE_SELF)
        kids = resource.getrusage(resource.RUSAGE_CHILDREN)
        acct = Path("/sys/fs/cgroup/cpuacct") / PREFIX / "cpuacct.usage"
        guests = int(acct.read_text()) / 1e9 if acct.exists() else 0.0
        return cls(
            time.monotonic(),
            busy,
            own.ru_utime + own.ru_stime,
            kids.ru_utime + kids.ru_stime,
            guests,
        )


# -- the run ------------------------------------------------------------------------------------


def write_lab(path: Path, server: SimServer, key: Path) -> None:
    creds = server.credentials
    path.write_text(
        f'[proxmox]\nhost = "127.0.0.1"\nport = {server.port}\n'
        f'token_id = "{creds["token_id"]}"\ntoken_secret = "{creds["token_secret"]}"\n'
        f'fingerprint = "{server.fingerprint}"\n\n[template]\nname = "9000"\n\n'
        f'[ssh]\nuser = "labctl"\nkey = "{key}"\n'
    )
    path.chmod(0o600)


def up_args(name: str, args: argparse.Namespace) -> list[str]:
    return ["--json", "up", name, "--cores", args.cores, "--ram", args.ram, "--no-deploy"]


def fmt(values: list[float]) -> str:
    """median / max"""
    if not values:
        return "-"
    return f"{statistics.median(values):5.1f} / {max(values):5.1f}"


def one(values: list[float]) -> str:
    return f"{values[0]:6.1f}" if values else "     -"


def report_outcome(single: Run, runs: list[Run]) -> None:
    ok = [r for r in runs if r.code == 0]
    print(f"{len(ok)} succeeded, {len(runs) - len(ok)} failed (of {len(runs)} at once)")
    for r in runs:
        if r.code != 0:
            tail = " | ".join(r.stderr.strip().splitlines()[-3:])
            print(f"  {r.label}: exit {r.code} after {r.wall:.1f} s: {tail}")
    walls = [r.wall for r in runs]
    slowest = max(walls)
    print(
        f"single up {single.wall:.1f} s; {len(runs)} at once: fastest {min(walls):.1f} s, "
        f"median {statistics.median(walls):.1f} s, slowest {slowest:.1f} s; "
        f"slowest/single {slowest / single.wall:.2f} (target <= 2)"
    )


def report_stages(single: Run, runs: list[Run]) -> None:
    alone = stages(single.stderr, single.document().get("elapsed_s"))
    many = [stages(r.stderr, r.document().get("elapsed_s")) for r in runs if r.code == 0]
    names = list(alone) + [n for s in many for n in s if n not in alone]
    names = list(dict.fromkeys(names))
    print()
    print("per stage, seconds (labctl's progress lines): single | N at once median / max")
    for name in names:
        values = [s.get(name, 0.0) for s in many]
        print(f"  {name:<12} {alone.get(name, 0.0):6.1f} | {fmt(values)}")
    overhead_one = single.wall - float(single.document().get("elapsed_s", single.wall))
    overheads = [r.wall - float(r.document()["elapsed_s"]) for r in runs if r.document()]
    print(
        f"  {'start+exit':<12} {overhead_one:6.1f} | {fmt(overheads)}   "
        "(process wall time minus --json elapsed_s: Python, imports, lab file, client)"
    )
    calls = [r.document().get("api", {}) for r in runs if r.document()]
    one_api = single.document().get("api", {})
    print(
        f"API requests per up (--json api): single {one_api.get('calls')} + "
        f"{one_api.get('polls')} polls; N at once median "
        f"{statistics.median([c.get('calls', 0) for c in calls]) if calls else '-'} + "
        f"{statistics.median([c.get('polls', 0) for c in calls]) if calls else '-'} polls, "
        f"retries {sum(c.get('retries', 0) for c in calls)}"
    )


def report_cpu(before: CpuSample, after: CpuSample, single: Run, runs: list[Run]) -> None:
    wall = after.at - before.at
    host = after.host_busy - before.host_busy
    labctl = sum(r.cpu_s for r in runs)
    sim = after.own - before.own
    helpers = max(0.0, (after.children - before.children) - labctl)
    guests = after.guests - before.guests
    rest = host - labctl - sim - helpers - guests
    cpus = os.cpu_count() or 1
    print()
    print(
        f"CPU over the {wall:.1f} s of the N at once ({cpus} CPUs: {cpus * wall:.1f} CPU-s "
        f"available, {host:.1f} used = {100 * host / (cpus * wall):.0f} %):"
    )
    print(
        f"  labctl processes {labctl:6.1f} s  (per up: median "
        f"{statistics.median(r.cpu_s for r in runs):.2f} s, the single one {single.cpu_s:.2f} s)"
    )
    print(f"  simulator        {sim:6.1f} s  (this process: HTTPS, handlers, backend threads)")
    print(f"  its helpers      {helpers:6.1f} s  (ip, mount, ... that the backend ran)")
    print(f"  guests           {guests:6.1f} s  (cgroup cpuacct of {PREFIX}: nspawn + systemd)")
    print(f"  rest of the host {rest:6.1f} s  (kernel, other jobs)")


def report_requests(requests: list[Request], server: SimServer) -> None:
    by_kind: dict[str, list[Request]] = defaultdict(list)
    for r in requests:
        by_kind[kind(r.method, r.path)].append(r)
    print()
    total = sum(r.ended - r.began for r in requests)
    waits = sum(r.worker_wait for r in requests)
    print(
        f"simulator requests during the N at once: {len(requests)}, handler time {total:.1f} s "
        f"of which {waits:.1f} s waiting for a pvedaemon worker (peak busy "
        f"{server.app.daemon.peak('pve') if server.app else '?'})"
    )
    print("  kind                          count  failed  median ms  max ms  worker wait s")
    rows = sorted(by_kind.items(), key=lambda kv: -sum(r.ended - r.began for r in kv[1]))
    for name, items in rows:
        lat = [1000 * (r.ended - r.began) for r in items]
        failed = sum(not r.ok for r in items)
        wait = sum(r.worker_wait for r in items)
        print(
            f"  {name:<29} {len(items):5d}  {failed:6d}  {statistics.median(lat):9.0f}  "
            f"{max(lat):6.0f}  {wait:13.1f}"
        )


def report_boots(requests: list[Request], single: list[Request]) -> None:
    def boots(reqs: list[Request]) -> tuple[list[float], list[float]]:
        start: dict[str, float] = {}
        agent: dict[str, float] = {}
        address: dict[str, float] = {}
        for r in sorted(reqs, key=lambda r: r.began):
            m = VM_PATH_RE.search(r.path)
            if not m:
                continue
            vmid, rest = m[1], m[2] or ""
            if r.method == "POST" and rest == "/status/start":
                start.setdefault(vmid, r.began)
            elif rest.startswith("/agent/") and r.ok and vmid in start:
                agent.setdefault(vmid, r.ended)
                if rest.endswith("network-get-interfaces"):
                    address.setdefault(vmid, r.ended)
        to_agent = [agent[v] - start[v] for v in agent]
        to_address = [address[v] - start[v] for v in address]
        return to_agent, to_address

    one_agent, one_addr = boots(single)
    many_agent, many_addr = boots(requests)
    print()
    print("guest boot, seconds from the start request: single | N at once median / max")
    print(f"  first agent answer       {one(one_agent)} | {fmt(many_agent)}")
    print(f"  agent address (labctl's) {one(one_addr)} | {fmt(many_addr)}")


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--count", type=int, default=20)
    parser.add_argument("--cores", default="1")
    parser.add_argument("--ram", default="1G")
    parser.add_argument("--warmup", type=int, default=1, help="untimed ups before the single")
    parser.add_argument(
        "--rounds", type=int, default=1, help="single + N at once, this many times (median)"
    )
    args = parser.parse_args()
    if lacks_root("parallel_up"):
        return 2
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    from provision.sim.guests.container import ContainerBackend

    env = labctl_env()
    with tempfile.TemporaryDirectory(prefix="labctl-bench-") as tmp:
        base = Path(tmp)
        key = new_ssh_key(base)
        backend = ContainerBackend(base / "guests", bridge=BRIDGE, subnet=SUBNET, prefix=PREFIX)
        print(backend.describe())
        with SimServer(base / "sim", backend=backend) as server:
            log = RequestLog()
            log.install(server.app)
            settings = server.cluster.settings.to_json() if server.cluster else {}
            print(
                f"simulator timings: agent_delay {settings.get('agent_delay')} s, agent_timeout "
                f"{settings.get('agent_timeout')} s, daemon_workers "
                f"{settings.get('daemon_workers')}, tasks {settings.get('task_durations')}"
            )
            lab = base / "labctl.toml"
            write_lab(lab, server, key)
            env["LABCTL_STATE_DIR"] = str(base / "state")
            logs = base / "logs"
            logs.mkdir()
            launcher = Launcher(
                [sys.executable, "-m", "provision", "--config", str(lab)], env, logs
            )
            try:
                return measure(launcher, log, server, args)
            except KeyboardInterrupt:
                print("interrupted: stopping the labctl processes, down --all, the simulator")
                return 130
            finally:
                launcher.close()
                leftover = launcher.run("cleanup", "down", "--all", "--yes")
                if leftover.code != 0:
                    print(f"cleanup: down --all exited {leftover.code}: {leftover.stderr[-500:]}")


def measure(
    launcher: Launcher, log: RequestLog, server: SimServer, args: argparse.Namespace
) -> int:
    for n in range(args.warmup):
        run = launcher.run("warmup", *up_args(f"warm{n}", args))
        launcher.run("warmup-down", "down", f"warm{n}", "--yes")
        print(f"warm-up up: {run.wall:.1f} s (exit {run.code})")
    ratios: list[float] = []
    for round_ in range(1, args.rounds + 1):
        if args.rounds > 1:
            print(f"\n== round {round_} of {args.rounds} ==")
        ratio = measure_round(launcher, log, server, args, round_)
        if ratio is None:
            return 1
        ratios.append(ratio)
    if len(ratios) > 1:
        listed = ", ".join(f"{r:.2f}" for r in ratios)
        print(
            f"\nslowest/single over {len(ratios)} rounds: {listed}; median "
            f"{statistics.median(ratios):.2f} (target <= 2)"
        )
    return 0


def measure_round(
    launcher: Launcher, log: RequestLog, server: SimServer, args: argparse.Namespace, round_: int
) -> float | None:
    """One single `up` (then down), N at once, the report, `down --all`: slowest/single."""
    mark = time.monotonic()
    single = launcher.run("single", *up_args(f"single{round_}", args))
    single_requests = log.between(mark, time.monotonic())
    if single.code != 0:
        print(f"the single up failed (exit {single.code}):\n{single.stderr}")
        return None
    down = launcher.run("single-down", "down", f"single{round_}", "--yes")
    print(f"single up: {single.wall:.1f} s; its down: {down.wall:.1f} s (exit {down.code})")

    names = [f"pu{round_}-{n:02d}" for n in range(1, args.count + 1)]
    before = CpuSample.now()
    started = [launcher.start(name, *up_args(name, args)) for name in names]
    for _run, reaper in started:
        reaper.join()
    after = CpuSample.now()
    runs = [run for run, _ in started]
    requests = log.between(before.at, after.at)
    print()
    report_outcome(single, runs)
    report_stages(single, runs)
    report_cpu(before, after, single, runs)
    report_requests(requests, server)
    report_boots(requests, single_requests)

    help_text = launcher.run("down-help", "down", "--help").stdout
    jobs = "--jobs" in help_text
    down_all = launcher.run("down-all", "down", "--all", "--yes")
    listing = launcher.run("ls", "--json", "ls").document()
    print()
    print(
        f"labctl down --all --yes ({'--jobs: default' if jobs else 'no --jobs in this checkout'}):"
        f" {down_all.wall:.1f} s for {sum(r.code == 0 for r in runs)} VMs (target < 15 s), "
        f"exit {down_all.code}, CPU {down_all.cpu_s:.1f} s; labctl VMs left: "
        f"{len(listing.get('vms', []))}"
    )
    if down_all.code != 0:
        print(down_all.stderr[-2000:])
    return max(r.wall for r in runs) / single.wall


if __name__ == "__main__":
    raise SystemExit(main())
