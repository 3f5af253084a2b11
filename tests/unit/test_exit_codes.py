"""One place maps errors to exit codes; every code is documented."""

from __future__ import annotations

import pytest

from provision import errors
from provision.cli import main
from provision.cli.errors import report_error
from provision.errors import EXIT_CODE_HELP, ExitCode


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (errors.UsageError("x"), ExitCode.USAGE),
        (errors.ConfigError("x"), ExitCode.CONFIG),
        (errors.TaskFailed("x", upid="U", exitstatus="boom", log_tail=[]), ExitCode.PROXMOX),
        (errors.NotLabctlVm("x"), ExitCode.PROXMOX),
        (errors.AgentTimeout("x"), ExitCode.GUEST),
        (errors.HostKeyMismatch("x"), ExitCode.GUEST),
        (errors.DeployError("x"), ExitCode.DEPLOY),
        (errors.ProbeError("x"), ExitCode.PROBE),
        (errors.ModelDoesNotFit("x"), ExitCode.MODEL_DOES_NOT_FIT),
        (errors.SweepError("x"), ExitCode.SWEEP),
        (KeyboardInterrupt(), ExitCode.INTERRUPTED),
        (RuntimeError("bug"), ExitCode.ERROR),
    ],
)
def test_each_error_maps_to_its_documented_code(
    error: BaseException, code: ExitCode, capsys: pytest.CaptureFixture[str]
) -> None:
    assert report_error(error) == code
    err = capsys.readouterr().err
    assert err.count("\n") == 1  # one line, no traceback
    assert code in EXIT_CODE_HELP


def test_hint_is_shown_on_the_same_line(capsys: pytest.CaptureFixture[str]) -> None:
    report_error(errors.ConfigError("lab.toml is world readable", hint="run: chmod 600 lab.toml"))
    assert capsys.readouterr().err == (
        "error: lab.toml is world readable (run: chmod 600 lab.toml)\n"
    )


def test_unknown_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["no-such-command"]) == ExitCode.USAGE


def test_version_exits_zero(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert "labctl" in capsys.readouterr().out


def test_help_lists_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    assert "Exit codes" in capsys.readouterr().out


def test_every_listed_command_exists_with_its_module() -> None:
    from provision.cli import COMMANDS, cli

    for name in COMMANDS:
        command = cli.get_command(None, name)  # type: ignore[arg-type]
        assert command is not None, name
