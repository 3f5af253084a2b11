#!/usr/bin/env python3
"""How honest is `labctl probe`? Two ratios, measured in one run, printed.

1. The sampler's own CPU use, as a percentage of one core (limit: < 1 %). The agent measures
   it itself: the sampler thread's CPU time (time.thread_time) over the run's wall time; the
   whole agent process (getrusage: sampler + HTTP stream reading) is shown beside it.
2. The eval tok/s labctl reports (table, --json and SQLite) against eval_count / eval_duration
   recomputed from Ollama's raw fields (limit: within 1 %). The rate seen in the token stream
   itself is shown too, as an independent check of Ollama's eval_duration.

By default it starts the Ollama TEST DOUBLE (tests/doubles: real CPU work, not Ollama) on
127.0.0.1 and runs the agent on this host exactly as a guest would (`python3 - <options>`).
--ollama-url measures against an Ollama you already run instead.

    python -m bench.probe_overhead [--runs 5] [--num-predict 128] [--ollama-url URL]
"""

from __future__ import annotations

import argparse
import base64
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from provision import store
from provision.probe.collect import collect
from provision.probe.result import ProbeOptions, ProbeResult
from provision.probe.run import AGENT_PATH
from provision.progress import NullReporter

SAMPLER_LIMIT_PCT = 1.0
RATE_LIMIT_PCT = 1.0


def run_probe(
    options: ProbeOptions, state: Path
) -> tuple[ProbeResult, list[dict[str, object]], list[dict[str, object]]]:
    """The agent on this host, its lines through labctl's own collector and store."""
    encoded = base64.b64encode(json.dumps(options.agent_options()).encode()).decode()
    done = subprocess.run(
        [sys.executable, "-", encoded],
        input=AGENT_PATH.read_bytes(),
        capture_output=True,
        check=True,
        timeout=3600,
    )
    lines = done.stdout.decode().splitlines()
    conn = store.connect(state)
    recorder = store.ProbeRecorder(
        conn, store.VmRecord(name="bench"), options.model, options.agent_options(), "nonce"
    )
    result = collect(lines, options, NullReporter(), recorder, vm="bench")
    raw = [json.loads(line) for line in lines if '"event":"run"' in line]
    return result, raw, store.list_runs(conn, "bench")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--num-predict", type=int, default=128)
    parser.add_argument("--ollama-url", help="an Ollama already running (default: the double)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="labctl-bench-") as tmp:
        double = None
        url = args.ollama_url
        if url is None:
            from tests.support.installed_double import start_double

            double = start_double(Path(tmp) / "double", 64 << 20)
            url = double.url
            print(f"Ollama TEST DOUBLE on {url} (64 MiB weights; CPU work, not a real model)")
        try:
            options = ProbeOptions(
                runs=args.runs, warmup=args.warmup, num_predict=args.num_predict, ollama_url=url
            )
            result, raw, rows = run_probe(options, Path(tmp) / "state")
        finally:
            if double is not None:
                from tests.support.installed_double import stop_double

                stop_double(double.process)
    return report(result, raw, rows)


def report(result: ProbeResult, raw: list[dict[str, object]], rows: list[dict[str, object]]) -> int:
    by_index = {int(e["run"]): e for e in raw}  # type: ignore[call-overload]
    stored = {int(r["run_index"]): r for r in rows}  # type: ignore[call-overload]
    print(
        f"{'run':>4} {'samples':>7} {'Hz':>5} {'sampler %core':>13} {'agent %core':>11} "
        f"{'reported tok/s':>14} {'count/duration':>14} {'stored':>9} {'dev %':>6} "
        f"{'stream tok/s':>12}"
    )
    worst_sampler, worst_dev = 0.0, 0.0
    for run in result.measured:
        event = by_index[run.index]
        ollama = event["ollama"]
        assert isinstance(ollama, dict)
        recomputed = ollama["eval_count"] / (ollama["eval_duration"] / 1e9)
        reported = run.eval_tps or 0.0
        kept = float(stored[run.index]["eval_tps"] or 0)  # type: ignore[arg-type]
        dev = max(abs(reported - recomputed), abs(kept - recomputed)) / recomputed * 100
        agent_pct = 100 * (run.agent_cpu_s or 0) / (run.wall_s or 1)
        stream = (
            ((run.stream_tokens or 1) - 1) / run.stream_decode_s
            if run.stream_decode_s
            else float("nan")
        )
        sampler = run.sampler_cpu_pct or 0.0
        worst_sampler, worst_dev = max(worst_sampler, sampler), max(worst_dev, dev)
        print(
            f"{run.index:>4} {run.peaks.samples:>7} {run.sample_hz or 0:>5.1f} "
            f"{sampler:>13.3f} {agent_pct:>11.3f} {reported:>14.3f} {recomputed:>14.3f} "
            f"{kept:>9.3f} {dev:>6.3f} {stream:>12.3f}"
        )
    median = result.summary["eval_tps"]
    recomputed_median = statistics.median(
        e["ollama"]["eval_count"] / (e["ollama"]["eval_duration"] / 1e9)  # type: ignore[index]
        for e in raw
        if not e["warmup"]
    )
    print(
        f"summary median eval tok/s: reported {median.median if median else float('nan'):.3f},"
        f" recomputed {recomputed_median:.3f}"
    )
    ok_sampler = worst_sampler < SAMPLER_LIMIT_PCT
    ok_rate = worst_dev < RATE_LIMIT_PCT
    print(
        f"sampler CPU, worst run: {worst_sampler:.3f} % of one core "
        f"(limit {SAMPLER_LIMIT_PCT} %): {'OK' if ok_sampler else 'OVER'}"
    )
    print(
        f"eval tok/s vs eval_count/eval_duration, worst run: {worst_dev:.4f} % "
        f"(limit {RATE_LIMIT_PCT} %): {'OK' if ok_rate else 'OVER'}"
    )
    return 0 if ok_sampler and ok_rate else 1


if __name__ == "__main__":
    sys.exit(main())
