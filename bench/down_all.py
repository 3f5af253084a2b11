"""Benchmark: `labctl down --all --yes` of N running VMs (default 20), and where its time goes.

Starts the simulator in this process (its default PVE-like timings and 3 pvedaemon workers)
with real container guests (root needed) on bridge lbbr96 / 10.213.96.0/24, prefix lb96, brings
N VMs up with N `labctl up NAME --cores 1 --ram 1G --no-deploy` at once (untimed), then times
`labctl --json down --all --yes` (extra labctl options after `--`, e.g. `-- --jobs 20`).

Prints the wall time against the 15 s target, then the breakdown:
- the labctl process: its CPU, when its first request came (start-up), when its listing ended
  and the first VM's removal began, how long the removals took and what came after the last;
- per VM, from the simulator's side: before the shutdown task (status, lease), the shutdown
  task, the gap until the destroy task, the destroy task, and after it (lease release);
- the simulator's tasks (qmshutdown, qmstop, qmdestroy) against their simulated minimum;
- the guest backend: a guest's own poweroff, the teardown of its run (netns, cgroups, overlay),
  the disk deletion, and the waits for the backend's lock that those took;
- the simulator's requests per kind: count, median / max ms, the wait for a pvedaemon worker.
Asserts nothing. Run it alone, under the shared lock of the guest tests.

Usage: python -m bench.down_all [--count 20] [--runs 1] [-- LABCTL DOWN OPTIONS]
"""

from __future__ import annotations

import argparse
import signal
import statistics
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from bench.harness import labctl_env, lacks_root, new_ssh_key
from bench.parallel_up import (
    VM_PATH_RE,
    Launcher,
    Request,
    RequestLog,
    Run,
    kind,
    write_lab,
)
from provision.sim.server import SimServer

BRIDGE, SUBNET, PREFIX = "lbbr96", "10.213.96.0/24", "lb96"
TARGET_S = 15.0


# -- the guest backend's side -------------------------------------------------------------------


@dataclass
class Span:
    what: str
    vmid: int
    began: float
    ended: float

    @property
    def seconds(self) -> float:
        return self.ended - self.began


@dataclass
class BackendLog:
    """Times the backend calls of a removal, and every wait for the backend's lock."""

    spans: list[Span] = field(default_factory=list)
    lock_waits: list[tuple[float, float]] = field(default_factory=list)  # (asked at, waited)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def install(self, backend: Any) -> None:
        for name, what in (
            ("shutdown", "shutdown (poweroff + teardown)"),
            ("stop", "stop (kill + teardown)"),
            ("delete_disk", "delete disk"),
            ("_teardown_run", "teardown of the run"),
        ):
            setattr(backend, name, self._timed(getattr(backend, name), what))
        backend._lock = TimedLock(backend._lock, self)

    def _timed(self, call: Callable[..., Any], what: str) -> Callable[..., Any]:
        def timed(first: Any, *args: Any, **kwargs: Any) -> Any:
            began = time.monotonic()
            try:
                return call(first, *args, **kwargs)
            finally:
                vmid = first if isinstance(first, int) else first.spec.vmid
                with self._lock:
                    self.spans.append(Span(what, vmid, began, time.monotonic()))

        return timed

    def between(self, start: float, end: float) -> list[Span]:
        with self._lock:
            return [s for s in self.spans if start <= s.began <= end]

    def waits_between(self, start: float, end: float) -> list[float]:
        """The lock waits longer than a millisecond asked for in [start, end]."""
        with self._lock:
            return [w for at, w in self.lock_waits if start <= at <= end and w > 0.001]


class TimedLock:
    """The backend's RLock, with the time each `with` waited to get it recorded."""

    def __init__(self, inner: Any, log: BackendLog) -> None:
        self._inner = inner
        self._log = log

    def __enter__(self) -> bool:
        asked = time.monotonic()
        got: bool = self._inner.__enter__()
        self._log.lock_waits.append((asked, time.monotonic() - asked))
        return got

    def __exit__(self, *exc: object) -> None:
        self._inner.__exit__(*exc)


# -- the report ---------------------------------------------------------------------------------


