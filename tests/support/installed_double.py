"""The Ollama TEST DOUBLE installed from its release tarball, serving on loopback with gemma2:2b
pulled: what the probe tests (and bench/probe_overhead.py) talk to."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from tests.doubles import OllamaMirror, prepare_mirror
from tests.support.net import free_port, wait_http

MODEL_BYTES = 8 << 20  # the double's scaled-down weights: small enough for fast tests


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


def start_double(
    root: Path, model_bytes: int = MODEL_BYTES, cgroup: Path | None = None
) -> DoubleOllama:
    """Install the double's release under root, serve it on a free port, pull gemma2:2b.

    With `cgroup` (a cgroup v1 directory) the server is moved into it at once, before it
    starts any runner, so its runners are confined too.
    """
    release, models = prepare_mirror(root / "mirror", models={"gemma2:2b": model_bytes})
    install = root / "usr" / "local"
    install.mkdir(parents=True)
    subprocess.run(f"zstd -d -c {release.tarball} | tar -x -C {install}", shell=True, check=True)
    port = free_port()
    env = {**os.environ, "OLLAMA_HOST": f"127.0.0.1:{port}", "OLLAMA_MODELS": str(root / "models")}
    with OllamaMirror(root / "mirror") as mirror:
        env["OLLAMA_DOUBLE_REGISTRY"] = mirror.url
        process = subprocess.Popen(
            [sys.executable, str(install / "bin" / "ollama"), "serve"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        if cgroup is not None:
            (cgroup / "cgroup.procs").write_text(str(process.pid))
        try:
            wait_http(f"http://127.0.0.1:{port}/api/version")
            subprocess.run(
                [sys.executable, str(install / "bin" / "ollama"), "pull", "gemma2:2b"],
                env=env,
                check=True,
                capture_output=True,
            )
        except BaseException:
            stop_double(process)
            raise
    return DoubleOllama(
        url=f"http://127.0.0.1:{port}",
        install=install,
        models=root / "models",
        process=process,
        digest=models[0].manifest_digest,
    )


def stop_double(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
