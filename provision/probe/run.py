"""Drive the probe agent on a guest over SSH and turn its events into a ProbeResult.

The agent (agent.py, stdlib only) is piped to the guest's `python3 -`; its options travel as
one base64 argument, so no quoting of prompts through the remote shell is needed. It streams
JSON lines back; this module keeps every run as soon as its line arrives (listener.on_run), so
a dropped connection loses only the run in flight.
"""

from __future__ import annotations

import base64
import json
import shlex
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from provision.errors import (
    GuestError,
    GuestUnreachable,
    ModelDoesNotFit,
    ProbeError,
    UsageError,
)
from provision.probe import parse
from provision.probe.facts import GuestFacts, PsFacts, avx_warning
from provision.probe.parse import RunResult, Sample
from provision.progress import Reporter

AGENT_PATH = Path(__file__).with_name("agent.py")
DEFAULT_PROMPT = (
    "Explain in a few short paragraphs why the sky is blue, and why sunsets are "
    "red, for a curious twelve-year-old."
)
MAX_PROMPT_BYTES = 64 * 1024  # the prompt travels as one command-line argument (128 KiB limit)
NO_PYTHON_EXIT = 127
AGENT_MIN_PYTHON = (3, 10)  # the agent uses zip(strict=...); Ubuntu 24.04 has 3.12, Debian 12 3.11


@dataclass(frozen=True)
class ProbeOptions:
    """What to measure and how (defaults from the [probe] section of the lab file)."""

    model: str = "gemma2:2b"
    runs: int = 3
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

    def validated(self) -> ProbeOptions:
        if self.runs < 1:
            raise UsageError(f"--runs must be at least 1, got {self.runs}")
        if self.warmup < 0:
            raise UsageError(f"--warmup cannot be negative, got {self.warmup}")
        if self.num_predict < 1:
            raise UsageError(f"--num-predict must be at least 1, got {self.num_predict}")
        for name in ("num_thread", "num_ctx"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise UsageError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
        if not self.prompt.strip():
            raise UsageError("the prompt is empty")
        if len(self.prompt.encode()) > MAX_PROMPT_BYTES:
            raise UsageError(f"the prompt is over {MAX_PROMPT_BYTES // 1024} KiB")
        if not 0.01 <= self.sample_interval_s <= 0.2:
            raise UsageError("the sampling interval must be 0.01-0.2 s (>= 5 Hz)")
        return self

    def agent_options(self) -> dict[str, Any]:
        return asdict(self)


class ProbeListener(Protocol):
    """Told about facts and each finished run as they arrive (e.g. the SQLite recorder)."""

    def on_facts(self, facts: GuestFacts) -> None: ...

    def on_run(self, run: RunResult) -> None: ...


@dataclass
class ProbeResult:
    """Everything one probe measured."""

    vm: str
    options: ProbeOptions
    facts: GuestFacts | None = None
    runs: list[RunResult] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    complete: bool = False

    @property
    def measured(self) -> list[RunResult]:
        return [r for r in self.runs if not r.warmup]

    @property
    def summary(self) -> dict[str, parse.Stat | None]:
        return parse.summarize(self.runs)

    @property
    def cache_bust(self) -> str:
        """What the agent did to keep cached prompt tokens out of prompt tok/s."""
        if self.facts and self.facts.prompt_cache_bust:
            return self.facts.prompt_cache_bust
        return "unload+nonce" if self.options.cold else "nonce"

    def sampler_overhead(self) -> dict[str, float | None]:
        pcts = [r.sampler_cpu_pct for r in self.runs if r.sampler_cpu_pct is not None]
        rates = [r.sample_hz for r in self.runs if r.sample_hz is not None]
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
            "sampler": self.sampler_overhead(),
            "runs": [r.to_json() for r in self.runs],
        }


def agent_source() -> bytes:
    return AGENT_PATH.read_bytes()


def agent_command(options: ProbeOptions) -> str:
    """The remote command: a clear error line if python3 is missing or unusable, else the agent.

    The agent arrives on stdin (`python3 -`); its options are one base64 argument, so no
    quoting of prompts through the remote shell is needed.
    """
    encoded = base64.b64encode(json.dumps(options.agent_options()).encode()).decode()

    def error_line(kind: str, message: str) -> str:
        return shlex.quote(json.dumps({"event": "error", "kind": kind, "message": message}))

    check = f"import sys; sys.exit(0 if sys.version_info >= {AGENT_MIN_PYTHON} else 3)"
    minimum = ".".join(map(str, AGENT_MIN_PYTHON))
    # Each refusal first reads the agent source we send on stdin: a shell that exits before
    # reading it makes our write fail, and the clear error line would be lost to a "dropped".
    fail = f"cat >/dev/null; exit {NO_PYTHON_EXIT}"
    return (
        f"command -v python3 >/dev/null 2>&1 || "
        f"{{ echo {error_line('no_python', 'python3 is not installed')}; {fail}; }}; "
        f"python3 -c {shlex.quote(check)} </dev/null; rc=$?; "
        f"if [ $rc -eq 3 ]; then echo {error_line('old_python', f'it is older than {minimum}')}; "
        f"{fail}; fi; "
        f"if [ $rc -ne 0 ]; then echo {error_line('broken_python', 'python3 does not run')}; "
        f"{fail}; fi; "
        f"exec python3 - {encoded}"
    )


