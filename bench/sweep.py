#!/usr/bin/env python3
"""Probes and reboots used by the smart sweep vs the grid on the same matrix, and whether both
give the same minimum. Prints the ratios measured in this run.

  python -m bench.sweep                      # replayed tables (gemma2:2b on CPU, realistic)
  python -m bench.sweep --vm gemma --cores 1,2 --ram 1G,2G,3G --min-tps 2 \\
        [--config labctl.toml --state-dir DIR]    # plus a real run of both strategies via labctl

The replayed part needs no VM: each strategy's measure() answers from a table modelled on
probes of gemma2:2b (OOM below ~3.1 GiB, tok/s flattening past 6-8 vCPUs, cpu types without AVX2
at ~40 %). Reboots count one per shape change, starting from the VM's shape (the largest).
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
from pathlib import Path

from provision.shape import Shape
from provision.sweep.model import FreeMemTarget, Measurement, Space, Targets
from provision.sweep.strategy import search
from tests.support.replay import Replay, one_at_a_time
from tests.support.sweep_tables import MATRIX, gemma_table, random_monotone_table

G = 1024
CASES: list[tuple[str, Space, Targets]] = [
    ("5 cores x 5 RAM x 2 cpu, >=10 tok/s", MATRIX, Targets(min_tps=10)),
    (
        "same, >=5 tok/s, TTFT<=1s, 40% free",
        MATRIX,
        Targets(min_tps=5, max_ttft_s=1.0, min_free_mem=FreeMemTarget(percent=40)),
    ),
    ("same, >=30 tok/s (none meets it)", MATRIX, Targets(min_tps=30)),
    (
        "cores 1-16 x 6 RAM x host, >=8 tok/s",
        Space(tuple(range(1, 17)), (2 * G, 3 * G, 4 * G, 6 * G, 8 * G, 16 * G), ("host",)),
        Targets(min_tps=8),
    ),
    (
        "cores 1-12 x 4 RAM x 3 cpu, >=4 tok/s",
        Space(
            tuple(range(1, 13)), (2 * G, 4 * G, 8 * G, 16 * G), ("host", "x86-64-v2-AES", "kvm64")
        ),
        Targets(min_tps=4),
    ),
]


def replay(
    space: Space, table: dict[Shape, Measurement], targets: Targets, strategy: str
) -> tuple[Measurement | None, int, int]:
    start = Shape(max(space.cores), max(space.ram_mib), space.cpu_types[0])
    fake = Replay(table, start=start)
    result = search(space, targets, one_at_a_time(fake), strategy=strategy, start=start)
    return result.minimum, len(fake.probed), fake.reboots


def replayed_cases() -> bool:
    print(f"{'matrix / targets':<42} {'grid':>11} {'smart':>11} {'probes':>7} {'reboots':>8}  same")
    print(f"{'':<42} {'prb/rbt':>11} {'prb/rbt':>11} {'ratio':>7} {'ratio':>8}  minimum")
    all_same = True
    for label, space, targets in CASES:
        table = gemma_table(space)
        g_min, g_probes, g_reboots = replay(space, table, targets, "grid")
        s_min, s_probes, s_reboots = replay(space, table, targets, "smart")
        same = g_min == s_min
        all_same &= same
        print(
            f"{label:<42} {g_probes:>5}/{g_reboots:<5} {s_probes:>5}/{s_reboots:<5} "
            f"{s_probes / g_probes:>7.2f} {s_reboots / max(g_reboots, 1):>8.2f}  "
            f"{'yes' if same else 'NO'}: {s_min.shape.label if s_min else 'none'}"
        )
    return all_same


def random_tables(count: int = 500) -> bool:
    agree, smart_total, grid_total = 0, 0, 0
    for seed in range(count):
        rng = random.Random(seed)
        space, table = random_monotone_table(rng)
        targets = Targets(
            min_tps=rng.choice([None, 1.0, 2.0, 4.0, 8.0]),
            min_free_mem=rng.choice([None, FreeMemTarget(percent=50)]),
        )
        g_min, g_probes, _ = replay(space, table, targets, "grid")
        s_min, s_probes, _ = replay(space, table, targets, "smart")
        agree += g_min == s_min
        smart_total, grid_total = smart_total + s_probes, grid_total + g_probes
    print(
        f"\n{count} random monotone tables: same minimum in {agree}/{count}; "
        f"smart used {smart_total / grid_total:.2f} of grid's probes "
        f"({smart_total} vs {grid_total})"
    )
    return agree == count


def real_run(args: argparse.Namespace) -> bool:
    """Both strategies through `labctl sweep --fresh --json` on a real (or simulated) VM."""
    base = [sys.executable, "-m", "provision"]
    if args.config:
        base += ["--config", args.config]
    if args.state_dir:
        base += ["--state-dir", args.state_dir]
    outcome = {}
    for strategy in ("grid", "smart"):
        command = [
            *base,
            "sweep",
            args.vm,
            "--cores",
            args.cores,
            "--ram",
            args.ram,
            "--cpu-type",
            args.cpu_type,
            "--strategy",
            strategy,
            "--fresh",
            "--json",
        ]
        if args.min_tps:
            command += ["--min-tps", args.min_tps]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if not done.stdout.strip():
            print(
                f"real {strategy} sweep failed (exit {done.returncode}): "
                f"{done.stderr.strip().splitlines()[-1:]}"
            )
            return False
        outcome[strategy] = json.loads(done.stdout)
    grid, smart = outcome["grid"], outcome["smart"]
    same = (grid["minimum"] or {}).get("cores") == (smart["minimum"] or {}).get("cores") and (
        grid["minimum"] or {}
    ).get("memory_mib") == (smart["minimum"] or {}).get("memory_mib")
    print(
        f"\nreal run on {args.vm}: grid {grid['stats']['probes']} probes / "
        f"{grid['stats']['reboots']} reboots, smart {smart['stats']['probes']} / "
        f"{smart['stats']['reboots']}; probe ratio "
        f"{smart['stats']['probes'] / max(grid['stats']['probes'], 1):.2f}; "
        f"same minimum: {'yes' if same else 'NO'} ({smart['recommendation']})"
    )
    return same


def write_reports(directory: Path) -> None:
    """The first case's grid and smart sweeps as HTML reports (what `labctl report` shows)."""
    from provision.report.files import write_report
    from provision.report.model import build_report

    _label, space, targets = CASES[0]
    for strategy in ("grid", "smart"):
        start = Shape(max(space.cores), max(space.ram_mib), space.cpu_types[0])
        fake = Replay(gemma_table(space), start=start)
        result = search(space, targets, one_at_a_time(fake), strategy=strategy, start=start)
        report = build_report(
            sweep_id=f"bench-{strategy}",
            vm="gemma (replayed)",
            status="done",
            created_at="",
            updated_at="",
            spec={"strategy": strategy, "probe": {"model": "gemma2:2b"}},
            result=result,
            probes=len(fake.probed),
            reboots=fake.reboots,
        )
        for path in write_report(report, directory / f"sweep-{strategy}.html", "html"):
            print(f"report: {path}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vm", help="also sweep this labctl VM for real with both strategies")
    parser.add_argument("--cores", default="1,2")
    parser.add_argument("--ram", default="1G,2G,3G")
    parser.add_argument("--cpu-type", default="host")
    parser.add_argument("--min-tps")
    parser.add_argument("--config")
    parser.add_argument("--state-dir")
    parser.add_argument(
        "--report-dir",
        type=Path,
        help="also write the replayed grid and smart sweeps as HTML reports",
    )
    args = parser.parse_args()
    ok = replayed_cases()
    ok &= random_tables()
    if args.report_dir:
        write_reports(args.report_dir)
    if args.vm:
        ok &= real_run(args)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
