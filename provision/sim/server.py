"""The simulator's HTTPS server: `SimServer`, `serve()` and the guest backend choice.

`SimServer` runs the WSGI app (app.py) in a background thread (tests, `labctl` integration);
`serve()` runs it in the foreground until SIGINT/SIGTERM (`labctl sim serve`).
"""

from __future__ import annotations

import logging
import signal
import ssl
import sys
import threading
from pathlib import Path
from typing import Any, Self, TextIO

from provision.sim import auth, tls
from provision.sim.app import SimApp
from provision.sim.guests.base import GuestBackend
from provision.sim.guests.null import NoGuestBackend
from provision.sim.httpd import PveHTTPServer, make_https_server
from provision.sim.models import GIB, Cluster, node_names
from provision.sim.schema import load_schema
from provision.sim.settings import Settings

log = logging.getLogger("provision.sim")


def make_backend(kind: str, **opts: Any) -> GuestBackend:
    """The guest backend for `--guests none|container`.

    "container" (opts go to ContainerBackend, e.g. state_dir, bridge, subnet, prefix) falls back
    to NoGuestBackend with one logged warning, also shown by `describe()`, when containers cannot
    run here (not root, systemd-nspawn or overlayfs missing, ...). Bad options still raise.
    """
    if kind == "none":
        return NoGuestBackend()
    if kind != "container":
        raise ValueError(f"unknown guest backend {kind!r} (none, container)")
    try:
        from provision.sim.guests.container import ContainerBackend

        backend: GuestBackend = ContainerBackend(**opts)
        return backend
    except (ImportError, OSError, RuntimeError) as exc:  # GuestsUnavailable is a RuntimeError
        reason = str(exc) or type(exc).__name__
    log.warning("falling back to API-only guests: %s", reason)
    return NoGuestBackend(reason=reason)


class SimServer:
    """A simulated PVE cluster on https://host:port, served from a background thread.

    `state_dir` holds state.json, credentials.json (mode 600) and tls/. Extra keyword arguments
    are Settings fields (agent_delay=0.2, task_durations={"qmclone": 0.3}, ...) and override
    what the state directory remembers. The server owns `backend` and closes it on stop().
    """

    def __init__(
        self,
        state_dir: Path,
        host: str = "127.0.0.1",
        port: int = 0,
        nodes: int = 1,
        backend: GuestBackend | None = None,
        node_cpus: int = 16,
        node_memory_gib: int = 64,
        log_requests: bool = False,
        **settings: Any,
    ) -> None:
        self.state_dir = Path(state_dir)
        self.host = host
        self._requested_port = port
        self.nodes = nodes
        self.backend: GuestBackend = backend if backend is not None else NoGuestBackend()
        self._node_cpus = node_cpus
        self._node_memory = node_memory_gib * GIB
        self._settings = settings
        self._log_requests = log_requests
        self._server: PveHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.cluster: Cluster | None = None
        self.app: SimApp | None = None
        self.cert_path, self.key_path = tls.ensure_certificate(self.state_dir, node_names(nodes))
        self.fingerprint = tls.fingerprint(self.cert_path)
        self._creds = auth.load_or_create(self.state_dir)

    @property
    def credentials(self) -> dict[str, str]:
        """user, password, token_id (root@pam!labctl), token_secret."""
        return self._creds.public()

    @property
    def credentials_path(self) -> Path:
        return self.state_dir / auth.CREDENTIALS_FILE

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("SimServer is not started")
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"https://{self.host}:{self.port}"

    def start(self) -> Self:
        settings = Settings()
        self.cluster = Cluster(
            self.state_dir, self.backend, self.nodes, self._node_cpus, self._node_memory, settings
        )
        if self._settings:
            self.cluster.settings.update(self._settings)
            self.cluster.save()
        authenticator = auth.Authenticator(self._creds, self.cluster.access)
        app = SimApp(self.cluster, authenticator, load_schema())
        self.app = app
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(self.cert_path), str(self.key_path))
        self._server = make_https_server(
            self.host, self._requested_port, app, context, verbose=self._log_requests
        )
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="pve-sim", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self.cluster is not None:
            self.cluster.close()
        self.backend.close()
        self._server = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve(
    state_dir: Path,
    host: str = "127.0.0.1",
    port: int = 8006,
    nodes: int = 1,
    guests: str = "none",
    print_credentials: bool = False,
    log_requests: bool = True,
    stream: TextIO | None = None,
    backend_opts: dict[str, Any] | None = None,
    **settings: Any,
) -> int:
    """Run the simulator in the foreground until SIGINT/SIGTERM; returns an exit code.

    The banner (URL, fingerprint, credentials file, guest backend) goes to `stream` (stderr).
    Secrets are printed only with print_credentials=True. Container guests keep their disks in
    `<state_dir>/guests` unless `backend_opts` names another `state_dir`.
    """
    out = stream or sys.stderr
    opts = dict(backend_opts or {})
    if guests == "container":
        opts.setdefault("state_dir", Path(state_dir) / "guests")
    backend = make_backend(guests, **opts)
    server = SimServer(
        Path(state_dir), host, port, nodes, backend, log_requests=log_requests, **settings
    )
    stop = threading.Event()
    previous = {
        sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)
    }
    server.start()
    try:
        print(banner(server, print_credentials), file=out, flush=True)
        stop.wait()
    finally:
        print("stopping the simulator ...", file=out, flush=True)
        server.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


def banner(server: SimServer, print_credentials: bool) -> str:
    creds = server.credentials
    lines = [
        f"Proxmox VE simulator (PVE 9.2 API) listening on {server.url}/api2/json",
        f"  nodes:        {', '.join(node_names(server.nodes))}",
        f"  TLS SHA-256:  {server.fingerprint}",
        f"  certificate:  {server.cert_path}",
        f"  credentials:  {server.credentials_path}",
        f"  login:        user {creds['user']}, API token {creds['token_id']}",
        f"  state:        {server.state_dir}",
        f"  backend:      {server.backend.describe()}",
    ]
    if print_credentials:
        lines.append(f"  password:     {creds['password']}")
        lines.append(f"  token secret: {creds['token_secret']}")
    lines.append("Press Ctrl-C to stop.")
    return "\n".join(lines)
