"""-v / -vv: log lines on stderr for every command, each passed through the secret redactor.

-v shows labctl's own INFO lines; -vv shows DEBUG, proxmoxer's, urllib3's and paramiko's too.
The handler carries provision.pve.client.RedactingFilter, so a token or password that reached
a log message is printed as ********. Set up once per command, by the `labctl` group itself;
a later invocation in the same process (tests call main() repeatedly) replaces the previous
handler instead of stacking another one.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field
from typing import TextIO

LOGGERS = ("labctl", "proxmoxer", "urllib3", "paramiko")
# proxmoxer sets these two to WARNING itself, so the level of "proxmoxer" alone is not enough.
PROXMOXER_PINNED = ("proxmoxer.core", "proxmoxer.backends.https")


@dataclass
class _Installed:
    """The handler labctl added and what each logger it touched looked like before."""

    handler: logging.Handler
    previous: dict[str, tuple[int, bool]] = field(default_factory=dict)


_installed: _Installed | None = None


def configure_logging(verbosity: int, stream: TextIO | None = None) -> None:
    """Log to `stream` (stderr) at the level -v/-vv ask for; nothing at verbosity 0."""
    global _installed
    reset_logging()
    if verbosity < 1:
        return
    from provision.pve.client import RedactingFilter  # only -v pays for the PVE client import

    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    handler.addFilter(RedactingFilter())
    level = logging.DEBUG if verbosity >= 2 else logging.INFO
    installed = _Installed(handler)
    for name in LOGGERS:
        logger = _remember(installed, name)
        logger.addHandler(handler)
        logger.setLevel(level if name == "labctl" or verbosity >= 2 else logging.WARNING)
        logger.propagate = False
    for name in PROXMOXER_PINNED:
        _remember(installed, name).setLevel(level)
    _installed = installed


def reset_logging() -> None:
    """Remove labctl's handler and put back the levels and propagation it changed."""
    global _installed
    if _installed is None:
        return
    for name, (level, propagate) in _installed.previous.items():
        logger = logging.getLogger(name)
        logger.removeHandler(_installed.handler)
        logger.setLevel(level)
        logger.propagate = propagate
    _installed = None


def _remember(installed: _Installed, name: str) -> logging.Logger:
    logger = logging.getLogger(name)
    installed.previous.setdefault(name, (logger.level, logger.propagate))
    return logger
