#!/usr/bin/env python3
"""Ollama TEST DOUBLE: an honest stand-in for the `ollama` binary, for labctl's tests only.

Ollama cannot be downloaded where labctl's tests run, so the tests ship this stdlib-only
Python 3.11 program inside a release-shaped tarball (`bin/ollama` + `lib/ollama/llama-server`)
and install it with the real Ansible role. labctl itself never ships or calls it.

What it does, like the real thing (shapes from the Ollama docs, see ollama-fixtures/):
  * `ollama serve` with OLLAMA_HOST, OLLAMA_MODELS, OLLAMA_KEEP_ALIVE, OLLAMA_NUM_PARALLEL,
    OLLAMA_CONTEXT_LENGTH; `ollama -v/--version`, `list`, `ps`, `pull`, `rm`.
  * API: GET / , /api/version, /api/tags, /api/ps; POST /api/pull (NDJSON stream or not),
    /api/generate and /api/chat (stream or not, load / unload, timing fields in ns,
    done_reason), /api/show, DELETE /api/delete; errors as {"error": ...} with the real codes.
  * Pull fetches a manifest and blobs over the Docker-registry API, verifies each blob's
    sha256 and stores them in the real on-disk layout
    ($OLLAMA_MODELS/manifests/registry.ollama.ai/library/<model>/<tag>, blobs/sha256-<hex>).
  * Generation runs in a runner child process, as Ollama >= 0.30 runs the upstream llama-server.
    When the release ships the REAL llama.cpp `lib/ollama/llama-server` (an ELF binary; what
    everything that measures uses), the double starts it with Ollama v0.32.15's command line,
    waits for /health, streams /completion and maps llama-server's timings into Ollama's
    fields (LlamaServerLoaded; each behaviour cites the Ollama source line it follows). For
    fast unit tests that measure nothing, the release may instead ship this script as
    llama-server: a hashing runner that reads the blob into RAM and hashes it once per token
    over num_thread threads, so it still burns real CPU and memory.

Deviations from real Ollama (on purpose):
  * Registry: this double NEVER contacts registry.ollama.ai. It pulls only from the registry
    named by the double-only variable OLLAMA_DOUBLE_REGISTRY (e.g. http://10.0.0.1:8080);
    without it a pull fails exactly like real Ollama without network.
  * The prompt is rendered with the model's template by string substitution, not Go's
    text/template (only {{ .Prompt }} and an optional {{ if .System }} block are supported).
  * OLLAMA_NUM_PARALLEL as in v0.32.15: the real llama-server gets `-np N` slots and N x num_ctx
    context, and up to N requests to one model run at once (the runner's semaphore); more wait
    for a slot (Runner.serving). The hashing runner (one stdio pipe) serves one at a time.
  * The hashing runner (unit tests only) talks over stdio pipes and writes filler text.
"""

from __future__ import annotations

import concurrent.futures
import datetime as _dt
import hashlib
import http.client
import http.server
import json
import os
import random
import re
import signal
import socket
import socketserver
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

VERSION = "0.0.0-double"  # replaced by the release builder with the version it packages

DEFAULT_PORT = 11434
DEFAULT_REGISTRY_HOST = "registry.ollama.ai"
KEEP_ALIVE_DEFAULT_S = 300.0
FOREVER_S = 10.0**10  # "negative keep_alive": real Ollama uses MaxInt64 ns (year ~2318)
# KV cache per context token and parallel slot: gemma2:2b's real KV (~270 MB at 4096 tokens,
# ollama ps 1.9 GB - 1.63 GB weights) scaled like the weights by the simulator's 1/8 memory scale.
KV_BYTES_PER_TOKEN_DEFAULT = 8192
PROMPT_TEMPLATE_TOKENS = 9  # gemma2 chat template adds ~9 tokens ("Why is the sky blue?" -> 15)
PROGRESS_INTERVAL_S = 0.06  # real pull progress cadence (~60 ms)
ROW_BYTES = 1 << 20  # one "weight row" hashed as a unit
RUNNER_OPTIONS = ("num_ctx", "num_batch", "num_gpu", "num_thread", "use_mmap")

VOCAB_TEXT = (
    "the sky appears blue because of a phenomenon called Rayleigh scattering , which"
    " means that shorter wavelengths of sunlight are scattered more strongly by the small"
    " molecules of gas in the atmosphere . when light travels through air it meets nitrogen"
    " and oxygen and the blue part of the spectrum spreads across the whole dome while red"
    " and orange pass straight on , so at noon we see blue and at sunset we see warm colours"
    " this is also why distant mountains look hazy and faint ."
)
VOCAB = [(" " + w if w not in {",", "."} else w) for w in VOCAB_TEXT.split(" ")]


# --------------------------------------------------------------------------- env parsing


def _env(name: str, default: str = "") -> str:
    """Like envconfig.Var: trims spaces and surrounding quotes."""
    return os.environ.get(name, default).strip().strip("\"'")


