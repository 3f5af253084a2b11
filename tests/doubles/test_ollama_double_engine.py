"""The double with the REAL llama-server as its runner behaves like Ollama v0.32.15 does.

Runs a few-MB GGUF model with gemma2's architecture (tests/doubles/gguf_model.py) on the real
llama.cpp built from the pinned sdist (tests/doubles/engine.py): load time, health wait, the
command line Ollama uses, timings mapped into Ollama's fields, unload and reload, the errors a
broken model file or a dying runner give.
"""

from __future__ import annotations

import ast
import http.client
import itertools
import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from provision.probe.result import ProbeOptions
from tests.doubles import OllamaMirror, prepare_mirror, publish_model
from tests.support.agent import of_kind, run_agent
from tests.support.double_server import Double, start_double, stop_double

MODEL = "gemma2-shaped:tiny"
BROKEN = "broken:notgguf"
TRUNCATED = "broken:truncated"
# A template with a fixed instruction block before the prompt, as many Modelfiles carry: the
# longest prefix every run shares, so the first thing a warm run could take from the cache.
PREAMBLE = "preamble:tiny"
PREAMBLE_TEMPLATE = (
    "<start_of_turn>user\n"
    + "Answer in one short and clear paragraph. " * 8
    + "{{ .Prompt }}<end_of_turn>\n<start_of_turn>model\n{{ .Response }}"
)


