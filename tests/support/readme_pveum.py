"""The `pveum` commands of README's "A lab against a real Proxmox VE", read as data.

Tests use them as they stand: the role's privilege list is checked against PVE 9's privilege
names, and the whole set of commands is replayed on the simulator (`POST /_sim/access` takes
what these commands would have made), so README's role is what the tests prove sufficient.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

README = Path(__file__).resolve().parents[2] / "README.md"
SECTION = "## A lab against a real Proxmox VE"


def readme_commands() -> list[list[str]]:
    """Every `pveum ...` line of the section, split as a shell would (comments dropped)."""
    text = README.read_text(encoding="utf-8")
    start = text.index(SECTION)
    end = text.index("\n## ", start + len(SECTION))
    lines = [line.strip() for line in text[start:end].splitlines()]
    return [shlex.split(line, comments=True) for line in lines if line.startswith("pveum ")]


def _options(words: list[str]) -> tuple[list[str], dict[str, str]]:
    positional: list[str] = []
    options: dict[str, str] = {}
    index = 0
    while index < len(words):
        word = words[index]
        if word.startswith("-"):
            options[word.lstrip("-")] = words[index + 1]
            index += 2
        else:
            positional.append(word)
            index += 1
    return positional, options


def access_spec(commands: list[list[str]]) -> dict[str, Any]:
    """What the commands make, as the simulator's access document; unknown commands fail."""
    spec: dict[str, Any] = {"roles": {}, "users": [], "tokens": {}, "acl": []}
    for words in commands:
        args, options = _options(words[1:])
        match args:
            case ["role", "add", role]:
                spec["roles"][role] = options["privs"]
            case ["user", "add", user]:
                spec["users"].append(user)
            case ["user", "token", "add", user, name]:
                spec["tokens"][f"{user}!{name}"] = {"privsep": int(options.get("privsep", 1))}
            case ["acl", "modify", path]:
                spec["acl"].append({"path": path, **options})
            case _:
                raise AssertionError(f"README has a pveum command the tests do not know: {words}")
    return spec


def role_privileges(role: str = "LabctlRole") -> list[str]:
    spec = access_spec(readme_commands())
    return [p for p in re.split(r"[,;\s]+", spec["roles"][role]) if p]
