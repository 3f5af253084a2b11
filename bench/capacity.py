#!/usr/bin/env python3
"""How many users does one VM shape serve? `labctl probe --concurrency 1,2,4` on the real engine.

In one simulator guest (a systemd container limited to the VM's cores and RAM), deployed with the
Ollama test double that starts the REAL llama-server on a GGUF file with gemma2:2b's architecture
and size: `labctl probe --concurrency 1,2,4 --json` through the real CLI, which raises
OLLAMA_NUM_PARALLEL to 4 for the run (a drop-in of its own, one restart) and puts it back.
Printed per level: aggregate tok/s and its ratio to 1 user, tok/s per user, TTFT p50/p95/max,
inter-token p50/p95, queue wait, completed/failed; then the probe's own CPU at 4 streams (the
agent process, streams and sampler together, and the sampler alone: target under 1 % of a core)
and what OLLAMA_NUM_PARALLEL is after the probe. A benchmark, not a test: nothing is asserted.

    sudo python -m bench.capacity [--cores 2] [--ram 4G] [--users 1,2,4] [--runs 2] \
        [--num-predict 32]

Needs root (container guests), the Debian packages of scripts/bootstrap.sh, ~5 GiB of free RAM;
the first run builds llama.cpp (~7 min) and writes the 1.6 GB model.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from tests.support.e2e_lab import guest_lab
from tests.support.guests import system_ssh
from tests.support.lab import Lab

VM = "cap"
BRIDGE, SUBNET, PREFIX = "lbbr92", "10.213.92.0/24", "lb92"
SAMPLER_LIMIT_PCT = 1.0


def cli(lab: Lab, *args: str, timeout: float = 1800) -> Any:
    result = lab.run(*args, timeout=timeout)
    if result.code != 0:
        raise SystemExit(f"labctl {' '.join(args)} failed ({result.code}): {result.stderr}")
    return result


def ssh(lab: Lab, ip: str, command: str) -> str:
    done = subprocess.run(
        system_ssh(lab.key, lab.state / "known_hosts", f"labctl@{ip}", command),
        capture_output=True,
        timeout=120,
        check=False,
    )
    return done.stdout.decode().strip()


def fmt(value: float | None, digits: int = 2, scale: float = 1.0) -> str:
    return "-" if value is None else f"{value * scale:.{digits}f}"


def print_levels(levels: list[dict[str, Any]]) -> None:
    base = next((lv["aggregate_tps"] for lv in levels if lv["users"] == 1), None)
    print(
        f"{'users':>5} {'total tok/s':>11} {'x 1 user':>8} {'tok/s/user':>10} "
        f"{'TTFT p50':>8} {'p95':>6} {'max':>6} {'ITL p50 ms':>10} {'p95 ms':>7} "
        f"{'queue p50':>9} {'done':>4} {'failed':>6}"
    )
    for lv in levels:
        ratio = lv["aggregate_tps"] / base if base and lv["aggregate_tps"] else None
        print(
            f"{lv['users']:>5} {fmt(lv['aggregate_tps']):>11} {fmt(ratio):>8} "
            f"{fmt(lv['tps_per_user_p50']):>10} {fmt(lv['ttft_p50_s']):>8} "
            f"{fmt(lv['ttft_p95_s']):>6} {fmt(lv['ttft_max_s']):>6} "
            f"{fmt(lv['itl_p50_s'], 1, 1000):>10} {fmt(lv['itl_p95_s'], 1, 1000):>7} "
            f"{fmt(lv['queue_wait_p50_s']):>9} {lv['completed']:>4} {lv['failed']:>6}"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--ram", default="4G")
    parser.add_argument("--users", default="1,2,4")
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--num-predict", type=int, default=32)
    args = parser.parse_args()
    with (
        tempfile.TemporaryDirectory(prefix="capacity-") as scratch,
        guest_lab(Path(scratch), bridge=BRIDGE, subnet=SUBNET, prefix=PREFIX, vms=(VM,)) as lab,
    ):
        cli(lab.cli, "up", VM, "--cores", str(args.cores), "--ram", args.ram)
        [ip] = [v["ip"] for v in cli(lab.cli, "--json", "ls").json["vms"] if v["name"] == VM]
        before = ssh(lab.cli, ip, "systemctl show -p Environment --value ollama")
        document = cli(
            lab.cli,
            "probe",
            VM,
            "--concurrency",
            args.users,
            "--runs",
            str(args.runs),
            "--warmup",
            "1",
            "--num-predict",
            str(args.num_predict),
            "--json",
        ).json
        after = ssh(lab.cli, ip, "systemctl show -p Environment --value ollama")
        human = cli(lab.cli, "results", "--levels", "--vm", VM).stdout
    facts = document["facts"]
    topology = facts.get("topology") or {}
    print(
        f"\n{args.cores} vCPU / {args.ram} (guest: nproc {facts['vcpus']}, "
        f"{topology.get('sockets')} socket(s), {topology.get('cores')} core(s), "
        f"{topology.get('threads_per_core')} thread(s) per core, MemTotal "
        f"{facts['mem_total_bytes'] / 2**30:.2f} GiB); {args.runs} repeat(s) per level, "
        f"{args.num_predict} tokens per request; OLLAMA_NUM_PARALLEL during the probe: "
        f"{document['num_parallel']}"
    )
    for load in document["thread_loads"]:
        runners = ", ".join(
            f"-t {r['argv_threads'] or 'default'} -np {r['argv_parallel']} ({r['tasks']} tasks)"
            for r in load["runners"]
        )
        print(f"load (apart from the levels): {fmt(load['load_s'])} s, runner {runners}")
    levels = document["levels"]
    print_levels(levels)
    busiest = max(levels, key=lambda lv: lv["users"])
    print(
        f"probe's own CPU at {busiest['users']} streams: agent process "
        f"{fmt(busiest['agent_cpu_pct'])} % of one core (streams + sampler), sampler "
        f"{fmt(busiest['sampler_cpu_pct'], 3)} % (limit {SAMPLER_LIMIT_PCT:g} %)"
    )
    print(f"ollama.service Environment before: {before}")
    print(f"ollama.service Environment after:  {after}")
    print(human)
    return 0


if __name__ == "__main__":
    sys.exit(main())
