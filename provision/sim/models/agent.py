"""The guest agent: /nodes/{node}/qemu/{vmid}/agent/* answered through the guest backend."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from provision.sim.errors import PveError
from provision.sim.models.state import ClusterState

AGENT_BINARY = "/usr/sbin/qemu-ga"


class AgentMixin(ClusterState):
    """QGA commands: PVE's three errors first, then the backend's answer."""

    def agent(self, node: str, vmid: int, command: str, params: dict[str, Any]) -> Any:
        """Guest agent commands: the three PVE errors, then the QGA result.

        Supported: ping, network-get-interfaces, get-host-name, get-osinfo, info and file-read.
        """
        with self.lock:
            vm = self.vm(node, vmid)
            if "agent" not in vm.config:
                raise PveError.internal("No QEMU guest agent configured")
            if not vm.running:
                raise PveError.internal(f"VM {vmid} is not running")
            started_at = vm.started_at or time.time()
            name = vm.config.get("name", f"VM {vmid}")
            enabled = vm.agent_enabled
            needs_binary = vm.agent_binary_required
        up = (
            enabled
            and time.time() >= started_at + self.settings.agent_delay
            and not self.faults.agent_is_down(vmid)
            and self.backend.agent_ping(vmid)
            and (not needs_binary or self._agent_installed(vmid))
        )
        if not up:
            time.sleep(self.settings.agent_timeout)
            raise PveError.internal("QEMU guest agent is not running")
        if command == "file-read":
            return self._file_read(vmid, params)
        results: dict[str, Callable[[], Any]] = {
            "ping": dict,
            "network-get-interfaces": lambda: self.backend.network_interfaces(vmid),
            "get-host-name": lambda: {"host-name": name},
            "get-osinfo": lambda: {
                "id": "ubuntu",
                "name": "Ubuntu",
                "version-id": "24.04",
                "pretty-name": "Ubuntu 24.04 LTS",
                "kernel-release": "6.8.0-31-generic",
                "machine": "x86_64",
            },
            "info": lambda: {"version": "8.2.2", "supported_commands": []},
        }
        return {"result": results[command]()}

    def _agent_installed(self, vmid: int) -> bool:
        """A guest from a cloud image runs an agent only once qemu-guest-agent is installed:
        the package's binary (Debian/Ubuntu `qemu-guest-agent`: /usr/sbin/qemu-ga)."""
        try:
            self.backend.file_read(vmid, AGENT_BINARY)
        except (FileNotFoundError, OSError):
            return False
        return True

    def _file_read(self, vmid: int, params: dict[str, Any]) -> dict[str, Any]:
        """GET agent/file-read: `{content, bytes-read[, truncated]}` (no `result` wrapper)."""
        import base64

        path = str(params["file"])
        try:
            data = self.backend.file_read(vmid, path)
        except FileNotFoundError:
            raise PveError.internal(
                f"Agent error: failed to open file '{path}': No such file or directory"
            ) from None
        offset = int(params.get("offset", 0))
        count = int(params.get("count", 16 * 1024 * 1024))
        chunk = data[offset : offset + count]
        decode = str(params.get("decode", "1")) in ("1", "True", "true")
        content = chunk.decode("utf-8", "replace") if decode else base64.b64encode(chunk).decode()
        result: dict[str, Any] = {"content": content, "bytes-read": len(chunk)}
        if offset + count < len(data):
            result["truncated"] = 1
        return result
