"""The one error tree of labctl and the exit codes it maps to.

Every error a user can cause or meet is a LabctlError subclass carrying a one-line message.
`exit_code_for()` is the only place that turns errors into process exit codes; the README's
exit-code table is generated from EXIT_CODE_HELP.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    ERROR = 1  # unexpected failure (a bug): the traceback goes to a crash log in the state dir
    USAGE = 2  # bad command-line input (also Click's own usage errors)
    CONFIG = 3  # lab file / environment / secrets problem; `doctor` found a problem
    PROXMOX = 4  # the Proxmox API refused, a task failed or timed out, TLS pin mismatch
    GUEST = 5  # guest agent, IP or SSH problem
    DEPLOY = 6  # an Ansible task failed
    PROBE = 7  # Ollama missing / not running / model missing, probe agent failed
    SWEEP = 8  # sweep could not run or finished with failed points
    MODEL_DOES_NOT_FIT = 9  # the runner was OOM-killed: the model does not fit in the VM's RAM
    INTERRUPTED = 130  # Ctrl-C


EXIT_CODE_HELP: dict[ExitCode, str] = {
    ExitCode.OK: "success",
    ExitCode.ERROR: "unexpected error (a bug; its traceback is in a crash log in the state dir)",
    ExitCode.USAGE: "bad command-line input",
    ExitCode.CONFIG: "bad lab file, environment override or secret; `doctor` found a problem",
    ExitCode.PROXMOX: "Proxmox API error, failed/timed-out task, TLS mismatch, refused VM",
    ExitCode.GUEST: "guest agent, IP discovery or SSH failure",
    ExitCode.DEPLOY: "an Ansible task failed",
    ExitCode.PROBE: "probe failed (Ollama not installed/running, model missing, SSH lost)",
    ExitCode.SWEEP: "sweep could not run, or no shape could be measured",
    ExitCode.MODEL_DOES_NOT_FIT: "the model does not fit in the VM's RAM (runner OOM-killed)",
    ExitCode.INTERRUPTED: "interrupted (Ctrl-C)",
}


class LabctlError(Exception):
    """Base of every error labctl reports to a user as one line."""

    exit_code: ExitCode = ExitCode.ERROR

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message} ({self.hint})"


class UsageError(LabctlError):
    """A command-line value is malformed or out of range."""

    exit_code = ExitCode.USAGE


class ConfigError(LabctlError):
    """The lab file, an environment override or a secret is wrong."""

    exit_code = ExitCode.CONFIG


class DoctorFound(ConfigError):
    """`labctl doctor` found at least one problem with the lab, its template or the node."""


class ProxmoxError(LabctlError):
    """Something on the Proxmox side failed."""

    exit_code = ExitCode.PROXMOX


class ProxmoxAPIError(ProxmoxError):
    """The PVE API answered with an HTTP error."""

    def __init__(
        self,
        message: str,
        *,
        status: int = 0,
        errors: dict[str, str] | None = None,
        hint: str | None = None,
    ) -> None:
        super().__init__(message, hint=hint)
        self.status = status
        self.errors = errors or {}


class TLSVerifyError(ProxmoxError):
    """The Proxmox server's certificate does not match the configured pin / CA."""


class TaskFailed(ProxmoxError):
    """A PVE task (UPID) ended with an exitstatus other than OK / WARNINGS."""

    def __init__(self, message: str, *, upid: str, exitstatus: str, log_tail: list[str]) -> None:
        super().__init__(message)
        self.upid = upid
        self.exitstatus = exitstatus
        self.log_tail = log_tail


class TaskTimeout(ProxmoxError):
    """A PVE task did not finish within its per-operation timeout."""


class NotLabctlVm(ProxmoxError):
    """Refused to touch a VM that labctl did not create (it lacks the labctl tag)."""


class VmNotFound(ProxmoxError):
    """No VM with that name exists on the cluster."""


class LeaseHeld(ProxmoxError):
    """Another labctl command (on this or another machine) holds the VM's lease."""


class GuestError(LabctlError):
    """The VM's guest (agent, IP, SSH) could not be reached or used."""

    exit_code = ExitCode.GUEST


class AgentTimeout(GuestError):
    """The QEMU guest agent did not answer in time."""


class GuestUnreachable(GuestError):
    """SSH to the guest failed (refused, timed out, bad host key, auth)."""


class HostKeyMismatch(GuestUnreachable):
    """The guest presented an SSH host key other than the pinned one."""


class CommandFailed(GuestError):
    """A command run on the guest exited non-zero."""


class DeployError(LabctlError):
    """An Ansible run failed."""

    exit_code = ExitCode.DEPLOY


class ProbeError(LabctlError):
    """The probe could not measure."""

    exit_code = ExitCode.PROBE


class InvalidShape(ProbeError):
    """The guest does not see the VM's configured cores or RAM: the point is invalid, not
    measured (provision/probe/shape_check.py)."""


class ModelDoesNotFit(ProbeError):
    """The model runner was OOM-killed: the model does not fit in the VM's RAM."""

    exit_code = ExitCode.MODEL_DOES_NOT_FIT

    def __init__(self, message: str, *, hint: str | None = None, figure: str = "") -> None:
        super().__init__(message, hint=hint)
        self.figure = figure  # e.g. "OOM-killed while loading, 1.9 GiB RSS of 2.0 GiB"


class SweepError(LabctlError):
    """A sweep could not run or produced no usable result."""

    exit_code = ExitCode.SWEEP


class Interrupted(LabctlError):
    """The user pressed Ctrl-C."""

    exit_code = ExitCode.INTERRUPTED


def exit_code_for(error: BaseException) -> ExitCode:
    """The exit code for any exception: ours carry one; anything else is a bug."""
    if isinstance(error, LabctlError):
        return error.exit_code
    if isinstance(error, KeyboardInterrupt):
        return ExitCode.INTERRUPTED
    return ExitCode.ERROR
