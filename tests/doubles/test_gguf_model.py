"""The gemma2-shaped GGUF writer: deterministic files the real engine loads like gemma2:2b."""

from __future__ import annotations

import dataclasses
import json
import math
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import pytest

from tests.doubles.engine import Engine, ensure_engine
from tests.doubles.gguf_model import (
    GEMMA2_2B,
    GEMMA2_SMALL,
    GEMMA2_TINY,
    REAL_GEMMA2_2B_BYTES,
    ModelSpec,
    default_cache_dir,
    ensure_model,
    expected_size,
    file_digest,
    main,
    metadata_bytes,
    model_digest,
    tensor_plan,
    vocabulary,
    write_model,
)

BLOCK_TENSORS = (
    "attn_norm",
    "attn_q",
    "attn_k",
    "attn_v",
    "attn_output",
    "post_attention_norm",
    "ffn_norm",
    "ffn_gate",
    "ffn_up",
    "ffn_down",
    "post_ffw_norm",
)
Q = gguf.GGMLQuantizationType


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tiny") / "tiny.gguf"
    write_model(GEMMA2_TINY, path)
    return path


@pytest.fixture(scope="module")
def engine() -> Engine:
    """The real llama.cpp, built here if it is not cached yet (a build failure fails the test)."""
    return ensure_engine()


def field(reader: gguf.GGUFReader, key: str) -> Any:
    found = reader.get_field(key)
    assert found is not None, f"{key} missing"
    return found.contents()


def expected_tensors(spec: ModelSpec) -> dict[str, tuple[list[int], Q]]:
    """ggml name -> (ggml shape, ne0 first, type), written out from gemma2:2b's tensor list."""
    e, q, kv, ff = (
        spec.n_embd,
        spec.n_head * spec.head_dim,
        spec.n_head_kv * spec.head_dim,
        spec.n_ff,
    )
    out = {"token_embd.weight": ([e, spec.n_vocab], Q.Q6_K), "output_norm.weight": ([e], Q.F32)}
    for i in range(spec.n_layer):
        out |= {
            f"blk.{i}.{name}.weight": (shape, Q.F32 if len(shape) == 1 else Q.Q4_0)
            for name, shape in (
                ("attn_norm", [e]),
                ("attn_q", [e, q]),
                ("attn_k", [e, kv]),
                ("attn_v", [e, kv]),
                ("attn_output", [q, e]),
                ("post_attention_norm", [e]),
                ("ffn_norm", [e]),
                ("ffn_gate", [e, ff]),
                ("ffn_up", [e, ff]),
                ("ffn_down", [ff, e]),
                ("post_ffw_norm", [e]),
            )
        }
    return out


# --------------------------------------------------------------------------- specs


def test_full_size_spec_is_gemma2_2b() -> None:
    assert (GEMMA2_2B.n_layer, GEMMA2_2B.n_embd, GEMMA2_2B.n_ff) == (26, 2304, 9216)
    assert (GEMMA2_2B.n_head, GEMMA2_2B.n_head_kv, GEMMA2_2B.head_dim) == (8, 4, 256)
    assert (GEMMA2_2B.n_vocab, GEMMA2_2B.context_length, GEMMA2_2B.sliding_window) == (
        256_000,
        8192,
        4096,
    )
    assert GEMMA2_2B.name == "gemma2:2b"
    params = sum(math.prod(t.shape) for t in tensor_plan(GEMMA2_2B))
    assert round(params / 1e9, 2) == 2.61
    assert len(tensor_plan(GEMMA2_2B)) == 2 + 26 * len(BLOCK_TENSORS)


def test_small_specs_keep_the_architecture_and_say_they_are_not_gemma2_2b() -> None:
    for spec in (GEMMA2_TINY, GEMMA2_SMALL):
        assert spec.name.startswith("gemma2-shaped:")
        assert spec.n_layer < GEMMA2_2B.n_layer and spec.n_vocab < GEMMA2_2B.n_vocab
        assert spec.n_head % spec.n_head_kv == 0
    assert GEMMA2_SMALL.n_embd == GEMMA2_2B.n_embd and GEMMA2_SMALL.n_ff == GEMMA2_2B.n_ff
    assert 100e6 < expected_size(GEMMA2_SMALL) < 200e6
    assert expected_size(GEMMA2_TINY) < 5e6


