"""Errors the simulated Proxmox VE API raises, and how each goes over the wire.

PVE has one exception class (`PVE::Exception`) with an HTTP `code`, a message and an optional
`errors` hash. Handlers that `die "text\\n"` without a code become HTTP 500. The HTTP layer puts the
first message line into the reason phrase; proxmoxer only reads that phrase (`resp.reason`) and
the body's `errors` dict, so both must be right.
"""

from __future__ import annotations


class PveError(Exception):
    """An API error: HTTP `status`, `message` (the reason phrase) and per-parameter `errors`.

    >>> str(PveError(500, "VM 100 not running"))
    'VM 100 not running'
    >>> PveError.params({"newid": "property is missing and it is not optional"}).status
    400
    """

    def __init__(self, status: int, message: str, errors: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.errors = errors

    @classmethod
    def params(cls, errors: dict[str, str]) -> PveError:
        """400 `Parameter verification failed.` with one message per parameter."""
        return cls(400, "Parameter verification failed.", errors)

    @classmethod
    def internal(cls, message: str) -> PveError:
        """A plain `die "message\\n"` in a handler: HTTP 500."""
        return cls(500, message)

    @classmethod
    def not_implemented(cls, method: str, path: str) -> PveError:
        """501 for a path/method the API does not have (or the simulator does not implement)."""
        return cls(501, f"Method '{method} {path}' not implemented")


class AuthFailure(PveError):
    """401 from the authentication layer: the reason phrase carries the text, the body is empty."""

    def __init__(self, message: str) -> None:
        super().__init__(401, message)


def config_missing(node: str, vmid: int) -> PveError:
    """What `load_config` dies with for a VMID that has no config on that node."""
    return PveError.internal(
        f"Configuration file 'nodes/{node}/qemu-server/{vmid}.conf' does not exist"
    )


def vm_locked(lock: str) -> PveError:
    return PveError.internal(f"VM is locked ({lock})")
