"""A local HTTP mirror for the Ollama TEST DOUBLE: release downloads and a model registry.

Serves a tree written by tests/doubles/release.py:

    GET|HEAD /download/v<version>/<asset>                 (GitHub release URL shape)
    GET|HEAD /v2/<namespace>/<model>/manifests/<tag>       (registry.ollama.ai API shape)
    GET|HEAD /v2/<namespace>/<model>/blobs/sha256:<hex>

It listens on any address the test chooses (127.0.0.1, or the guest bridge's host address so
simulated VMs can reach it) and records every request path, so tests can check who fetched what.
"""

from __future__ import annotations

import http.server
import re
import shutil
import socketserver
import threading
from pathlib import Path
from typing import Any, Self

from .release import (
    DEFAULT_MODEL_BYTES,
    DEFAULT_VERSION,
    PublishedModel,
    Release,
    build_release,
    publish_model,
)

_MANIFEST = re.compile(r"^/v2/([A-Za-z0-9_.-]+)/([A-Za-z0-9_.-]+)/manifests/([A-Za-z0-9_.-]+)$")
_BLOB = re.compile(r"^/v2/([A-Za-z0-9_.-]+)/([A-Za-z0-9_.-]+)/blobs/(sha256:[0-9a-f]{64})$")
_DOWNLOAD = re.compile(r"^/download/(v[A-Za-z0-9_.+-]+)/([A-Za-z0-9_.-]+)$")


class _Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True


class OllamaMirror:
    """Threaded HTTP server over a mirror root; use as a context manager or start()/stop()."""

    def __init__(self, root: Path, host: str = "127.0.0.1", port: int = 0) -> None:
        self.root = root
        self.requests: list[tuple[str, str, int]] = []  # (method, path, status)
        mirror = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                mirror._serve(self, head=False)

            def do_HEAD(self) -> None:
                mirror._serve(self, head=True)

        self._httpd = _Server((host, port), Handler)
        self._thread: threading.Thread | None = None

    @property
    def host(self) -> str:
        return str(self._httpd.server_address[0])

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def download_base_url(self) -> str:
        """What the role's `ollama_download_base_url` should be set to."""
        return f"{self.url}/download"

    def start(self) -> Self:
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.1},
            daemon=True,
            name="ollama-mirror",
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread:
            self._thread.join(timeout=5)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _resolve(self, path: str) -> tuple[Path | None, str]:
        if match := _DOWNLOAD.match(path):
            return self.root / "download" / match[1] / match[2], "application/octet-stream"
        if match := _MANIFEST.match(path):
            return (
                self.root / "registry" / "manifests" / match[1] / match[2] / match[3],
                "application/vnd.docker.distribution.manifest.v2+json",
            )
        if match := _BLOB.match(path):
            return self.root / "registry" / "blobs" / match[3], "application/octet-stream"
        return None, ""

    def _serve(self, handler: http.server.BaseHTTPRequestHandler, head: bool) -> None:
        path = handler.path.split("?")[0]
        target, content_type = self._resolve(path)
        if target is None or not target.is_file():
            self.requests.append((handler.command, path, 404))
            body = b'{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}'
            handler.send_response(404)
            handler.send_header("Content-Type", "application/json")
            handler.send_header("Content-Length", str(len(body)))
            handler.end_headers()
            if not head:
                handler.wfile.write(body)
            return
        self.requests.append((handler.command, path, 200))
        handler.send_response(200)
        handler.send_header("Content-Type", content_type)
        handler.send_header("Content-Length", str(target.stat().st_size))
        handler.end_headers()
        if not head:
            with target.open("rb") as source:
                try:
                    shutil.copyfileobj(source, handler.wfile, 1 << 20)
                except (BrokenPipeError, ConnectionResetError):
                    pass


def prepare_mirror(
    root: Path,
    version: str | None = None,
    models: dict[str, int | Path] | None = None,
    llama_server: Path | None = None,
) -> tuple[Release, list[PublishedModel]]:
    """Build the double's release and publish models under root.

    models: name -> a GGUF file (real weights for the real llama-server) or a byte count
    (random weights for the double's hashing runner). llama_server: the real binary to ship
    in the release (tests/doubles/engine.py); None ships the hashing runner.
    Returns (Release, [PublishedModel]). Defaults: the pinned version and gemma2:2b at 128 MiB.
    """
    release = build_release(root, version or DEFAULT_VERSION, llama_server=llama_server)
    wanted = models if models is not None else {"gemma2:2b": DEFAULT_MODEL_BYTES}
    published = [
        publish_model(root, name, gguf=weights)
        if isinstance(weights, Path)
        else publish_model(root, name, weights)
        for name, weights in wanted.items()
    ]
    return release, published