def test_spec_key_changes_with_every_field_and_is_file_safe() -> None:
    keys = {GEMMA2_TINY.key()}
    for f in dataclasses.fields(ModelSpec):
        value = getattr(GEMMA2_TINY, f.name)
        changed: Any = value + "x" if isinstance(value, str) else value + 256
        keys.add(dataclasses.replace(GEMMA2_TINY, **{f.name: changed}).key())
    assert len(keys) == 1 + len(dataclasses.fields(ModelSpec))
    assert GEMMA2_2B.key().startswith("gemma2-2b-") and "/" not in GEMMA2_2B.key()
    assert GEMMA2_TINY.key() == dataclasses.replace(GEMMA2_TINY).key()


def test_spec_refuses_shapes_the_block_formats_cannot_hold() -> None:
    with pytest.raises(ValueError, match="multiple of 256"):
        dataclasses.replace(GEMMA2_TINY, n_embd=320)
    with pytest.raises(ValueError, match="multiples of 32"):
        dataclasses.replace(GEMMA2_TINY, n_ff=1000)
    with pytest.raises(ValueError, match="n_vocab"):
        dataclasses.replace(GEMMA2_TINY, n_vocab=300)


# --------------------------------------------------------------------------- the file


def test_writing_a_spec_twice_gives_the_same_bytes(tmp_path: Path) -> None:
    first = write_model(GEMMA2_TINY, tmp_path / "a.gguf")
    second = write_model(GEMMA2_TINY, tmp_path / "b.gguf")
    assert first == second == file_digest(tmp_path / "a.gguf")
    assert first.startswith("sha256:") and len(first) == len("sha256:") + 64
    reseeded = write_model(dataclasses.replace(GEMMA2_TINY, seed=99), tmp_path / "c.gguf")
    assert reseeded != first
    assert (tmp_path / "c.gguf").stat().st_size == (tmp_path / "a.gguf").stat().st_size


def test_file_reads_back_with_gemma2_metadata(tiny: Path) -> None:
    reader = gguf.GGUFReader(tiny)
    spec = GEMMA2_TINY
    assert field(reader, "general.architecture") == "gemma2"
    assert field(reader, "general.name") == spec.name
    assert field(reader, "general.file_type") == int(gguf.LlamaFileType.MOSTLY_Q4_0) == 2
    expected = {
        "gemma2.context_length": spec.context_length,
        "gemma2.embedding_length": spec.n_embd,
        "gemma2.block_count": spec.n_layer,
        "gemma2.feed_forward_length": spec.n_ff,
        "gemma2.attention.head_count": spec.n_head,
        "gemma2.attention.head_count_kv": spec.n_head_kv,
        "gemma2.attention.key_length": spec.head_dim,
        "gemma2.attention.value_length": spec.head_dim,
        "gemma2.attention.sliding_window": spec.sliding_window,
        "gemma2.attn_logit_softcapping": 50.0,
        "gemma2.final_logit_softcapping": 30.0,
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.bos_token_id": 2,
        "tokenizer.ggml.eos_token_id": 1,
        "tokenizer.ggml.unknown_token_id": 3,
        "tokenizer.ggml.padding_token_id": 0,
        "tokenizer.ggml.add_bos_token": True,
        "tokenizer.ggml.add_eos_token": False,
    }
    assert {key: field(reader, key) for key in expected} == expected
    assert field(reader, "gemma2.attention.layer_norm_rms_epsilon") == pytest.approx(1e-6)
    assert field(reader, "tokenizer.chat_template").startswith(
        "{{ bos_token }}{% if messages[0]['role'] == 'system' %}"
    )
    tokens = field(reader, "tokenizer.ggml.tokens")
    assert len(tokens) == len(field(reader, "tokenizer.ggml.scores")) == spec.n_vocab
    assert len(field(reader, "tokenizer.ggml.token_type")) == spec.n_vocab


def test_tensors_have_gemma2_names_shapes_and_types(tiny: Path) -> None:
    reader = gguf.GGUFReader(tiny)
    found = {t.name: ([int(n) for n in t.shape], t.tensor_type) for t in reader.tensors}
    assert found == expected_tensors(GEMMA2_TINY)
    assert "output.weight" not in found  # the output projection is tied to token_embd


def test_full_size_plan_has_gemma2_2b_tensors() -> None:
    plan = {t.name: ([*reversed(t.shape)], t.dtype) for t in tensor_plan(GEMMA2_2B)}
    assert plan == expected_tensors(GEMMA2_2B)
    assert plan["token_embd.weight"] == ([2304, 256_000], Q.Q6_K)
    assert plan["blk.25.attn_q.weight"] == ([2304, 2048], Q.Q4_0)
    assert plan["blk.0.ffn_down.weight"] == ([9216, 2304], Q.Q4_0)


