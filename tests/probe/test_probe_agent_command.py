"""The remote command that starts the agent, run by a real /bin/sh: a missing or too old python3
in the guest is reported in one clear line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from provision.errors import ProbeError
from provision.probe.collect import collect
from provision.probe.result import ProbeOptions
from provision.probe.run import agent_command
from tests.support.reporting import RecordingReporter

OPTIONS = ProbeOptions(runs=2, warmup=1)


def test_remote_command_says_clearly_when_python3_is_missing() -> None:
    done = subprocess.run(
        ["/bin/sh", "-c", agent_command(OPTIONS)],
        input="print('agent')",
        capture_output=True,
        text=True,
        env={**os.environ, "PATH": "/nonexistent"},
        check=False,
    )

    assert done.returncode == 127
    with pytest.raises(ProbeError) as raised:
        collect(done.stdout.splitlines(), OPTIONS, RecordingReporter(), vm="gemma")
    assert str(raised.value) == (
        "python3 is not installed on gemma; the probe agent needs it "
        "(install python3 on the guest (Ansible needs it too))"
    )


def test_a_python_older_than_3_10_is_refused_in_the_guest_with_the_minimum(tmp_path: Path) -> None:
    # a python3 that says it is 3.9 (the agent's zip(strict=...) needs 3.10)
    fake = tmp_path / "python3"
    fake.write_text(
        f"#!/bin/sh\nexec {sys.executable} -c 'import sys; "
        'sys.version_info = (3, 9, 18, "final", 0); exec(sys.argv[1])\' "$2"\n'
    )
    fake.chmod(0o755)
    done = subprocess.run(
        ["/bin/sh", "-c", agent_command(OPTIONS)],
        input="print('agent')",
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "PATH": f"{tmp_path}:/usr/bin:/bin"},
    )

    assert done.returncode == 127
    with pytest.raises(ProbeError) as raised:
        collect(done.stdout.splitlines(), OPTIONS, RecordingReporter(), vm="gemma")
    assert str(raised.value) == (
        "python3 on gemma is too old for the probe agent: it is older "
        "than 3.10 (install python3 >= 3.10 on the guest)"
    )