def parse_host(raw: str) -> tuple[str, str, int, str]:
    """OLLAMA_HOST -> (scheme, host, port, path), following envconfig.Host()'s test table."""
    raw = raw.strip().strip("\"'")
    scheme, default_port = "http", DEFAULT_PORT
    if "://" in raw:
        scheme, raw = raw.split("://", 1)
        default_port = 443 if scheme == "https" else 80
    elif raw == "ollama.com":
        return "https", "ollama.com", 443, ""
    hostport, slash, path = raw.partition("/")
    host, port_text = hostport, ""
    if hostport.startswith("["):
        host, _, rest = hostport[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
    elif hostport.count(":") == 1:
        host, port_text = hostport.split(":")
    elif hostport.count(":") > 1:
        host = hostport  # bare IPv6
    if not host and not port_text and not hostport:
        host = "127.0.0.1"
    try:
        port = int(port_text) if port_text else default_port
        if not 0 <= port <= 65535:
            port = default_port if not port_text else DEFAULT_PORT
    except ValueError:
        port = DEFAULT_PORT
    return scheme, host, port, (slash + path if path else "")


def parse_duration(value: Any, default_s: float = KEEP_ALIVE_DEFAULT_S) -> float:
    """keep_alive / OLLAMA_KEEP_ALIVE: Go duration or seconds; negative = forever; junk = 5m."""
    if isinstance(value, bool) or value is None:
        return default_s
    if isinstance(value, (int, float)):
        seconds = float(value)
        return FOREVER_S if seconds < 0 else seconds
    text = str(value).strip().strip("\"'")
    if not text:
        return default_s
    if re.fullmatch(r"[+-]?\d+", text):
        seconds = float(int(text))
        return FOREVER_S if seconds < 0 else seconds
    match = re.fullmatch(r"([+-]?)((?:\d+(?:\.\d+)?(?:ns|us|µs|ms|s|m|h))+)", text)
    if not match:
        return default_s
    units = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
    total = sum(
        float(num) * units[unit]
        for num, unit in re.findall(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)", match.group(2))
    )
    return FOREVER_S if match.group(1) == "-" and total > 0 else total


def models_dir() -> Path:
    configured = _env("OLLAMA_MODELS")
    if configured:
        return Path(configured)
    return Path(os.path.expanduser("~")) / ".ollama" / "models"


def now_rfc3339() -> str:
    ns = time.time_ns()
    stamp = _dt.datetime.fromtimestamp(ns // 10**9, tz=_dt.UTC)
    return f"{stamp:%Y-%m-%dT%H:%M:%S}.{ns % 10**9:09d}Z"


def local_rfc3339(epoch_s: float) -> str:
    stamp = _dt.datetime.fromtimestamp(epoch_s).astimezone()
    offset = stamp.strftime("%z")
    offset = "Z" if offset in ("+0000", "") else f"{offset[:3]}:{offset[3:]}"
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{stamp.microsecond:06d}000" + offset


# --------------------------------------------------------------------------- model names


class ModelName:
    """host/namespace/model:tag with Ollama's defaults (registry.ollama.ai/library/...:latest)."""

    PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,79}$")

    def __init__(self, host: str, namespace: str, model: str, tag: str) -> None:
        self.host, self.namespace, self.model, self.tag = host, namespace, model, tag

    @classmethod
    def parse(cls, raw: str) -> ModelName | None:
        raw = raw.strip()
        name, _, tag = raw.rpartition(":") if ":" in raw.split("/")[-1] else (raw, "", "latest")
        parts = name.split("/")
        if len(parts) == 1:
            host, namespace, model = DEFAULT_REGISTRY_HOST, "library", parts[0]
        elif len(parts) == 2:
            host, namespace, model = DEFAULT_REGISTRY_HOST, parts[0], parts[1]
        elif len(parts) == 3:
            host, namespace, model = parts
        else:
            return None
        if not all(cls.PART.match(p) for p in (namespace, model, tag)) or not host:
            return None
        return cls(host, namespace, model.lower(), tag)

    @property
    def display(self) -> str:
        if self.host == DEFAULT_REGISTRY_HOST and self.namespace == "library":
            return f"{self.model}:{self.tag}"
        if self.host == DEFAULT_REGISTRY_HOST:
            return f"{self.namespace}/{self.model}:{self.tag}"
        return f"{self.host}/{self.namespace}/{self.model}:{self.tag}"

    def manifest_path(self, root: Path) -> Path:
        return root / "manifests" / self.host / self.namespace / self.model / self.tag


def blob_path(root: Path, digest: str) -> Path:
    return root / "blobs" / digest.replace(":", "-")


class LocalModel:
    """A pulled model as found on disk."""

    def __init__(self, name: ModelName, manifest_file: Path, root: Path) -> None:
        raw = manifest_file.read_bytes()
        self.name, self.root = name, root
        self.manifest = json.loads(raw)
        self.digest = hashlib.sha256(raw).hexdigest()
        self.modified = manifest_file.stat().st_mtime
        layers = self.manifest.get("layers", [])
        config = self.manifest.get("config", {})
        self.size = sum(int(layer["size"]) for layer in layers) + int(config.get("size", 0))
        self.model_blob = next(
            (
                blob_path(root, layer["digest"])
                for layer in layers
                if layer.get("mediaType") == "application/vnd.ollama.image.model"
            ),
            None,
        )
        try:
            self.config = json.loads(blob_path(root, config["digest"]).read_bytes())
        except (KeyError, OSError, ValueError):
            self.config = {}

    @property
    def details(self) -> dict[str, Any]:
        family = self.config.get("model_family", "")
        return {
            "parent_model": "",
            "format": self.config.get("model_format", "gguf"),
            "family": family,
            "families": self.config.get("model_families") or ([family] if family else None),
            "parameter_size": self.config.get("model_type", ""),
            "quantization_level": self.config.get("file_type", ""),
        }


def find_model(root: Path, raw_name: str) -> LocalModel | None:
    name = ModelName.parse(raw_name)
    if name is None:
        return None
    path = name.manifest_path(root)
    return LocalModel(name, path, root) if path.is_file() else None


def list_models(root: Path) -> list[LocalModel]:
    found = []
    base = root / "manifests"
    if not base.is_dir():
        return []
    for path in sorted(base.glob("*/*/*/*")):
        if path.is_file():
            host, namespace, model, tag = path.relative_to(base).parts
            try:
                found.append(LocalModel(ModelName(host, namespace, model, tag), path, root))
            except (OSError, ValueError):
                continue
    return sorted(found, key=lambda m: m.modified, reverse=True)


# --------------------------------------------------------------------------- pull


class PullError(Exception):
    pass


def _go_net_error(url: str, err: object) -> str:
    hostport = url.split("/")[2]
    reason = getattr(err, "reason", err)
    return f'Get "{url}": dial tcp {hostport}: {reason}'


def pull_model(root: Path, raw_name: str, emit: Any) -> None:
    """Pull like server/images.go PullModel: manifest, each layer, verify, write manifest."""
    name = ModelName.parse(raw_name)
    if name is None:
        raise ValueError("invalid model name")
    emit({"status": "pulling manifest"})
    registry = _env("OLLAMA_DOUBLE_REGISTRY").rstrip("/")
    manifest_url = f"{registry}/v2/{name.namespace}/{name.model}/manifests/{name.tag}"
    if not registry:
        real = f"https://{name.host}/v2/{name.namespace}/{name.model}/manifests/{name.tag}"
        # The double never leaves the test network: answer as real Ollama does when offline.
        raise PullError(
            f'pull model manifest: Get "{real}": dial tcp: lookup {name.host}: no such host'
        )
    try:
        with urllib.request.urlopen(manifest_url, timeout=30) as response:
            manifest_raw = response.read()
    except urllib.error.HTTPError as err:
        if err.code == 404:
            raise PullError("pull model manifest: file does not exist") from err
        raise PullError(f"pull model manifest: {err.code} {err.reason}") from err
    except (urllib.error.URLError, OSError) as err:
        raise PullError(f"pull model manifest: {_go_net_error(manifest_url, err)}") from err
    manifest = json.loads(manifest_raw)
    layers = list(manifest.get("layers", []))
    if manifest.get("config"):
        layers.append(manifest["config"])
    (root / "blobs").mkdir(parents=True, exist_ok=True)
    for layer in layers:
        _pull_layer(root, registry, name, layer, emit)
    emit({"status": "verifying sha256 digest"})
    emit({"status": "writing manifest"})
    target = name.manifest_path(root)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".tmp")
    tmp.write_bytes(manifest_raw)
    tmp.replace(target)
    emit({"status": "success"})


