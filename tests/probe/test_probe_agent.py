"""agent.py run on this host as the guest runs it, against the Ollama double or fixture replays."""

from __future__ import annotations

import ast
import json
import os
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from provision.probe.result import ProbeOptions
from provision.probe.run import AGENT_PATH
from tests.support.agent import of_kind, run_agent
from tests.support.installed_double import DoubleOllama
from tests.support.net import free_port
from tests.support.replay_ollama import FixtureReplayOllama, fixture_text


def options(url: str, **changes: object) -> ProbeOptions:
    return replace(ProbeOptions(runs=2, warmup=1, num_predict=24, ollama_url=url), **changes)  # type: ignore[arg-type]


def test_agent_reports_facts_runs_and_samples_from_the_double(ollama_double: DoubleOllama) -> None:
    events, code = run_agent(options(ollama_double.url))

    assert code == 0
    assert [e["event"] for e in events][:2] == ["hello", "facts"]
    assert events[-1] == {"event": "end", "runs": 3, "stopped": None}
    facts = of_kind(events, "facts")[0]
    assert facts["vcpus"] == len(os.sched_getaffinity(0))
    assert facts["tags_entry"]["digest"] == ollama_double.digest
    assert facts["ollama_version"] == "0.32.15"
    assert facts["ollama_pids"] == [ollama_double.process.pid]
    runs = of_kind(events, "run")
    assert [(r["run"], r["warmup"], r["ok"]) for r in runs] == [
        (0, True, True),
        (1, False, True),
        (2, False, True),
    ]
    for run in runs:
        final = run["ollama"]
        assert final["eval_count"] == 24 and final["done_reason"] == "length"
        assert final["eval_duration"] > 0 and final["prompt_eval_count"] > 0
        assert 0 < run["ttft_s"] < run["wall_s"]
        assert run["stream_tokens"] == 24
        assert run["cache_bust"] == "nonce-first"
    assert of_kind(events, "ps")[0]["entry"]["size_vram"] == 0


def test_each_run_gets_its_own_prompt_prefix_so_the_prompt_cache_cannot_fake_prefill(
    ollama_double: DoubleOllama,
) -> None:
    events, _ = run_agent(options(ollama_double.url))

    nonces = [e["nonce"] for e in of_kind(events, "run_start")]
    assert len(set(nonces)) == len(nonces) == 3


def test_samples_arrive_at_least_five_times_a_second_with_ollama_rss(
    ollama_double: DoubleOllama,
) -> None:
    events, _ = run_agent(options(ollama_double.url, runs=1, warmup=0, num_predict=400))

    run = of_kind(events, "run")[0]
    samples = of_kind(events, "sample")
    assert run["sampler"]["samples"] == len(samples) >= 3
    # the sampler keeps a fixed schedule (it catches up after a late wake-up) of at least 5 Hz
    assert run["sampler"]["interval_s"] <= 0.2
    assert len(samples) >= int(run["sampler"]["wall_s"] / 0.2) - 1
    rss = [s["ollama_rss"] for s in samples]
    # server + runner: the runner holds the 8 MiB of weights in RAM
    assert min(rss) > 8 << 20
    assert all(s["ollama_pids"] >= 2 for s in samples)
    assert all(0 <= s["cpu_pct"] <= 100 for s in samples if s["cpu_pct"] is not None)
    assert all(s["mem_available"] <= s["mem_total"] for s in samples)


def test_cold_unloads_before_each_measured_run_so_each_load_is_a_real_load(
    ollama_double: DoubleOllama,
) -> None:
    events, _ = run_agent(options(ollama_double.url, cold=True, runs=2, warmup=0))

    runs = of_kind(events, "run")
    assert [r["load_kind"] for r in runs] == ["cold", "cold"]
    assert all(r["cache_bust"] == "unload+nonce-first" for r in runs)
    assert all(not s["loaded_before"] for s in of_kind(events, "run_start"))
    # a warm run after them reuses the loaded runner
    warm, _ = run_agent(options(ollama_double.url, runs=1, warmup=0))
    assert of_kind(warm, "run")[0]["load_kind"] == "warm"


