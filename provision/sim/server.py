"""The simulator's HTTPS server: auth, request pipeline, PVE's wire conventions.

`SimServer` runs it in a background thread (tests, `labctl` integration); `serve()` runs it in the
foreground until SIGINT/SIGTERM (`labctl sim serve`). The pipeline per request follows pveproxy:
authenticate -> injected fault? -> find the handler (501) -> parse and merge parameters ->
privileges (403, permissions.py) -> node known? (500) -> validate against the PVE 9.2 schema
(400) -> handler (500 on `die`).
"""

from __future__ import annotations

import json
import logging
import signal
import ssl
import sys
import threading
import time
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any, Self, TextIO

from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server
from werkzeug.wrappers import Request, Response

from provision.sim import auth, control, permissions, tls
from provision.sim.daemon import DaemonPool
from provision.sim.errors import AuthFailure, PveError
from provision.sim.guests.base import GuestBackend
from provision.sim.guests.null import NoGuestBackend
from provision.sim.models import GIB, Cluster, node_names
from provision.sim.parsing import parse
from provision.sim.responses import Call, Envelope
from provision.sim.schema import Endpoint, Schema, load_schema, merge_path_params, validate
from provision.sim.settings import Settings
from provision.sim.urls import ROUTES

API_PREFIX = "/api2/json"
UNAUTHENTICATED = {
    ("GET", "/access/domains"),
    ("GET", "/access/ticket"),
    ("POST", "/access/ticket"),
}
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


class SimApp:
    """The WSGI application: one Cluster behind PVE's HTTP conventions."""

    def __init__(self, cluster: Cluster, authenticator: auth.Authenticator, schema: Schema) -> None:
        self.cluster = cluster
        self.auth = authenticator
        self.schema = schema
        self.daemon = DaemonPool(lambda: cluster.settings.daemon_workers)

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        request = Request(environ)
        try:
            response = self.dispatch(request)
        except AuthFailure as exc:
            time.sleep(self.cluster.settings.auth_failure_delay)
            response = error_response(exc, body=False)
        except PveError as exc:
            response = error_response(exc)
        except Exception as exc:  # a simulator bug still answers like PVE would (500)
            log.exception("unhandled error for %s %s", request.method, request.path)
            response = error_response(PveError.internal(f"{type(exc).__name__}: {exc}"))
        return response(environ, start_response)

    def dispatch(self, request: Request) -> Response:
        method, path = request.method, request.path
        if path.startswith("/_sim/"):
            caller = self.authenticate(request, path, allows_token=True)
            if not self.cluster.access.is_root(caller):
                raise PveError(403, "Permission check failed (the control API is root's)")
            return json_response({"data": control.handle(self.cluster, request, path)})
        if not path.startswith(API_PREFIX + "/"):
            raise PveError.not_implemented(method, path)
        api_path = path[len(API_PREFIX) :]
        fault = self.cluster.faults.take_http(method, api_path)
        if fault is not None:  # what a flaky proxy in front of the API would do
            raise PveError(fault.status, fault.message)
        if (method, api_path.rstrip("/")) in UNAUTHENTICATED:
            if auth.Authenticator.has_token(request.headers.get("Authorization")):
                raise PveError(
                    403, f"URI '{api_path}' not available with API token, need proper ticket."
                )
            return self.access(request, api_path.rstrip("/"))
        endpoint = self.schema.find(method, api_path) if self._known(method, api_path) else None
        user = self.authenticate(request, api_path, endpoint.allows_token if endpoint else True)
        if endpoint is None:
            raise PveError.not_implemented(method, api_path)
        # HTTPServer.pm:170-174: privileges before proxying to the node and before validation
        permissions.check_endpoint(
            self.cluster.access, user, method, endpoint.template,
            merge_path_params(parse(request).params, endpoint.path_params),
        )
        if "node" in endpoint.path_params:
            self.cluster.node(endpoint.path_params["node"])
        with self._worker(endpoint):
            parsed = parse(request)
            params = merge_path_params(parsed.params, endpoint.path_params)
            params = validate(endpoint.parameters, params, parsed.from_json)
            handler = ROUTES.get((method, endpoint.template))
            if handler is None:
                raise PveError.not_implemented(method, api_path)
            result = handler(self.cluster, Call(params, user))
        late = self.cluster.faults.take_slow(method, api_path)
        if late:
            time.sleep(late)
        if isinstance(result, Envelope):
            return json_response({"data": result.data, **result.extra})
        return json_response({"data": result})

    def _worker(self, endpoint: Endpoint) -> AbstractContextManager[None]:
        """A protected method runs in one of the node's pvedaemon workers (see daemon.py);
        the others in pveproxy itself. Without a {node} it is the node the client talks to."""
        if not endpoint.protected:
            return nullcontext()
        node = endpoint.path_params.get("node") or next(iter(self.cluster.nodes))
        return self.daemon.worker(node)

    def _known(self, method: str, api_path: str) -> bool:
        try:
            self.schema.find(method, api_path)
        except PveError:
            return False
        return True

    def authenticate(self, request: Request, api_path: str, allows_token: bool) -> str:
        """The auth id of the caller (`root@pam` or `root@pam!labctl`), else AuthFailure."""
        header = request.headers.get("Authorization")
        if auth.Authenticator.has_token(header):
            token_id = self.auth.verify_token(header or "")
            if token_id is None:
                raise AuthFailure("Authentication failed!")
            if not allows_token:
                raise PveError(
                    403, f"URI '{api_path}' not available with API token, need proper ticket."
                )
            return token_id
        ticket = request.cookies.get("PVEAuthCookie")
        if ticket is None and header and header.startswith("PVEAuthCookie="):
            ticket = header.split("=", 1)[1]
        if not ticket:
            raise AuthFailure("No ticket")
        user = self.auth.verify_ticket(ticket)
        if user is None:
            raise AuthFailure("Authentication failed!")
        if request.method != "GET" and not self.auth.verify_csrf(
            user, request.headers.get("CSRFPreventionToken")
        ):
            raise AuthFailure("Permission denied - invalid csrf token")
        return user

    def access(self, request: Request, api_path: str) -> Response:
        """The unauthenticated endpoints: /access/ticket and /access/domains."""
        if api_path == "/access/domains":
            return json_response(
                {
                    "data": [
                        {
                            "realm": "pam",
                            "type": "pam",
                            "comment": "Linux PAM standard authentication",
                        },
                        {
                            "realm": "pve",
                            "type": "pve",
                            "comment": "Proxmox VE authentication server",
                        },
                    ]
                }
            )
        if request.method == "GET":
            return json_response({"data": None})
        endpoint = self.schema.find("POST", api_path)
        parsed = parse(request)
        params = validate(endpoint.parameters, parsed.params, parsed.from_json)
        username = str(params["username"])
        if "@" not in username and params.get("realm"):
            username = f"{username}@{params['realm']}"
        user = self.auth.login(username, str(params["password"]))
        if user is None:
            time.sleep(self.cluster.settings.auth_failure_delay)
            # From the handler, not the auth layer: 401 *with* a JSON body (proxmoxer needs it).
            return json_response(
                {"data": None, "message": "authentication failure\n"},
                status="401 authentication failure",
            )
        ticket, csrf = self.auth.issue_ticket(user)
        return json_response(
            {
                "data": {
                    "username": user,
                    "ticket": ticket,
                    "CSRFPreventionToken": csrf,
                    "clustername": "labsim",
                    "cap": {
                        "vms": {"VM.Allocate": 1, "VM.Config.CPU": 1, "VM.PowerMgmt": 1},
                        "nodes": {"Sys.Audit": 1},
                        "access": {},
                        "dc": {},
                        "storage": {},
                    },
                }
            }
        )


