#!/usr/bin/env python3
"""The smallest shape that serves N users: `labctl sweep --users N` on the real engine.

In one simulator guest (a systemd container limited to each shape's cores and RAM), deployed with
the Ollama test double that starts the REAL llama-server on a GGUF file with gemma2:2b's
architecture and size: `labctl sweep VM --cores 1,2 --ram 4G --users 2 --max-ttft-p95 T
--min-tps-per-user R --strategy grid` through the real CLI. Each shape is resized (a reboot) and
probed at 1 and 2 users at once; printed: the sweep's own report (its table, the capacity table
of users x shape, the one-line answer) and the wall time. A benchmark, not a test: nothing is
asserted.

    sudo python -m bench.service_sweep [--cores 1,2] [--ram 4G] [--users 2] \
        [--max-ttft-p95 5s] [--min-tps-per-user 4] [--runs 1] [--num-predict 32]

Needs root (container guests), the Debian packages of scripts/bootstrap.sh, ~5 GiB of free RAM;
the first run builds llama.cpp (~7 min) and writes the 1.6 GB model.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from bench.capacity import cli
from tests.support.e2e_lab import guest_lab

VM = "svc"
BRIDGE, SUBNET, PREFIX = "lbbr93", "10.213.93.0/24", "lb93"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cores", default="1,2")
    parser.add_argument("--ram", default="4G")
    parser.add_argument("--users", default="2")
    parser.add_argument("--max-ttft-p95", default="5s")
    parser.add_argument("--min-tps-per-user", default="4")
    parser.add_argument("--runs", default="1")
    parser.add_argument("--num-predict", default="32")
    args = parser.parse_args()
    largest = max(int(c) for c in args.cores.split(","))
    with (
        tempfile.TemporaryDirectory(prefix="service-sweep-") as scratch,
        guest_lab(Path(scratch), bridge=BRIDGE, subnet=SUBNET, prefix=PREFIX, vms=(VM,)) as lab,
    ):
        cli(lab.cli, "up", VM, "--cores", str(largest), "--ram", args.ram.split(",")[-1])
        started = time.monotonic()
        sweep = lab.cli.run(
            "sweep",
            VM,
            "--cores",
            args.cores,
            "--ram",
            args.ram,
            "--users",
            args.users,
            "--max-ttft-p95",
            args.max_ttft_p95,
            "--min-tps-per-user",
            args.min_tps_per_user,
            "--strategy",
            "grid",
            "--runs",
            args.runs,
            "--warmup",
            "1",
            "--num-predict",
            args.num_predict,
            timeout=3600,
        )
        took = time.monotonic() - started
    print(sweep.stdout)
    print(f"sweep exit code {sweep.code}, {took:.0f} s for {args.cores} vCPU x {args.ram}")
    if sweep.code not in (0, 8):  # 8: no shape met the targets, still a report
        print(sweep.stderr, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
