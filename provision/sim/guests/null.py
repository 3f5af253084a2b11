"""NoGuestBackend: the simulator without real guests (API-only mode).

Nothing boots. Power state lives only in the simulator's models; the "agent" answers as soon as
the simulator's agent delay has passed. `network_interfaces` reports a fake address so that
clients can go through their IP discovery: 192.0.2.<vmid % 250 + 1>/24 (TEST-NET-1, RFC 5737 —
documentation-only, never routable, so nothing can accidentally be reached). There is no SSH
server behind it. `file_read` raises FileNotFoundError for every path, which the API turns into
the agent's "failed to open file" error.

A start with `init_failure` (the boot_failure fault) fails as a container guest's would: the
"console" is those lines and the exit code 255. `crash(vmid)` makes a running VM stop on its own
(for tests of what the simulator does when a guest dies).
"""

from __future__ import annotations

import time
from typing import Any

from provision.sim.guests.base import ExitListener, GuestExit, GuestSpec
from provision.sim.guests.errors import GuestExited


def fake_address(vmid: int) -> str:
    return f"192.0.2.{vmid % 250 + 1}"


class NoGuestBackend:
    """GuestBackend that keeps only a set of "running" VMIDs and their shapes."""

    def __init__(self, reason: str = "") -> None:
        self.reason = reason
        self._running: dict[int, GuestSpec] = {}
        self._exit_listener: ExitListener | None = None

    def describe(self) -> str:
        text = "no guests (API only): VMs have no OS; the agent reports a TEST-NET-1 address"
        return f"{text} ({self.reason})" if self.reason else text

    def clone_disk(self, source_vmid: int | None, new_vmid: int, linked: bool) -> None:
        return None

    def delete_disk(self, vmid: int) -> None:
        return None

    def start(self, spec: GuestSpec) -> None:
        if spec.init_failure is not None:
            failed = GuestExit(spec.vmid, 255, spec.init_failure, at=time.time())
            self._tell(failed)
            raise GuestExited(failed)
        self._running[spec.vmid] = spec

    def watch_exits(self, listener: ExitListener) -> None:
        self._exit_listener = listener

    def crash(self, vmid: int, exit_code: int = 1, console: tuple[str, ...] = ()) -> None:
        """The VM's guest stops on its own (as if its QEMU process died)."""
        if self._running.pop(vmid, None) is not None:
            self._tell(GuestExit(vmid, exit_code, console, at=time.time()))

    def _tell(self, exit: GuestExit) -> None:
        if self._exit_listener is not None:
            self._exit_listener(exit)

    def shutdown(self, vmid: int, timeout_s: float) -> bool:
        self._running.pop(vmid, None)
        return True

    def stop(self, vmid: int) -> None:
        self._running.pop(vmid, None)

    def reshape(self, vmid: int, cores: int, memory_mib: int) -> None:
        spec = self._running.get(vmid)
        if spec is not None:
            self._running[vmid] = GuestSpec(
                **{**spec.__dict__, "cores": cores, "memory_mib": memory_mib}
            )

    def is_running(self, vmid: int) -> bool:
        return vmid in self._running

    def agent_ping(self, vmid: int) -> bool:
        return vmid in self._running

    def network_interfaces(self, vmid: int) -> list[dict[str, Any]]:
        spec = self._running.get(vmid)
        mac = spec.macaddr.lower() if spec else "bc:24:11:00:00:00"
        zero = {
            "rx-bytes": 0,
            "rx-packets": 0,
            "rx-errs": 0,
            "rx-dropped": 0,
            "tx-bytes": 0,
            "tx-packets": 0,
            "tx-errs": 0,
            "tx-dropped": 0,
        }
        return [
            {
                "name": "lo",
                "hardware-address": "00:00:00:00:00:00",
                "ip-addresses": [
                    {"ip-address": "127.0.0.1", "ip-address-type": "ipv4", "prefix": 8},
                    {"ip-address": "::1", "ip-address-type": "ipv6", "prefix": 128},
                ],
                "statistics": dict(zero),
            },
            {
                "name": "eth0",
                "hardware-address": mac,
                "ip-addresses": [
                    {"ip-address": fake_address(vmid), "ip-address-type": "ipv4", "prefix": 24},
                    {
                        "ip-address": "fe80::be24:11ff:fe00:1",
                        "ip-address-type": "ipv6",
                        "prefix": 64,
                    },
                ],
                "statistics": dict(zero),
            },
        ]

    def file_read(self, vmid: int, path: str) -> bytes:
        raise FileNotFoundError(path)

    def usage(self, vmid: int) -> tuple[float, int]:
        spec = self._running.get(vmid)
        if spec is None:
            return 0.0, 0
        return 0.02 * spec.cores, spec.memory_mib * 1024 * 1024 // 4

    def close(self) -> None:
        self._running.clear()
