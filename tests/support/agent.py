"""Run the probe agent on this host as a guest would, and pick its events."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from typing import Any

from provision.probe.result import ProbeOptions
from provision.probe.run import AGENT_PATH


def run_agent(
    options: ProbeOptions | dict[str, Any],
    *,
    env: dict[str, str] | None = None,
    timeout: float = 120.0,
) -> tuple[list[dict[str, Any]], int]:
    """Run agent.py on this host as the guest would (python3, options as one base64 arg)."""
    data = options.agent_options() if isinstance(options, ProbeOptions) else options
    encoded = base64.b64encode(json.dumps(data).encode()).decode()
    done = subprocess.run(
        [sys.executable, "-", encoded],
        input=AGENT_PATH.read_bytes(),
        capture_output=True,
        timeout=timeout,
        env=env,
        check=False,
    )
    events = [json.loads(line) for line in done.stdout.decode().splitlines() if line.strip()]
    return events, done.returncode


def of_kind(events: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [e for e in events if e["event"] == kind]
