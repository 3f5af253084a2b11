"""`labctl probe --concurrency` shows a per-level table, the loads apart and the topology."""

from __future__ import annotations

from provision.cli.probe import render_probe
from provision.probe.concurrency import LevelRound, ThreadLoad
from provision.probe.facts import GuestFacts
from provision.probe.result import ProbeOptions, ProbeResult

REPLY = {
    "done": True,
    "total_duration": 3_000_000_000,
    "load_duration": 1_000_000,
    "prompt_eval_duration": 500_000_000,
    "eval_duration": 2_000_000_000,
    "eval_count": 20,
}


def a_round(users: int) -> LevelRound:
    request = {"ok": True, "ttft_s": 0.75, "tokens": 20, "gaps_s": [0.1] * 19, "ollama": REPLY}
    return LevelRound.from_event(
        {"users": users, "num_thread": 2, "wall_s": 4.0, "requests": [request] * users}
    )


def test_the_probe_table_has_one_row_per_level_with_its_figures() -> None:
    result = ProbeResult(
        vm="gemma",
        options=ProbeOptions(runs=1, concurrency=(1, 2), thread_counts=(2,)),
        facts=GuestFacts.from_event(
            {
                "vcpus": 2,
                "mem_total": 4 << 30,
                "topology": {"processors": 2, "sockets": 1, "cores": 2, "threads_per_core": 1},
            }
        ),
        rounds=[a_round(1), a_round(2)],
        thread_loads=[
            ThreadLoad.from_event(
                {
                    "num_thread": 2,
                    "ok": True,
                    "load_wall_s": 3.25,
                    "runners": [{"pid": 5, "argv_threads": 2, "argv_parallel": 2, "tasks": 9}],
                }
            )
        ],
        num_parallel=2,
        complete=True,
    )

    text = render_probe(result, shape="2 vCPU / 4 GiB")

    assert "1 socket(s), 2 core(s), 1 thread(s) per core; nproc 2; OLLAMA_NUM_PARALLEL 2" in text
    assert "2: load 3.25 s (runner -t 2, -np 2, 9 tasks)" in text
    rows = [line.split("│")[1:-1] for line in text.splitlines() if line.startswith("│")]
    cells = [[cell.strip() for cell in row] for row in rows]
    # threads, users, done, failed, total tok/s (20 tokens x users / 4 s), per user, TTFT...
    assert [row[:6] for row in cells] == [
        ["2", "1", "1", "0", "5.00", "10.00"],
        ["2", "2", "2", "0", "10.00", "10.00"],
    ]
    assert [row[9] for row in cells] == ["100.0", "100.0"]  # inter-token p50, ms
