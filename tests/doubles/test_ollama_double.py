"""The Ollama test double behaves like Ollama in what labctl uses (shapes from ollama-fixtures)."""

from __future__ import annotations

import hashlib
import http.client
import importlib.util
import json
import os
import signal
import subprocess
import tarfile
import time
import urllib.request
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tests.doubles import DOUBLE_SOURCE, OllamaMirror, prepare_mirror
from tests.support.double_server import MODEL, Double, MirrorSetup, start_double, stop_double

METRICS = (
    "total_duration",
    "load_duration",
    "prompt_eval_count",
    "prompt_eval_duration",
    "eval_count",
    "eval_duration",
)


def load_double_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("ollama_double_module", DOUBLE_SOURCE)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --------------------------------------------------------------------------- release + mirror


def test_release_tarball_has_the_official_layout(mirror_setup: MirrorSetup) -> None:
    raw = subprocess.run(
        ["zstd", "-d", "-c", str(mirror_setup.release.tarball)], capture_output=True, check=True
    ).stdout
    tar_path = mirror_setup.root / "check.tar"
    tar_path.write_bytes(raw)
    with tarfile.open(tar_path) as tar:
        members = {m.name: m for m in tar.getmembers()}
    assert {"bin/ollama", "lib/ollama/llama-server"} <= set(members)
    assert members["bin/ollama"].mode & 0o111 and members["bin/ollama"].uid == 0
    assert all(not name.startswith(("/", "..")) for name in members)


def test_checksum_file_lists_the_tarball_with_a_dot_slash_prefix(
    mirror_setup: MirrorSetup,
) -> None:
    release = mirror_setup.release
    lines = release.checksum_file.read_text().splitlines()
    digest = hashlib.sha256(release.tarball.read_bytes()).hexdigest()
    assert f"{digest}  ./ollama-linux-amd64.tar.zst" in lines
    assert release.sha256 == digest


def test_mirror_serves_release_and_registry_at_the_real_url_shapes(
    mirror_setup: MirrorSetup,
) -> None:
    mirror, release, model = mirror_setup.mirror, mirror_setup.release, mirror_setup.model
    with urllib.request.urlopen(release.url(mirror.download_base_url)) as response:
        assert hashlib.sha256(response.read()).hexdigest() == release.sha256
    with urllib.request.urlopen(f"{mirror.url}/v2/library/gemma2/manifests/2b") as response:
        manifest = response.read()
    assert hashlib.sha256(manifest).hexdigest() == model.manifest_digest
    assert json.loads(manifest)["layers"][0]["digest"] == model.model_digest
    with pytest.raises(urllib.error.HTTPError) as missing:
        urllib.request.urlopen(f"{mirror.url}/v2/library/nosuch/manifests/latest")
    assert missing.value.code == 404


def test_building_a_release_twice_gives_the_same_bytes(tmp_path: Path) -> None:
    first, _ = prepare_mirror(tmp_path / "a", models={})
    second, _ = prepare_mirror(tmp_path / "b", models={})
    assert first.sha256 == second.sha256


# --------------------------------------------------------------------------- env parsing


@pytest.mark.parametrize(
    ("raw", "expected"),
    [  # envconfig/config_test.go, see ollama.md section 2
        ("", ("http", "127.0.0.1", 11434)),
        ("1.2.3.4", ("http", "1.2.3.4", 11434)),
        (":1234", ("http", "", 1234)),
        ("1.2.3.4:1234", ("http", "1.2.3.4", 1234)),
        ("example.com", ("http", "example.com", 11434)),
        (":66000", ("http", "", 11434)),
        ("[::1]", ("http", "::1", 11434)),
        ("::1", ("http", "::1", 11434)),
        ('"1.2.3.4"', ("http", "1.2.3.4", 11434)),
        ("http://1.2.3.4", ("http", "1.2.3.4", 80)),
        ("https://1.2.3.4", ("https", "1.2.3.4", 443)),
    ],
)
def test_ollama_host_is_parsed_like_envconfig(raw: str, expected: tuple[str, str, int]) -> None:
    assert load_double_module().parse_host(raw)[:3] == expected


@pytest.mark.parametrize(
    ("raw", "seconds"),
    [
        ("", 300),
        ("1s", 1),
        ("1m", 60),
        ("1h2m3s", 3723),
        ("0", 0),
        ("60", 60),
        ("-0", 0),
        ("???", 300),
        ("1d", 300),
        (0, 0),
        (30, 30),
    ],
)
def test_keep_alive_is_parsed_like_envconfig(raw: Any, seconds: float) -> None:
    assert load_double_module().parse_duration(raw) == seconds