def test_vocabulary_has_gemma_special_tokens_bytes_and_unique_pieces() -> None:
    tokens, scores, types = vocabulary(GEMMA2_2B.n_vocab)
    assert len(tokens) == len(scores) == len(types) == 256_000
    assert len(set(tokens)) == len(tokens)
    assert tokens[:4] == ["<pad>", "<eos>", "<bos>", "<unk>"]
    assert (tokens[106], tokens[107]) == ("<start_of_turn>", "<end_of_turn>")
    assert types[3] == gguf.TokenType.UNKNOWN
    assert {types[i] for i in (0, 1, 2, 106, 107)} == {gguf.TokenType.CONTROL}
    first_byte = tokens.index("<0x00>")
    assert tokens[first_byte : first_byte + 256] == [f"<0x{b:02X}>" for b in range(256)]
    assert set(types[first_byte : first_byte + 256]) == {gguf.TokenType.BYTE}
    pieces = tokens[first_byte + 256 :]
    assert set(types[first_byte + 256 :]) == {gguf.TokenType.NORMAL}
    assert all(p and not p.startswith("<") for p in pieces)
    assert any(p.startswith("\u2581") for p in pieces)
    assert vocabulary(GEMMA2_TINY.n_vocab)[0] == tokens[: GEMMA2_TINY.n_vocab]


def test_english_words_are_whole_pieces_so_prompts_cost_real_token_counts() -> None:
    tokens, scores, _ = vocabulary(GEMMA2_2B.n_vocab)
    index = {piece: i for i, piece in enumerate(tokens)}
    for word in ("\u2581the", "\u2581sky", "\u2581blue", "Why", "user", "model"):
        assert word in index, word
    # a whole word outscores the prefixes the merges pass through on the way to it
    assert scores[index["\u2581blue"]] > scores[index["\u2581bl"]]


def test_file_size_is_metadata_plus_block_sizes(tiny: Path) -> None:
    reader = gguf.GGUFReader(tiny)
    blocks = {Q.Q4_0: (32, 18), Q.Q6_K: (256, 210), Q.F32: (1, 4)}
    data = 0
    for t in reader.tensors:
        per_block, block_bytes = blocks[t.tensor_type]
        assert t.n_bytes == t.n_elements // per_block * block_bytes
        data += -(-t.n_bytes // 32) * 32
    assert reader.tensors[0].data_offset == metadata_bytes(GEMMA2_TINY)
    assert tiny.stat().st_size == metadata_bytes(GEMMA2_TINY) + data == expected_size(GEMMA2_TINY)


def test_quantized_weights_are_small_and_finite(tiny: Path) -> None:
    reader = gguf.GGUFReader(tiny)
    for t in reader.tensors:
        weights = gguf.quants.dequantize(t.data, t.tensor_type)
        assert np.isfinite(weights).all(), t.name
        if t.tensor_type == Q.F32:
            assert (weights == 1.0).all(), t.name
        else:
            assert 0.01 < float(np.abs(weights).max()) < 1.0, t.name
            assert 0.01 < float(weights.std()) < 0.5, t.name
            assert abs(float(weights.mean())) < 0.02, t.name


@pytest.mark.slow
def test_full_size_file_is_within_a_tenth_of_a_percent_of_the_real_blob(tmp_path: Path) -> None:
    path = tmp_path / "gemma2-2b.gguf"
    started = time.monotonic()
    try:
        digest = write_model(GEMMA2_2B, path)
        seconds = time.monotonic() - started
        size = path.stat().st_size
        assert size == expected_size(GEMMA2_2B)
        assert abs(size - REAL_GEMMA2_2B_BYTES) / REAL_GEMMA2_2B_BYTES < 0.001
        assert digest.startswith("sha256:")
        assert seconds < 120
    finally:
        path.unlink(missing_ok=True)  # 1.6 GB


# --------------------------------------------------------------------------- the cache


def test_ensure_model_writes_once_and_then_reuses_the_file(tmp_path: Path) -> None:
    path = ensure_model(GEMMA2_TINY, tmp_path)
    assert path == tmp_path / f"{GEMMA2_TINY.key()}.gguf"
    written = path.stat().st_mtime_ns
    assert ensure_model(GEMMA2_TINY, tmp_path) == path
    assert path.stat().st_mtime_ns == written
    assert model_digest(path) == file_digest(path)
    assert (tmp_path / f"{path.name}.sha256").read_text().strip() == file_digest(path)


def test_concurrent_callers_wait_for_one_writer(tmp_path: Path) -> None:
    with ThreadPoolExecutor(4) as pool:
        paths = list(pool.map(lambda _: ensure_model(GEMMA2_TINY, tmp_path), range(4)))
    assert len(set(paths)) == 1
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix != ".lock") == sorted(
        [paths[0].name, paths[0].name + ".sha256"]
    )
    assert model_digest(paths[0]) == write_model(GEMMA2_TINY, tmp_path / "again.gguf")


