"""`labctl probe` refuses bad level options with one line, exit 2, before anything runs: through
the real CLI against the API-only simulator (no guest is ever contacted)."""

from __future__ import annotations

import pytest

from tests.support.cli import one_error_line
from tests.support.lab import Lab, clone_untagged


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        (["--concurrency", "0"], "--concurrency values must be at least 1, got 0"),
        (["--concurrency", "-1"], "--concurrency values must be at least 1, got -1"),
        (["--concurrency", "a"], "--concurrency takes whole numbers separated by commas"),
        (["--num-thread", "0"], "--num-thread values must be at least 1, got 0"),
        (["--num-thread", "auto,300"], "--num-thread 300 is above the sane bound (256)"),
    ],
)
def test_bad_level_options_are_one_line_exit_2_before_the_vm_is_looked_up(
    api_lab: Lab, flags: list[str], says: str
) -> None:
    result = api_lab.run("probe", "no-such-vm", *flags)
    assert result.code == 2, result
    assert says in one_error_line(result.stderr)


@pytest.fixture
def small_vm(api_lab: Lab) -> str:
    vmid = clone_untagged(api_lab, "small")
    api_lab.api(
        "POST",
        f"/nodes/pve/qemu/{vmid}/config",
        data={"tags": "labctl", "cores": 2, "memory": 2048},
    )
    return "small"


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        (
            ["--concurrency", "1,2,8"],
            (
                "--concurrency 8 is more than the VM can hold: 8 x 416 MiB of KV cache per user "
                "(context 4096) is over its 2048 MiB; at most 4"
            ),
        ),
        (["--num-thread", "auto,9"], "--num-thread 9 is above 4 x the VM's 2 vCPU(s) (8)"),
    ],
)
def test_levels_the_vm_cannot_hold_are_refused_before_ssh(
    api_lab: Lab, small_vm: str, flags: list[str], says: str
) -> None:
    result = api_lab.run("probe", small_vm, *flags)
    assert result.code == 2, result
    assert says in one_error_line(result.stderr)