def probe(
    address: Any, options: ProbeOptions, reporter: Reporter, listener: ProbeListener | None = None
) -> ProbeResult:
    """Run the probe on the guest at `address` (a provision.guest.GuestAddress)."""
    from provision import guest  # the lifecycle helper's paramiko wrapper

    options = options.validated()
    vm = getattr(address, "name", "") or getattr(address, "host", "")
    reporter.stage("probe")
    reporter.step(f"connecting to {vm} ...")
    with guest.connect(address) as session:
        lines = session.stream_lines(
            agent_command(options), stdin=agent_source(), timeout=_overall_timeout(options)
        )
        result = collect(lines, options, reporter, listener, vm=vm)
        exit_code = getattr(session, "last_exit_code", None)
    if not result.complete:
        stderr = getattr(session, "last_stderr", "").strip().splitlines()
        raise ProbeError(
            f"the probe agent on {vm} stopped without reporting its end "
            f"(exit code {exit_code})" + (f": {stderr[-1]}" if stderr else "")
        )
    return result


def _overall_timeout(options: ProbeOptions) -> float:
    return options.run_timeout_s * (options.runs + options.warmup + 1)


class _Collector:
    """Turns the agent's event stream into a ProbeResult, one event at a time."""

    def __init__(
        self, options: ProbeOptions, reporter: Reporter, listener: ProbeListener | None, vm: str
    ) -> None:
        self.result = ProbeResult(vm=vm, options=options)
        self.reporter = reporter
        self.listener = listener
        self.vm = vm
        self.samples: list[Sample] = []
        self.in_flight: dict[str, Any] | None = None
        self.total = options.warmup + options.runs
        self.handlers: dict[str, Callable[[dict[str, Any]], None]] = {
            "facts": self.on_facts,
            "run_start": self.on_run_start,
            "sample": self.on_sample,
            "run": self.on_run,
            "ps": self.on_ps,
            "error": self.on_error,
            "end": self.on_end,
        }

    def feed(self, event: dict[str, Any]) -> None:
        handler = self.handlers.get(event["event"])
        if handler is not None:
            handler(event)

    def on_facts(self, event: dict[str, Any]) -> None:
        facts = GuestFacts.from_event(event)
        self.result.facts = facts
        warning = avx_warning(facts)
        if warning:
            self._warn(warning)
        self.reporter.step(
            f"{facts.vcpus} vCPU, {_gib(facts.mem_total_bytes)} RAM, Ollama "
            f"{facts.ollama_version}, {facts.model.name} ({_gib(facts.model.size_bytes)})"
        )
        if self.listener:
            self.listener.on_facts(facts)

    def on_run_start(self, event: dict[str, Any]) -> None:
        self.in_flight = event
        self.samples = []
        index = int(event["run"])
        kind = "warm-up" if event.get("warmup") else "run"
        self.reporter.step(f"{kind} {index + 1}/{self.total} ...")

    def on_sample(self, event: dict[str, Any]) -> None:
        self.samples.append(Sample.from_event(event))

    def on_run(self, event: dict[str, Any]) -> None:
        run = parse.run_from_event(event, self.samples)
        self.in_flight, self.samples = None, []
        self._keep(run)
        sampler_error = (event.get("sampler") or {}).get("error")
        if sampler_error:
            self._warn(f"run {run.index + 1}: {sampler_error}; its peaks are partial")
        if run.ok:
            self.reporter.step(
                f"run {run.index + 1}/{self.total}: {_fmt(run.eval_tps)} tok/s, "
                f"TTFT {_fmt(run.ttft_s, 's')}"
            )
            if run.ended_early(self.result.options.num_predict):
                self._warn(
                    f"run {run.index + 1} ended early: the model stopped (end of "
                    f"sequence) after {run.metrics.eval_count} of "
                    f"{self.result.options.num_predict} tokens; its eval tok/s covers those"
                )
        elif not run.oom_likely:
            self._warn(f"run {run.index + 1} failed: {run.error}")

    def on_ps(self, event: dict[str, Any]) -> None:
        if self.result.facts is not None:
            ps = PsFacts.from_entry(event.get("entry") or {})
            self.result.facts = replace(self.result.facts, ps=ps)
            if ps.on_cpu is False:
                self._warn(f"the model is not 100% on CPU ({ps.processor}); the VM has a GPU")

    def on_error(self, event: dict[str, Any]) -> None:
        raise parse.fatal_error(event, self.vm)

    def on_end(self, event: dict[str, Any]) -> None:
        self.result.complete = True

    def connection_lost(self, error: GuestError) -> ProbeError:
        """Record the run in flight as failed; the runs before it are already kept."""
        kept = sum(1 for r in self.result.runs if r.ok and not r.warmup)
        lost = isinstance(error, GuestUnreachable)
        detail = _drop_detail(str(error)) if lost else str(error)
        if self.in_flight is not None:
            index = int(self.in_flight["run"])
            reason = "SSH connection lost during the run" if lost else "the run did not finish"
            reason += f": {detail}" if detail else ""
            self._keep(
                parse.failed_run(
                    index,
                    bool(self.in_flight.get("warmup")),
                    reason,
                    self.samples,
                    parse.number(self.in_flight, "started_at"),
                )
            )
            where = f"during run {index + 1}/{self.total}"
        else:
            where = "between runs"
        what = f"SSH connection to {self.vm} lost" if lost else f"the probe on {self.vm} stopped"
        return ProbeError(
            f"{what} {where}" + (f": {detail}" if detail else ""),
            hint=f"{kept} measured run(s) kept; see `labctl results --vm {self.vm}`",
        )

    def _keep(self, run: RunResult) -> None:
        self.result.runs.append(run)
        if self.listener:
            self.listener.on_run(run)

    def _warn(self, message: str) -> None:
        self.result.warnings.append(message)
        self.reporter.warn(message)


