"""Benchmark: N container guests (default 40 of 1 vCPU / 1 GiB) running at once, SSH in each.

Starts the simulator with container guests (root needed) on bridge llbr42 / 10.213.42.0/24,
prefix ll42; through the API clones N VMs from template 9000, sets 1 core and 1 GiB, starts them
all at once, and waits for each one's agent IP and an SSH banner. Prints how many came up, how
long it took, what the host had left (memory, inotify instances, tasks), and the errors of those
that did not come up; then stops and destroys everything. Asserts nothing.

Usage: python -m bench.many_guests [--count 40] [--cores 1] [--memory 1024] [--mem-scale 1]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
from proxmoxer import ResourceException
from proxmoxer.tools import Tasks

from bench.harness import lacks_root
from provision.sim.guests.capacity import HostReader, HostUsage
from provision.sim.guests.container import ssh_banner
from provision.sim.server import SimServer
from tests.support.sim_api import token_api

BRIDGE, SUBNET, PREFIX = "llbr42", "10.213.42.0/24", "ll42"
FIRST_VMID = 400
NODE = "pve"
SETTINGS: dict[str, Any] = {
    "agent_delay": 0.5,
    "agent_timeout": 0.2,
    "task_durations": {"qmclone": 0.2, "qmconfig": 0.05, "qmstart": 0.5, "qmstop": 0.1},
    "default_task_duration": 0.1,
}


@dataclass
class Outcome:
    vmid: int
    started: float = 0.0  # monotonic, when the start was asked for
    start_done: float | None = None
    ip: str | None = None
    ip_at: float | None = None
    ssh_at: float | None = None
    error: str | None = None


def finished(api: Any, upid: str, timeout: float = 300) -> str:
    status = Tasks.blocking_status(api, upid, timeout=timeout, polling_interval=0.2)
    return str(status["exitstatus"]) if status else f"task {upid} did not finish"


def clone(api: Any, vmid: int, cores: int, memory: int) -> str | None:
    upid = api.nodes(NODE).qemu(9000).clone.post(newid=vmid, name=f"many{vmid}")
    result = finished(api, upid)
    if result != "OK":
        return f"clone: {result}"
    api.nodes(NODE).qemu(vmid).config.put(cores=cores, memory=memory)
    return None


def agent_ip(api: Any, vmid: int) -> str | None:
    try:
        ifaces = api.nodes(NODE).qemu(vmid).agent("network-get-interfaces").get()["result"]
    except (ResourceException, requests.RequestException):
        return None  # not up yet (500 "QEMU guest agent is not running"), or a slow answer
    for iface in ifaces:
        for addr in iface.get("ip-addresses", []):
            if iface["name"] != "lo" and addr["ip-address-type"] == "ipv4":
                return str(addr["ip-address"])
    return None


def bring_up(api: Any, outcome: Outcome, deadline: float) -> None:
    """Start the VM, then wait for its agent's IP and an SSH banner."""
    vm = api.nodes(NODE).qemu(outcome.vmid)
    outcome.started = time.monotonic()
    result = finished(api, vm.status.start.post())
    outcome.start_done = time.monotonic()
    if result != "OK":
        outcome.error = f"start: {result}"
        return
    while outcome.ip is None:
        if time.monotonic() > deadline:
            outcome.error = "no agent IP before the deadline"
            return
        outcome.ip = agent_ip(api, outcome.vmid)
        if outcome.ip is None:
            time.sleep(0.5)
    outcome.ip_at = time.monotonic()
    while ssh_banner(outcome.ip, timeout_s=2) is None:
        if time.monotonic() > deadline:
            outcome.error = f"no SSH banner from {outcome.ip} before the deadline"
            return
        time.sleep(0.5)
    outcome.ssh_at = time.monotonic()


def cleanup(api: Any, vmids: list[int]) -> None:
    def one(vmid: int) -> None:
        vm = api.nodes(NODE).qemu(vmid)
        try:
            if vm.status.current.get()["status"] == "running":
                finished(api, vm.status.stop.post())
            finished(api, vm.delete())
        except (ResourceException, requests.RequestException) as exc:
            print(f"  cleanup of VM {vmid}: {exc}")

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(one, vmids))