def test_negative_keep_alive_means_forever() -> None:
    module = load_double_module()
    assert module.parse_duration("-1") == module.parse_duration("-1m") == module.FOREVER_S


# --------------------------------------------------------------------------- CLI


def test_version_without_a_server_warns_and_prints_the_client_version(
    installed: Path, mirror_setup: MirrorSetup
) -> None:
    env = {**os.environ, "OLLAMA_HOST": "127.0.0.1:9"}
    out = subprocess.run(
        [str(installed / "bin/ollama"), "-v"], env=env, capture_output=True, text=True, check=True
    ).stdout
    assert "Warning: could not connect to a running Ollama instance" in out
    assert f"Warning: client version is {mirror_setup.release.version}" in out


def test_version_with_a_server_asks_the_server(double: Double, mirror_setup: MirrorSetup) -> None:
    assert double.cli("--version").stdout == f"ollama version is {mirror_setup.release.version}\n"


# --------------------------------------------------------------------------- API basics


def test_root_and_version_answer(double: Double, mirror_setup: MirrorSetup) -> None:
    assert double.call("GET", "/") == (200, b"Ollama is running")
    assert double.json("GET", "/api/version") == (200, {"version": mirror_setup.release.version})


def test_fresh_server_has_no_models(double: Double) -> None:
    assert double.json("GET", "/api/tags") == (200, {"models": []})
    assert double.json("GET", "/api/ps") == (200, {"models": []})


def test_generate_for_a_missing_model_is_404(double: Double) -> None:
    status, body = double.json("POST", "/api/generate", {"model": MODEL, "prompt": "hi"})
    assert (status, body) == (404, {"error": "model 'gemma2:2b' not found"})


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"", "missing request body"),
        (b"{nope", "invalid character"),
        (b'{"prompt": "hi"}', "model is required"),
    ],
)
def test_bad_generate_requests_are_400(double: Double, raw: bytes, message: str) -> None:
    status, body = double.call("POST", "/api/generate", raw=raw)
    assert status == 400
    assert message in json.loads(body)["error"]


def test_unknown_route_is_a_plain_404(double: Double) -> None:
    assert double.call("GET", "/api/nope") == (404, b"404 page not found")


# --------------------------------------------------------------------------- pull


def test_pull_streams_the_real_status_sequence(double: Double, mirror_setup: MirrorSetup) -> None:
    status, events = double.ndjson("/api/pull", {"model": MODEL})
    assert status == 200
    statuses = [e["status"] for e in events]
    assert statuses[0] == "pulling manifest"
    assert statuses[-3:] == ["verifying sha256 digest", "writing manifest", "success"]
    layers = [e for e in events if e["status"].startswith("pulling ") and "digest" in e]
    for event in layers:
        assert event["status"] == f"pulling {event['digest'][7:19]}"
        assert isinstance(event["total"], int)
        assert "completed" not in event or 0 < event["completed"] <= event["total"]
    weights = [e for e in layers if e["digest"] == mirror_setup.model.model_digest]
    assert weights[-1]["completed"] == weights[-1]["total"] == mirror_setup.model.model_bytes


def test_pull_stores_the_real_on_disk_layout(double: Double, mirror_setup: MirrorSetup) -> None:
    assert double.json("POST", "/api/pull", {"model": MODEL, "stream": False}) == (
        200,
        {"status": "success"},
    )
    manifest = double.models_dir / "manifests/registry.ollama.ai/library/gemma2/2b"
    assert hashlib.sha256(manifest.read_bytes()).hexdigest() == mirror_setup.model.manifest_digest
    blob = double.models_dir / "blobs" / mirror_setup.model.model_digest.replace(":", "-")
    assert blob.stat().st_size == mirror_setup.model.model_bytes
    _, tags = double.json("GET", "/api/tags")
    (entry,) = tags["models"]
    assert entry["name"] == entry["model"] == "gemma2:2b"
    assert entry["digest"] == mirror_setup.model.manifest_digest
    assert entry["size"] == mirror_setup.model.total_bytes
    assert entry["details"]["family"] == "gemma2"
    assert entry["details"]["quantization_level"] == "Q4_0"
    assert double.cli("list").stdout.split("\n")[0].split() == ["NAME", "ID", "SIZE", "MODIFIED"]


def test_second_pull_reports_each_layer_complete_at_once(double: Double) -> None:
    double.json("POST", "/api/pull", {"model": MODEL, "stream": False})
    _, events = double.ndjson("/api/pull", {"model": MODEL})
    layers = [e for e in events if "digest" in e]
    assert len(layers) == len({e["digest"] for e in layers}) == 5
    assert all(e["completed"] == e["total"] for e in layers)


