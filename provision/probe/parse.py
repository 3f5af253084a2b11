"""Pure interpretation of what the probe agent and Ollama report: no I/O, no SSH.

Ollama's metric fields are `omitempty` (ollama.md §3.1): a field that is absent was not
reported, and stays None here; it never becomes 0. Rates are computed only from Ollama's own
counters (count / duration), so the tokens/s labctl shows is exactly Ollama's.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from provision.errors import ProbeError
from provision.probe.stats import Stat, stat

NS = 1_000_000_000


def count_of(obj: Mapping[str, Any], key: str) -> int | None:
    """A non-negative integer field, or None when Ollama left it out (or sent nonsense)."""
    value = obj.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return None
    return value


def _rate(count: int | None, duration_ns: int | None) -> float | None:
    if count is None or not duration_ns:
        return None
    return count * NS / duration_ns


def _seconds(duration_ns: int | None) -> float | None:
    return None if duration_ns is None else duration_ns / NS


@dataclass(frozen=True)
class OllamaMetrics:
    """The timing fields of a final /api/generate (or /api/chat) object, None = not reported."""

    total_duration_ns: int | None = None
    load_duration_ns: int | None = None
    prompt_eval_count: int | None = None
    prompt_eval_duration_ns: int | None = None
    eval_count: int | None = None
    eval_duration_ns: int | None = None
    done_reason: str | None = None

    @classmethod
    def from_response(cls, obj: Mapping[str, Any]) -> OllamaMetrics:
        reason = obj.get("done_reason")
        return cls(
            total_duration_ns=count_of(obj, "total_duration"),
            load_duration_ns=count_of(obj, "load_duration"),
            prompt_eval_count=count_of(obj, "prompt_eval_count"),
            prompt_eval_duration_ns=count_of(obj, "prompt_eval_duration"),
            eval_count=count_of(obj, "eval_count"),
            eval_duration_ns=count_of(obj, "eval_duration"),
            done_reason=reason if isinstance(reason, str) else None,
        )

    @property
    def eval_tps(self) -> float | None:
        """Generation rate: eval_count / eval_duration, as `ollama run --verbose` prints it."""
        return _rate(self.eval_count, self.eval_duration_ns)

    @property
    def prompt_tps(self) -> float | None:
        return _rate(self.prompt_eval_count, self.prompt_eval_duration_ns)

    @property
    def load_s(self) -> float | None:
        return _seconds(self.load_duration_ns)


@dataclass(frozen=True)
class Sample:
    """The VM's state at one moment of a run (bytes, percent, seconds since run start)."""

    t: float
    load1: float | None
    cpu_pct: float | None
    busiest_core_pct: float | None
    mem_total: int | None
    mem_available: int | None
    swap_used: int | None
    ollama_rss: int | None

    @classmethod
    def from_event(cls, event: Mapping[str, Any]) -> Sample:
        return cls(
            t=float(event.get("t") or 0.0),
            load1=number(event, "load1"),
            cpu_pct=number(event, "cpu_pct"),
            busiest_core_pct=number(event, "busiest_core_pct"),
            mem_total=count_of(event, "mem_total"),
            mem_available=count_of(event, "mem_available"),
            swap_used=count_of(event, "swap_used"),
            ollama_rss=count_of(event, "ollama_rss"),
        )

    @property
    def mem_used(self) -> int | None:
        if self.mem_total is None or self.mem_available is None:
            return None
        return self.mem_total - self.mem_available


def number(obj: Mapping[str, Any], key: str) -> float | None:
    value = obj.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _peak(values: Iterable[float | int | None]) -> Any:
    known = [v for v in values if v is not None]
    return max(known) if known else None