def _pull_layer(
    root: Path, registry: str, name: ModelName, layer: dict[str, Any], emit: Any
) -> None:
    digest, total = layer["digest"], int(layer["size"])
    status = f"pulling {digest[7:19]}"
    final = blob_path(root, digest)
    if final.is_file() and final.stat().st_size == total:
        emit({"status": status, "digest": digest, "total": total, "completed": total})
        return
    emit({"status": status, "digest": digest, "total": total})
    url = f"{registry}/v2/{name.namespace}/{name.model}/blobs/{digest}"
    partial = final.with_name(final.name + "-partial")
    hasher = hashlib.sha256()
    completed, last = 0, time.monotonic()
    try:
        with urllib.request.urlopen(url, timeout=60) as response, partial.open("wb") as out:
            while chunk := response.read(1 << 20):
                out.write(chunk)
                hasher.update(chunk)
                completed += len(chunk)
                if time.monotonic() - last >= PROGRESS_INTERVAL_S:
                    emit(
                        {"status": status, "digest": digest, "total": total, "completed": completed}
                    )
                    last = time.monotonic()
    except urllib.error.HTTPError as err:
        partial.unlink(missing_ok=True)
        raise PullError(f"download blob {digest}: {err.code} {err.reason}") from err
    except (urllib.error.URLError, OSError) as err:
        partial.unlink(missing_ok=True)
        raise PullError(_go_net_error(url, err)) from err
    emit({"status": status, "digest": digest, "total": total, "completed": completed})
    got = "sha256:" + hasher.hexdigest()
    if got != digest:
        partial.unlink(missing_ok=True)
        raise PullError(f"digest mismatch, file must be downloaded again: want {digest}, got {got}")
    partial.replace(final)


# --------------------------------------------------------------------------- runner (child)


def prompt_tokens(text: str) -> list[int]:
    words = re.findall(r"\w+|[^\w\s]", text)
    base = [106, 1645, 108]  # <start_of_turn>user\n  (the real gemma2 ids)
    ids = [int.from_bytes(hashlib.sha256(w.encode()).digest()[:2], "big") for w in words]
    return base + ids + [107, 108, 106, 2516, 108, 235248][: PROMPT_TEMPLATE_TOKENS - 3]


class Weights:
    """The model held in RAM. Each pass hashes it in num_thread slices, in parallel."""

    def __init__(self, blob: Path, threads: int, kv_bytes: int) -> None:
        size = blob.stat().st_size
        self.buffer = bytearray(size)
        with blob.open("rb", buffering=0) as f:
            view, done = memoryview(self.buffer), 0
            while done < size:
                n = f.readinto(view[done : done + (8 << 20)])
                if not n:
                    break
                done += n
        # The KV cache: allocated and touched page by page so it is resident, like llama.cpp's.
        self.kv = bytearray(kv_bytes)
        self.kv[::4096] = b"\x01" * len(range(0, kv_bytes, 4096))
        self.threads = max(1, threads)
        self.pool = concurrent.futures.ThreadPoolExecutor(max_workers=self.threads)
        # Fixed-size rows, so the output does not depend on how many threads share the work.
        view = memoryview(self.buffer)
        rows = [view[i : i + ROW_BYTES] for i in range(0, max(size, 1), ROW_BYTES)]
        per_thread = -(-len(rows) // self.threads)
        self.groups = [rows[i : i + per_thread] for i in range(0, len(rows), per_thread)]

    def forward(self, salt: bytes) -> bytes:
        """One full pass over the weights; returns a digest that depends on every byte."""
        parts = self.pool.map(_hash_rows, self.groups)
        return hashlib.sha256(salt + b"".join(parts)).digest()


def _hash_rows(rows: list[memoryview]) -> bytes:
    # hashlib drops the GIL for buffers over 2 KiB: the threads really run in parallel
    return b"".join(hashlib.sha256(row).digest() for row in rows)


def runner_main(argv: list[str]) -> int:
    """`llama-server`-like runner: load the weights, then serve generate requests on stdio."""
    args = dict(zip(argv[0::2], argv[1::2], strict=False))
    threads = int(args.get("--threads", "0")) or len(os.sched_getaffinity(0))
    ctx, parallel = int(args.get("--ctx-size", "4096")), int(args.get("--parallel", "1"))
    kv_per_token = int(_env("OLLAMA_DOUBLE_KV_BYTES_PER_TOKEN", str(KV_BYTES_PER_TOKEN_DEFAULT)))
    weights = Weights(Path(args["--model"]), threads, ctx * parallel * kv_per_token)
    weights.forward(b"warmup")  # real load includes a first graph evaluation
    out = sys.stdout
    out.write(
        json.dumps(
            {
                "ready": True,
                "threads": weights.threads,
                "size": len(weights.buffer) + len(weights.kv),
            }
        )
        + "\n"
    )
    out.flush()
    for line in sys.stdin:
        request = json.loads(line)
        for event in _generate(weights, request, ctx):
            out.write(json.dumps(event) + "\n")
            out.flush()
    return 0


def _generate(weights: Weights, request: dict[str, Any], ctx: int) -> Iterator[dict[str, Any]]:
    tokens: list[int] = request["tokens"]
    seed = request["seed"]
    num_predict = request["num_predict"]
    t0 = time.perf_counter_ns()
    state = weights.forward(f"{seed}:{tokens}".encode())  # prompt eval: one batched pass
    t1 = time.perf_counter_ns()
    yield {"prompt_eval_ns": t1 - t0, "prompt_eval_count": len(tokens)}
    natural_length = 24 + int.from_bytes(state[:2], "big") % 200
    produced, reason = 0, "stop"
    while True:
        if num_predict >= 0 and produced >= num_predict:
            reason = "length"
            break
        if len(tokens) + produced >= ctx:
            reason = "length"
            break
        if produced >= natural_length:
            break
        state = weights.forward(state + produced.to_bytes(4, "big"))
        token = int.from_bytes(state[:4], "big")
        produced += 1
        yield {"id": token % 256000, "text": VOCAB[token % len(VOCAB)]}
    yield {"done": reason, "eval_count": produced, "eval_ns": time.perf_counter_ns() - t1}


# --------------------------------------------------------------------------- scheduler


class RunnerDied(Exception):
    pass


class RunnerProcess:
    """A runner child process: alive while it runs, stopped with SIGTERM, then SIGKILL.

    Requests hold a reference from the moment the scheduler hands them the runner until they
    end (server/sched.go:478 refCount++, :384 refCount--); a runner with references is neither
    expired nor reloaded. Inside it, a request waits for one of `parallel` slots: v0.32.15's
    llamaServerRunner.Completion acquires a semaphore of numParallel (llm/llama_server.go:960,
    1536-1542), so requests beyond the slots queue in Ollama, not in llama-server.
    """

    proc: subprocess.Popen[Any]
    slots: threading.BoundedSemaphore
    refs: int
    refs_lock: threading.Lock

    def _init_slots(self, parallel: int) -> None:
        self.slots = threading.BoundedSemaphore(max(1, parallel))
        self.refs = 0
        self.refs_lock = threading.Lock()

    def hold(self) -> None:
        with self.refs_lock:
            self.refs += 1

    def release(self) -> None:
        with self.refs_lock:
            self.refs -= 1

    def busy(self) -> bool:
        with self.refs_lock:
            return self.refs > 0

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Loaded(RunnerProcess):
    """One model loaded in the hashing runner child process (unit tests only)."""

    def __init__(
        self,
        model: LocalModel,
        options: dict[str, Any],
        runner_key: tuple[Any, ...],
        ctx: int,
        parallel: int,
    ) -> None:
        self.model, self.options, self.runner_key, self.ctx = model, options, runner_key, ctx
        self._init_slots(1)  # one stdio pipe: one request at a time whatever --parallel says
        self.expires_at = time.time() + KEEP_ALIVE_DEFAULT_S
        threads = int(options.get("num_thread") or 0)
        command = [
            *_runner_command(),
            "--model",
            str(model.model_blob),
            "--ctx-size",
            str(ctx),
            "--parallel",
            str(parallel),
            "--threads",
            str(threads),
        ]
        self.proc = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1
        )
        ready = self._read()
        self.size = int(ready["size"])

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            code = self.proc.wait()
            raise RunnerDied(_exit_text(code))
        return dict(json.loads(line))

    def generate(self, request: dict[str, Any]) -> Iterator[dict[str, Any]]:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(json.dumps(request) + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError) as err:
            self.proc.wait()
            raise RunnerDied(RUNNER_STOPPED) from err
        while True:
            try:
                event = self._read()
            except RunnerDied as err:  # died mid-stream: llm/llama_server.go:1758-1768
                raise RunnerDied(
                    "an error was encountered while running the model: unexpected EOF"
                ) from err
            yield event
            if "done" in event:
                return


