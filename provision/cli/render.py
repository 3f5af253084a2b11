"""Plain-text renderings of the VM commands' results (`labctl ls`, `labctl resize`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from provision.shape import format_mib

if TYPE_CHECKING:
    from provision.pve.lifecycle import ResizeResult, VmInfo

VM_COLUMNS = ["NAME", "VMID", "NODE", "STATUS", "CORES", "RAM", "CPU", "IP", "UPTIME"]


def table(rows: list[list[str]]) -> str:
    """Left-aligned columns two spaces apart; the first row is the header."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


def format_uptime(seconds: int) -> str:
    if seconds <= 0:
        return "-"
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes = rest // 60
    if days:
        return f"{days}d{hours}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{seconds % 60:02d}s"


def render_vms(vms: Sequence[VmInfo], *, show_all: bool) -> str:
    """`labctl ls`: one row per VM, and what a pending shape change means."""
    if not vms:
        return "no labctl VMs" + ("" if show_all else " (--all shows every VM)")
    rows = [VM_COLUMNS]
    for vm in vms:
        label = vm.name if vm.managed else f"{vm.name} (not managed)"
        status = (
            vm.status
            + (" *pending" if vm.pending else "")
            + (f" (lock: {vm.lock})" if vm.lock else "")
        )
        rows.append(
            [
                label,
                str(vm.vmid),
                vm.node,
                status,
                str(vm.shape.cores),
                format_mib(vm.shape.memory_mib),
                vm.shape.cpu_type,
                vm.ip or "-",
                format_uptime(vm.uptime_s),
            ]
        )
    text = table(rows)
    text += "".join(f"\n{vm.name} is held by {vm.lease}" for vm in vms if vm.lease)
    if any(vm.pending for vm in vms):
        text += "\n* pending: a shape change waits for a reboot (labctl resize --reboot)"
    return text


def render_resize(result: ResizeResult) -> str:
    """`labctl resize`: the shape before and after, and how the change applies."""
    rows = [
        ["", "before", "after"],
        ["cores", str(result.before.cores), str(result.after.cores)],
        ["RAM", format_mib(result.before.memory_mib), format_mib(result.after.memory_mib)],
        ["cpu type", result.before.cpu_type, result.after.cpu_type],
    ]
    lines = [f"{result.name} (vmid {result.vmid})", table(rows)]
    if not result.changed:
        lines.append("already at that shape")
    elif not result.running:
        lines.append("applied (the VM is stopped; it boots with the new shape)")
    elif result.rebooted:
        lines.append("applied: rebooted, SSH answers again")
    elif result.pending_keys:
        lines.append(
            f"pending until the next reboot: {', '.join(result.pending_keys)} "
            f"(not hot-pluggable) — run again with --reboot to apply now"
        )
    else:
        lines.append("applied live (hot-plugged)")
    return "\n".join(lines)
