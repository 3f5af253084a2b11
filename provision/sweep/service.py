"""Sizing a VM for a service: N people at once, each wanting the first token within a time and a
reading speed. The sweep probes each shape at 1..N concurrent users (powers of two, then N) and
a shape meets the service when, at N users, the 95th percentile of time to first token and the
slowest-typical (median) per-user eval rate both meet their targets and no request failed.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from provision.errors import UsageError
from provision.probe.result import ProbeOptions

MAX_USERS = 64  # a homelab service; each user is one more parallel slot's KV cache in RAM


@dataclass(frozen=True)
class ServiceTargets:
    """`--users N --max-ttft-p95 2s --min-tps-per-user 5`."""

    users: int
    max_ttft_p95_s: float | None = None
    min_tps_per_user: float | None = None

    def describe(self) -> str:
        parts = [f"{self.users} user{'s' if self.users != 1 else ''} at once"]
        if self.max_ttft_p95_s is not None:
            parts.append(f"p95 TTFT <= {self.max_ttft_p95_s:g} s")
        if self.min_tps_per_user is not None:
            parts.append(f">= {self.min_tps_per_user:g} tok/s each")
        return ", ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {
            "users": self.users,
            "max_ttft_p95_s": self.max_ttft_p95_s,
            "min_tps_per_user": self.min_tps_per_user,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> ServiceTargets | None:
        if not data:
            return None
        return cls(int(data["users"]), data.get("max_ttft_p95_s"), data.get("min_tps_per_user"))

    @property
    def levels(self) -> tuple[int, ...]:
        """The concurrency levels probed: 1, 2, 4, ... below N, and N."""
        found, level = [], 1
        while level < self.users:
            found.append(level)
            level *= 2
        return (*found, self.users)


@dataclass(frozen=True)
class LevelPoint:
    """One concurrency level as the sweep keeps it (from the probe's per-level statistics)."""

    users: int
    ttft_p95_s: float | None
    tps_per_user: float | None  # median eval tok/s of one user's stream at this level
    aggregate_tps: float | None  # tokens/s of all streams together
    completed: int
    failed: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "users": self.users,
            "ttft_p95_s": self.ttft_p95_s,
            "tps_per_user": self.tps_per_user,
            "aggregate_tps": self.aggregate_tps,
            "completed": self.completed,
            "failed": self.failed,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LevelPoint:
        return cls(
            users=int(data["users"]),
            ttft_p95_s=data.get("ttft_p95_s"),
            tps_per_user=data.get("tps_per_user"),
            aggregate_tps=data.get("aggregate_tps"),
            completed=int(data.get("completed") or 0),
            failed=int(data.get("failed") or 0),
        )


def parse_service(
    users: int | None, max_ttft_p95: str | None, min_tps_per_user: str | None
) -> ServiceTargets | None:
    """The service targets from the command line; UsageError for malformed or orphaned ones."""
    from provision.sweep.model import parse_duration_s

    if users is None:
        if max_ttft_p95 is not None or min_tps_per_user is not None:
            raise UsageError("--max-ttft-p95 and --min-tps-per-user need --users N")
        return None
    if not 1 <= users <= MAX_USERS:
        raise UsageError(f"--users must be 1-{MAX_USERS}, got {users}")
    if max_ttft_p95 is None and min_tps_per_user is None:
        raise UsageError("--users N needs a target: --max-ttft-p95 and/or --min-tps-per-user")
    ttft = None
    if max_ttft_p95 is not None:
        try:
            ttft = parse_duration_s(max_ttft_p95)
        except UsageError:
            raise UsageError(
                f"invalid --max-ttft-p95 {max_ttft_p95!r}: use e.g. 2s, 1.5s or 500ms"
            ) from None
    return ServiceTargets(users, ttft, _positive("--min-tps-per-user", min_tps_per_user))


def _positive(flag: str, text: str | None) -> float | None:
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        raise UsageError(f"invalid {flag} {text!r}: give tokens per second, e.g. 5") from None
    if not 0 < value < float("inf"):
        raise UsageError(f"{flag} must be a positive number, got {text!r}")
    return value


def service_reasons(levels: Sequence[LevelPoint], service: ServiceTargets) -> list[str]:
    """Why the shape does not serve `service.users` users (empty: it does)."""
    at = next((lv for lv in levels if lv.users == service.users), None)
    if at is None:
        return [f"not measured at {service.users} users"]
    return level_reasons(at, service)


def level_reasons(level: LevelPoint, service: ServiceTargets) -> list[str]:
    """Why the per-user targets fail at this one level (empty: they hold)."""
    reasons = []
    if level.failed:
        total = level.failed + level.completed
        reasons.append(f"{level.failed} of {total} requests failed at {level.users} users")
    if service.max_ttft_p95_s is not None and (
        level.ttft_p95_s is None or level.ttft_p95_s > service.max_ttft_p95_s
    ):
        reasons.append(
            f"p95 TTFT {_s(level.ttft_p95_s)} > {service.max_ttft_p95_s:g} s at {level.users} users"
        )
    if service.min_tps_per_user is not None and (
        level.tps_per_user is None or level.tps_per_user < service.min_tps_per_user
    ):
        reasons.append(
            f"{_tps(level.tps_per_user)} tok/s each < {service.min_tps_per_user:g} "
            f"at {level.users} users"
        )
    return reasons


def most_users_served(levels: Iterable[LevelPoint], service: ServiceTargets) -> int:
    """The largest measured level at which the per-user targets hold (0: not even one user)."""
    return max((lv.users for lv in levels if not level_reasons(lv, service)), default=0)


def serves_line(shape_label: str, levels: Sequence[LevelPoint], service: ServiceTargets) -> str:
    """`2 vCPU / 4 GiB serves 3 users at p95 TTFT <= 2 s (4.1 tok/s each)`."""
    at = next((lv for lv in levels if lv.users == service.users), None)
    users = f"{service.users} user{'s' if service.users != 1 else ''}"
    if at is None:
        return f"{shape_label}: not measured at {users}"
    ttft = f" at p95 TTFT <= {service.max_ttft_p95_s:g} s" if service.max_ttft_p95_s else ""
    each = f" ({_tps(at.tps_per_user)} tok/s each, p95 TTFT {_s(at.ttft_p95_s)})"
    return f"{shape_label} serves {users}{ttft}{each}"


def _s(value: float | None) -> str:
    return "not reported" if value is None else f"{value:.2f} s"


def _tps(value: float | None) -> str:
    return "not reported" if value is None else f"{value:.1f}"


def with_service_levels(options: ProbeOptions, service: ServiceTargets | None) -> ProbeOptions:
    """The probe options of a service sweep: each shape is probed at service.levels users."""
    if service is None:
        return options
    if options.runs_auto:
        raise UsageError(
            "--users measures levels of --runs N repeats each; --runs auto is not for it"
        )
    return replace(options, concurrency=service.levels).validated()
