"""The simulator's HTTPS front: a threaded WSGI server that keeps connections as pveproxy does.

pveproxy answers HTTP/1.1 and keeps a connection open for up to 100 requests (pve-manager
PVE/Service/pveproxy.pm:100 `keep_alive => 100`; pve-http-server src/PVE/APIServer/AnyEvent.pm:195,
:1741 count them down), says so with `Connection: Keep-Alive` (:366-369), closes after any answer
>= 400 (:322), when the client sends `Connection: close` or speaks HTTP/1.0 without asking
(:1461-1471), and after 5 s without a request (:2108 `timeout = 5`). It refuses a chunked request
body with 501 (:1474-1482). A client such as requests therefore pays for one TLS handshake per
connection, not one per call; werkzeug's development server closed every connection.

Each connection gets its own thread, its TLS handshake included, so a slow client holds no one
else up. Bodies are read whole before the app runs (pveproxy limits a POST to 64 KiB), so an
app that ignores a body cannot leave bytes that would be read as the next request.
"""

from __future__ import annotations

import io
import logging
import socket
import ssl
import sys
from collections.abc import Callable, Iterable
from http.server import BaseHTTPRequestHandler
from socketserver import TCPServer, ThreadingMixIn
from typing import Any
from urllib.parse import unquote, urlsplit

log = logging.getLogger("provision.sim")

KEEP_ALIVE_REQUESTS = 100  # pveproxy.pm:100
IDLE_TIMEOUT_S = 5.0  # AnyEvent.pm:2108
MAX_BODY = 64 * 1024  # AnyEvent.pm `$limit_max_post`

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class PveHTTPServer(ThreadingMixIn, TCPServer):
    """One thread per connection; TLS is negotiated in that thread. (Not http.server's
    HTTPServer: its bind looks the host name up in DNS.)"""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(
        self,
        address: tuple[str, int],
        app: WsgiApp,
        ssl_context: ssl.SSLContext,
        *,
        verbose: bool = False,
    ) -> None:
        self.app = app
        self.ssl_context = ssl_context
        self.verbose = verbose
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        super().__init__(address, PveRequestHandler)

    def finish_request(self, request: Any, client_address: Any) -> None:
        request.settimeout(IDLE_TIMEOUT_S)
        try:
            connection = self.ssl_context.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError) as error:  # a client that cannot speak TLS to us
            if self.verbose:
                log.info("TLS handshake with %s failed: %s", client_address[0], error)
            request.close()
            return
        try:
            PveRequestHandler(connection, client_address, self)
        finally:
            connection.close()

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.exception("connection from %s failed", client_address[0])