@dataclass(frozen=True)
class RunPeaks:
    """The worst moment of a run, from its samples."""

    samples: int
    peak_mem_used: int | None
    min_mem_available: int | None
    peak_swap_used: int | None
    peak_rss: int | None
    peak_load1: float | None
    mean_cpu_pct: float | None
    peak_busiest_core_pct: float | None

    @classmethod
    def from_samples(cls, samples: Sequence[Sample]) -> RunPeaks:
        available = [s.mem_available for s in samples if s.mem_available is not None]
        cpu = [s.cpu_pct for s in samples if s.cpu_pct is not None]
        return cls(
            samples=len(samples),
            peak_mem_used=_peak(s.mem_used for s in samples),
            min_mem_available=min(available) if available else None,
            peak_swap_used=_peak(s.swap_used for s in samples),
            peak_rss=_peak(s.ollama_rss for s in samples),
            peak_load1=_peak(s.load1 for s in samples),
            mean_cpu_pct=round(statistics.fmean(cpu), 1) if cpu else None,
            peak_busiest_core_pct=_peak(s.busiest_core_pct for s in samples),
        )


@dataclass
class RunResult:
    """One generate request: Ollama's numbers, ours, and what the VM went through."""

    index: int
    warmup: bool
    ok: bool
    error: str | None
    metrics: OllamaMetrics
    peaks: RunPeaks
    ttft_s: float | None = None
    wall_s: float | None = None
    load_kind: str | None = None  # "cold": the runner (re)loaded the model; "warm": it was loaded
    cache_bust: str | None = None
    started_at: float | None = None
    stream_tokens: int | None = None
    stream_decode_s: float | None = None
    sampler_cpu_s: float | None = None
    sampler_wall_s: float | None = None
    agent_cpu_s: float | None = None
    oom: dict[str, Any] | None = None
    samples: list[Sample] = field(default_factory=list, repr=False)

    @property
    def eval_tps(self) -> float | None:
        return self.metrics.eval_tps

    @property
    def prompt_tps(self) -> float | None:
        return self.metrics.prompt_tps

    @property
    def load_s(self) -> float | None:
        return self.metrics.load_s

    @property
    def sampler_cpu_pct(self) -> float | None:
        """The sampler thread's CPU time as a percentage of one core during the run."""
        if self.sampler_cpu_s is None or not self.sampler_wall_s:
            return None
        return 100.0 * self.sampler_cpu_s / self.sampler_wall_s

    @property
    def sample_hz(self) -> float | None:
        if not self.sampler_wall_s or not self.peaks.samples:
            return None
        return self.peaks.samples / self.sampler_wall_s

    @property
    def oom_likely(self) -> bool:
        return bool(self.oom and self.oom.get("likely"))

    def ended_early(self, num_predict: int) -> bool:
        """The model emitted end-of-sequence before num_predict tokens (Ollama has no
        ignore-EOS option): its eval tok/s covers fewer tokens than asked for."""
        count = self.metrics.eval_count
        return (
            self.ok
            and self.metrics.done_reason == "stop"
            and count is not None
            and count < num_predict
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "run": self.index,
            "warmup": self.warmup,
            "ok": self.ok,
            "error": self.error,
            "eval_tps": self.eval_tps,
            "prompt_tps": self.prompt_tps,
            "ttft_s": self.ttft_s,
            "load_s": self.load_s,
            "load_kind": self.load_kind,
            "wall_s": self.wall_s,
            "ollama": asdict(self.metrics),
            **{f"{k}": v for k, v in asdict(self.peaks).items()},
            "cache_bust": self.cache_bust,
            "started_at": self.started_at,
            "stream_tokens": self.stream_tokens,
            "stream_decode_s": self.stream_decode_s,
            "sampler_cpu_pct": self.sampler_cpu_pct,
            "sample_hz": self.sample_hz,
            "agent_cpu_s": self.agent_cpu_s,
            "oom": self.oom,
        }