def collect(
    lines: Iterable[str],
    options: ProbeOptions,
    reporter: Reporter,
    listener: ProbeListener | None = None,
    *,
    vm: str = "",
) -> ProbeResult:
    """Consume the agent's output lines; raises the right LabctlError for a bad outcome."""
    collector = _Collector(options, reporter, listener, vm)
    try:
        for event in _events(lines):
            collector.feed(event)
    except GuestError as error:
        raise collector.connection_lost(error) from None
    result = collector.result
    _raise_for_outcome(result, vm)
    return result


def _events(lines: Iterable[str]) -> Iterator[dict[str, Any]]:
    for line in lines:
        event = parse.parse_event(line)
        if event is not None:
            yield event


def _raise_for_outcome(result: ProbeResult, vm: str) -> None:
    oom = next((r for r in result.runs if r.oom_likely), None)
    if oom is not None:
        raise ModelDoesNotFit(
            f"model does not fit in RAM: {result.options.model}'s runner was OOM-killed on "
            f"{vm} ({_gib(result.facts.mem_total_bytes if result.facts else None)} RAM); "
            f"{((oom.oom or {}).get('evidence') or [oom.error])[0]}",
            hint=f"give {vm} more RAM (`labctl resize {vm} --ram SIZE --reboot`) or probe a "
            "smaller model",
            figure=oom_figure(oom, result.facts.mem_total_bytes if result.facts else None),
        )
    measured = result.measured
    if result.complete and measured and not any(r.ok for r in measured):
        raise ProbeError(f"all {len(measured)} measured runs failed on {vm}: {measured[0].error}")


def oom_figure(run: RunResult, mem_total: int | None) -> str:
    """What the OOM kill looked like, in figures: when it struck and how much Ollama held.

    With Ollama >= 0.30 on CPU the weights are read into RAM (mmap off), so a VM below the
    model's size is killed while loading, before any token; a kill after tokens means the
    KV cache or a second model pushed it over.
    """
    when = "while loading" if not run.stream_tokens else "while generating"
    held = run.peaks.peak_rss
    if held is None or not mem_total:
        return f"OOM-killed {when}"
    return f"OOM-killed {when}, Ollama held {_gib(held)} of {_gib(mem_total)}"


def _drop_detail(text: str) -> str:
    """What paramiko said about a dropped connection, without the command line we ran."""
    _, found, detail = text.partition(" dropped: ")
    return detail.strip() if found else ""


def _gib(value: int | None) -> str:
    return "?" if value is None else f"{value / 2**30:.1f} GiB"


def _fmt(value: float | None, unit: str = "") -> str:
    return "n/a" if value is None else f"{value:.2f}{unit}"