class PveRequestHandler(BaseHTTPRequestHandler):
    """GET/POST/PUT/DELETE through the WSGI app, with pveproxy's keep-alive rules."""

    protocol_version = "HTTP/1.1"
    server_version = "pve-api-daemon/3.0"
    timeout = IDLE_TIMEOUT_S
    server: PveHTTPServer

    def version_string(self) -> str:
        return self.server_version

    def setup(self) -> None:
        super().setup()
        self.requests_left = KEEP_ALIVE_REQUESTS

    def handle_one_request(self) -> None:
        try:
            super().handle_one_request()
        except (ConnectionError, TimeoutError, ssl.SSLError):
            self.close_connection = True  # the client went away, or stayed idle too long

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def do_PUT(self) -> None:
        self._serve()

    def do_DELETE(self) -> None:
        self._serve()

    def _serve(self) -> None:
        self.requests_left -= 1
        encoding = self.headers.get("Transfer-Encoding")
        if encoding:
            self._skip_chunked_body()  # unread bytes would turn the close into a reset
            self.send_error(501, "chunked transfer encoding not supported")
            return
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            self.send_error(413, "request too large")
            return
        body = self.rfile.read(length) if length else b""
        status, headers, content = self._call_app(self._environ(body))
        code = int(status.split(" ", 1)[0])
        keep = code < 400 and self.requests_left > 0 and self._client_keeps_alive()
        self.send_response(code, status.partition(" ")[2])
        for name, value in headers:
            if name.lower() not in ("connection", "content-length", "transfer-encoding"):
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(content)))
        self.send_header("Connection", "Keep-Alive" if keep else "close")
        self.end_headers()
        self.wfile.write(content)

    def _skip_chunked_body(self) -> None:
        """Read a chunked body to its last chunk (at most MAX_BODY), to answer it cleanly."""
        left = MAX_BODY
        while left > 0:
            try:
                size = int(self.rfile.readline(64).split(b";")[0].strip(), 16)
            except ValueError:
                return  # not chunked after all: the close that follows will do
            self.rfile.read(min(size, left) + 2)  # the chunk and its CRLF (the last: the end)
            left -= size
            if size == 0:
                return

    def _client_keeps_alive(self) -> bool:
        asked = (self.headers.get("Connection") or "").lower()
        if asked:
            return "close" not in asked
        return self.request_version >= "HTTP/1.1"

    def _call_app(self, environ: dict[str, Any]) -> tuple[str, list[tuple[str, str]], bytes]:
        answer: dict[str, Any] = {}

        def start_response(
            status: str, headers: list[tuple[str, str]], exc_info: Any = None
        ) -> Callable[[bytes], None]:
            answer["status"], answer["headers"] = status, headers
            return lambda data: chunks.append(data)

        chunks: list[bytes] = []
        try:
            result = self.server.app(environ, start_response)
            try:
                chunks.extend(result)
            finally:
                close = getattr(result, "close", None)
                if close is not None:
                    close()
        except Exception:  # the app answers PVE's own 500 itself; this is a bug in a bug path
            log.exception("the app failed for %s %s", self.command, self.path)
            return "500 Internal Server Error", [], b""
        return answer["status"], answer["headers"], b"".join(chunks)

    def _environ(self, body: bytes) -> dict[str, Any]:
        url = urlsplit(self.path)
        host, port = self.server.server_address[:2]
        environ: dict[str, Any] = {
            "wsgi.version": (1, 0),
            "wsgi.url_scheme": "https",
            "wsgi.input": io.BytesIO(body),
            "wsgi.errors": sys.stderr,
            "wsgi.multithread": True,
            "wsgi.multiprocess": False,
            "wsgi.run_once": False,
            "SERVER_SOFTWARE": self.server_version,
            "REQUEST_METHOD": self.command,
            "SCRIPT_NAME": "",
            "PATH_INFO": unquote(url.path).encode("utf-8").decode("latin-1"),
            "QUERY_STRING": url.query,
            "REQUEST_URI": self.path,
            "REMOTE_ADDR": self.client_address[0],
            "REMOTE_PORT": self.client_address[1],
            "SERVER_NAME": str(host),
            "SERVER_PORT": str(port),
            "SERVER_PROTOCOL": self.request_version,
            "CONTENT_LENGTH": str(len(body)),
        }
        for name, value in self.headers.items():
            key = name.upper().replace("-", "_")
            if "_" in name or key == "CONTENT_LENGTH":
                continue  # as werkzeug: a header with "_" could pose as another
            if key != "CONTENT_TYPE":
                key = f"HTTP_{key}"
            environ[key] = f"{environ[key]},{value}" if key in environ else value
        return environ

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        if self.server.verbose:
            super().log_request(code, size)

    def log_error(self, format: str, *args: Any) -> None:
        if self.server.verbose:
            super().log_error(format, *args)


def make_https_server(
    host: str, port: int, app: WsgiApp, ssl_context: ssl.SSLContext, *, verbose: bool = False
) -> PveHTTPServer:
    """Bind (host, port) (port 0: any free one); call serve_forever() to answer."""
    return PveHTTPServer((host, port), app, ssl_context, verbose=verbose)
