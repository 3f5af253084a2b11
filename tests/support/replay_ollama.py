"""NOT Ollama: an HTTP server replaying the verbatim Ollama API fixtures (tests/fixtures/ollama)."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "ollama"


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
            "docs_api_streaming_generate.ndjson"
        ).splitlines()
        self.requests: list[dict[str, Any]] = []
        replay = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                tags_entry = json.loads(fixture_text("real_gemma2_2b_tags_entry.json"))
                routes = {
                    "/api/version": fixture_text("docs_api_version.json"),
                    "/api/tags": json.dumps({"models": [tags_entry]}),
                    "/api/ps": fixture_text("synthetic_api_ps_gemma2_cpu.json"),
                }
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