@dataclass
class VmTimeline:
    """One VM's removal as the simulator saw it (monotonic seconds)."""

    vmid: int
    first: float
    last: float
    tasks: dict[str, tuple[float, float]]  # task type -> (start, end)

    def phases(self) -> dict[str, float]:
        shut = self.tasks.get("qmshutdown") or self.tasks.get("qmstop")
        destroy = self.tasks.get("qmdestroy")
        if shut is None or destroy is None:
            return {}
        stop = self.tasks.get("qmstop")
        shut_end = max(shut[1], stop[1]) if stop else shut[1]
        return {
            "before shutdown (lease, status)": shut[0] - self.first,
            "shutdown/stop task(s)": shut_end - shut[0],
            "gap to destroy (poll, request)": destroy[0] - shut_end,
            "destroy task": destroy[1] - destroy[0],
            "after destroy (poll, release)": self.last - destroy[1],
            "whole removal": self.last - self.first,
        }


def timelines(requests: list[Request], tasks: list[Any], offset: float) -> list[VmTimeline]:
    """offset: time.time() - time.monotonic(), to put the tasks' epoch times on the clock."""
    seen: dict[int, list[Request]] = defaultdict(list)
    for r in requests:
        m = VM_PATH_RE.search(r.path)
        if m:
            seen[int(m[1])].append(r)
        elif "/tasks/UPID:" in unquote(r.path):
            task_id = unquote(r.path).split("/tasks/", 1)[1].split(":")[6]
            if task_id.isdigit():
                seen[int(task_id)].append(r)
    result = []
    for vmid, reqs in seen.items():
        spans = {
            t.type: (t.starttime - offset, (t.endtime or t.starttime) - offset)
            for t in tasks
            if t.id == str(vmid)
        }
        result.append(
            VmTimeline(vmid, min(r.began for r in reqs), max(r.ended for r in reqs), spans)
        )
    return sorted(result, key=lambda t: t.first)


def listing_end(requests: list[Request]) -> float:
    """When `down --all`'s listing ended: its last agent address or pending-config read (the
    removals read neither)."""
    reads = [r.ended for r in requests if "/agent/" in r.path or r.path.endswith("/pending")]
    return max(reads, default=min((r.began for r in requests), default=0.0))


def row(label: str, values: list[float]) -> str:
    if not values:
        return f"  {label:<34} -"
    return f"  {label:<34} {statistics.median(values):6.2f} {max(values):6.2f} {sum(values):7.1f}"


def report(
    down: Run, requests: list[Request], spans: list[Span], waits: list[float], server: SimServer
) -> None:
    assert server.cluster is not None and server.app is not None
    offset = time.time() - time.monotonic()
    tasks = [t for t in server.cluster.tasks.values() if t.starttime - offset >= down.started]
    listed = listing_end(requests)
    lines = timelines([r for r in requests if r.began >= listed], tasks, offset)
    print(f"  labctl process: CPU {down.cpu_s:.1f} s")
    if requests and lines:
        first = min(t.first for t in lines)
        last = max(t.last for t in lines)
        print(
            f"  its first API request at {min(r.began for r in requests) - down.started:.1f} s "
            f"(Python start-up, imports, lab file); the listing (ls) done at "
            f"{listed - down.started:.1f} s; the first removal began at "
            f"{first - down.started:.1f} s; removals {last - first:.1f} s; after the last: "
            f"{down.ended - last:.1f} s"
        )
        busy = max(sum(t.first <= at < t.last for t in lines) for at in (t.first for t in lines))
        print(f"  VMs being removed at once: at most {busy}")
    print()
    print("  per VM (simulator's view), seconds        median    max     sum")
    names = list(dict.fromkeys(n for t in lines for n in t.phases()))
    for name in names:
        print(row(name, [t.phases()[name] for t in lines if t.phases()]))
    settings = server.cluster.settings
    print()
    print("  tasks (its simulated minimum)              median    max     sum")
    for task_type in ("qmshutdown", "qmstop", "qmdestroy"):
        chosen = [t for t in tasks if t.type == task_type]
        values = [(t.endtime or t.starttime) - t.starttime for t in chosen]
        label = f"{task_type} x{len(chosen)} (min {settings.duration(task_type):g} s)"
        print(row(label, values))
    print()
    print("  guest backend                              median    max     sum")
    by_what: dict[str, list[float]] = defaultdict(list)
    for s in spans:
        by_what[s.what].append(s.seconds)
    for what, values in by_what.items():
        print(row(f"{what} x{len(values)}", values))
    print(row(f"waits > 1 ms for its lock x{len(waits)}", waits))
    print()
    worker_wait = sum(r.worker_wait for r in requests)
    print(
        f"  simulator requests: {len(requests)}, {worker_wait:.1f} s waiting for a pvedaemon "
        f"worker (peak busy {server.app.daemon.peak('pve')})"
    )
    print("    kind                          count  median ms  max ms  worker wait s")
    by_kind: dict[str, list[Request]] = defaultdict(list)
    for r in requests:
        by_kind[kind(r.method, r.path)].append(r)
    for name, items in sorted(by_kind.items(), key=lambda kv: -len(kv[1])):
        lat = [1000 * (r.ended - r.began) for r in items]
        print(
            f"    {name:<29} {len(items):5d}  {statistics.median(lat):9.0f}  {max(lat):6.0f}  "
            f"{sum(r.worker_wait for r in items):13.1f}"
        )