def _exit_text(code: int) -> str:
    """A runner that died while loading: llm/llama_server.go:1300-1325 (WaitUntilRunning)."""
    if code < 0:
        name = _SIGNAL_NAMES.get(-code, f"signal {-code}")
        return f"llama-server process has terminated: signal: {name}"
    return f"llama-server process has terminated: exit status {code}"


def _runner_command() -> list[str]:
    here = Path(sys.argv[0]).resolve()
    installed = here.parent.parent / "lib" / "ollama" / "llama-server"
    if installed.is_file() and os.access(installed, os.X_OK):
        # exec'd through its shebang, so the process is named llama-server (ps -C llama-server)
        return [str(installed)]
    return [sys.executable, str(here), "runner"]


# --------------------------------------------------------------------------- llama-server runner
# Ollama >= 0.30 runs every GGUF model with the upstream llama-server from lib/ollama/. When the
# double's release ships the real binary there (tests/doubles/engine.py builds it), the double
# starts it exactly as Ollama v0.32.15 does; what follows cites that tag's sources.

# llm/status.go:67-83 (errorPrefixes) and :85-96 (outOfMemorySubstrings)
ERROR_PREFIXES = (
    "panic:",
    "fatal error:",
    "error:",
    "Error:",
    '"ERR"',
    "error loading model",
    "GGML_ASSERT",
    "llama_init_from_model:",
)
OOM_SUBSTRINGS = (
    "out of memory",
    "failed to allocate",
    "allocation failed",
    "not enough memory",
    "insufficient memory",
    "cannot allocate memory",
)
RUNNER_STOPPED = (
    "model runner has unexpectedly stopped, this may be due to resource limitations"
    " or an internal error, check ollama server logs for details"
)  # :1642-1644
_SIGNAL_NAMES = {9: "killed", 15: "terminated", 11: "segmentation fault", 6: "aborted"}
BUFFER_SIZE = re.compile(r"buffer size\s*=\s*([\d.]+) MiB")
HEALTH_POLL_S = 0.25  # llm/llama_server.go:1368-1381 (250 ms between health polls)
LOAD_STALL_S = 300.0  # envconfig.LoadTimeout default, 5 minutes without load progress


def _real_llama_server() -> Path | None:
    """lib/ollama/llama-server when it is the real (ELF) binary, else None (hashing runner)."""
    here = Path(sys.argv[0]).resolve()
    binary = here.parent.parent / "lib" / "ollama" / "llama-server"
    try:
        with binary.open("rb") as f:
            return binary if f.read(4) == b"\x7fELF" else None
    except OSError:
        return None


def model_template(model: LocalModel) -> str:
    """The model's Go template layer, as /api/show returns it (empty when it has none)."""
    for layer in model.manifest.get("layers", []):
        if layer.get("mediaType") == "application/vnd.ollama.image.template":
            try:
                return blob_path(model.root, layer["digest"]).read_text()
            except OSError:
                return ""
    return ""


def render_prompt(template: str, prompt: str) -> str:
    """A Go template rendered for one user prompt (no system message)."""
    if "{{ .Prompt }}" not in template:
        return prompt
    template = re.sub(r"\{\{ if \.System \}\}.*?\{\{ end \}\}", "", template, flags=re.DOTALL)
    return template.split("{{ .Response }}")[0].replace("{{ .Prompt }}", prompt)


def _stop_words(model: LocalModel) -> list[str]:
    for layer in model.manifest.get("layers", []):
        if layer.get("mediaType") == "application/vnd.ollama.image.params":
            try:
                params = json.loads(blob_path(model.root, layer["digest"]).read_bytes())
            except (OSError, ValueError):
                return []
            return [str(w) for w in params.get("stop", [])]
    return []


def _free_port() -> int:
    with socket.socket() as sock:  # llm/llama_server.go:355-366: bind :0, close, pass it on
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def llama_server_args(
    binary: Path, model: Path, port: int, ctx: int, parallel: int, options: dict[str, Any]
) -> list[str]:
    """The command line of llm/llama_server.go:368-425 (startLlamaServer) for a CPU-only host."""
    args = [
        str(binary),
        "--model",
        str(model),
        "--port",
        str(port),
        "--host",
        "127.0.0.1",
        "--no-webui",
        "--offline",
        "-c",
        str(ctx * parallel),
        "-np",
        str(parallel),
        "--log-verbosity",
        "4",
        "--no-log-prefix",
        "--no-log-timestamps",
    ]
    # server/sched.go:1138-1163: on CPU Ollama turns mmap off unless the request sets use_mmap;
    # llm/llama_server.go:634-636 then passes --load-mode none (weights read into RAM).
    if options.get("use_mmap") is not True:
        args += ["--load-mode", "none"]
    args += ["--flash-attn", "auto"]  # :613-621, ml/device.go:571 (cpu supports FA -> auto)
    if int(options.get("num_batch") or 0) > 0:  # :581-593
        args += ["-b", str(options["num_batch"]), "-ub", str(options["num_batch"])]
    if "num_gpu" in options and int(options["num_gpu"]) == 0:  # :404-410
        args += ["-ngl", "0"]
    if int(options.get("num_thread") or 0) > 0:  # :412-416: -t only when num_thread > 0
        args += ["-t", str(int(options["num_thread"]))]
    return args


