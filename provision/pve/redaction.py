"""Secrets never reach a log line: the token secret and password labctl was given, and any
token header or ticket cookie, are masked in every record of the handlers labctl installs."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable

_SECRETS: set[str] = set()
_SECRET_HEADER_RE = re.compile(r"(PVEAPIToken[= ]\S+?=)[^\s'\",;]+|(PVEAuthCookie=)[^\s'\",;]+")


def register_secrets(values: Iterable[str]) -> None:
    _SECRETS.update(v for v in values if v and len(v) >= 4)


def redact(text: str) -> str:
    for secret in _SECRETS:
        text = text.replace(secret, "********")
    return _SECRET_HEADER_RE.sub(lambda m: (m.group(1) or m.group(2)) + "********", text)


class RedactingFilter(logging.Filter):
    """Attach to every log handler labctl installs: rewrites any record holding a secret."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True
