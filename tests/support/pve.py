"""A PveClient for a running simulator (token auth, pinned certificate, no retry sleeps)."""

from __future__ import annotations

from provision.config import Secret
from provision.pve.client import ClientSettings, PveClient
from provision.sim.server import SimServer


def client_for(server: SimServer, **overrides: object) -> PveClient:
    creds = server.credentials
    values: dict[str, object] = {
        "host": "127.0.0.1", "port": server.port, "token_id": creds["token_id"],
        "token_secret": Secret(creds["token_secret"]), "fingerprint": server.fingerprint,
        "timeout": 10.0}  # fmt: skip
    values.update(overrides)
    return PveClient(ClientSettings(**values), sleep=lambda _s: None)  # type: ignore[arg-type]
