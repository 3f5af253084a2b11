"""What the guest benchmarks share: the root check, the environment of the labctl processes they
start, and a fresh SSH key for the lab."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def lacks_root(bench: str) -> bool:
    """True (having said why) when this is not root: container guests need it."""
    if os.geteuid() == 0:
        return False
    print(f"python -m bench.{bench} needs root for the container guests", file=sys.stderr)
    return True


def labctl_env() -> dict[str, str]:
    """This environment without the user's LABCTL_* settings, importing this checkout."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LABCTL_")}
    env["PYTHONPATH"] = str(REPO)
    return env


def new_ssh_key(directory: Path) -> Path:
    key = directory / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    return key