def test_ensure_model_replaces_a_partial_file_left_by_a_killed_writer(tmp_path: Path) -> None:
    stale = tmp_path / f"{GEMMA2_TINY.key()}.gguf.partial-99999"
    stale.write_bytes(b"GGUF truncated")
    path = ensure_model(GEMMA2_TINY, tmp_path)
    assert not stale.exists()
    assert gguf.GGUFReader(path).tensors


def test_cache_dir_follows_xdg_cache_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_cache_dir() == tmp_path / "labctl" / "models"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert default_cache_dir() == Path.home() / ".cache" / "labctl" / "models"


def test_command_line_writes_the_named_spec(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "cli.gguf"
    assert main(["--spec", "tiny", "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    assert file_digest(out) == write_model(GEMMA2_TINY, tmp_path / "lib.gguf")


# --------------------------------------------------------------------------- the real engine


def bench(engine: Engine, model: Path, *args: str, timeout: float = 600) -> list[dict[str, Any]]:
    result = subprocess.run(
        [str(engine.bench), "-m", str(model), *args, "-o", "json"],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    rows: list[dict[str, Any]] = json.loads(result.stdout)
    return rows


def test_llama_bench_runs_the_tiny_model(engine: Engine, tiny: Path) -> None:
    rows = bench(engine, tiny, "-p", "8", "-n", "4", "-r", "1", "-t", "1")
    assert [(r["n_prompt"], r["n_gen"]) for r in rows] == [(8, 0), (0, 4)]
    for row in rows:
        assert row["model_type"].startswith("gemma2 ") and row["model_type"].endswith(" Q4_0")
        assert row["model_size"] == tiny.stat().st_size - metadata_bytes(GEMMA2_TINY)
        assert math.isfinite(row["avg_ts"]) and row["avg_ts"] > 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def post(url: str, body: dict[str, Any]) -> dict[str, Any]:
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=120) as response:
        answer: dict[str, Any] = json.loads(response.read())
    return answer


@pytest.fixture
def tiny_server(engine: Engine, tiny: Path) -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen(
        [
            str(engine.server),
            "-m",
            str(tiny),
            "-t",
            "1",
            "-c",
            "512",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    stderr: list[bytes] = []
    reader = threading.Thread(target=lambda: stderr.extend(proc.stderr or []), daemon=True)
    reader.start()
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, b"".join(stderr)[-2000:].decode(errors="replace")
            try:
                with urllib.request.urlopen(url + "/health", timeout=5) as response:
                    if response.status == 200:
                        break
            except (OSError, urllib.error.HTTPError):
                pass
            assert time.monotonic() < deadline, "llama-server not healthy after 120 s"
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_llama_server_generates_finite_tokens_from_the_tiny_model(tiny_server: str) -> None:
    answer = post(
        tiny_server + "/completion",
        {
            "prompt": "Why is the sky blue?",
            "n_predict": 8,
            "ignore_eos": True,
            "seed": 42,
            "temperature": 0,
            "n_probs": 3,
        },
    )
    timings = answer["timings"]
    assert timings["predicted_n"] == 8 and timings["prompt_n"] > 1
    for key in ("prompt_ms", "predicted_ms", "prompt_per_second", "predicted_per_second"):
        assert math.isfinite(timings[key]) and timings[key] > 0, key
    # NaN logits would show as null (or the same token forever with equal probabilities)
    probs = answer["completion_probabilities"]
    assert len(probs) == 8
    for token in probs:
        logprobs = [token["logprob"], *(top["logprob"] for top in token["top_logprobs"])]
        assert all(isinstance(p, float) and math.isfinite(p) for p in logprobs), token
        assert len({top["logprob"] for top in token["top_logprobs"]}) > 1, token
    assert isinstance(answer["content"], str)


@pytest.mark.slow
def test_llama_bench_names_the_full_size_model_gemma2_2b_q4_0(engine: Engine) -> None:
    model = ensure_model(GEMMA2_2B)  # the shared cache: written once per machine (~10 s)
    rows = bench(engine, model, "-p", "8", "-n", "4", "-r", "1")
    for row in rows:
        assert row["model_type"] == "gemma2 2B Q4_0"
        assert round(row["model_n_params"] / 1e9, 2) == 2.61
        assert round(row["model_size"] / 2**30, 2) == 1.51
        assert math.isfinite(row["avg_ts"]) and row["avg_ts"] > 0