@pytest.fixture(scope="module")
def engine_double(
    llama_engine: Any, tiny_gguf: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Double]:
    root = tmp_path_factory.mktemp("engine-mirror")
    not_gguf = root / "not.gguf"
    not_gguf.write_bytes(b"this is not a GGUF file\n" * 1000)
    truncated = root / "truncated.gguf"
    truncated.write_bytes(tiny_gguf.read_bytes()[: tiny_gguf.stat().st_size // 2])
    release, _ = prepare_mirror(
        root,
        models={MODEL: tiny_gguf, BROKEN: not_gguf, TRUNCATED: truncated},
        llama_server=llama_engine.server,
    )
    publish_model(root, PREAMBLE, gguf=tiny_gguf, chat_template=PREAMBLE_TEMPLATE)
    prefix = tmp_path_factory.mktemp("engine-usr-local")
    subprocess.run(["tar", "--zstd", "-xf", str(release.tarball), "-C", str(prefix)], check=True)
    with OllamaMirror(root) as mirror:
        log = tmp_path_factory.mktemp("engine-log") / "ollama.log"
        running = start_double(
            prefix, tmp_path_factory.mktemp("engine-models"), mirror.url, log=log
        )
        try:
            for name in (MODEL, BROKEN, TRUNCATED, PREAMBLE):
                status, _ = running.json("POST", "/api/pull", {"model": name, "stream": False})
                assert status == 200, name
            yield running
        finally:
            stop_double(running)


def generate(double: Double, **body: Any) -> dict[str, Any]:
    status, reply = double.json("POST", "/api/generate", {"model": MODEL, "stream": False, **body})
    assert status == 200, reply
    return dict(reply)


def runner_cmdline(double: Double) -> list[str]:
    (runner,) = double.runner_pids()
    return Path(f"/proc/{runner}/cmdline").read_bytes().decode().split("\0")[:-1]


def test_the_runner_is_the_real_llama_server_started_as_ollama_starts_it(
    engine_double: Double,
) -> None:
    generate(engine_double, prompt="", options={})
    argv = runner_cmdline(engine_double)
    assert Path(argv[0]).name == "llama-server"
    assert Path(argv[0]).read_bytes()[:4] == b"\x7fELF"
    flags = dict(itertools.pairwise(argv))
    assert flags["-c"] == "4096" and flags["-np"] == "1" and flags["--host"] == "127.0.0.1"
    assert flags["--load-mode"] == "none"  # Ollama turns mmap off on CPU
    assert "-t" not in argv and "--no-webui" in argv and "--offline" in argv


def test_num_thread_passes_t_and_num_ctx_reloads_with_a_new_context(engine_double: Double) -> None:
    generate(engine_double, prompt="", options={"num_thread": 1, "num_ctx": 1024})
    argv = runner_cmdline(engine_double)
    assert argv[argv.index("-t") + 1] == "1" and argv[argv.index("-c") + 1] == "1024"
    first = engine_double.runner_pids()
    reply = generate(
        engine_double, prompt="hi", options={"num_thread": 1, "num_ctx": 2048, "num_predict": 2}
    )
    assert engine_double.runner_pids() != first and reply["load_duration"] > 1_000_000
    warm = generate(
        engine_double, prompt="hi", options={"num_thread": 1, "num_ctx": 2048, "num_predict": 2}
    )
    assert warm["load_duration"] < reply["load_duration"]


def test_generate_maps_llama_servers_timings_into_ollamas_fields(engine_double: Double) -> None:
    reply = generate(
        engine_double,
        prompt="Why is the sky blue?",
        options={"seed": 42, "temperature": 0, "num_predict": 12},
    )
    assert reply["done"] is True and reply["done_reason"] in ("length", "stop")
    assert 0 < reply["eval_count"] <= 12 and reply["eval_duration"] > 0
    if reply["done_reason"] == "length":
        assert reply["eval_count"] == 12
    # the chat template's tokens + the prompt's, counted by the real tokenizer
    assert reply["prompt_eval_count"] > 8 and reply["prompt_eval_duration"] > 0
    assert reply["total_duration"] >= reply["eval_duration"] + reply["prompt_eval_duration"]
    assert (
        isinstance(reply["context"], list) and len(reply["context"]) >= reply["prompt_eval_count"]
    )


def test_same_seed_at_temperature_zero_gives_the_same_text(engine_double: Double) -> None:
    options = {"seed": 7, "temperature": 0, "num_predict": 10}
    one = generate(engine_double, prompt="colour of the sea", options=options)
    two = generate(engine_double, prompt="colour of the sea", options=options)
    assert one["response"] == two["response"]


def test_a_repeated_prompt_counts_cached_tokens_like_ollama(engine_double: Double) -> None:
    options = {"seed": 1, "temperature": 0, "num_predict": 2}
    generate(engine_double, prompt="the same long prompt " * 8, options=options)
    again = generate(engine_double, prompt="the same long prompt " * 8, options=options)
    # cache_n + prompt_n: the count includes the cached prefix, the duration covers only the rest
    assert again["prompt_eval_count"] > 40


def test_streaming_sends_tokens_then_the_final_metrics(engine_double: Double) -> None:
    status, lines = engine_double.ndjson(
        "/api/generate",
        {"model": MODEL, "prompt": "count", "options": {"seed": 3, "num_predict": 6}},
    )
    assert status == 200 and lines[-1]["done"] is True
    assert all(line["done"] is False for line in lines[:-1])
    assert "eval_count" in lines[-1] and "prompt_eval_duration" in lines[-1]


def test_ps_reports_the_buffers_llama_server_allocated(
    engine_double: Double, tiny_gguf: Path
) -> None:
    generate(engine_double, prompt="", options={})
    status, ps = engine_double.json("GET", "/api/ps")
    (entry,) = [m for m in ps["models"] if m["name"] == MODEL]
    # weights + KV cache + compute buffers: more than the file alone
    assert status == 200 and entry["size"] > tiny_gguf.stat().st_size
    assert entry["size_vram"] == 0 and entry["context_length"] == 4096


def test_keep_alive_zero_stops_the_runner(engine_double: Double) -> None:
    generate(engine_double, prompt="", options={})
    (runner,) = engine_double.runner_pids()
    reply = generate(engine_double, prompt="", keep_alive=0)
    assert reply["done_reason"] == "unload"
    deadline = time.monotonic() + 10
    while os.path.exists(f"/proc/{runner}") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not os.path.exists(f"/proc/{runner}")


@pytest.mark.parametrize("name", [BROKEN, TRUNCATED])
def test_a_model_file_that_is_not_a_whole_gguf_fails_the_load_with_ollamas_500(
    engine_double: Double, name: str
) -> None:
    status, reply = engine_double.json(
        "POST", "/api/generate", {"model": name, "prompt": "hi", "stream": False}
    )
    assert status == 500
    assert reply["error"].startswith("llama-server process has terminated: exit status")


def test_a_runner_killed_mid_stream_gives_ollamas_error_line(engine_double: Double) -> None:
    generate(engine_double, prompt="", options={})
    (runner,) = engine_double.runner_pids()
    conn = http.client.HTTPConnection("127.0.0.1", engine_double.port, timeout=60)
    conn.request(
        "POST",
        "/api/generate",
        json.dumps(
            {
                "model": MODEL,
                "prompt": "tell a story",
                "options": {"seed": 5, "num_predict": 100000, "temperature": 1},
            }
        ),
    )
    response = conn.getresponse()
    first = json.loads(response.readline())
    os.kill(runner, signal.SIGKILL)  # what the OOM killer does
    rest = [json.loads(line) for line in response.read().splitlines() if line.strip()]
    conn.close()
    assert response.status == 200 and first["done"] is False
    assert rest[-1]["error"].startswith("an error was encountered while running the model")
    reply = generate(engine_double, prompt="again", options={"num_predict": 1})
    assert reply["load_duration"] > 1_000_000  # reloaded, like Ollama


@pytest.mark.parametrize("name", [BROKEN, TRUNCATED])
def test_probe_of_a_broken_model_file_fails_with_ollamas_message_exit_7(
    engine_double: Double, name: str
) -> None:
    from provision.errors import ExitCode, ProbeError
    from provision.probe.collect import collect
    from provision.probe.result import ProbeOptions
    from tests.support.reporting import RecordingReporter

    options = ProbeOptions(
        model=name, runs=1, warmup=0, num_predict=4, ollama_url=engine_double.url
    )
    events, code = run_agent(options)
    [run] = [e for e in events if e["event"] == "run"]
    assert code == 0 and run["ok"] is False and run["oom"]["likely"] is False
    with pytest.raises(ProbeError) as raised:
        collect([json.dumps(e) for e in events], options, RecordingReporter(), vm="vm1")
    assert raised.value.exit_code == ExitCode.PROBE and int(ExitCode.PROBE) == 7
    assert "llama-server process has terminated: exit status" in str(raised.value)


def completions_logged(double: Double) -> list[tuple[int, int]]:
    """(cache_n, prompt_n) of each completion the double's llama-server ran, from its log."""
    assert double.log is not None
    found = re.findall(
        r"llama-server completion cache_n=(\d+) prompt_n=(\d+)", double.log.read_text()
    )
    return [(int(cached), int(new)) for cached, new in found]


def test_a_request_template_replaces_the_models_and_raw_refuses_one(engine_double: Double) -> None:
    status, show = engine_double.json("POST", "/api/show", {"model": PREAMBLE})
    assert status == 200 and show["template"] == PREAMBLE_TEMPLATE
    own = generate(engine_double, prompt="Why is the sky blue?", options={"num_predict": 1})
    swapped = generate(
        engine_double,
        prompt="Why is the sky blue?",
        options={"num_predict": 1},
        template="{{ .Prompt }}",
    )
    assert swapped["prompt_eval_count"] < own["prompt_eval_count"]
    status, reply = engine_double.json(
        "POST",
        "/api/generate",
        {"model": MODEL, "prompt": "x", "raw": True, "template": "{{ .Prompt }}", "stream": False},
    )
    assert (status, reply) == (
        400,
        {"error": "raw mode does not support template, system, or context"},
    )


def prompt_heads_logged(double: Double) -> list[str]:
    assert double.log is not None
    return [
        ast.literal_eval(head)
        for head in re.findall(
            r"llama-server completion request prompt_len=\d+ prompt_head=(.*?)\"?$",
            double.log.read_text(),
            flags=re.MULTILINE,
        )
    ]


def test_the_runner_sees_each_runs_nonce_before_the_chat_templates_first_token(
    engine_double: Double,
) -> None:
    before = len(prompt_heads_logged(engine_double))
    events, code = run_agent(
        ProbeOptions(model=PREAMBLE, runs=2, warmup=0, num_predict=2, ollama_url=engine_double.url)
    )

    assert code == 0, events[-1]
    nonces = [e["nonce"] for e in of_kind(events, "run_start")]
    heads = prompt_heads_logged(engine_double)[before:]
    # so no model's cache can hold a prefix of a run: only the BOS llama-server adds is shared
    assert [head.split("\n")[0] for head in heads] == nonces


def test_warm_runs_share_no_cached_prefix_so_prompt_rate_counts_only_evaluated_tokens(
    engine_double: Double,
) -> None:
    before = len(completions_logged(engine_double))
    events, code = run_agent(
        ProbeOptions(model=PREAMBLE, runs=3, warmup=1, num_predict=4, ollama_url=engine_double.url)
    )

    assert code == 0, events[-1]
    facts = of_kind(events, "facts")[0]
    assert facts["prompt_cache_bust"] == "nonce-first"
    runs = of_kind(events, "run")
    assert [r["cache_bust"] for r in runs] == ["nonce-first"] * 4
    logged = completions_logged(engine_double)[before:]
    assert len(logged) == 4
    # Ollama counts cache_n + prompt_n but times prompt_n only: nothing but the BOS may be reused
    assert all(cached <= 1 for cached, _ in logged), logged
    counts = {r["ollama"]["prompt_eval_count"] for r in runs}
    assert counts == {cached + new for cached, new in logged}
