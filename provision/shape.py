"""VM shapes: parsing "8G"-style sizes and core counts, and checking them against a node.

Sizes use binary units, as Proxmox does: 1G = 1024 MiB; "8GB" and "8GiB" mean the same.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace

from provision.errors import UsageError

MIN_MEMORY_MIB = 512
DEFAULT_CPU_TYPE = "host"  # x86-64-v2-AES and kvm64 hide AVX2, which llama.cpp needs (anchors.md)
# A new VM's boot disk grows to at least this (GiB) unless a size is asked for. A stock Ubuntu
# 24.04 cloud image is a 3.5 GiB disk; installing Ollama needs its release tarball (<= 2 GiB)
# and the unpacked tree (~4.25 GiB, CUDA and Vulkan libraries included) at once, then gemma2:2b
# adds 1.6 GB: ~9 GiB on top of the system. 32G leaves room for a few more models.
DEFAULT_DISK_GIB = 32

_UNIT_MIB = {
    "": 1,
    "m": 1,
    "mb": 1,
    "mib": 1,
    "g": 1024,
    "gb": 1024,
    "gib": 1024,
    "t": 1024 * 1024,
    "tb": 1024 * 1024,
    "tib": 1024 * 1024,
}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")
_EXAMPLES = "use e.g. 512M, 8G, 8GiB, 1.5G or a plain number of MiB"


@dataclass(frozen=True, order=True)
class Shape:
    """The size of a VM: what `up`, `resize` and `sweep` act on."""

    cores: int
    memory_mib: int
    cpu_type: str = DEFAULT_CPU_TYPE
    disk_gib: int | None = None

    def with_(self, **changes: object) -> Shape:
        return replace(self, **changes)  # type: ignore[arg-type]

    @property
    def label(self) -> str:
        return f"{self.cores} vCPU / {format_mib(self.memory_mib)} (cpu={self.cpu_type})"


def parse_ram(text: str | int, *, what: str = "RAM") -> int:
    """'8G' -> 8192 (MiB). Raises UsageError with a one-line message on anything else."""
    mib = parse_size_mib(str(text), what)
    if mib < MIN_MEMORY_MIB:
        raise UsageError(f"{what} {text!s} is below the minimum of {MIN_MEMORY_MIB} MiB")
    return mib


def parse_disk_gib(text: str | int) -> int:
    """'40G' -> 40 (GiB); disks are whole GiB."""
    mib = parse_size_mib(str(text), "disk size")
    if mib % 1024:
        raise UsageError(f"disk size {text} is not a whole number of GiB")
    return mib // 1024


def parse_size_mib(text: str, what: str) -> int:
    match = _SIZE_RE.match(text)
    if not match:
        if text.strip().startswith("-"):
            raise UsageError(f"{what} must be positive, got {text!r}")
        raise UsageError(f"invalid {what} {text!r}: {_EXAMPLES}")
    number, unit = match.groups()
    factor = _UNIT_MIB.get(unit.lower())
    if factor is None:
        raise UsageError(f"invalid {what} {text!r}: unknown unit {unit!r}; {_EXAMPLES}")
    mib = float(number) * factor
    if mib <= 0:
        raise UsageError(f"{what} must be positive, got {text!r}")
    if not mib.is_integer():
        raise UsageError(f"invalid {what} {text!r}: not a whole number of MiB")
    return int(mib)


def parse_cores(text: str | int) -> int:
    try:
        cores = int(str(text).strip())
    except ValueError:
        raise UsageError(f"invalid core count {text!r}: use a whole number >= 1") from None
    if cores < 1:
        raise UsageError(f"core count must be at least 1, got {cores}")
    return cores


def parse_cores_list(text: str) -> list[int]:
    """'1,2,4' or '2-12' or '1,2,4-6' -> sorted unique core counts."""
    values: set[int] = set()
    for part in _split_list(text, "core list"):
        if "-" in part.strip("-") and not part.startswith("-"):
            low_text, high_text = part.split("-", 1)
            low, high = parse_cores(low_text), parse_cores(high_text)
            if low > high:
                raise UsageError(f"invalid core range {part!r}: {low} > {high}")
            values.update(range(low, high + 1))
        else:
            values.add(parse_cores(part))
    return sorted(values)


def parse_ram_list(text: str) -> list[int]:
    """'2G,4G,8G' -> sorted unique MiB values."""
    return sorted({parse_ram(part) for part in _split_list(text, "RAM list")})


def _split_list(text: str, what: str) -> list[str]:
    parts = [p.strip() for p in text.split(",")]
    if not text.strip() or any(not p for p in parts):
        raise UsageError(f"invalid {what} {text!r}: give comma-separated values, e.g. 1,2,4")
    return parts


def format_mib(mib: int) -> str:
    """8192 -> '8 GiB', 1536 -> '1.5 GiB', 512 -> '512 MiB'."""
    if mib >= 1024:
        gib = mib / 1024
        return f"{gib:g} GiB" if math.isclose(gib * 4, round(gib * 4)) else f"{gib:.2f} GiB"
    return f"{mib} MiB"


@dataclass(frozen=True)
class NodeCapacity:
    """What a Proxmox node can give a VM (from /nodes/{node}/status)."""

    node: str
    cpus: int
    memory_total_mib: int
    memory_free_mib: int


def check_fits(
    shape: Shape,
    node: NodeCapacity,
    *,
    allow_overcommit: bool = False,
    already_reserved_mib: int = 0,
) -> None:
    """Refuse shapes larger than the node before anything is created."""
    if allow_overcommit:
        return
    if shape.cores > node.cpus:
        raise UsageError(
            f"{shape.cores} cores is more than node {node.node} has ({node.cpus}); "
            "use --allow-overcommit to allow it"
        )
    free = node.memory_free_mib + already_reserved_mib
    if shape.memory_mib > free:
        raise UsageError(
            f"{format_mib(shape.memory_mib)} RAM is more than node {node.node} has free "
            f"({format_mib(free)}); use --allow-overcommit to allow it"
        )
