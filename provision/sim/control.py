"""The simulator's own control API under `/_sim/` (not part of PVE), for tests and demos.

    GET    /_sim/settings          current timing settings
    POST   /_sim/settings          JSON partial update, e.g. {"agent_delay": 0.5}
    GET    /_sim/faults            injected faults
    POST   /_sim/faults            JSON fault spec (kinds: http, slow, task, agent,
                                   ignore_shutdown, boot_failure)
    DELETE /_sim/faults            clear every fault
    GET    /_sim/guest-exits       VMs whose guest stopped on its own: exit code, console tail
    GET    /_sim/access            users, tokens, roles, ACL entries (no token secrets)
    POST   /_sim/access            replace them all; answers with the token secrets
    DELETE /_sim/access            remove them all (root@pam and its token stay)

Same authentication as the API (API token, or ticket + CSRF token), and only for root@pam or
its token without privilege separation. Bodies are JSON. The access document is what `pveum`
would have made:

    {"roles": {"LabctlRole": "VM.Audit VM.Clone ..."},          # pveum role add R -privs "..."
     "users": ["labctl@pve"],                                   # pveum user add U
     "tokens": {"labctl@pve!labctl": {"privsep": 1}},           # pveum user token add U T
     "acl": [{"path": "/vms", "roles": "LabctlRole",            # pveum acl modify PATH ...
              "users": "labctl@pve", "tokens": "labctl@pve!labctl", "propagate": 1}]}
"""

from __future__ import annotations

import json
from typing import Any

from werkzeug.wrappers import Request

from provision.sim.errors import PveError
from provision.sim.models import Cluster


def handle(cluster: Cluster, request: Request, path: str) -> Any:
    """Dispatch one control call; returns the `data` value."""
    method = request.method
    if path == "/_sim/settings":
        if method == "GET":
            return cluster.settings.to_json()
        if method == "POST":
            try:
                cluster.settings.update(_json_body(request))
            except (TypeError, ValueError) as exc:
                raise PveError(400, str(exc)) from None
            cluster.save()
            return cluster.settings.to_json()
    if path == "/_sim/faults":
        if method == "GET":
            return cluster.faults.to_json()
        if method == "POST":
            try:
                cluster.faults.add(_json_body(request))
            except (KeyError, TypeError, ValueError) as exc:
                raise PveError(400, f"bad fault: {exc}") from None
            return cluster.faults.to_json()
        if method == "DELETE":
            cluster.faults.clear()
            return None
    if path == "/_sim/guest-exits" and method == "GET":
        return cluster.guest_exits_json()
    if path == "/_sim/access":
        if method == "GET":
            return cluster.access.to_json()
        if method == "POST":
            return cluster.access.configure(_json_body(request))
        if method == "DELETE":
            cluster.access.clear()
            return None
    raise PveError.not_implemented(method, path)


def _json_body(request: Request) -> dict[str, Any]:
    try:
        body = json.loads(request.get_data(as_text=True) or "{}")
    except ValueError:
        raise PveError(400, "control API bodies are JSON objects") from None
    if not isinstance(body, dict):
        raise PveError(400, "control API bodies are JSON objects")
    return body