class LlamaServerLoaded(RunnerProcess):
    """One model loaded in the real llama-server, driven over HTTP as Ollama drives it."""

    def __init__(
        self,
        model: LocalModel,
        options: dict[str, Any],
        runner_key: tuple[Any, ...],
        ctx: int,
        parallel: int,
    ) -> None:
        binary = _real_llama_server()
        if binary is None or model.model_blob is None:
            raise RunnerDied("llama-server binary not found")
        self.model, self.options, self.runner_key, self.ctx = model, options, runner_key, ctx
        self._init_slots(parallel)  # llm/llama_server.go:960 semaphore.NewWeighted(numParallel)
        self.expires_at = time.time() + KEEP_ALIVE_DEFAULT_S
        self.port = _free_port()
        self.last_error = ""
        self.buffers: list[float] = []  # MiB, one per "buffer size" line
        self.stop_words = _stop_words(model)
        command = llama_server_args(binary, model.model_blob, self.port, ctx, parallel, options)
        _log("llama_server.go:433", f"starting llama-server cmd={' '.join(command)}")
        # llm/llama_server.go:445-520 (SetupLlamaServerCommandEnv, llamaServerLibraryPaths):
        # the binary's own directory first on LD_LIBRARY_PATH, so its libraries are found
        env = dict(os.environ)
        env["LD_LIBRARY_PATH"] = os.pathsep.join(
            [str(binary.parent)]
            + [p for p in env.get("LD_LIBRARY_PATH", "").split(os.pathsep) if p]
        )
        self.proc = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
        )
        self._reader = threading.Thread(target=self._read_output, daemon=True)
        self._reader.start()
        self._wait_until_running()

    @property
    def size(self) -> int:
        """Ollama's memTotal: the buffer sizes llama-server logged while loading (MiB)."""
        return int(sum(self.buffers) * (1 << 20))

    def _read_output(self) -> None:
        """Like llm/status.go StatusWriter: pass lines on, keep error lines, parse buffers."""
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            line = raw.decode(errors="replace").rstrip()
            sys.stderr.write(line + "\n")
            if match := BUFFER_SIZE.search(line):
                self.buffers.append(float(match[1]))
            lowered = line.lower()
            if line.startswith(ERROR_PREFIXES) or any(s in lowered for s in OOM_SUBSTRINGS):
                self.last_error = (self.last_error + "\n" + line).strip()[-8192:]
        sys.stderr.flush()

    def _http(
        self, method: str, path: str, body: Any = None, timeout: float = 3600
    ) -> http.client.HTTPResponse:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        data = json.dumps(body).encode() if body is not None else None
        conn.request(method, path, body=data, headers={"Content-Type": "application/json"})
        return conn.getresponse()

    def _terminated_text(self) -> str:
        """llm/llama_server.go:1300-1325: what WaitUntilRunning says when the process died."""
        self._reader.join(timeout=2)
        code = self.proc.wait()
        status = (
            f"signal: {_SIGNAL_NAMES.get(-code, f'signal {-code}')}"
            if code < 0
            else (f"exit status {code}")
        )
        if self.last_error:
            if any(s in self.last_error.lower() for s in OOM_SUBSTRINGS):
                return f"llama-server reported out-of-memory during startup: {self.last_error}"
            return f"llama-server process has terminated: {status}: {self.last_error}"
        return f"llama-server process has terminated: {status}"

    def _wait_until_running(self) -> None:
        deadline = time.monotonic() + LOAD_STALL_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RunnerDied(self._terminated_text())
            try:
                response = self._http("GET", "/health", timeout=0.2)
                status = json.loads(response.read() or b"{}").get("status")
            except (OSError, ValueError):
                status = None
            if status == "ok":
                _log("llama_server.go:1362", "llama-server started")
                return
            time.sleep(HEALTH_POLL_S)
        self.stop()
        raise RunnerDied(f"timed out waiting for llama-server to start - {self.last_error}")

    def _completion_body(self, request: dict[str, Any]) -> dict[str, Any]:
        """llm/llama_server.go:1559-1580: the /completion request Ollama sends."""
        options = request.get("options") or {}
        num_predict = int(request["num_predict"])
        limit = 10 * self.ctx  # boundedNumPredict (:106-117)
        stop = [str(w) for w in (options.get("stop") or self.stop_words)]
        return {
            "prompt": request["prompt"],
            "stream": True,
            "cache_prompt": True,
            "n_predict": limit if num_predict < 0 or num_predict > limit else num_predict,
            "n_keep": int(options.get("num_keep", 4)),
            "temperature": float(options.get("temperature", 0.8)),
            "top_k": int(options.get("top_k", 40)),
            "top_p": float(options.get("top_p", 0.9)),
            "min_p": float(options.get("min_p", 0.0)),
            "stop": stop,
            "repeat_penalty": float(options.get("repeat_penalty", 1.0)),
            "repeat_last_n": int(options.get("repeat_last_n", 64)),
            "frequency_penalty": float(options.get("frequency_penalty", 0.0)),
            "presence_penalty": float(options.get("presence_penalty", 0.0)),
            "typical_p": float(options.get("typical_p", 1.0)),
            "seed": int(request["seed"]),
        }

    def generate(self, request: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """Stream one completion; events shaped like the hashing runner's."""
        # llm/llama_server.go:1529 logs the request at debug; the double also logs its head
        _log(
            "llama_server.go:1529",
            "llama-server completion request "
            f"prompt_len={len(request['prompt'])} prompt_head={request['prompt'][:40]!r}",
        )
        try:
            response = self._http("POST", "/completion", self._completion_body(request))
        except OSError as err:
            detail = f": {self.last_error}" if self.last_error else ""
            raise RunnerDied(RUNNER_STOPPED + detail) from err
        if response.status >= 400:
            raise RunnerDied(response.read().decode(errors="replace").strip())
        pieces: list[str] = []
        for event in self._sse_events(response):
            if event.get("content") and not event.get("stop"):
                pieces.append(event["content"])
                yield {"text": event["content"], "id": 0}
            if event.get("stop"):
                pieces.append(str(event.get("content", "")))
                yield from self._final_events(request, event, "".join(pieces))
                return
        # the stream ended without a final event: the process died mid-stream (:1758-1768)
        self._reader.join(timeout=2)
        raise RunnerDied(
            "an error was encountered while running the model: "
            + (self.last_error or "unexpected EOF")
        )

    @staticmethod
    def _sse_events(response: http.client.HTTPResponse) -> Iterator[dict[str, Any]]:
        try:
            for raw in response:
                line = raw.strip()
                if not line or line.startswith(b":"):
                    continue
                payload = line[6:] if line.startswith(b"data: ") else line
                try:
                    yield dict(json.loads(payload))
                except ValueError:
                    return
        except (OSError, http.client.HTTPException):
            return

    def _final_events(
        self, request: dict[str, Any], event: dict[str, Any], text: str
    ) -> Iterator[dict[str, Any]]:
        timings = event.get("timings") or {}
        cached = timings.get("cache_n")
        prompt_n = int(timings.get("prompt_n", 0))
        # llm/llama_server.go:1511-1513 promptEvalCount: cache_n + prompt_n, while the duration
        # covers only prompt_n (the cached tokens cost nothing)
        _log("double", f"llama-server completion cache_n={int(cached or 0)} prompt_n={prompt_n}")
        yield {
            "prompt_eval_count": prompt_n + int(cached or 0),
            "prompt_eval_ns": int(float(timings.get("prompt_ms", 0.0)) * 1e6),
        }
        reason = "length" if event.get("stop_type") == "limit" else "stop"  # :1713-1717
        done: dict[str, Any] = {
            "done": reason,
            "eval_count": int(timings.get("predicted_n", 0)),
            "eval_ns": int(float(timings.get("predicted_ms", 0.0)) * 1e6),
        }
        context = self._tokenize(request["prompt"] + text)
        if context is not None:
            done["context"] = context
        yield done

    def _tokenize(self, text: str) -> list[int] | None:
        try:
            response = self._http("POST", "/tokenize", {"content": text}, timeout=30)
            return [int(t) for t in json.loads(response.read()).get("tokens", [])]
        except (OSError, ValueError):
            return None


# the model held in RAM: the real llama-server, or the hashing stand-in without it
Runner = Loaded | LlamaServerLoaded


class Scheduler:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.loaded: dict[str, Runner] = {}
        self.lock = threading.Lock()
        self.keep_alive_s = parse_duration(_env("OLLAMA_KEEP_ALIVE"), KEEP_ALIVE_DEFAULT_S)
        self.parallel = max(1, _int_env("OLLAMA_NUM_PARALLEL", 1))
        self.default_ctx = _int_env("OLLAMA_CONTEXT_LENGTH", 0) or 4096
        threading.Thread(target=self._expire_loop, daemon=True).start()

    def get(self, model: LocalModel, options: dict[str, Any]) -> tuple[Runner, int]:
        """The runner for model with these runner options, loading it if needed; load ns.

        The caller holds a reference on the runner it gets and must release() it. A request
        needing other runner options (num_thread, num_ctx...) waits until the loaded runner's
        requests are done, then reloads it (server/sched.go:256-259 needsReload, :345-357:
        expire once refCount is 0, wait for the unload).
        """
        key = tuple(options.get(k) for k in RUNNER_OPTIONS)
        t0 = time.perf_counter_ns()
        while True:
            with self.lock:
                current = self.loaded.get(model.name.display)
                if current and current.alive() and current.runner_key == key:
                    current.hold()
                    return current, 0
                if current is None or not current.alive() or not current.busy():
                    if current:
                        current.stop()
                        del self.loaded[model.name.display]
                    ctx = int(options.get("num_ctx") or self.default_ctx)
                    runner: type[Runner] = LlamaServerLoaded if _real_llama_server() else Loaded
                    loaded = runner(model, options, key, ctx, self.parallel)
                    loaded.hold()
                    self.loaded[model.name.display] = loaded
                    return loaded, time.perf_counter_ns() - t0
            time.sleep(0.05)  # the loaded runner still serves requests with other options

    def unload(self, name: str) -> None:
        with self.lock:
            current = self.loaded.pop(name, None)
        if current:
            current.stop()

    def forget(self, loaded: Runner) -> None:
        with self.lock:
            if self.loaded.get(loaded.model.name.display) is loaded:
                del self.loaded[loaded.model.name.display]

    def _expire_loop(self) -> None:
        while True:
            time.sleep(0.25)
            now = time.time()
            with self.lock:
                expired = [
                    n
                    for n, m in self.loaded.items()
                    if (m.expires_at <= now and not m.busy()) or not m.alive()
                ]
                victims = [self.loaded.pop(n) for n in expired]
            for victim in victims:
                victim.stop()

    def shutdown(self) -> None:
        with self.lock:
            victims, self.loaded = list(self.loaded.values()), {}
        for victim in victims:
            victim.stop()


def _int_env(name: str, default: int) -> int:
    try:
        return int(_env(name, str(default)) or default)
    except ValueError:
        return default


# --------------------------------------------------------------------------- HTTP API


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "ollama-double"
    sys_version = ""
    scheduler: Scheduler

    def log_message(self, format: str, *args: Any) -> None:
        sys.stderr.write(f"[GIN] {self.log_date_time_string()} | {format % args}\n")

    # -- plumbing

    def _send_json(self, status: int, body: Any) -> None:
        data = json.dumps(body, separators=(",", ":")).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _send_text(self, status: int, text: str) -> None:
        data = text.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _start_stream(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/x-ndjson")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

    def _chunk(self, obj: Any) -> None:
        data = json.dumps(obj, separators=(",", ":")).encode() + b"\n"
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def _end_stream(self) -> None:
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def _body(self) -> dict[str, Any]:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        if not raw:
            raise ApiError(400, "missing request body")
        try:
            body = json.loads(raw)
        except ValueError as err:
            reason = getattr(err, "msg", err)  # JSONDecodeError's own text, else the decode error
            raise ApiError(400, f"invalid character in request body: {reason}") from err
        if not isinstance(body, dict):
            raise ApiError(400, "json: cannot unmarshal into Go value of type api.Request")
        return body

    def _dispatch(self, routes: dict[str, Any]) -> None:
        handler = routes.get(self.path.split("?")[0])
        if handler is None:
            self._send_text(404, "404 page not found")
            return
        try:
            handler()
        except ApiError as err:
            self._send_json(err.status, {"error": err.message})
        except (BrokenPipeError, ConnectionResetError):
            pass

    def do_GET(self) -> None:
        self._dispatch(
            {
                "/": lambda: self._send_text(200, "Ollama is running"),
                "/api/version": lambda: self._send_json(200, {"version": VERSION}),
                "/api/tags": self.api_tags,
                "/api/ps": self.api_ps,
            }
        )

    do_HEAD = do_GET

    def do_POST(self) -> None:
        self._dispatch(
            {
                "/api/pull": self.api_pull,
                "/api/generate": self.api_generate,
                "/api/chat": self.api_chat,
                "/api/show": self.api_show,
            }
        )

    def do_DELETE(self) -> None:
        self._dispatch({"/api/delete": self.api_delete})

    # -- endpoints

    def api_tags(self) -> None:
        models = [
            {
                "name": m.name.display,
                "model": m.name.display,
                "modified_at": local_rfc3339(m.modified),
                "size": m.size,
                "digest": m.digest,
                "details": m.details,
            }
            for m in list_models(self.scheduler.root)
        ]
        self._send_json(200, {"models": models})

    def api_ps(self) -> None:
        with self.scheduler.lock:
            loaded = sorted(
                self.scheduler.loaded.values(), key=lambda m: m.expires_at, reverse=True
            )
        self._send_json(
            200,
            {
                "models": [
                    {
                        "name": m.model.name.display,
                        "model": m.model.name.display,
                        "size": m.size,
                        "digest": m.model.digest,
                        "details": m.model.details,
                        "expires_at": local_rfc3339(min(m.expires_at, 10**10)),
                        "size_vram": 0,
                        "context_length": m.ctx,
                    }
                    for m in loaded
                    if m.alive()
                ]
            },
        )

    def api_show(self) -> None:
        body = self._body()
        model = find_model(self.scheduler.root, str(body.get("model") or body.get("name") or ""))
        if model is None:
            raise ApiError(404, f"model '{body.get('model') or body.get('name')}' not found")
        self._send_json(
            200,
            {
                "details": model.details,
                "capabilities": ["completion"],
                "template": model_template(model),
                "modified_at": local_rfc3339(model.modified),
                "model_info": {"general.architecture": model.details["family"]},
            },
        )

    def api_delete(self) -> None:
        body = self._body()
        raw = str(body.get("model") or body.get("name") or "")
        model = find_model(self.scheduler.root, raw)
        if model is None:
            raise ApiError(404, f"model '{raw}' not found")
        self.scheduler.unload(model.name.display)
        model.name.manifest_path(self.scheduler.root).unlink()
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def api_pull(self) -> None:
        body = self._body()
        raw = str(body.get("model") or body.get("name") or "")
        if ModelName.parse(raw) is None:
            raise ApiError(400, "invalid model name")
        stream = body.get("stream", True) is not False
        if not stream:
            try:
                pull_model(self.scheduler.root, raw, lambda _event: None)
            except PullError as err:
                raise ApiError(500, str(err)) from err
            self._send_json(200, {"status": "success"})
            return
        self._start_stream()
        try:
            pull_model(self.scheduler.root, raw, self._chunk)
        except PullError as err:
            self._chunk({"error": str(err)})  # status stays 200 once streaming has begun
        self._end_stream()

    def api_chat(self) -> None:
        body = self._body()
        messages = body.get("messages") or []
        prompt = "\n".join(str(m.get("content", "")) for m in messages if isinstance(m, dict))
        self._generate(body, prompt, chat=True)

    def api_generate(self) -> None:
        body = self._body()
        self._generate(body, str(body.get("prompt") or ""), chat=False)

    def _generate(self, body: dict[str, Any], prompt: str, chat: bool) -> None:
        t_start = time.perf_counter_ns()
        raw_name = str(body.get("model") or "")
        if not raw_name:
            raise ApiError(400, "model is required")
        model = find_model(self.scheduler.root, raw_name)
        if model is None or model.model_blob is None:
            raise ApiError(404, f"model '{raw_name}' not found")
        options = body.get("options") or {}
        if not isinstance(options, dict):
            raise ApiError(400, "json: cannot unmarshal options")
        keep_alive = (
            parse_duration(body["keep_alive"], self.scheduler.keep_alive_s)
            if "keep_alive" in body
            else self.scheduler.keep_alive_s
        )
        stream = body.get("stream", True) is not False
        if body.get("raw") and (body.get("template") or body.get("system") or body.get("context")):
            raise ApiError(400, "raw mode does not support template, system, or context")  # :422
        name = model.name.display
        base = {"model": name}
        if not prompt and keep_alive == 0:
            self.scheduler.unload(name)
            self._reply_final(
                stream,
                {
                    **base,
                    "created_at": now_rfc3339(),
                    **self._text("", chat),
                    "done": True,
                    "done_reason": "unload",
                },
            )
            return
        loaded, load_ns = self._load(model, options)
        try:
            loaded.expires_at = time.time() + keep_alive
            self._serve(loaded, body, prompt, options, chat, stream, t_start, load_ns, keep_alive)
        finally:
            loaded.release()

    def _serve(
        self,
        loaded: Runner,
        body: dict[str, Any],
        prompt: str,
        options: dict[str, Any],
        chat: bool,
        stream: bool,
        t_start: int,
        load_ns: int,
        keep_alive: float,
    ) -> None:
        base = {"model": loaded.model.name.display}
        if not prompt:
            self._reply_final(
                stream,
                {
                    **base,
                    "created_at": now_rfc3339(),
                    **self._text("", chat),
                    "done": True,
                    "done_reason": "load",
                },
            )
            return
        self._run(loaded, body, prompt, options, chat, stream, t_start, load_ns, keep_alive)

    @staticmethod
    def _rendered(model: LocalModel, body: dict[str, Any], prompt: str) -> str:
        # server/routes.go:330-331 and 500-505 (v0.32.15): raw sends the prompt as it is; a
        # request's own template replaces the model's
        if body.get("raw"):
            return prompt
        return render_prompt(str(body.get("template") or model_template(model)), prompt)

    def _load(self, model: LocalModel, options: dict[str, Any]) -> tuple[Runner, int]:
        try:
            return self.scheduler.get(model, options)
        except RunnerDied as err:
            raise ApiError(500, str(err)) from err

    @staticmethod
    def _text(text: str, chat: bool) -> dict[str, Any]:
        return {"message": {"role": "assistant", "content": text}} if chat else {"response": text}

    def _reply_final(self, stream: bool, final: dict[str, Any]) -> None:
        if stream:
            self._start_stream()
            self._chunk(final)
            self._end_stream()
        else:
            self._send_json(200, final)

    def _run(
        self,
        loaded: Runner,
        body: dict[str, Any],
        prompt: str,
        options: dict[str, Any],
        chat: bool,
        stream: bool,
        t_start: int,
        load_ns: int,
        keep_alive: float,
    ) -> None:
        seed = int(options.get("seed", -1))
        if seed < 0:
            # no seed: greedy decoding (temperature 0) is deterministic, sampling is not
            greedy = float(options.get("temperature", 0.8)) == 0
            seed = 0 if greedy else random.randrange(2**31)
        tokens = prompt_tokens(prompt)
        request = {
            "tokens": tokens,
            "seed": int(seed),
            "num_predict": int(options.get("num_predict", -1)),
            "prompt": self._rendered(loaded.model, body, prompt),
            "options": options,
        }
        name = loaded.model.name.display
        pieces: list[str] = []
        ids: list[int] = []
        prompt_stats: dict[str, Any] = {}
        final_stats: dict[str, Any] = {}
        started = False
        with loaded.slots:  # wait for one of the runner's parallel slots
            try:
                for event in loaded.generate(request):
                    if "text" in event:
                        pieces.append(event["text"])
                        ids.append(event["id"])
                        if stream:
                            if not started:
                                self._start_stream()
                                started = True
                            self._chunk(
                                {
                                    "model": name,
                                    "created_at": now_rfc3339(),
                                    **self._text(event["text"], chat),
                                    "done": False,
                                }
                            )
                    elif "prompt_eval_ns" in event:
                        prompt_stats = event
                    elif "done" in event:
                        final_stats = event
            except RunnerDied as err:
                self.scheduler.forget(loaded)
                if started:
                    self._chunk({"error": str(err)})
                    self._end_stream()
                    return
                raise ApiError(500, str(err)) from err
            loaded.expires_at = time.time() + keep_alive
        if keep_alive == 0:
            # sched.go:384-392: a zero session expires once the last request is done
            loaded.expires_at = 0.0
            if loaded.refs <= 1:  # only this request's own reference
                self.scheduler.unload(name)
        final: dict[str, Any] = {
            "model": name,
            "created_at": now_rfc3339(),
            **self._text("" if stream else "".join(pieces), chat),
            "done": True,
            "done_reason": final_stats["done"],
        }
        if not chat:
            final["context"] = final_stats.get("context", tokens + ids)
        final.update(
            {
                "total_duration": time.perf_counter_ns() - t_start,
                "load_duration": load_ns or 1,
                "prompt_eval_count": prompt_stats["prompt_eval_count"],
                "prompt_eval_duration": prompt_stats["prompt_eval_ns"],
                "eval_count": final_stats["eval_count"],
                "eval_duration": final_stats["eval_ns"],
            }
        )
        if not final["eval_count"]:  # omitempty, as in api/types.go
            del final["eval_count"], final["eval_duration"]
        if stream:
            if not started:
                self._start_stream()
            self._chunk(final)
            self._end_stream()
        else:
            self._send_json(200, final)


def _log(source: str, message: str) -> None:
    """A server log line in Ollama's slog text format (journalctl -u ollama shows these)."""
    stamp = _dt.datetime.now().astimezone().isoformat(timespec="milliseconds")
    if " " in message and not message.startswith("inference"):
        message = f'"{message}"'
    elif message.startswith("inference compute"):
        message = '"inference compute"' + message[len("inference compute") :]
    sys.stderr.write(f"time={stamp} level=INFO source={source} msg={message}\n")
    sys.stderr.flush()


def _meminfo() -> tuple[int, int]:
    fields: dict[str, int] = {}
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            name, _, rest = line.partition(":")
            fields[name] = int(rest.split()[0]) * 1024
    except (OSError, ValueError, IndexError):
        return 0, 0
    return fields.get("MemTotal", 0), fields.get("MemAvailable", 0)


class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True


class Server6(Server):
    address_family = socket.AF_INET6


def serve() -> int:
    _scheme, host, port, _path = parse_host(_env("OLLAMA_HOST"))
    root = models_dir()
    root.mkdir(parents=True, exist_ok=True)
    scheduler = Scheduler(root)
    handler = type("BoundHandler", (Handler,), {"scheduler": scheduler})
    server_cls = Server
    if ":" in host:
        server_cls = Server6
    try:
        httpd = server_cls((host or "0.0.0.0", port), handler)
    except OSError as err:
        reason = "address already in use" if err.errno == 98 else (err.strerror or str(err))
        print(f"Error: listen tcp {host}:{port}: bind: {reason}", file=sys.stderr)
        scheduler.shutdown()
        return 1
    _log("routes.go:1297", f"Listening on {host or '[::]'}:{port} (version {VERSION})")
    total, available = _meminfo()
    _log(
        "types.go:60",
        'inference compute id=cpu library=cpu compute="" name=cpu '
        f'description=cpu libdirs=ollama driver="" pci_id="" type="" '
        f'total="{total / 2**30:.1f} GiB" available="{available / 2**30:.1f} GiB"',
    )

    def stop(_sig: int, _frame: Any) -> None:
        threading.Thread(target=httpd.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        httpd.serve_forever(poll_interval=0.2)
    finally:
        scheduler.shutdown()
        httpd.server_close()
    return 0


# --------------------------------------------------------------------------- CLI client


def _client_base() -> tuple[str, int]:
    _scheme, host, port, _path = parse_host(_env("OLLAMA_HOST"))
    host = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    return host, port


def _request(method: str, path: str, body: Any = None) -> tuple[int, Any]:
    host, port = _client_base()
    conn = http.client.HTTPConnection(host, port, timeout=3600)
    data = json.dumps(body).encode() if body is not None else None
    conn.request(method, path, body=data, headers={"Content-Type": "application/json"})
    response = conn.getresponse()
    raw = response.read()
    try:
        return response.status, json.loads(raw) if raw else None
    except ValueError:
        return response.status, raw.decode(errors="replace")


def _human_size(n: int) -> str:
    for unit, scale in (("GB", 10**9), ("MB", 10**6), ("KB", 10**3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "    ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows
    )


def cli_version() -> int:
    try:
        _status, body = _request("GET", "/api/version")
        print(f"ollama version is {body['version']}")
        if body["version"] != VERSION:
            print(f"Warning: client version is {VERSION}")
    except OSError:
        print("Warning: could not connect to a running Ollama instance")
        print(f"Warning: client version is {VERSION}")
    return 0


def cli_list() -> int:
    try:
        _status, body = _request("GET", "/api/tags")
    except OSError:
        print("Error: could not connect to ollama app, is it running?", file=sys.stderr)
        return 1
    rows = [["NAME", "ID", "SIZE", "MODIFIED"]]
    for m in body["models"]:
        rows.append([m["name"], m["digest"][:12], _human_size(m["size"]), m["modified_at"][:19]])
    print(_table(rows))
    return 0


def cli_ps() -> int:
    try:
        _status, body = _request("GET", "/api/ps")
    except OSError:
        print("Error: could not connect to ollama app, is it running?", file=sys.stderr)
        return 1
    rows = [["NAME", "ID", "SIZE", "PROCESSOR", "CONTEXT", "UNTIL"]]
    for m in body["models"]:
        rows.append(
            [
                m["name"],
                m["digest"][:12],
                _human_size(m["size"]),
                "100% CPU",
                str(m["context_length"]),
                m["expires_at"][:19],
            ]
        )
    print(_table(rows))
    return 0


def cli_pull(name: str) -> int:
    host, port = _client_base()
    conn = http.client.HTTPConnection(host, port, timeout=3600)
    try:
        conn.request("POST", "/api/pull", body=json.dumps({"model": name}).encode())
        response = conn.getresponse()
    except OSError:
        print("Error: could not connect to ollama app, is it running?", file=sys.stderr)
        return 1
    for line in response:
        event = json.loads(line)
        if "error" in event:
            print(f"Error: {event['error']}", file=sys.stderr)
            return 1
        print(event["status"], file=sys.stderr)  # the real CLI draws progress on stderr
    return 0


def cli_rm(name: str) -> int:
    status, body = _request("DELETE", "/api/delete", {"model": name})
    if status != 200:
        print(f"Error: {body['error']}", file=sys.stderr)
        return 1
    print(f"deleted '{name}'")
    return 0


USAGE = """Large language model runner (TEST DOUBLE)

Usage:
  ollama [flags]
  ollama [command]

Available Commands:
  serve       Start ollama
  pull        Pull a model from a registry
  list        List models
  ps          List running models
  rm          Remove a model

Flags:
  -h, --help      help for ollama
  -v, --version   Show version information
"""


def _set_process_name(name: str) -> None:
    """Show up as Ollama's processes do (`ps -C ollama`, `ps -C llama-server`), not as python3."""
    try:
        import ctypes

        ctypes.CDLL(None).prctl(15, name.encode()[:15], 0, 0, 0)  # PR_SET_NAME
    except (OSError, AttributeError):
        pass


def main(argv: list[str]) -> int:
    if Path(argv[0]).name == "llama-server":
        _set_process_name("llama-server")
        return runner_main(argv[1:])
    args = argv[1:]
    if not args or args[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    command, rest = args[0], args[1:]
    if command in ("-v", "--version", "version"):
        return cli_version()
    if command == "serve":
        _set_process_name("ollama")
        return serve()
    if command == "runner":
        _set_process_name("llama-server")
        return runner_main(rest)
    if command in ("list", "ls"):
        return cli_list()
    if command == "ps":
        return cli_ps()
    if command == "pull" and rest:
        return cli_pull(rest[0])
    if command in ("rm", "delete") and rest:
        return cli_rm(rest[0])
    print(f'Error: unknown command "{command}" for "ollama"', file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
