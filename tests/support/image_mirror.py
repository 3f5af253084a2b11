"""A local mirror of cloud-images.ubuntu.com for `labctl template create` on the simulator.

Serves `/<release>/current/<image>` and `/<release>/current/SHA256SUMS` in Ubuntu's format
(`<hex> *<file>`), over plain HTTP on loopback, where the simulator's `download-url` fetches it.
The image is a qcow2 header with the cloud image's virtual size (3.5 GiB) and padding: the
simulator reads only the header; the guest's file system comes from the simulator's template.
"""

from __future__ import annotations

import hashlib
import http.server
import socketserver
import struct
import threading
from pathlib import Path
from typing import Any, Self

IMAGE = "noble-server-cloudimg-amd64.img"
VIRTUAL_SIZE = 3584 * 1024 * 1024


def qcow2_image(virtual_size: int = VIRTUAL_SIZE, padding: int = 64 * 1024) -> bytes:
    """A qcow2 v3 header (magic, version, no backing file, 64 KiB clusters, size) + zeros."""
    header = b"QFI\xfb" + struct.pack(">IQIIQ", 3, 0, 0, 16, virtual_size)
    return header + bytes(padding)


class _Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True


class ImageMirror:
    """`with ImageMirror(root) as mirror:` serves root on 127.0.0.1; `mirror.requests` logs GETs."""

    def __init__(self, root: Path, *, release: str = "noble") -> None:
        self.root = root
        self.release = release
        self.requests: list[str] = []
        self.directory = root / release / "current"
        self.directory.mkdir(parents=True, exist_ok=True)
        self.publish(qcow2_image())
        self._server: _Server | None = None

    def publish(self, data: bytes, *, listed_sha256: str | None = None) -> str:
        """Write the image and SHA256SUMS (listing `listed_sha256` instead of the real one)."""
        (self.directory / IMAGE).write_bytes(data)
        real = hashlib.sha256(data).hexdigest()
        listed = listed_sha256 or real
        other = hashlib.sha256(b"another file").hexdigest()
        (self.directory / "SHA256SUMS").write_text(
            f"{other} *{self.release}-server-cloudimg-arm64.img\n{listed} *{IMAGE}\n"
        )
        return real

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    @property
    def image_url(self) -> str:
        return f"{self.url}/{self.release}/current/{IMAGE}"

    def __enter__(self) -> Self:
        mirror = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                super().__init__(*args, directory=str(mirror.root), **kwargs)

            def do_GET(self) -> None:
                mirror.requests.append(self.path)
                super().do_GET()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = _Server(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
