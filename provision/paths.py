"""Where labctl keeps its state and finds its playbooks and templates."""

from __future__ import annotations

import os
from pathlib import Path

_PACKAGE_DIR = Path(__file__).resolve().parent


def state_dir(override: str | os.PathLike[str] | None = None) -> Path:
    """labctl's own state: known_hosts, runs/, labctl.sqlite, crash/.

    --state-dir beats LABCTL_STATE_DIR beats $XDG_STATE_HOME/labctl (~/.local/state/labctl).
    """
    if override:
        path = Path(override)
    elif os.environ.get("LABCTL_STATE_DIR"):
        path = Path(os.environ["LABCTL_STATE_DIR"])
    else:
        xdg = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
        path = Path(xdg) / "labctl"
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path


def source_root() -> Path | None:
    """The repository root when running from a source checkout (playbooks/ beside provision/)."""
    root = _PACKAGE_DIR.parent
    if (root / "playbooks").is_dir() and (root / "pyproject.toml").is_file():
        return root
    return None


def data_dir() -> Path:
    """The directory holding playbooks/ and templates/: the source tree, else the wheel's copy."""
    root = source_root()
    if root is not None:
        return root
    packaged = _PACKAGE_DIR / "_data"
    if (packaged / "playbooks").is_dir():
        return packaged
    raise FileNotFoundError("labctl's playbooks/ and templates/ are missing from this install")


def templates_dir() -> Path:
    return data_dir() / "templates"
