"""Users, API tokens, roles and ACLs: PVE's privilege model, for tokens other than root's.

root@pam and the simulator's own token (`root@pam!labctl`, credentials.json, privilege
separation off) hold every privilege, as on PVE. Other users and tokens exist only through the
control API (`POST /_sim/access`, shaped like `pveum role add` / `user add` / `user token add` /
`acl modify`) and are kept in `<state>/access.json` (mode 600: it holds token secrets).

Sources (pve-access-control 5ccd07d = 9.1.1, the PVE 9 series):
* privilege names: `src/PVE/AccessControl.pm:1057-1168` (`$privgroups` + `Permissions.Modify`);
  `VM.Monitor` was dropped in commit 0706945 ("privileges: drop VM.Monitor"), so PVE 9 refuses
  a role naming it (`add_role_privs`, AccessControl.pm:1224-1238, and the `pve-priv-list`
  format of `role-privs`, API2/Role.pm:21-26).
* roles on a path: `roles()` (AccessControl.pm:1788-1896): walking `/`, `/vms`, `/vms/100`, the
  deepest node with an entry for the user/token *replaces* what was inherited; an entry applies
  to its own path, and below it only with propagate=1 (the default of `acl modify`).
* tokens: `permissions()` (RPCEnvironment.pm:136-176) and `$compile_acl_path`
  (RPCEnvironment.pm:19-119): a token without privilege separation has its user's privileges;
  with it, the intersection of the token's and the user's.
* checks: `check()`/`check_any()` (RPCEnvironment.pm:291-326) raise `raise_perm_exc("$path,
  $priv")` / `"$path, a|b"`, i.e. HTTP 403 `Permission check failed (/vms/100, VM.Allocate)`
  (pve-common `src/PVE/Exception.pm:53-70`).

Not simulated: groups, pools (and pool-derived roles), realms and passwords for these users
(they authenticate with tokens only), NoAccess, built-in PVE* roles, token expiry.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import threading
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from provision.sim.errors import PveError

ACCESS_FILE = "access.json"
ROOT = "root@pam"

# Every privilege PVE 9 knows (AccessControl.pm:1057-1168 at pve-access-control 5ccd07d).
PVE_PRIVILEGES: frozenset[str] = frozenset(
    {
        "Datastore.Allocate", "Datastore.AllocateSpace", "Datastore.AllocateTemplate",
        "Datastore.Audit",
        "Group.Allocate",
        "Mapping.Audit", "Mapping.Modify", "Mapping.Use",
        "Permissions.Modify",
        "Pool.Allocate", "Pool.Audit",
        "Realm.Allocate", "Realm.AllocateUser",
        "SDN.Allocate", "SDN.Audit", "SDN.Use",
        "Sys.AccessNetwork", "Sys.Audit", "Sys.Console", "Sys.Incoming", "Sys.Modify",
        "Sys.PowerMgmt", "Sys.Syslog",
        "User.Modify",
        "VM.Allocate", "VM.Audit", "VM.Backup", "VM.Clone", "VM.Config.CDROM", "VM.Config.CPU",
        "VM.Config.Cloudinit", "VM.Config.Disk", "VM.Config.HWType", "VM.Config.Memory",
        "VM.Config.Network", "VM.Config.Options", "VM.Console", "VM.GuestAgent.Audit",
        "VM.GuestAgent.FileRead", "VM.GuestAgent.FileSystemMgmt", "VM.GuestAgent.FileWrite",
        "VM.GuestAgent.Unrestricted", "VM.Migrate", "VM.PowerMgmt", "VM.Replicate",
        "VM.Snapshot", "VM.Snapshot.Rollback",
    }
)  # fmt: skip

USER_RE = re.compile(r"^[^\s:/@!]+@[A-Za-z][A-Za-z0-9.\-_]+$")
TOKEN_RE = re.compile(r"^([^\s:/@!]+@[A-Za-z][A-Za-z0-9.\-_]+)!([A-Za-z][A-Za-z0-9.\-_]+)$")
# The ACL paths `check_path` accepts that matter here (AccessControl.pm:1281-1319).
ACL_PATH_RE = re.compile(
    r"^/(?:|access|nodes(?:/[\w.\-]+)?|pool(?:/[\w.\-]+){0,3}|sdn(?:/zones(?:/[\w.\-]+){0,2}"
    r"(?:/[1-9]\d{0,3})?)?|storage(?:/[\w.\-]+)?|vms(?:/[1-9]\d{2,})?|mapping(?:/[\w.\-]+){0,2})$"
)


def split_list(text: str | Iterable[str]) -> list[str]:
    """PVE::Tools::split_list: `,`, `;` and whitespace separate (pve-common ParseUtils.pm:49)."""
    if not isinstance(text, str):
        text = " ".join(str(item) for item in text)
    return [item for item in re.split(r"[,;\s]+", text) if item]


def normalize_path(path: str) -> str:
    """`//vms/100/` -> `/vms/100` (AccessControl.pm `normalize_path`)."""
    return "/" + "/".join(part for part in path.split("/") if part)


def permission_denied(what: str = "") -> PveError:
    """`raise_perm_exc($what)` (pve-common Exception.pm:53-70): 403, no `errors`."""
    return PveError(403, f"Permission check failed ({what})" if what else "Permission check failed")


@dataclass
class Token:
    privsep: bool
    secret: str


@dataclass(frozen=True)
class AclEntry:
    path: str
    ugid: str  # a user id (labctl@pve) or a token id (labctl@pve!labctl)
    role: str
    propagate: bool = True


class Access:
    """Roles, users, tokens and ACL entries, and the privilege checks PVE derives from them."""

    def __init__(self, state_dir: Path | None = None) -> None:
        self.path = state_dir / ACCESS_FILE if state_dir is not None else None
        self.lock = threading.Lock()
        self.roles: dict[str, frozenset[str]] = {}
        self.users: set[str] = set()
        self.tokens: dict[str, Token] = {}
        self.acl: list[AclEntry] = []
        if self.path is not None and self.path.exists():
            self._apply(json.loads(self.path.read_text()))

    # --- configuration (the control API) ------------------------------------------------------

    def configure(self, spec: dict[str, Any]) -> dict[str, Any]:
        """Replace everything with `spec`; returns the new state with token secrets.

        Secrets of tokens that already existed are kept, so a lab file stays valid.
        """
        with self.lock:
            self._apply(spec)
            self._save()
            return self.to_json(reveal=True)

    def clear(self) -> None:
        self.configure({})

    def _apply(self, spec: dict[str, Any]) -> None:
        unknown = set(spec) - {"roles", "users", "tokens", "acl"}
        if unknown:
            raise PveError(400, f"unknown access keys: {', '.join(sorted(unknown))}")
        roles: dict[str, frozenset[str]] = {}
        for role, privs in dict(spec.get("roles") or {}).items():
            for priv in split_list(privs):
                if priv not in PVE_PRIVILEGES:  # AccessControl.pm:1374-1383 verify_privname
                    raise PveError.params({"privs": f"invalid format - invalid privilege '{priv}'"})
            roles[str(role)] = frozenset(split_list(privs))
        users = {str(u) for u in spec.get("users") or []}
        for user in users:
            if not USER_RE.match(user) or user == ROOT:
                raise PveError.params({"userid": f"invalid user id '{user}'"})
        tokens: dict[str, Token] = {}
        for token_id, info in dict(spec.get("tokens") or {}).items():
            match = TOKEN_RE.match(str(token_id))
            if not match:
                raise PveError.params({"tokenid": f"invalid token id '{token_id}'"})
            if match.group(1) not in users:
                raise PveError.internal(f"no such user ('{match.group(1)}')")
            info = dict(info or {})
            old = self.tokens.get(token_id)
            secret = str(info.get("value") or (old.secret if old else "") or uuid.uuid4())
            privsep = str(info.get("privsep", 1)) not in ("0", "False", "false")
            tokens[str(token_id)] = Token(privsep, secret)
        acl: list[AclEntry] = []
        for entry in spec.get("acl") or []:
            acl += _acl_entries(dict(entry), roles, users, tokens)
        self.roles, self.users, self.tokens, self.acl = roles, users, tokens, acl

    def _save(self) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".access.", suffix=".tmp")
        with os.fdopen(fd, "w") as handle:  # mkstemp creates the file with mode 600
            json.dump(self.to_json(reveal=True), handle, indent=1, sort_keys=True)
        os.replace(tmp, self.path)

    def to_json(self, reveal: bool = False) -> dict[str, Any]:
        tokens: dict[str, Any] = {}
        for token_id, token in sorted(self.tokens.items()):
            tokens[token_id] = {"privsep": int(token.privsep)}
            if reveal:
                tokens[token_id]["value"] = token.secret
        return {
            "roles": {r: " ".join(sorted(p)) for r, p in sorted(self.roles.items())},
            "users": sorted(self.users),
            "tokens": tokens,
            "acl": [
                {
                    "path": a.path,
                    "roles": a.role,
                    ("tokens" if "!" in a.ugid else "users"): a.ugid,
                    "propagate": int(a.propagate),
                }
                for a in self.acl
            ],
        }

    # --- authentication --------------------------------------------------------------------------

    def verify_token(self, token_id: str, secret: str) -> bool:
        import hmac

        token = self.tokens.get(token_id)
        return token is not None and hmac.compare_digest(token.secret, secret)

    # --- privileges ------------------------------------------------------------------------------

    def privileges(self, authid: str, path: str) -> frozenset[str]:
        """What `authid` holds on `path` (RPCEnvironment.pm:136-176 `permissions`)."""
        if authid == ROOT:
            return PVE_PRIVILEGES
        user, sep, _name = authid.partition("!")
        if sep:
            token = self.tokens.get(authid)
            if token is None:
                # the simulator's own token (credentials.json): root's, privilege separation off
                return PVE_PRIVILEGES if user == ROOT else frozenset()
            user_privs = self.privileges(user, path)
            if not token.privsep:
                return user_privs
            return self._acl_privileges(authid, path) & user_privs  # RPCEnvironment.pm:98-107
        return self._acl_privileges(authid, path) if authid in self.users else frozenset()

    def _acl_privileges(self, ugid: str, path: str) -> frozenset[str]:
        """AccessControl.pm:1788-1896 `roles()`: the deepest entry on the way down wins."""
        parts = [p for p in path.split("/") if p]
        prefixes = ["/"] + ["/" + "/".join(parts[: i + 1]) for i in range(len(parts))]
        with self.lock:
            entries = [a for a in self.acl if a.ugid == ugid]
            roles_privs = dict(self.roles)
        chosen: set[str] = set()
        for depth, prefix in enumerate(prefixes):
            final = depth == len(prefixes) - 1
            here = {a.role for a in entries if a.path == prefix and (final or a.propagate)}
            if here:
                chosen = here
        privs: set[str] = set()
        for role in chosen:
            privs |= roles_privs.get(role, frozenset())
        return frozenset(privs)

    def permissions_of(self, caller: str, path: str | None, userid: str | None) -> dict[str, Any]:
        """GET /access/permissions (pve-access-control src/PVE/API2/AccessControl.pm, method
        `permissions`): `{path: {privilege: 1}}` for `path`, else for every ACL path of the
        user (get_effective_permissions). Another user's, not one's own token's, needs
        Sys.Audit on /access."""
        who = userid or caller
        if who != caller and who.partition("!")[0] != caller:
            self.check(caller, "/access", ["Sys.Audit"])
        if path:
            return {path: dict.fromkeys(sorted(self.privileges(who, normalize_path(path))), 1)}
        owners = {who, who.partition("!")[0]}
        with self.lock:
            paths = {"/"} | {a.path for a in self.acl if a.ugid in owners}
        tree = {p: dict.fromkeys(sorted(self.privileges(who, p)), 1) for p in sorted(paths)}
        return {p: privs for p, privs in tree.items() if privs}

    def check(
        self,
        authid: str,
        path: str,
        privs: Iterable[str],
        any_of: bool = False,
        noerr: bool = False,
    ) -> bool:
        """`check` (all of `privs`) or `check_any` (one of them), as RPCEnvironment.pm:291-326."""
        path = normalize_path(path)
        wanted = list(privs)
        held = self.privileges(authid, path)
        if any_of:
            if any(p in held for p in wanted):
                return True
            if noerr:
                return False
            raise permission_denied(f"{path}, {'|'.join(wanted)}")
        for priv in wanted:
            if priv not in held:
                if noerr:
                    return False
                raise permission_denied(f"{path}, {priv}")
        return True

    def is_root(self, authid: str) -> bool:
        """root@pam, or a token of root@pam without privilege separation (the control API)."""
        if authid == ROOT:
            return True
        user, sep, _name = authid.partition("!")
        token = self.tokens.get(authid)
        return bool(sep) and user == ROOT and (token is None or not token.privsep)


def _acl_entries(
    entry: dict[str, Any],
    roles: dict[str, frozenset[str]],
    users: set[str],
    tokens: dict[str, Token],
) -> list[AclEntry]:
    """One `pveum acl modify PATH --roles R --users U --tokens T` (API2/ACL.pm:106-240)."""
    path = normalize_path(str(entry.get("path", "")))
    if not ACL_PATH_RE.match(path):
        raise PveError.params({"path": f"invalid ACL path '{entry.get('path')}'"})
    propagate = str(entry.get("propagate", 1)) not in ("0", "False", "false")
    who_users = split_list(entry.get("users") or "")
    who_tokens = split_list(entry.get("tokens") or "")
    if not who_users and not who_tokens:
        raise PveError.params({"users": "either 'users', 'groups' or 'tokens' is required."})
    result = []
    for role in split_list(entry.get("roles") or ""):
        if role not in roles:
            raise PveError.internal(f"role '{role}' does not exist")
        for user in who_users:
            if user not in users:
                raise PveError.internal(f"user '{user}' does not exist")
            result.append(AclEntry(path, user, role, propagate))
        for token in who_tokens:
            if token not in tokens:
                user, _, name = token.partition("!")
                raise PveError.internal(f"no such token '{name}' for user '{user}'")
            result.append(AclEntry(path, token, role, propagate))
    return result
