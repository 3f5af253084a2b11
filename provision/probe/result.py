"""What a probe is asked (ProbeOptions) and what it found (ProbeResult): plain data, shared by
the driver (run.py), the event collector (collect.py), the recorder and the sweep."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, runtime_checkable

from provision.errors import UsageError
from provision.probe import parse
from provision.probe.concurrency import LevelRound, LevelStats, ThreadLoad, group_levels
from provision.probe.facts import GuestFacts
from provision.probe.parse import RunResult
from provision.probe.stats import AUTO_MAX_RUNS, AUTO_MIN_RUNS, AUTO_TARGET, Stat

DEFAULT_PROMPT = (
    "Explain in a few short paragraphs why the sky is blue, and why sunsets are "
    "red, for a curious twelve-year-old."
)
MAX_PROMPT_BYTES = 64 * 1024  # the prompt travels as one command-line argument (128 KiB limit)


@dataclass(frozen=True)
class ProbeOptions:
    """What to measure and how (defaults from the [probe] section of the lab file)."""

    model: str = "gemma2:2b"
    runs: int = 3
    runs_auto: bool = False  # `--runs auto`: until the median is known to +-5 % (stats.py)
    max_runs: int = AUTO_MAX_RUNS
    warmup: int = 1
    num_predict: int = 128
    num_thread: int | None = None
    num_ctx: int | None = None
    prompt: str = DEFAULT_PROMPT
    cold: bool = False
    seed: int = 42
    ollama_url: str = "http://127.0.0.1:11434"
    sample_interval_s: float = 0.1
    run_timeout_s: float = 900.0
    # simultaneous users per level (empty: one stream per run, the classic probe)
    concurrency: tuple[int, ...] = ()
    # runner thread counts to measure, None = Ollama's choice ("auto"); more than one, or any
    # concurrency, makes the probe measure levels (provision/probe/concurrency.py)
    thread_counts: tuple[int | None, ...] = ()
    # the guest must see the VM's shape before anything is measured (shape_check.py); off only
    # for a stand-in that is not the VM (a host reached over loopback, a container without
    # lxcfs), where the figures are then not the shape's
    check_shape: bool = True

    @property
    def measures_levels(self) -> bool:
        return bool(self.concurrency) or len(self.thread_counts) > 1

    @property
    def max_users(self) -> int:
        return max(self.concurrency, default=1)

    def validated(self) -> ProbeOptions:
        if self.runs < 1:
            raise UsageError(f"--runs must be at least 1, got {self.runs}")
        if self.runs_auto and not AUTO_MIN_RUNS <= self.max_runs <= 1000:
            raise UsageError(
                f"--max-runs must be {AUTO_MIN_RUNS}-1000 with --runs auto (a 95 % interval of "
                f"the median needs {AUTO_MIN_RUNS} runs), got {self.max_runs}"
            )
        if self.warmup < 0:
            raise UsageError(f"--warmup cannot be negative, got {self.warmup}")
        if self.num_predict < 1:
            raise UsageError(f"--num-predict must be at least 1, got {self.num_predict}")
        for name in ("num_thread", "num_ctx"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise UsageError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
        if any(users < 1 for users in self.concurrency):
            raise UsageError(f"--concurrency values must be at least 1, got {self.concurrency}")
        if any(t is not None and t < 1 for t in self.thread_counts):
            raise UsageError(f"--num-thread values must be at least 1, got {self.thread_counts}")
        if self.runs_auto and self.measures_levels:
            raise UsageError("--runs auto is for single-stream runs; give --concurrency a --runs N")
        if not self.prompt.strip():
            raise UsageError("the prompt is empty")
        if len(self.prompt.encode()) > MAX_PROMPT_BYTES:
            raise UsageError(f"the prompt is over {MAX_PROMPT_BYTES // 1024} KiB")
        if not 0.01 <= self.sample_interval_s <= 0.2:
            raise UsageError("the sampling interval must be 0.01-0.2 s (>= 5 Hz)")
        return self

    def agent_options(self) -> dict[str, Any]:
        """What the agent gets: a fixed number of runs (`auto` is decided here, per batch)."""
        options = asdict(self)
        del options["runs_auto"], options["max_runs"]
        return options

    @property
    def runs_text(self) -> str:
        return f"auto (up to {self.max_runs})" if self.runs_auto else str(self.runs)


class ProbeListener(Protocol):
    """Told about facts and each finished run as they arrive (e.g. the SQLite recorder)."""

    def on_facts(self, facts: GuestFacts) -> None: ...

    def on_run(self, run: RunResult) -> None: ...


@runtime_checkable
class LevelListener(Protocol):
    """Also told about each concurrency level and thread-count load as they arrive."""

    def on_level(self, level: LevelRound) -> None: ...

    def on_thread_load(self, load: ThreadLoad) -> None: ...


@dataclass
class ProbeResult:
    """Everything one probe measured."""

    vm: str
    options: ProbeOptions
    facts: GuestFacts | None = None
    runs: list[RunResult] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    complete: bool = False
    rounds: list[LevelRound] = field(default_factory=list)  # concurrency levels, each repeat
    thread_loads: list[ThreadLoad] = field(default_factory=list)
    num_parallel: int | None = None  # OLLAMA_NUM_PARALLEL in force; None: unknown

    @property
    def levels(self) -> list[LevelStats]:
        return group_levels(self.rounds)

    @property
    def measured(self) -> list[RunResult]:
        return [r for r in self.runs if not r.warmup]

    @property
    def summary(self) -> dict[str, Stat | None]:
        return parse.summarize(self.runs)

    @property
    def cache_bust(self) -> str:
        """What the agent did to keep cached prompt tokens out of prompt tok/s."""
        if self.facts and self.facts.prompt_cache_bust:
            return self.facts.prompt_cache_bust
        return "unload+nonce" if self.options.cold else "nonce"

    def precision_note(self) -> str:
        """How `--runs auto` ended: the interval reached, or the most runs used up."""
        tps = self.summary["eval_tps"]
        if tps is None:
            return "--runs auto: no measured run succeeded"
        half = tps.half_width
        if half is None:
            return f"--runs auto: {tps.n} good run(s), too few for a 95 % interval"
        pct = 100 * half / abs(tps.median) if tps.median else float("inf")
        if tps.within(AUTO_TARGET):
            return f"--runs auto: median eval tok/s known to ± {pct:.1f} % after {tps.n} runs"
        return (
            f"--runs auto: stopped at {len(self.measured)} runs (max_runs); median eval tok/s "
            f"known to ± {pct:.1f} % only, not the ± {100 * AUTO_TARGET:g} % sought"
        )

    def sampler_overhead(self) -> dict[str, float | None]:
        pcts = [r.sampler_cpu_pct for r in self.runs if r.sampler_cpu_pct is not None]
        pcts += [level.sampler_cpu_pct for level in self.levels if level.sampler_cpu_pct]
        rates = [r.sample_hz for r in self.runs if r.sample_hz is not None]
        rates += [r.samples / r.sampler_wall_s for r in self.rounds if r.sampler_wall_s]
        return {
            "max_cpu_pct_of_one_core": max(pcts) if pcts else None,
            "min_sample_hz": min(rates) if rates else None,
        }

    def to_json(self) -> dict[str, Any]:
        summary = {k: asdict(v) if v else None for k, v in self.summary.items()}
        return {
            "vm": self.vm,
            "model": self.options.model,
            "complete": self.complete,
            "options": {k: v for k, v in asdict(self.options).items() if k != "prompt"},
            "prompt_chars": len(self.options.prompt),
            "cache_bust": self.cache_bust,
            "facts": self.facts.to_json() if self.facts else None,
            "warnings": self.warnings,
            "summary": summary,
            "precision": self.precision_note() if self.options.runs_auto else None,
            "sampler": self.sampler_overhead(),
            "runs": [r.to_json() for r in self.runs],
            "num_parallel": self.num_parallel,
            "thread_loads": [load.to_json() for load in self.thread_loads],
            "levels": [level.to_json() for level in self.levels],
        }
