"""OLLAMA_NUM_PARALLEL in the double with the REAL llama-server, as in Ollama v0.32.15.

Ollama starts llama-server with `-np N` slots and N x num_ctx context (llm/llama_server.go:
375-376) and lets N requests to a model run at once (a semaphore of numParallel, :960 and
:1536-1542); more wait for a slot. Checked from the outside: the runner's argv, and the slots
llama-server itself logs as launched and released (no timing thresholds). Then the probe agent's
concurrency levels on top: every stream's timestamps, gaps and Ollama's durations.
"""

from __future__ import annotations

import itertools
import re
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from provision.probe.concurrency import LevelRound, ThreadLoad, level_stats
from provision.probe.run import ProbeOptions
from tests.doubles import OllamaMirror, prepare_mirror
from tests.support.agent import of_kind, run_agent
from tests.support.double_server import Double, start_double, stop_double

MODEL = "gemma2-shaped:tiny"
SLOTS = 2


@pytest.fixture(scope="module")
def parallel_double(
    llama_engine: Any, tiny_gguf: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Double]:
    root = tmp_path_factory.mktemp("parallel-mirror")
    release, _ = prepare_mirror(root, models={MODEL: tiny_gguf}, llama_server=llama_engine.server)
    prefix = tmp_path_factory.mktemp("parallel-usr-local")
    subprocess.run(["tar", "--zstd", "-xf", str(release.tarball), "-C", str(prefix)], check=True)
    with OllamaMirror(root) as mirror:
        log = tmp_path_factory.mktemp("parallel-log") / "ollama.log"
        running = start_double(
            prefix,
            tmp_path_factory.mktemp("parallel-models"),
            mirror.url,
            log=log,
            OLLAMA_NUM_PARALLEL=str(SLOTS),
        )
        try:
            status, _ = running.json("POST", "/api/pull", {"model": MODEL, "stream": False})
            assert status == 200
            yield running
        finally:
            stop_double(running)


def slot_events(double: Double) -> list[tuple[str, int]]:
    """llama-server's own log of slots starting and ending tasks, in order."""
    assert double.log is not None
    found = re.findall(
        r"slot\s+(?:launch_slot_|release): id\s+(\d+) \| task \d+ \| "
        r"(processing task|stop processing)",
        double.log.read_text(),
    )
    return [
        ("launch" if what == "processing task" else "release", int(slot)) for slot, what in found
    ]


def most_at_once(events: list[tuple[str, int]]) -> int:
    busy, most = 0, 0
    for kind, _ in events:
        busy += 1 if kind == "launch" else -1
        most = max(most, busy)
    return most


def test_num_parallel_gives_the_runner_slots_and_context_for_each(
    parallel_double: Double,
) -> None:
    status, _ = parallel_double.json("POST", "/api/generate", {"model": MODEL, "prompt": ""})
    assert status == 200
    (runner,) = parallel_double.runner_pids()
    argv = Path(f"/proc/{runner}/cmdline").read_bytes().decode().split("\0")[:-1]
    flags = dict(itertools.pairwise(argv))
    assert flags["-np"] == str(SLOTS) and flags["-c"] == str(4096 * SLOTS)


def test_requests_beyond_the_slots_wait_and_up_to_the_slots_run_at_once(
    parallel_double: Double,
) -> None:
    before = len(slot_events(parallel_double))
    gate = threading.Barrier(SLOTS + 1)
    replies: list[dict[str, Any]] = []

    def one(i: int) -> None:
        gate.wait()
        status, reply = parallel_double.json(
            "POST",
            "/api/generate",
            {
                "model": MODEL,
                "prompt": f"request {i}: tell a long story",
                "stream": False,
                "options": {"num_predict": 64, "temperature": 0, "seed": i},
            },
        )
        assert status == 200, reply
        replies.append(reply)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(SLOTS + 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    events = slot_events(parallel_double)[before:]
    assert len(replies) == SLOTS + 1
    assert sum(1 for kind, _ in events if kind == "launch") == SLOTS + 1
    # never more tasks in llama-server than slots: the third waited in Ollama's semaphore
    assert most_at_once(events) == SLOTS
    assert {slot for _, slot in events} <= set(range(SLOTS))


def test_the_agent_measures_each_level_with_every_stream_timed_in_the_guest(
    parallel_double: Double,
) -> None:
    options = ProbeOptions(
        model=MODEL,
        runs=1,
        warmup=0,
        num_predict=12,
        ollama_url=parallel_double.url,
        concurrency=(1, 2),
        thread_counts=(None, 1),
    )
    events, code = run_agent(options, timeout=300)

    assert code == 0, events[-1]
    loads = [ThreadLoad.from_event(e) for e in of_kind(events, "thread_load")]
    assert [load.num_thread for load in loads] == [None, 1] and all(load.ok for load in loads)
    assert loads[0].runners[0].argv_threads is None  # auto: Ollama passes no -t
    assert loads[1].runners[0].argv_threads == 1 and loads[1].runners[0].tasks >= 1
    assert loads[1].runners[0].argv_parallel == SLOTS
    rounds = [LevelRound.from_event(e) for e in of_kind(events, "level")]
    assert [(r.num_thread, r.users) for r in rounds] == [(None, 1), (None, 2), (1, 1), (1, 2)]
    for one in rounds:
        assert len(one.requests) == one.users and all(r.ok for r in one.requests)
        for request in one.requests:
            assert request.ttft_s is not None and request.queue_wait_s is not None
            assert len(request.gaps_s) == request.tokens - 1 and request.eval_tps
        stats = level_stats([one])
        assert stats.completed == one.users and stats.failed == 0
        assert stats.aggregate_tps and stats.ttft_p95_s and stats.itl_p50_s is not None
    facts = of_kind(events, "facts")[0]
    assert facts["ollama_num_parallel"] == SLOTS  # read from the server's own environment
    assert facts["topology"]["processors"] >= 1
