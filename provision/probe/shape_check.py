"""Before any measurement: does the guest see the shape the VM was given?

A VM whose guest sees other cores or RAM than configured (a resize not applied before the
reboot, a CPU limit the guest ignores, a container seeing its host's /proc) would put figures
under the wrong shape. Such a point is recorded as invalid, with the reason, never measured.

Cores: the CPUs the guest may run on (`nproc`: sched_getaffinity) and the processors
/proc/cpuinfo lists must both equal the configured vCPUs.

RAM: MemTotal must be within MEM_TOLERANCE below the configured memory and never above it.
MemTotal is the RAM the kernel manages: a guest kernel keeps its own code and data, the
memmap (64 bytes per 4 KiB page, 1.6 %), firmware reservations and any crashkernel out of it,
so a 2-16 GiB VM shows 2-6 % less than it was given; 10 % leaves room for a crashkernel of a
small VM and still catches a wrong size (the nearest sweep steps differ by 25 % or more).
"""

from __future__ import annotations

from dataclasses import dataclass

from provision.probe.facts import GuestFacts

MEM_TOLERANCE = 0.10  # MemTotal may be up to 10 % below the configured memory
MEM_ABOVE_SLACK = 0.01  # ... and not above it (1 % for rounding of lxcfs-style views)


@dataclass(frozen=True)
class ExpectedShape:
    """The shape the VM is configured with (Proxmox's view)."""

    cores: int
    memory_mib: int


def shape_problem(facts: GuestFacts, expected: ExpectedShape) -> str | None:
    """Why the guest does not see the VM's shape; None when it does."""
    problems = []
    if facts.vcpus is not None and facts.vcpus != expected.cores:
        problems.append(f"nproc says {facts.vcpus} vCPU(s), the VM has {expected.cores}")
    processors = facts.topology.processors if facts.topology else None
    if processors and processors != expected.cores:
        problems.append(
            f"/proc/cpuinfo lists {processors} processor(s), the VM has {expected.cores}"
        )
    if facts.mem_total_bytes is not None:
        configured = expected.memory_mib * 2**20
        low = configured * (1 - MEM_TOLERANCE)
        high = configured * (1 + MEM_ABOVE_SLACK)
        if not low <= facts.mem_total_bytes <= high:
            problems.append(
                f"MemTotal is {facts.mem_total_bytes / 2**20:.0f} MiB, the VM has "
                f"{expected.memory_mib} MiB (allowed: {MEM_TOLERANCE:.0%} below, none above)"
            )
    return "; ".join(problems) or None