def test_pulling_an_unknown_model_fails_inside_the_stream(double: Double) -> None:
    status, events = double.ndjson("/api/pull", {"model": "nosuchmodel:7b"})
    assert status == 200
    assert events == [
        {"status": "pulling manifest"},
        {"error": "pull model manifest: file does not exist"},
    ]


def test_pulling_an_unknown_model_without_streaming_is_500(double: Double) -> None:
    status, body = double.json("POST", "/api/pull", {"model": "nosuchmodel", "stream": False})
    assert (status, body) == (500, {"error": "pull model manifest: file does not exist"})


def test_pull_without_the_double_registry_fails_like_offline_ollama(
    installed: Path, tmp_path: Path
) -> None:
    offline = start_double(installed, tmp_path / "models", registry=None)
    try:
        status, body = offline.json("POST", "/api/pull", {"model": MODEL, "stream": False})
    finally:
        stop_double(offline)
    assert status == 500
    assert body["error"].startswith('pull model manifest: Get "https://registry.ollama.ai/v2/')
    assert not (tmp_path / "models" / "manifests").exists()


def test_a_corrupted_blob_fails_the_sha256_check(installed: Path, tmp_path: Path) -> None:
    _, (model,) = prepare_mirror(tmp_path / "mirror", models={MODEL: 1 << 20})
    blob = tmp_path / "mirror/registry/blobs" / model.model_digest
    data = bytearray(blob.read_bytes())
    data[100] ^= 0xFF
    blob.write_bytes(bytes(data))
    with OllamaMirror(tmp_path / "mirror") as mirror:
        broken = start_double(installed, tmp_path / "models", mirror.url)
        try:
            status, body = broken.json("POST", "/api/pull", {"model": MODEL, "stream": False})
        finally:
            stop_double(broken)
    assert status == 500
    assert body["error"].startswith(
        "digest mismatch, file must be downloaded again: want " + model.model_digest
    )
    assert not list((tmp_path / "models/blobs").glob(model.model_digest.replace(":", "-") + "*"))


# --------------------------------------------------------------------------- generate


def generate(double: Double, **body: Any) -> dict[str, Any]:
    status, reply = double.json("POST", "/api/generate", {"model": MODEL, "stream": False, **body})
    assert status == 200, reply
    return dict(reply)


def test_generate_reports_the_real_timing_fields_in_ns(pulled: Double) -> None:
    reply = generate(
        pulled,
        prompt="Why is the sky blue?",
        options={"num_predict": 6, "seed": 42, "temperature": 0},
    )
    assert reply["model"] == MODEL and reply["done"] is True
    assert reply["done_reason"] == "length"
    assert reply["eval_count"] == 6
    assert reply["prompt_eval_count"] == 15  # gemma2's template around "Why is the sky blue?"
    for key in METRICS:
        assert isinstance(reply[key], int) and reply[key] > 0, key
    assert reply["total_duration"] >= reply["eval_duration"] + reply["prompt_eval_duration"]
    assert all(isinstance(t, int) for t in reply["context"])
    assert reply["created_at"].endswith("Z") and "T" in reply["created_at"]
    assert isinstance(reply["response"], str) and reply["response"]


def test_generation_stops_by_itself_with_done_reason_stop(pulled: Double) -> None:
    reply = generate(pulled, prompt="hello", options={"seed": 3, "num_predict": -1})
    assert reply["done_reason"] == "stop"
    assert 0 < reply["eval_count"] < 300


def test_same_seed_same_text_whatever_the_thread_count(pulled: Double) -> None:
    one = generate(pulled, prompt="sky", options={"seed": 7, "num_predict": 5, "num_thread": 1})
    two = generate(pulled, prompt="sky", options={"seed": 7, "num_predict": 5, "num_thread": 2})
    other = generate(pulled, prompt="sky", options={"seed": 8, "num_predict": 5})
    assert one["response"] == two["response"] != other["response"]


def test_stream_sends_tokens_then_a_final_object_with_metrics(pulled: Double) -> None:
    status, events = pulled.ndjson(
        "/api/generate", {"model": MODEL, "prompt": "sky", "options": {"seed": 7, "num_predict": 5}}
    )
    assert status == 200
    *chunks, final = events
    assert len(chunks) == 5
    assert all(
        c["done"] is False and set(c) == {"model", "created_at", "response", "done"} for c in chunks
    )
    assert final["done"] is True and final["response"] == "" and final["eval_count"] == 5
    blocking = generate(pulled, prompt="sky", options={"seed": 7, "num_predict": 5})
    assert "".join(c["response"] for c in chunks) == blocking["response"]