def test_num_thread_and_num_ctx_are_passed_and_seed_and_temperature_are_fixed(
    replay_ollama: FixtureReplayOllama,
) -> None:
    run_agent(options(replay_ollama.url, runs=1, warmup=0, num_thread=3, num_ctx=2048))

    generate = [r for r in replay_ollama.requests if r.get("prompt")]
    assert generate[0]["options"] == {
        "seed": 42,
        "temperature": 0,
        "num_predict": 24,
        "num_thread": 3,
        "num_ctx": 2048,
    }
    assert generate[0]["stream"] is True


def test_metrics_ollama_leaves_out_are_not_sent_as_zero(replay_ollama: FixtureReplayOllama) -> None:
    # the docs' streaming example ends with done:true but no timing fields at all
    events, code = run_agent(options(replay_ollama.url, runs=1, warmup=0))

    run = of_kind(events, "run")[0]
    assert code == 0 and run["ok"]
    assert run["ollama"] == {"done": True, "done_reason": "stop"}
    assert run["stream_tokens"] == 7  # the last piece, "!", comes in the done object itself


def test_an_error_line_inside_a_200_stream_fails_that_run(
    replay_ollama: FixtureReplayOllama,
) -> None:
    replay_ollama.generate = fixture_text("docs_api_error_midstream.ndjson").splitlines()
    events, code = run_agent(options(replay_ollama.url, runs=2, warmup=0))

    runs = of_kind(events, "run")
    assert code == 0 and len(runs) == 2
    assert runs[0]["ok"] is False
    assert runs[0]["error"] == "an error was encountered while running the model"
    assert runs[0]["oom"]["likely"] is False


def test_an_out_of_memory_answer_is_judged_oom_and_stops_the_probe(
    replay_ollama: FixtureReplayOllama,
) -> None:
    replay_ollama.generate = (
        500,
        json.dumps(
            {"error": "model requires more system memory (3.1 GiB) than is available (1.2 GiB)"}
        ),
    )
    events, _ = run_agent(options(replay_ollama.url, runs=3, warmup=0))

    runs = of_kind(events, "run")
    assert len(runs) == 1 and runs[0]["http_status"] == 500
    assert runs[0]["oom"]["likely"] is True
    assert events[-1] == {"event": "end", "runs": 1, "stopped": "oom"}


def test_missing_model_is_one_error_naming_what_is_there(
    replay_ollama: FixtureReplayOllama,
) -> None:
    events, code = run_agent(options(replay_ollama.url, model="llama3.2"))

    assert code == 3
    assert of_kind(events, "error") == [
        {
            "event": "error",
            "kind": "model_missing",
            "model": "llama3.2",
            "message": "models there: gemma2:2b",
        }
    ]


def test_ollama_not_running_and_not_installed_are_told_apart(tmp_path: Path) -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    no_ollama_env = {**os.environ, "PATH": str(tmp_path)}
    if any(os.access(p, os.X_OK) for p in ("/usr/local/bin/ollama", "/usr/bin/ollama")):
        pytest.skip("this host has Ollama installed")
    events, code = run_agent(options(closed), env=no_ollama_env)
    assert code == 3
    assert of_kind(events, "error")[0]["kind"] == "ollama_not_installed"

    fake = tmp_path / "ollama"
    fake.write_text("#!/bin/sh\nexit 0\n")
    fake.chmod(0o755)
    events, _ = run_agent(options(closed), env=no_ollama_env)
    error = of_kind(events, "error")[0]
    assert error["kind"] == "ollama_not_running"
    assert str(fake) in error["message"] and closed in error["message"]


def test_the_agent_source_uses_only_the_standard_library() -> None:
    tree = ast.parse(AGENT_PATH.read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert "urllib" in imported and imported <= set(sys.stdlib_module_names) | {"__future__"}
