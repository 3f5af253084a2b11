"""Probe test fixtures: the Ollama TEST DOUBLE on loopback, a fixture-replay Ollama, a local sshd.

Everything listens on 127.0.0.1 only and is stopped at the end of its scope.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest

from provision.guest import GuestAddress, pin_host_key
from provision.probe.run import AGENT_PATH, ProbeOptions
from tests.doubles import OllamaMirror, prepare_mirror
from tests.integration.conftest import api_lab, api_sim, ssh_key  # noqa: F401 - CLI fixtures

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "ollama"
MODEL_BYTES = 8 << 20  # the double's scaled-down weights: small enough for fast tests


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_http(url: str, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def run_agent(options: ProbeOptions | dict[str, Any], *, env: dict[str, str] | None = None,
              timeout: float = 120.0) -> tuple[list[dict[str, Any]], int]:
    """Run agent.py on this host as the guest would (python3, options as one base64 arg)."""
    data = options.agent_options() if isinstance(options, ProbeOptions) else options
    encoded = base64.b64encode(json.dumps(data).encode()).decode()
    done = subprocess.run([sys.executable, "-", encoded], input=AGENT_PATH.read_bytes(),
                          capture_output=True, timeout=timeout, env=env, check=False)
    events = [json.loads(line) for line in done.stdout.decode().splitlines() if line.strip()]
    return events, done.returncode


def of_kind(events: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [e for e in events if e["event"] == kind]


# -- the Ollama test double ------------------------------------------------------------------


@dataclass
class DoubleOllama:
    """The Ollama TEST DOUBLE (tests/doubles) serving on loopback, gemma2:2b pulled."""

    url: str
    install: Path
    models: Path
    process: subprocess.Popen[bytes]
    digest: str

    @property
    def bin_dir(self) -> Path:
        return self.install / "bin"


def start_double(root: Path, model_bytes: int = MODEL_BYTES,
                 cgroup: Path | None = None) -> DoubleOllama:
    """Install the double's release under root, serve it on a free port, pull gemma2:2b.

    With `cgroup` (a cgroup v1 directory) the server is moved into it at once, before it
    starts any runner, so its runners are confined too.
    """
    release, models = prepare_mirror(root / "mirror", models={"gemma2:2b": model_bytes})
    install = root / "usr" / "local"
    install.mkdir(parents=True)
    subprocess.run(f"zstd -d -c {release.tarball} | tar -x -C {install}", shell=True,
                   check=True)
    port = free_port()
    env = {**os.environ, "OLLAMA_HOST": f"127.0.0.1:{port}",
           "OLLAMA_MODELS": str(root / "models")}
    with OllamaMirror(root / "mirror") as mirror:
        env["OLLAMA_DOUBLE_REGISTRY"] = mirror.url
        process = subprocess.Popen([sys.executable, str(install / "bin" / "ollama"), "serve"],
                                   env=env, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
        if cgroup is not None:
            (cgroup / "cgroup.procs").write_text(str(process.pid))
        try:
            wait_http(f"http://127.0.0.1:{port}/api/version")
            subprocess.run([sys.executable, str(install / "bin" / "ollama"), "pull",
                            "gemma2:2b"], env=env, check=True, capture_output=True)
        except BaseException:
            stop_double(process)
            raise
    return DoubleOllama(url=f"http://127.0.0.1:{port}", install=install,
                        models=root / "models", process=process,
                        digest=models[0].manifest_digest)


def stop_double(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@pytest.fixture(scope="session")
def ollama_double(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DoubleOllama]:
    double = start_double(tmp_path_factory.mktemp("ollama-double"))
    try:
        yield double
    finally:
        stop_double(double.process)


# -- a fixture-replay Ollama -----------------------------------------------------------------


def fixture_text(name: str) -> str:
    return (FIXTURES / name).read_text()


class FixtureReplayOllama:
    """NOT Ollama: replays the verbatim fixture files for the routes the agent uses.

    `generate` picks what POST /api/generate answers: a list of NDJSON lines (streamed,
    HTTP 200) or a (status, body) pair. Unload requests (no prompt, keep_alive 0) get the
    docs' unload object.
    """

    def __init__(self) -> None:
        self.generate: list[str] | tuple[int, str] = fixture_text(
            "docs_api_streaming_generate.ndjson").splitlines()
        self.requests: list[dict[str, Any]] = []
        replay = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                tags_entry = json.loads(fixture_text("real_gemma2_2b_tags_entry.json"))
                routes = {"/api/version": fixture_text("docs_api_version.json"),
                          "/api/tags": json.dumps({"models": [tags_entry]}),
                          "/api/ps": fixture_text("synthetic_api_ps_gemma2_cpu.json")}
                body = routes.get(self.path)
                self._send(200 if body else 404, body or "404 page not found")

            def do_POST(self) -> None:
                request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                replay.requests.append(request)
                if not request.get("prompt"):
                    self._send(200, fixture_text("docs_api_generate_unload.json"))
                elif isinstance(replay.generate, tuple):
                    self._send(*replay.generate)
                else:
                    self._stream(replay.generate)

            def _send(self, status: int, body: str) -> None:
                data = body.encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _stream(self, lines: list[str]) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "application/x-ndjson")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                for line in lines:
                    data = line.encode() + b"\n"
                    self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                    self.wfile.flush()
                    time.sleep(0.01)
                self.wfile.write(b"0\r\n\r\n")

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def replay_ollama() -> Iterator[FixtureReplayOllama]:
    replay = FixtureReplayOllama()
    try:
        yield replay
    finally:
        replay.close()


# -- a local OpenSSH server ------------------------------------------------------------------


@dataclass
class LocalSshd:
    """A real /usr/sbin/sshd on 127.0.0.1 (as root), its host key pinned for provision.guest."""

    address: GuestAddress
    process: subprocess.Popen[bytes]
    config: Path

    def session_pids(self) -> list[int]:
        """sshd processes serving sessions (children of the listener)."""
        out = subprocess.run(["pgrep", "-P", str(self.process.pid)], capture_output=True,
                             text=True, check=False).stdout
        return [int(p) for p in out.split()]


def _start_sshd(root: Path, extra_config: str = "") -> LocalSshd:
    sshd = shutil.which("sshd") or "/usr/sbin/sshd"
    if os.geteuid() != 0 or not os.path.exists(sshd):
        pytest.skip("needs root and OpenSSH's sshd")
    root.mkdir(parents=True, exist_ok=True)
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege-separation dir
    host_key, user_key = root / "host_ed25519", root / "user_ed25519"
    for key in (host_key, user_key):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)],
                       check=True)
    (root / "authorized_keys").write_text(user_key.with_suffix(".pub").read_text())
    port = free_port()
    config = root / "sshd_config"
    config.write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {host_key}\n"
        f"AuthorizedKeysFile {root / 'authorized_keys'}\nPidFile {root / 'sshd.pid'}\n"
        "PermitRootLogin prohibit-password\nPasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n"
        f"{extra_config}")
    process = subprocess.Popen([sshd, "-D", "-e", "-f", str(config)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if time.monotonic() > deadline or process.poll() is not None:
                process.kill()
                raise RuntimeError("sshd did not start") from None
            time.sleep(0.05)
    known_hosts = root / "known_hosts"
    pin_host_key(known_hosts, "127.0.0.1", host_key.with_suffix(".pub").read_text(), port=port)
    address = GuestAddress(host="127.0.0.1", user="root", key_path=user_key,
                           known_hosts=known_hosts, port=port, name="probe-test")
    return LocalSshd(address=address, process=process, config=config)


def _stop(sshd: LocalSshd) -> None:
    sshd.process.terminate()
    try:
        sshd.process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        sshd.process.kill()
        sshd.process.wait()


@pytest.fixture(scope="module")
def local_sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalSshd]:
    sshd = _start_sshd(tmp_path_factory.mktemp("sshd"))
    try:
        yield sshd
    finally:
        _stop(sshd)


@pytest.fixture
def make_sshd(tmp_path: Path) -> Iterator[Callable[[str], LocalSshd]]:
    """An sshd with extra config lines (e.g. a session PATH without python3)."""
    started: list[LocalSshd] = []

    def make(extra: str) -> LocalSshd:
        sshd = _start_sshd(tmp_path / f"sshd{len(started)}", extra)
        started.append(sshd)
        return sshd

    yield make
    for sshd in started:
        _stop(sshd)
