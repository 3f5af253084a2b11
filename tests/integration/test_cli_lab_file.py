"""`labctl init` and the lab file it writes, through the real CLI against the API-only simulator.

The token secret never travels on the command line: init asks for it on a terminal without
echo, reads it from stdin, or stores a command that prints it. A mistyped lab file is one error
line and exit code 3, before anything talks to Proxmox.
"""

from __future__ import annotations

import pytest

from tests.support.cli import one_error_line, run_on_terminal
from tests.support.lab import Lab


def init_args(lab: Lab, *extra: str, template: str = "9000") -> list[str]:
    server = lab.server
    return [
        "init",
        "--host",
        "127.0.0.1",
        "--port",
        str(server.port),
        "--token-id",
        server.credentials["token_id"],
        "--fingerprint",
        server.fingerprint,
        "--ssh-key",
        str(lab.key),
        "--template",
        template,
        *extra,
    ]


def test_init_writes_a_private_lab_file_and_checks_the_template(api_lab: Lab) -> None:
    secret = api_lab.server.credentials["token_secret"]
    api_lab.config.unlink()
    result = api_lab.run("--json", *init_args(api_lab, "--token-secret-stdin"), stdin=secret + "\n")
    assert result.code == 0, result
    assert result.json["checked"] is True and result.json["template"]["is_template"] is True
    assert api_lab.config.stat().st_mode & 0o777 == 0o600
    assert secret not in result.output
    again = api_lab.run(*init_args(api_lab, "--token-secret-stdin"), stdin=secret)
    assert again.code == 2 and "--force" in one_error_line(again.stderr)
    missing = api_lab.run(
        *init_args(api_lab, "--token-secret-stdin", "--force", template="no-such-template"),
        stdin=secret,
    )
    assert missing.code == 3
    assert "template 'no-such-template' was not found" in one_error_line(missing.stderr)
    assert api_lab.run("ls").code == 0  # the written file works as is


def test_a_secret_given_as_an_argument_is_refused_and_says_how_to_pass_it(api_lab: Lab) -> None:
    secret = api_lab.server.credentials["token_secret"]
    api_lab.config.unlink()
    for form in (["--token-secret", secret], [f"--token-secret={secret}"]):
        result = api_lab.run(*init_args(api_lab, *form))
        assert result.code == 2, result
        line = one_error_line(result.stderr)
        assert "--token-secret-stdin" in line and "--token-secret-cmd" in line
        assert secret not in result.output
        assert not api_lab.config.exists()


def test_init_stores_a_secret_command_and_checks_with_its_output(api_lab: Lab) -> None:
    secret_file = api_lab.dir / "token"
    secret_file.write_text(api_lab.server.credentials["token_secret"] + "\n")
    api_lab.config.unlink()
    command = f"cat {secret_file}"
    result = api_lab.run("--json", *init_args(api_lab, "--token-secret-cmd", command))
    assert result.code == 0, result
    assert result.json["checked"] is True
    text = api_lab.config.read_text()
    assert f'token_secret_cmd = "{command}"' in text
    assert api_lab.server.credentials["token_secret"] not in text + result.output


def test_init_asks_for_the_secret_on_a_terminal_without_echoing_it(api_lab: Lab) -> None:
    secret = api_lab.server.credentials["token_secret"]
    api_lab.config.unlink()
    code, screen = run_on_terminal(api_lab, init_args(api_lab), secret, prompt=b"later): ")
    assert code == 0, screen
    assert "API token secret" in screen and "connected: Proxmox VE" in screen
    assert secret not in screen
    assert f'token_secret = "{secret}"' in api_lab.config.read_text()
    assert api_lab.config.stat().st_mode & 0o777 == 0o600


def test_init_without_a_terminal_or_secret_leaves_the_secret_to_the_environment(
    api_lab: Lab,
) -> None:
    api_lab.config.unlink()
    result = api_lab.run(*init_args(api_lab, "--no-check"))
    assert result.code == 0, result
    assert "# token_secret_cmd" in api_lab.config.read_text()
    assert api_lab.config.stat().st_mode & 0o777 == 0o644


@pytest.mark.parametrize(
    ("line", "says"),
    [
        ('models = "gemma2:2b"', "vm.gemma.models must be a list of strings, got the string"),
        ('full = "false"', 'vm.gemma.full must be true or false, got the string "false"'),
        ("cores = true", "vm.gemma.cores must be a whole number, got the boolean true"),
        ("ram = 2048", "vm.gemma.ram must be a string, got the number 2048"),
        ("colour = 1", "unknown key vm.gemma.colour"),
    ],
)
def test_a_mistyped_vm_table_is_one_error_line_and_exit_code_3(
    api_lab: Lab, line: str, says: str
) -> None:
    api_lab.config.write_text(api_lab.config.read_text() + f"\n[vm.gemma]\n{line}\n")
    for args in (["ls"], ["up", "gemma", "--no-deploy"]):
        result = api_lab.run(*args)
        assert result.code == 3, result
        assert result.stderr.count("\n") == 1, result
        error = one_error_line(result.stderr)
        assert error.startswith(f"error: {api_lab.config}: ") and says in error
    assert api_lab.vm_named("gemma") is None