def per_guest(server: SimServer, vmids: list[int]) -> str:
    """What the running guests hold on the host, per guest (the capacity check's footprint)."""
    backend: Any = server.backend
    running = [v for v in vmids if backend.is_running(v)]
    if not running:
        return "no guest running"
    _host, (instances, watches) = HostReader().usage(backend.cgroups.all_guest_pids())
    memory = [backend.usage(v)[1] for v in running]
    return (
        f"per running guest: {instances / len(running):.1f} inotify instances, "
        f"{watches / len(running):.1f} watches, memory (cgroup) median "
        f"{statistics.median(memory) / 2**20:.0f} MiB, total {sum(memory) / 2**30:.2f} GiB"
    )


def host_line(usage: HostUsage) -> str:
    return (
        f"MemAvailable {usage.mem_available / 2**30:.1f} GiB, inotify instances "
        f"{usage.inotify_instances_used}/{usage.inotify_instances_max}, watches "
        f"{usage.inotify_watches_used}/{usage.inotify_watches_max}, tasks "
        f"{usage.tasks}/{usage.tasks_max}"
    )


def report(outcomes: list[Outcome], began: float) -> None:
    up = [o for o in outcomes if o.ssh_at is not None]
    print(f"guests with SSH up: {len(up)}/{len(outcomes)}")
    if up:
        to_ssh = sorted((o.ssh_at or 0) - o.started for o in up)
        to_start = sorted((o.start_done or 0) - o.started for o in up)
        last = max(o.ssh_at or 0 for o in up) - began
        print(f"all {len(up)} up after {last:.1f} s (from the first start request)")
        print(
            f"start task: median {statistics.median(to_start):.1f} s, max {to_start[-1]:.1f} s; "
            f"start to SSH banner: min {to_ssh[0]:.1f} s, median "
            f"{statistics.median(to_ssh):.1f} s, max {to_ssh[-1]:.1f} s"
        )
    for o in outcomes:
        if o.error:
            print(f"  VM {o.vmid}: {o.error}")


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--count", type=int, default=40)
    parser.add_argument("--cores", type=int, default=1)
    parser.add_argument("--memory", type=int, default=1024, help="MiB per VM")
    parser.add_argument("--mem-scale", type=float, default=1.0)
    parser.add_argument("--timeout", type=float, default=300, help="seconds for all to come up")
    args = parser.parse_args()
    if lacks_root("many_guests"):
        return 2
    from provision.sim.guests.container import ContainerBackend

    reader = HostReader()
    print(f"host before: {host_line(reader.usage()[0])}")
    vmids = list(range(FIRST_VMID, FIRST_VMID + args.count))
    with tempfile.TemporaryDirectory(prefix="labctl-bench-") as tmp:
        base = Path(tmp)
        backend = ContainerBackend(
            base / "guests", bridge=BRIDGE, subnet=SUBNET, prefix=PREFIX, mem_scale=args.mem_scale
        )
        print(backend.describe())
        with SimServer(base / "sim", backend=backend, **SETTINGS) as server:
            api = token_api(server, timeout=60)
            began = time.monotonic()
            with ThreadPoolExecutor(8) as pool:
                errors = list(pool.map(lambda v: clone(api, v, args.cores, args.memory), vmids))
            print(f"cloned {args.count} VMs in {time.monotonic() - began:.1f} s")
            failed = [e for e in errors if e]
            if failed:
                print(f"  {len(failed)} clones failed, first: {failed[0]}")
            outcomes = [Outcome(v) for v, e in zip(vmids, errors, strict=True) if e is None]
            began = time.monotonic()
            deadline = began + args.timeout
            threads = [
                threading.Thread(target=bring_up, args=(token_api(server, timeout=60), o, deadline))
                for o in outcomes
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            print(
                f"{args.count} VMs of {args.cores} vCPU / {args.memory} MiB, "
                f"mem_scale {args.mem_scale:g}:"
            )
            report(outcomes, began)
            print(f"host with them running: {host_line(reader.usage()[0])}")
            print(per_guest(server, vmids))
            began = time.monotonic()
            cleanup(api, vmids)
            print(f"stopped and destroyed them in {time.monotonic() - began:.1f} s")
    print(f"host after: {host_line(reader.usage()[0])}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
