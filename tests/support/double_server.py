"""The Ollama TEST DOUBLE unpacked from its release tarball and run as `ollama serve` on
127.0.0.1, pulling from a local mirror (tests/doubles)."""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.doubles import OllamaMirror, PublishedModel, Release
from tests.support.net import free_port

MODEL = "gemma2:2b"
MODEL_BYTES = 16 << 20  # small weights: each token is still a real pass over them


@dataclass
class MirrorSetup:
    mirror: OllamaMirror
    release: Release
    model: PublishedModel
    root: Path


@dataclass
class Double:
    """A running `ollama serve` (the double) and how to talk to it."""

    proc: subprocess.Popen[bytes]
    port: int
    models_dir: Path
    env: dict[str, str]
    binary: Path
    log: Path | None = None  # its stderr, when start_double was given a file

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def call(
        self, method: str, path: str, body: Any = None, raw: bytes | None = None
    ) -> tuple[int, bytes]:
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        request = urllib.request.Request(self.url + path, data=data, method=method)
        try:
            with urllib.request.urlopen(request, timeout=120) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as err:
            return err.code, err.read()

    def json(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        status, raw = self.call(method, path, body)
        return status, json.loads(raw)

    def ndjson(self, path: str, body: Any) -> tuple[int, list[dict[str, Any]]]:
        status, raw = self.call("POST", path, body)
        return status, [json.loads(line) for line in raw.splitlines() if line.strip()]

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.binary), *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def runner_pids(self) -> list[int]:
        out = subprocess.run(
            ["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True, check=False
        ).stdout
        return [int(p) for p in out.split()]


def start_double(
    installed: Path,
    models_dir: Path,
    registry: str | None,
    log: Path | None = None,
    **extra_env: str,
) -> Double:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("OLLAMA_")}
    env.update(OLLAMA_HOST=f"127.0.0.1:{port}", OLLAMA_MODELS=str(models_dir), **extra_env)
    if registry:
        env["OLLAMA_DOUBLE_REGISTRY"] = registry
    binary = installed / "bin" / "ollama"
    with log.open("ab") if log else open(os.devnull, "wb") as stderr:
        proc = subprocess.Popen([str(binary), "serve"], env=env, stderr=stderr)
    double = Double(proc, port, models_dir, env, binary, log)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            if double.call("GET", "/api/version")[0] == 200:
                return double
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("the Ollama double did not start")


def stop_double(double: Double) -> None:
    double.proc.terminate()
    try:
        double.proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        double.proc.kill()
        double.proc.wait()
