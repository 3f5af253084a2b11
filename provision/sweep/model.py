"""What a sweep works on: the shape space, the targets, one measurement per shape and its verdict.

Pure value objects and parsing; nothing here touches a VM or the database.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from provision.errors import UsageError
from provision.shape import Shape, format_mib, parse_cores_list, parse_ram_list, parse_size_mib
from provision.sweep.service import LevelPoint, ServiceTargets, service_reasons

_CPU_TYPE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")
_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|)\s*$", re.IGNORECASE)


class Status(StrEnum):
    """How a probe of one shape ended."""

    OK = "ok"  # the model ran; numbers are in the measurement
    OOM = "oom"  # the runner was OOM-killed: the model does not fit in this RAM
    FAILED = "failed"  # the probe could not measure (SSH lost, Ollama down, ...)
    # the guest did not see the shape (cores, RAM) it was given: nothing measured, never a
    # measurement of that shape (provision/probe/shape_check.py)
    INVALID = "invalid"

    @property
    def unmeasured(self) -> bool:
        """No figures: tried again by a resumed sweep, never counted as that shape's."""
        return self in (Status.FAILED, Status.INVALID)


@dataclass(frozen=True)
class Space:
    """The shapes a sweep may try: cores x RAM x cpu type (each sorted, unique)."""

    cores: tuple[int, ...]
    ram_mib: tuple[int, ...]
    cpu_types: tuple[str, ...]

    def __post_init__(self) -> None:
        if not self.cores or not self.ram_mib or not self.cpu_types:
            raise UsageError("the sweep needs at least one core count, RAM size and cpu type")

    def shapes(self) -> list[Shape]:
        return [Shape(c, r, t) for t in self.cpu_types for c in self.cores for r in self.ram_mib]

    def __len__(self) -> int:
        return len(self.cores) * len(self.ram_mib) * len(self.cpu_types)

    def to_dict(self) -> dict[str, Any]:
        return {
            "cores": list(self.cores),
            "ram_mib": list(self.ram_mib),
            "cpu_types": list(self.cpu_types),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Space:
        return cls(tuple(data["cores"]), tuple(data["ram_mib"]), tuple(data["cpu_types"]))


def parse_space(cores: str, ram: str, cpu_types: str) -> Space:
    """Parse the --cores / --ram / --cpu-type lists; UsageError on empty or malformed lists."""
    types = [t.strip() for t in cpu_types.split(",")]
    if not cpu_types.strip() or any(not t for t in types):
        raise UsageError(
            f"invalid cpu type list {cpu_types!r}: give comma-separated Proxmox cpu "
            "types, e.g. host,x86-64-v2-AES"
        )
    for name in types:
        if not _CPU_TYPE_RE.match(name):
            raise UsageError(
                f"invalid cpu type {name!r}: use a Proxmox cpu type such as host, "
                "x86-64-v2-AES or kvm64"
            )
    return Space(
        tuple(parse_cores_list(cores)), tuple(parse_ram_list(ram)), tuple(dict.fromkeys(types))
    )


@dataclass(frozen=True)
class FreeMemTarget:
    """Memory that must stay free at the probe's peak: a percentage of MemTotal or an amount."""

    percent: float | None = None
    mib: int | None = None

    def describe(self) -> str:
        return f"{self.percent:g}%" if self.percent is not None else format_mib(self.mib or 0)

    def shortfall(self, mem_total_mib: int, peak_used_mib: int) -> str | None:
        """Why the free memory at peak misses the target, or None when it is met."""
        free = mem_total_mib - peak_used_mib
        if self.percent is not None:
            free_pct = 100.0 * free / mem_total_mib if mem_total_mib else 0.0
            if free_pct < self.percent:
                return f"{free_pct:.0f}% free at peak < {self.percent:g}%"
        elif self.mib is not None and free < self.mib:
            return f"{format_mib(max(free, 0))} free at peak < {format_mib(self.mib)}"
        return None


@dataclass(frozen=True)
class Targets:
    """What a shape must meet to count. None = no such target."""

    min_tps: float | None = None
    max_ttft_s: float | None = None
    min_free_mem: FreeMemTarget | None = None
    service: ServiceTargets | None = None  # --users N and its per-user targets

    def describe(self) -> str:
        parts = [self.service.describe()] if self.service else []
        if self.min_tps is not None:
            parts.append(f"eval >= {self.min_tps:g} tok/s")
        if self.max_ttft_s is not None:
            parts.append(f"TTFT <= {format_seconds(self.max_ttft_s)}")
        if self.min_free_mem is not None:
            parts.append(f"free memory at peak >= {self.min_free_mem.describe()}")
        return ", ".join(parts) or "the model runs"

    def to_dict(self) -> dict[str, Any]:
        free = self.min_free_mem
        document: dict[str, Any] = {
            "min_tps": self.min_tps,
            "max_ttft_s": self.max_ttft_s,
            "min_free_mem_percent": free.percent if free else None,
            "min_free_mem_mib": free.mib if free else None,
        }
        if self.service is not None:  # absent otherwise: earlier sweeps keep their identity
            document["service"] = self.service.to_dict()
        return document

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Targets:
        free = None
        if data.get("min_free_mem_percent") is not None or data.get("min_free_mem_mib") is not None:
            free = FreeMemTarget(data.get("min_free_mem_percent"), data.get("min_free_mem_mib"))
        service = ServiceTargets.from_dict(data.get("service"))
        return cls(data.get("min_tps"), data.get("max_ttft_s"), free, service)


def parse_targets(
    min_tps: str | float | None,
    max_ttft: str | None,
    min_free_mem: str | None,
    space: Space | None = None,
    service: ServiceTargets | None = None,
) -> Targets:
    """Parse the target options; UsageError for malformed ones and ones no shape can meet."""
    tps = _parse_tps(min_tps) if min_tps is not None else None
    ttft = parse_duration_s(max_ttft) if max_ttft is not None else None
    free = parse_free_mem(min_free_mem) if min_free_mem is not None else None
    if free is not None and free.mib is not None and space is not None:
        largest = max(space.ram_mib)
        if free.mib >= largest:
            raise UsageError(
                f"--min-free-mem {format_mib(free.mib)} cannot be met: the largest "
                f"RAM in the sweep is {format_mib(largest)}"
            )
    return Targets(tps, ttft, free, service)


def _parse_tps(text: str | float) -> float:
    try:
        value = float(text)
    except ValueError:
        raise UsageError(f"invalid --min-tps {text!r}: give tokens per second, e.g. 10") from None
    if not value > 0 or value == float("inf"):
        raise UsageError(f"--min-tps must be a positive number, got {text!r}")
    return value


def parse_duration_s(text: str) -> float:
    """'2s' -> 2.0, '500ms' -> 0.5, '1.5' -> 1.5 (seconds)."""
    match = _DURATION_RE.match(text)
    if not match:
        raise UsageError(f"invalid duration {text!r}: use e.g. 2s, 1.5s or 500ms")
    number, unit = match.groups()
    seconds = float(number) / (1000.0 if unit.lower() == "ms" else 1.0)
    if seconds <= 0:
        raise UsageError(f"duration must be positive, got {text!r}")
    return seconds


def parse_free_mem(text: str) -> FreeMemTarget:
    """'15%' -> 15 percent of MemTotal; '1G' / '512M' -> an amount."""
    stripped = text.strip()
    if stripped.endswith("%"):
        try:
            percent = float(stripped[:-1])
        except ValueError:
            raise UsageError(f"invalid --min-free-mem {text!r}: use e.g. 15% or 1G") from None
        if not 0 < percent < 100:
            raise UsageError(
                f"--min-free-mem {text} cannot be met: give a percentage between 0 and 100"
            )
        return FreeMemTarget(percent=percent)
    return FreeMemTarget(mib=parse_size_mib(stripped, "--min-free-mem"))


def format_seconds(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.2f} s".replace(".00 s", " s")


@dataclass(frozen=True)
class Measurement:
    """What probing one shape gave: medians over the measured runs, and the memory peak."""

    shape: Shape
    status: Status
    eval_tps: float | None = None  # median eval tok/s
    ttft_s: float | None = None  # median time to first token
    mem_total_mib: int | None = None  # MemTotal inside the guest
    peak_used_mib: int | None = None  # MemTotal - lowest MemAvailable during the runs
    error: str = ""
    details: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
    eval_tps_n: int | None = None  # the runs behind the median
    eval_tps_ci: tuple[float, float] | None = None  # its 95 % interval (6 runs or more)
    levels: tuple[LevelPoint, ...] = ()  # a service sweep's concurrency levels (--users)

    @property
    def fits(self) -> bool:
        return self.status is Status.OK

    @property
    def eval_tps_half_width(self) -> float | None:
        """The `±` of the median eval tok/s: its larger distance to an end of the interval."""
        if self.eval_tps is None or self.eval_tps_ci is None:
            return None
        low, high = self.eval_tps_ci
        return max(self.eval_tps - low, high - self.eval_tps)


@dataclass(frozen=True)
class Verdict:
    """Does a measured shape meet every target, and if not, why."""

    feasible: bool
    reasons: tuple[str, ...] = ()
    memory_bound: bool = False  # failed for lack of memory: every smaller RAM fails too

    @property
    def why(self) -> str:
        return "meets every target" if self.feasible else "; ".join(self.reasons)


def evaluate(measurement: Measurement, targets: Targets) -> Verdict:
    """Judge one measurement against the targets."""
    if measurement.status is Status.OOM:
        figure = measurement.details.get("oom_figure")
        reason = f"does not fit in RAM ({figure})" if figure else "does not fit in RAM (OOM)"
        return Verdict(False, (reason,), memory_bound=True)
    if measurement.status is Status.FAILED:
        return Verdict(False, (f"probe failed: {measurement.error or 'unknown reason'}",))
    if measurement.status is Status.INVALID:
        return Verdict(False, (measurement.error or "invalid point: the guest saw another shape",))
    reasons: list[str] = []
    memory_bound = False
    tps, ttft = measurement.eval_tps, measurement.ttft_s
    if targets.min_tps is not None and (tps is None or tps < targets.min_tps):
        reasons.append(f"{_num(tps)} tok/s < {targets.min_tps:g}")
    if targets.max_ttft_s is not None and (ttft is None or ttft > targets.max_ttft_s):
        shown = format_seconds(ttft) if ttft is not None else "not reported"
        reasons.append(f"TTFT {shown} > {format_seconds(targets.max_ttft_s)}")
    if targets.min_free_mem is not None:
        total, used = measurement.mem_total_mib, measurement.peak_used_mib
        if total is None or used is None:
            reasons.append("free memory not reported")
        else:
            short = targets.min_free_mem.shortfall(total, used)
            if short:
                reasons.append(short)
                memory_bound = True
    if targets.service is not None:
        reasons.extend(service_reasons(measurement.levels, targets.service))
    return Verdict(not reasons, tuple(reasons), memory_bound=memory_bound)


def _num(value: float | None) -> str:
    return "not reported" if value is None else f"{value:.1f}"


def sweep_identity(vm: str, space: Space, targets: Targets, probe_options: dict[str, Any]) -> str:
    """The hash that makes a rerun with the same arguments resume the same sweep."""
    document = {
        "vm": vm,
        "space": space.to_dict(),
        "targets": targets.to_dict(),
        "probe": probe_options,
    }
    encoded = json.dumps(document, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(encoded).hexdigest()


def shape_to_dict(shape: Shape) -> dict[str, Any]:
    return {"cores": shape.cores, "memory_mib": shape.memory_mib, "cpu_type": shape.cpu_type}


def shape_from_dict(data: dict[str, Any]) -> Shape:
    return Shape(int(data["cores"]), int(data["memory_mib"]), str(data["cpu_type"]))