def run_from_event(event: Mapping[str, Any], samples: Sequence[Sample]) -> RunResult:
    """A RunResult from the agent's "run" event and the samples streamed before it."""
    sampler = event.get("sampler") or {}
    return RunResult(
        index=int(event["run"]),
        warmup=bool(event.get("warmup")),
        ok=bool(event.get("ok")),
        error=event.get("error") or None,
        metrics=OllamaMetrics.from_response(event.get("ollama") or {}),
        peaks=RunPeaks.from_samples(samples),
        ttft_s=number(event, "ttft_s"),
        wall_s=number(event, "wall_s"),
        load_kind=event.get("load_kind"),
        cache_bust=event.get("cache_bust"),
        started_at=number(event, "started_at"),
        stream_tokens=count_of(event, "stream_tokens"),
        stream_decode_s=number(event, "stream_decode_s"),
        sampler_cpu_s=number(sampler, "cpu_s"),
        sampler_wall_s=number(sampler, "wall_s"),
        agent_cpu_s=number(event, "agent_cpu_s"),
        oom=event.get("oom"),
        samples=list(samples),
    )


def failed_run(
    index: int,
    warmup: bool,
    reason: str,
    samples: Sequence[Sample],
    started_at: float | None = None,
) -> RunResult:
    """A run that never reported its end (the SSH connection dropped)."""
    return RunResult(
        index=index,
        warmup=warmup,
        ok=False,
        error=reason,
        metrics=OllamaMetrics(),
        peaks=RunPeaks.from_samples(samples),
        started_at=started_at,
        samples=list(samples),
    )


def summarize(runs: Iterable[RunResult]) -> dict[str, Stat | None]:
    """Median/min/max over the measured (not warm-up) runs that succeeded."""
    counted = [r for r in runs if r.ok and not r.warmup]
    return {
        "eval_tps": stat(r.eval_tps for r in counted),
        "prompt_tps": stat(r.prompt_tps for r in counted),
        "ttft_s": stat(r.ttft_s for r in counted),
        "load_s_cold": stat(r.load_s for r in counted if r.load_kind == "cold"),
        "load_s_warm": stat(r.load_s for r in counted if r.load_kind == "warm"),
        "peak_mem_used": stat(r.peaks.peak_mem_used for r in counted),
        "peak_rss": stat(r.peaks.peak_rss for r in counted),
        "peak_load1": stat(r.peaks.peak_load1 for r in counted),
    }


def parse_event(line: str) -> dict[str, Any] | None:
    """One agent line as a dict, or None for a line that is not an agent event.

    Shell start-up files on the guest may print text before the agent starts; such lines
    are skipped rather than fatal.
    """
    text = line.strip()
    if not text.startswith("{"):
        return None
    try:
        event = json.loads(text)
    except ValueError:
        return None
    return event if isinstance(event, dict) and isinstance(event.get("event"), str) else None


def fatal_error(event: Mapping[str, Any], vm: str) -> ProbeError:
    """The one-line error (with its fix) for the agent's fatal "error" event."""
    kind, message = str(event.get("kind")), str(event.get("message"))
    target = vm or "the guest"
    deploy = f"run `labctl deploy {target}`"
    known = {
        "no_python": (
            f"python3 is not installed on {target}; the probe agent needs it",
            "install python3 on the guest (Ansible needs it too)",
        ),
        "old_python": (
            f"python3 on {target} is too old for the probe agent: {message}",
            "install python3 >= 3.10 on the guest",
        ),
        "broken_python": (
            f"python3 on {target} is on PATH but does not run",
            "check `python3 -V` on the guest",
        ),
        "ollama_not_installed": (f"Ollama is not installed on {target} ({message})", deploy),
        "ollama_not_running": (
            f"Ollama is not running on {target}: {message}",
            f"start it (`sudo systemctl start ollama`) or {deploy}",
        ),
        "model_missing": (
            f"model {event.get('model')} is not pulled on {target} ({message})",
            f"{deploy} to pull it",
        ),
    }
    if kind not in known:
        return ProbeError(f"the probe failed on {target}: {message}")
    text, hint = known[kind]
    return ProbeError(text, hint=hint)
