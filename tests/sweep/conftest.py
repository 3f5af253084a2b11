"""Sweep tests share the strategy tables and fakes of tests/unit (sweep_tables, test_sweep_loop)."""

from __future__ import annotations

import sys
from pathlib import Path

_UNIT = str(Path(__file__).resolve().parents[1] / "unit")
if _UNIT not in sys.path:
    sys.path.insert(0, _UNIT)

# The API-only simulator of the integration tests (no guests, no network set-up), and the
# probe tests' loopback sshd and Ollama TEST DOUBLE.
from tests.integration.conftest import api_lab, api_sim, ssh_key  # noqa: E402, F401
from tests.probe.conftest import local_sshd, ollama_double  # noqa: E402, F401
