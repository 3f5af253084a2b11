"""PVE authentication: root@pam password, tickets + CSRF tokens, and API tokens.

Credentials are generated on first start into `<state>/credentials.json` (mode 600); clients and
tests read that file. Tickets look like PVE's (`PVE:root@pam:6650F00D::<signature>`), are valid
for 2 h and are signed with a key kept in the same file. That file's token (`root@pam!labctl`)
has root's rights; other users' tokens, with or without privilege separation, come from
`access.py` (created through `POST /_sim/access`).

Not simulated: passwords and tickets of users other than root@pam, realms, TFA, ticket key
rotation.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
import secrets
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from provision.sim.access import Access

CREDENTIALS_FILE = "credentials.json"
TICKET_LIFETIME = 7200
TOKEN_HEADER = re.compile(r"(?:^|\s)PVEAPIToken(?:=| )([^;]*)")
TICKET_RE = re.compile(r"^PVE:([^:]+):([0-9A-F]{8})::(.+)$")


@dataclass(frozen=True)
class Credentials:
    """What a client needs to log in; `ticket_key` signs tickets and never leaves the server."""

    user: str
    password: str
    token_id: str  # full id, e.g. root@pam!labctl
    token_secret: str
    ticket_key: str

    def public(self) -> dict[str, str]:
        return {
            "user": self.user,
            "password": self.password,
            "token_id": self.token_id,
            "token_secret": self.token_secret,
        }


def load_or_create(state_dir: Path) -> Credentials:
    path = state_dir / CREDENTIALS_FILE
    if path.exists():
        return Credentials(**json.loads(path.read_text()))
    creds = Credentials(
        user="root@pam",
        password=secrets.token_urlsafe(18),
        token_id="root@pam!labctl",
        token_secret=str(uuid.uuid4()),
        ticket_key=secrets.token_hex(32),
    )
    state_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(asdict(creds), handle, indent=1)
    return creds


class Authenticator:
    """Checks passwords, tickets, CSRF tokens and API tokens for one credentials set."""

    def __init__(self, creds: Credentials, access: Access | None = None) -> None:
        self.creds = creds
        self.access = access
        self._key = bytes.fromhex(creds.ticket_key)

    def _sign(self, text: str) -> str:
        mac = hmac.new(self._key, text.encode(), hashlib.sha256).digest()
        return base64.b64encode(mac).decode().rstrip("=")

    def issue_ticket(self, user: str) -> tuple[str, str]:
        """(ticket, CSRFPreventionToken) for `user`."""
        stamp = f"{int(time.time()):08X}"
        plain = f"PVE:{user}:{stamp}"
        ticket = f"{plain}::{self._sign(plain)}"
        csrf = f"{stamp}:{self._sign(f'{stamp}:{user}')}"
        return ticket, csrf

    def verify_ticket(self, ticket: str) -> str | None:
        """The user a ticket belongs to, or None if it is forged or expired."""
        match = TICKET_RE.match(ticket)
        if not match:
            return None
        user, stamp, signature = match.groups()
        if not hmac.compare_digest(signature, self._sign(f"PVE:{user}:{stamp}")):
            return None
        age = time.time() - int(stamp, 16)
        return user if -300 <= age <= TICKET_LIFETIME else None

    def verify_csrf(self, user: str, token: str | None) -> bool:
        if not token or ":" not in token:
            return False
        stamp, signature = token.split(":", 1)
        if not hmac.compare_digest(signature, self._sign(f"{stamp}:{user}")):
            return False
        try:
            age = time.time() - int(stamp, 16)
        except ValueError:
            return False
        return -300 <= age <= TICKET_LIFETIME

    def login(self, username: str, password: str) -> str | None:
        """POST /access/ticket: the user if the password (or a valid ticket for it) matches."""
        if username != self.creds.user:
            return None
        if hmac.compare_digest(password, self.creds.password):
            return username
        return username if self.verify_ticket(password) == username else None

    def verify_token(self, header: str) -> str | None:
        """`PVEAPIToken=user@realm!id=secret` -> the token's full id, or None."""
        match = TOKEN_HEADER.search(header)
        if not match:
            return None
        token_id, sep, secret = match.group(1).strip().rpartition("=")
        if not sep:
            return None
        ok = hmac.compare_digest(token_id, self.creds.token_id) and hmac.compare_digest(
            secret, self.creds.token_secret
        )
        if not ok and self.access is not None:
            ok = self.access.verify_token(token_id, secret)
        return token_id if ok else None

    @staticmethod
    def has_token(header: str | None) -> bool:
        return bool(header and TOKEN_HEADER.search(header))
