"""The simulator's WSGI application: auth, request pipeline, PVE's wire conventions.

The pipeline per request follows pveproxy: authenticate -> injected fault? -> find the handler
(501) -> parse and merge parameters -> privileges (403, permissions.py) -> node known? (500) ->
validate against the PVE 9.2 schema (400) -> handler (500 on `die`). `server.py` serves it.
"""

from __future__ import annotations

import json
import logging
import time
from contextlib import AbstractContextManager, nullcontext
from typing import Any

from werkzeug.wrappers import Request, Response

from provision.sim import auth, control, permissions
from provision.sim.daemon import DaemonPool
from provision.sim.errors import AuthFailure, PveError
from provision.sim.models import Cluster
from provision.sim.parsing import parse
from provision.sim.responses import Call, Envelope
from provision.sim.schema import Endpoint, Schema, merge_path_params, validate
from provision.sim.urls import ROUTES

API_PREFIX = "/api2/json"
UNAUTHENTICATED = {
    ("GET", "/access/domains"),
    ("GET", "/access/ticket"),
    ("POST", "/access/ticket"),
}
log = logging.getLogger("provision.sim")


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
            self.cluster.access,
            user,
            method,
            endpoint.template,
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
