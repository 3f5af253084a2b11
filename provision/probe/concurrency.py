"""Concurrency levels on the host: each request's latencies and each level's statistics.

The agent (agent.py, probe_levels) measures in the guest: for each thread count it loads the
model apart (a `thread_load` event, never counted in a level), then sends N simultaneous
streams per level (`level` events) and timestamps every token chunk as it arrives. This module
turns those raw events into figures:

* per request: queue wait, time to first token (TTFT), inter-token gaps, eval tok/s;
* per level (N users x thread count, pooled over its repeats): aggregate tok/s, TTFT p50/p95/max,
  inter-token p50/p95, completed and failed requests, the probe's own CPU.

Queue wait is derived from Ollama's own clock, not ours: total_duration runs from the request's
arrival in the handler (server/routes.go:246 checkpointStart, :709) and load_duration to the
moment the scheduler handed it a runner (:475, :710); prompt_eval_duration and eval_duration are
llama-server's timings of the slot that served it (llm/llama_server.go:1724-1726). What is left,
total - load - prompt_eval - eval, is the time the request waited for one of the runner's
OLLAMA_NUM_PARALLEL slots (the semaphore at llm/llama_server.go:1536) plus Ollama's own per-request
work (template, tokenizing, HTTP: a few ms, the floor seen at 1 user).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from provision.probe.parse import count_of, number


def percentile(values: Sequence[float], pct: float) -> float | None:
    """The pct-th percentile with linear interpolation between closest ranks (numpy's default
    "linear" method; Excel's PERCENTILE.INC): p50 of [1, 2, 3, 4] is 2.5. None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * pct / 100.0
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def queue_wait_s(ollama: Mapping[str, Any]) -> float | None:
    """total - load - prompt_eval - eval from Ollama's final fields (ns); see the module doc.

    None when a field is missing (a failed request); never negative (llama-server's timings and
    Ollama's clock are read at slightly different moments).
    """
    parts = [
        count_of(ollama, key)
        for key in ("total_duration", "load_duration", "prompt_eval_duration", "eval_duration")
    ]
    if any(p is None for p in parts):
        return None
    total, load, prompt, generate = (int(p or 0) for p in parts)
    return max(0.0, (total - load - prompt - generate) / 1e9)


@dataclass(frozen=True)
class RequestResult:
    """One stream of a level, as measured in the guest."""

    ok: bool
    error: str | None
    ttft_s: float | None
    queue_wait_s: float | None
    eval_count: int | None
    eval_tps: float | None
    tokens: int
    gaps_s: tuple[float, ...] = ()

    @classmethod
    def from_event(cls, event: Mapping[str, Any]) -> RequestResult:
        ollama = event.get("ollama") or {}
        ok = bool(event.get("ok")) and bool(ollama.get("done"))
        eval_count = count_of(ollama, "eval_count")
        eval_ns = count_of(ollama, "eval_duration")
        return cls(
            ok=ok,
            error=None if ok else str(event.get("error") or "the stream did not finish"),
            ttft_s=number(event, "ttft_s"),
            queue_wait_s=queue_wait_s(ollama) if ok else None,
            eval_count=eval_count,
            eval_tps=eval_count / (eval_ns / 1e9) if ok and eval_count and eval_ns else None,
            tokens=int(event.get("tokens") or 0),
            gaps_s=tuple(float(g) for g in event.get("gaps_s") or ()),
        )


@dataclass(frozen=True)
class LevelRound:
    """One repeat of a level: N streams started together."""

    index: int
    users: int
    repeat: int
    num_thread: int | None
    wall_s: float
    agent_cpu_s: float | None
    sampler_cpu_s: float | None
    sampler_wall_s: float | None
    samples: int
    requests: tuple[RequestResult, ...]
    peak_rss: int | None = None
    peak_mem_used: int | None = None  # the VM's MemTotal - lowest MemAvailable in this round
    oom: dict[str, Any] | None = None  # the agent's verdict when a request failed

    @property
    def oom_likely(self) -> bool:
        return bool(self.oom and self.oom.get("likely"))

    @classmethod
    def from_event(
        cls,
        event: Mapping[str, Any],
        peak_rss: int | None = None,
        peak_mem_used: int | None = None,
    ) -> LevelRound:
        sampler = event.get("sampler") or {}
        return cls(
            index=int(event.get("index") or 0),
            users=int(event["users"]),
            repeat=int(event.get("repeat") or 0),
            num_thread=count_of(event, "num_thread"),
            wall_s=float(event.get("wall_s") or 0.0),
            agent_cpu_s=number(event, "agent_cpu_s"),
            sampler_cpu_s=number(sampler, "cpu_s"),
            sampler_wall_s=number(sampler, "wall_s"),
            samples=int(sampler.get("samples") or 0),
            requests=tuple(RequestResult.from_event(r) for r in event.get("requests") or ()),
            peak_rss=peak_rss,
            peak_mem_used=peak_mem_used,
            oom=event.get("oom") or None,
        )


@dataclass(frozen=True)
class LevelStats:
    """A level's figures, pooled over its repeats (what tables, exports and the sweep use).

    aggregate_tps: tokens generated by the completed requests over the level's wall time (from
    the moment the streams were released to the last one's end), summed over repeats.
    """

    users: int
    num_thread: int | None
    repeats: int
    completed: int
    failed: int
    aggregate_tps: float | None
    tps_per_user_p50: float | None
    ttft_p50_s: float | None
    ttft_p95_s: float | None
    ttft_max_s: float | None
    itl_p50_s: float | None
    itl_p95_s: float | None
    queue_wait_p50_s: float | None
    queue_wait_max_s: float | None
    agent_cpu_pct: float | None
    sampler_cpu_pct: float | None
    peak_rss: int | None
    errors: tuple[str, ...] = field(default=())
    peak_mem_used: int | None = None  # in memory only: what the sweep's peak-used figure takes

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["errors"] = list(self.errors)
        return data


def level_stats(rounds: Sequence[LevelRound]) -> LevelStats:
    """Pool the repeats of one (users, num_thread) level."""
    requests = [r for one in rounds for r in one.requests]
    done = [r for r in requests if r.ok]
    ttfts = [r.ttft_s for r in done if r.ttft_s is not None]
    gaps = [g for r in done for g in r.gaps_s]
    waits = [r.queue_wait_s for r in done if r.queue_wait_s is not None]
    wall = sum(one.wall_s for one in rounds)
    tokens = sum(r.eval_count or 0 for r in done)
    agent_cpu = [one.agent_cpu_s for one in rounds if one.agent_cpu_s is not None]
    sampler_cpu = [
        100.0 * one.sampler_cpu_s / one.sampler_wall_s
        for one in rounds
        if one.sampler_cpu_s is not None and one.sampler_wall_s
    ]
    rss = [one.peak_rss for one in rounds if one.peak_rss is not None]
    used = [one.peak_mem_used for one in rounds if one.peak_mem_used is not None]
    return LevelStats(
        users=rounds[0].users,
        num_thread=rounds[0].num_thread,
        repeats=len(rounds),
        completed=len(done),
        failed=len(requests) - len(done),
        aggregate_tps=tokens / wall if done and wall > 0 else None,
        tps_per_user_p50=percentile([r.eval_tps for r in done if r.eval_tps], 50),
        ttft_p50_s=percentile(ttfts, 50),
        ttft_p95_s=percentile(ttfts, 95),
        ttft_max_s=max(ttfts) if ttfts else None,
        itl_p50_s=percentile(gaps, 50),
        itl_p95_s=percentile(gaps, 95),
        queue_wait_p50_s=percentile(waits, 50),
        queue_wait_max_s=max(waits) if waits else None,
        agent_cpu_pct=100.0 * sum(agent_cpu) / wall if agent_cpu and wall > 0 else None,
        sampler_cpu_pct=max(sampler_cpu) if sampler_cpu else None,
        peak_rss=max(rss) if rss else None,
        errors=tuple(dict.fromkeys(r.error for r in requests if r.error)),
        peak_mem_used=max(used) if used else None,
    )


def group_levels(rounds: Iterable[LevelRound]) -> list[LevelStats]:
    """One LevelStats per (num_thread, users), in the order the levels were measured."""
    groups: dict[tuple[int | None, int], list[LevelRound]] = {}
    for one in rounds:
        groups.setdefault((one.num_thread, one.users), []).append(one)
    return [level_stats(group) for group in groups.values()]


@dataclass(frozen=True)
class RunnerThreads:
    """A runner process as the guest sees it after a load."""

    pid: int
    name: str
    argv_threads: int | None  # -t N on its command line; None: llama.cpp chose
    argv_parallel: int | None  # -np N: the runner's parallel slots
    tasks: int  # /proc/PID/task entries: compute threads plus HTTP and helper threads


@dataclass(frozen=True)
class ThreadLoad:
    """The model loaded for one thread count, before that count's levels: counted apart."""

    num_thread: int | None
    ok: bool
    error: str | None
    load_s: float | None  # the loading request's time: Ollama answers it once loaded
    wall_s: float  # the load and the warm-up requests
    runners: tuple[RunnerThreads, ...]
    oom: dict[str, Any] | None = None  # the agent's verdict when the load failed

    @property
    def oom_likely(self) -> bool:
        return bool(self.oom and self.oom.get("likely"))

    @classmethod
    def from_event(cls, event: Mapping[str, Any]) -> ThreadLoad:
        # Ollama sends no load_duration for a prompt-less request (server/routes.go:478-483);
        # then the guest's own timing of that request is the load.
        load_ns = count_of(event, "load_duration")
        return cls(
            num_thread=count_of(event, "num_thread"),
            ok=bool(event.get("ok")),
            error=event.get("error") or None,
            load_s=load_ns / 1e9 if load_ns is not None else number(event, "load_wall_s"),
            wall_s=float(event.get("wall_s") or 0.0),
            runners=tuple(
                RunnerThreads(
                    pid=int(r.get("pid") or 0),
                    name=str(r.get("name") or ""),
                    argv_threads=count_of(r, "argv_threads"),
                    argv_parallel=count_of(r, "argv_parallel"),
                    tasks=int(r.get("tasks") or 0),
                )
                for r in event.get("runners") or ()
            ),
            oom=event.get("oom") or None,
        )

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["runners"] = [asdict(r) for r in self.runners]
        return data


def thread_warning(load: ThreadLoad, vcpus: int | None) -> str | None:
    """A warning when a runner computes on more threads than the guest has vCPUs.

    Oversubscribed llama.cpp threads spin-wait on each other and each token waits for the
    slowest (ollama.md §5.4; Ollama issues #5554, #8074, #10022).
    """
    if not vcpus:
        return None
    for runner in load.runners:
        threads = runner.argv_threads
        if threads is not None and threads > vcpus:
            return (
                f"the runner (pid {runner.pid}) computes on {threads} threads but the guest "
                f"has {vcpus} vCPU(s): threads beyond the vCPUs wait on each other and slow "
                "every token (Ollama issues #5554, #8074, #10022)"
            )
    return None