def test_chat_answers_with_a_message(pulled: Double) -> None:
    status, reply = pulled.json(
        "POST",
        "/api/chat",
        {
            "model": MODEL,
            "stream": False,
            "options": {"num_predict": 3, "seed": 1},
            "messages": [{"role": "user", "content": "hi"}],
        },
    )
    assert status == 200
    assert reply["message"]["role"] == "assistant" and reply["eval_count"] == 3


def test_empty_prompt_loads_and_keep_alive_zero_unloads(pulled: Double) -> None:
    loaded = generate(pulled, prompt="", keep_alive="10m")
    assert loaded["done_reason"] == "load" and loaded["response"] == ""
    assert not set(METRICS) & set(loaded)  # omitempty: no metrics on a load
    _, ps = pulled.json("GET", "/api/ps")
    (entry,) = ps["models"]
    assert entry["name"] == MODEL and entry["size_vram"] == 0
    assert entry["context_length"] == 4096
    assert entry["size"] > 16 << 20  # weights + KV cache
    assert len(entry["digest"]) == 64 and "T" in entry["expires_at"]
    assert len(pulled.runner_pids()) == 1  # the runner is a child process, like llama-server
    unloaded = generate(pulled, keep_alive=0)
    assert unloaded["done_reason"] == "unload"
    assert pulled.json("GET", "/api/ps") == (200, {"models": []})
    deadline = time.monotonic() + 10
    while pulled.runner_pids() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert pulled.runner_pids() == []


def test_num_ctx_reloads_the_model_with_a_bigger_kv_cache(pulled: Double) -> None:
    generate(pulled, prompt="", options={"num_ctx": 2048})
    _, small = pulled.json("GET", "/api/ps")
    reply = generate(pulled, prompt="x", options={"num_ctx": 8192, "num_predict": 1})
    _, big = pulled.json("GET", "/api/ps")
    assert reply["load_duration"] > 1_000_000  # a real reload: read + touch the weights
    assert small["models"][0]["context_length"] == 2048
    assert big["models"][0]["context_length"] == 8192
    assert big["models"][0]["size"] > small["models"][0]["size"]


def test_two_threads_really_run_and_speed_is_reported_not_asserted(pulled: Double) -> None:
    """Records tok/s for 1 and 2 threads (printed with -s); asserts only on structure."""
    rates = {}
    for threads in (1, 2):
        reply = generate(
            pulled, prompt="sky", options={"num_thread": threads, "seed": 1, "num_predict": 12}
        )
        rates[threads] = reply["eval_count"] / reply["eval_duration"] * 1e9
        (runner,) = pulled.runner_pids()
        workers = len(os.listdir(f"/proc/{runner}/task"))
        assert workers >= threads + 1  # main thread + num_thread hashing workers
    print(f"double tok/s: 1 thread {rates[1]:.1f}, 2 threads {rates[2]:.1f}")
    assert all(rate > 0 for rate in rates.values())


def test_a_killed_runner_ends_the_stream_with_ollamas_error(pulled: Double) -> None:
    # a seed whose answer is long, so the kill surely lands mid-stream (no timing involved)
    seed = next(
        seed
        for seed in range(100)
        if generate(pulled, prompt="sky", options={"seed": seed})["eval_count"] >= 150
    )
    (runner,) = pulled.runner_pids()
    conn = http.client.HTTPConnection("127.0.0.1", pulled.port, timeout=60)
    conn.request(
        "POST",
        "/api/generate",
        json.dumps({"model": MODEL, "prompt": "sky", "options": {"seed": seed}}),
    )
    response = conn.getresponse()
    first = json.loads(response.readline())
    os.kill(runner, signal.SIGKILL)  # what the OOM killer does
    rest = [json.loads(line) for line in response.read().splitlines() if line.strip()]
    conn.close()
    assert response.status == 200 and first["done"] is False
    # Ollama 0.32.15's text when the stream breaks (llm/llama_server.go:1758-1768)
    assert rest[-1] == {"error": "an error was encountered while running the model: unexpected EOF"}
    reply = generate(pulled, prompt="sky", options={"num_predict": 1})  # reloads, like Ollama
    assert reply["eval_count"] == 1 and reply["load_duration"] > 1_000_000


def test_processes_are_named_like_ollamas(pulled: Double) -> None:
    generate(pulled, prompt="", options={})
    (runner,) = pulled.runner_pids()
    assert Path(f"/proc/{runner}/comm").read_text().strip() == "llama-server"
    assert Path(f"/proc/{pulled.proc.pid}/comm").read_text().strip() == "ollama"


def test_a_second_server_on_the_same_port_fails_like_ollama(double: Double) -> None:
    clash = subprocess.run(
        [str(double.binary), "serve"],
        env=double.env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert clash.returncode == 1
    assert "bind: address already in use" in clash.stderr