def reason_phrase(message: str) -> str:
    """First line, latin-1 only: what pveproxy puts in the HTTP status line."""
    first = message.strip().splitlines()[0] if message.strip() else "error"
    return first.encode("latin-1", "replace").decode("latin-1")


def json_response(body: dict[str, Any], status: str | int = 200) -> Response:
    return Response(json.dumps(body), status=status, content_type="application/json;charset=UTF-8")


def error_response(exc: PveError, body: bool = True) -> Response:
    status = f"{exc.status} {reason_phrase(exc.message)}"
    if not body:
        return Response(b"", status=status, content_type="application/json;charset=UTF-8")
    payload: dict[str, Any] = {"data": None, "message": exc.message.rstrip("\n") + "\n"}
    if exc.errors is not None:
        payload["errors"] = exc.errors
    return json_response(payload, status=status)


class _RequestHandler(WSGIRequestHandler):
    """Quiet by default; `serve()` turns on one line per request."""

    verbose = False

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        if self.verbose:
            super().log_request(code, size)

    def log(self, type: str, message: str, *args: Any) -> None:
        if self.verbose or type == "error":
            super().log(type, message, *args)


class _VerboseRequestHandler(_RequestHandler):
    verbose = True


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
        self._server: BaseWSGIServer | None = None
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
        return int(self._server.server_port)

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
        handler = _VerboseRequestHandler if self._log_requests else _RequestHandler
        self._server = make_server(
            self.host,
            self._requested_port,
            app,
            threaded=True,
            ssl_context=context,
            request_handler=handler,
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