# -- the run ------------------------------------------------------------------------------------


def bring_up(launcher: Launcher, names: list[str]) -> int:
    started = [
        launcher.start(n, "up", n, "--cores", "1", "--ram", "1G", "--no-deploy") for n in names
    ]
    for _run, reaper in started:
        reaper.join()
    failed = [run for run, _ in started if run.code != 0]
    for run in failed:
        tail = " | ".join(run.stderr.strip().splitlines()[-2:])
        print(f"  up {run.label}: exit {run.code}: {tail}")
    return len(names) - len(failed)


def measure(
    launcher: Launcher,
    log: RequestLog,
    backend_log: BackendLog,
    server: SimServer,
    args: argparse.Namespace,
) -> list[float]:
    figures = []
    for n in range(1, args.runs + 1):
        names = [f"da{n}x{i:02d}" for i in range(1, args.count + 1)]
        began = time.monotonic()
        up = bring_up(launcher, names)
        print(f"run {n}: {up}/{len(names)} VMs up in {time.monotonic() - began:.1f} s (untimed)")
        down = launcher.run("down-all", "--json", "down", "--all", "--yes", *args.labctl)
        left = launcher.run("ls", "--json", "ls").document().get("vms", [])
        destroyed = len(down.document().get("destroyed", []))
        print(
            f"run {n}: labctl down --all --yes {' '.join(args.labctl)}: {down.wall:.1f} s for "
            f"{up} VMs (target < {TARGET_S:g} s), exit {down.code}, {destroyed} destroyed, "
            f"labctl VMs left {len(left)}"
        )
        if down.code != 0:
            print(down.stderr[-2000:])
        report(
            down,
            log.between(down.started, down.ended),
            backend_log.between(down.started, down.ended),
            backend_log.waits_between(down.started, down.ended),
            server,
        )
        figures.append(down.wall)
        print()
    return figures


@contextmanager
def simulator(base: Path) -> Iterator[tuple[SimServer, BackendLog]]:
    from provision.sim.guests.container import ContainerBackend

    backend = ContainerBackend(base / "guests", bridge=BRIDGE, subnet=SUBNET, prefix=PREFIX)
    print(backend.describe())
    backend_log = BackendLog()
    backend_log.install(backend)
    with SimServer(base / "sim", backend=backend) as server:
        yield server, backend_log


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--count", type=int, default=20)
    parser.add_argument("--runs", type=int, default=1, help="up N + down --all, this many times")
    parser.add_argument("labctl", nargs="*", help="extra `labctl down` options, after --")
    args = parser.parse_args()
    if lacks_root("down_all"):
        return 2
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    env = labctl_env()
    with tempfile.TemporaryDirectory(prefix="labctl-bench-") as tmp:
        base = Path(tmp)
        key = new_ssh_key(base)
        with simulator(base) as (server, backend_log):
            log = RequestLog()
            log.install(server.app)
            settings = server.cluster.settings.to_json() if server.cluster else {}
            print(
                f"simulator: daemon_workers {settings.get('daemon_workers')}, "
                f"tasks {settings.get('task_durations')}"
            )
            lab = base / "labctl.toml"
            write_lab(lab, server, key)
            env["LABCTL_STATE_DIR"] = str(base / "state")
            (base / "logs").mkdir()
            launcher = Launcher(
                [sys.executable, "-m", "provision", "--config", str(lab)], env, base / "logs"
            )
            try:
                figures = measure(launcher, log, backend_log, server, args)
                print(
                    f"down --all of {args.count} VMs: " + ", ".join(f"{f:.1f} s" for f in figures)
                )
                return 0
            except KeyboardInterrupt:
                print("interrupted: stopping the labctl processes, down --all, the simulator")
                return 130
            finally:
                launcher.close()
                leftover = launcher.run("cleanup", "down", "--all", "--yes")
                if leftover.code != 0:
                    print(f"cleanup: down --all exited {leftover.code}: {leftover.stderr[-500:]}")


if __name__ == "__main__":
    raise SystemExit(main())
