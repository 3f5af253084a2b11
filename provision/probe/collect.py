"""The probe agent's event stream, one event at a time, into a ProbeResult; and the outcome that
the stream means (a model that did not fit, every measured run failed, a connection lost, a
guest that does not see its shape). Concurrency levels and thread-count loads are kept as they
arrive (LevelListener), like runs."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import replace
from typing import Any

from provision.errors import (
    GuestError,
    GuestUnreachable,
    InvalidShape,
    ModelDoesNotFit,
    ProbeError,
)
from provision.probe import parse
from provision.probe.concurrency import LevelRound, ThreadLoad, thread_warning
from provision.probe.facts import GuestFacts, PsFacts, avx_warning
from provision.probe.parse import RunResult, Sample
from provision.probe.result import LevelListener, ProbeListener, ProbeOptions, ProbeResult
from provision.probe.shape_check import ExpectedShape, shape_problem
from provision.progress import Reporter


class Collector:
    """Turns the agent's event stream into a ProbeResult, one event at a time."""

    def __init__(
        self,
        options: ProbeOptions,
        reporter: Reporter,
        listener: ProbeListener | None,
        vm: str,
        expected: ExpectedShape | None = None,
    ) -> None:
        self.result = ProbeResult(vm=vm, options=options)
        self.expected = expected
        self.reporter = reporter
        self.listener = listener
        self.vm = vm
        self.samples: list[Sample] = []
        self.in_flight: dict[str, Any] | None = None
        self.total = options.runs_text if options.runs_auto else str(options.warmup + options.runs)
        self.first_index = 0  # where this agent invocation's run 0 goes (`--runs auto`)
        self.handlers: dict[str, Callable[[dict[str, Any]], None]] = {
            "facts": self.on_facts,
            "run_start": self.on_run_start,
            "sample": self.on_sample,
            "run": self.on_run,
            "ps": self.on_ps,
            "thread_load": self.on_thread_load,
            "level": self.on_level,
            "error": self.on_error,
            "end": self.on_end,
        }

    def start_batch(self) -> None:
        """A further agent invocation: its runs continue this probe's numbering."""
        self.first_index = len(self.result.runs)
        self.result.complete = False

    def feed(self, event: dict[str, Any]) -> None:
        if self.first_index and isinstance(event.get("run"), int):
            event = {**event, "run": event["run"] + self.first_index}
        handler = self.handlers.get(event["event"])
        if handler is not None:
            handler(event)

    def on_facts(self, event: dict[str, Any]) -> None:
        if self.result.facts is not None:
            return  # a further batch of `--runs auto`: same guest, said once
        facts = GuestFacts.from_event(event)
        self.result.facts = facts
        if self.listener:
            self.listener.on_facts(facts)
        problem = shape_problem(facts, self.expected) if self.expected else None
        if problem is not None:
            raise InvalidShape(
                f"invalid point: {self.vm} does not see its shape ({problem}); nothing measured",
                hint="check the VM's pending changes (`labctl resize --reboot`) and its CPU and "
                "memory limits",
            )
        warning = avx_warning(facts)
        if warning:
            self._warn(warning)
        self.reporter.step(
            f"{facts.vcpus} vCPU, {_gib(facts.mem_total_bytes)} RAM, Ollama "
            f"{facts.ollama_version}, {facts.model.name} ({_gib(facts.model.size_bytes)})"
        )

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

    def on_thread_load(self, event: dict[str, Any]) -> None:
        load = ThreadLoad.from_event(event)
        self.result.thread_loads.append(load)
        if isinstance(self.listener, LevelListener):
            self.listener.on_thread_load(load)
        threads = "auto" if load.num_thread is None else load.num_thread
        if not load.ok:
            if not load.oom_likely:  # an OOM kill ends the probe with its own error
                self._warn(f"loading with num_thread {threads} failed: {load.error}")
            return
        running = ", ".join(
            f"{r.name} -t {r.argv_threads or 'default'} ({r.tasks} tasks)" for r in load.runners
        )
        self.reporter.step(
            f"num_thread {threads}: loaded apart in {_fmt(load.load_s, ' s')}: {running}"
        )
        warning = thread_warning(load, self.result.facts.vcpus if self.result.facts else None)
        if warning:
            self._warn(warning)

    def on_level(self, event: dict[str, Any]) -> None:
        peaks = parse.RunPeaks.from_samples(self.samples)
        self.samples = []
        level = LevelRound.from_event(
            event, peak_rss=peaks.peak_rss, peak_mem_used=peaks.peak_mem_used
        )
        self.result.rounds.append(level)
        if isinstance(self.listener, LevelListener):
            self.listener.on_level(level)
        done = [r for r in level.requests if r.ok]
        for failed in (r for r in level.requests if not r.ok and not level.oom_likely):
            self._warn(f"{level.users} user(s): a request failed: {failed.error}")
        tokens = sum(r.eval_count or 0 for r in done)
        self.reporter.step(
            f"{level.users} user(s), repeat {level.repeat + 1}: {len(done)}/{len(level.requests)} "
            f"done, {_fmt(tokens / level.wall_s if level.wall_s else None)} tok/s in all"
        )

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
    expected: ExpectedShape | None = None,
) -> ProbeResult:
    """Consume the agent's output lines; raises the right LabctlError for a bad outcome."""
    collector = Collector(options, reporter, listener, vm, expected)
    consume(collector, lines)
    return collector.result


def consume(collector: Collector, lines: Iterable[str]) -> None:
    """Feed one agent invocation's lines; raises the right LabctlError for a bad outcome."""
    try:
        for event in _events(lines):
            collector.feed(event)
    except GuestError as error:
        raise collector.connection_lost(error) from None
    _raise_for_outcome(collector.result, collector.vm)


def _events(lines: Iterable[str]) -> Iterator[dict[str, Any]]:
    for line in lines:
        event = parse.parse_event(line)
        if event is not None:
            yield event


def _raise_for_outcome(result: ProbeResult, vm: str) -> None:
    oom = next((r for r in result.runs if r.oom_likely), None)
    if oom is not None:
        raise _does_not_fit(result, vm, oom.oom, oom.error, oom_figure(oom, _mem_total(result)))
    load = next((t for t in result.thread_loads if t.oom_likely), None)
    if load is not None:
        raise _does_not_fit(result, vm, load.oom, load.error, "OOM-killed while loading")
    level = next((r for r in result.rounds if r.oom_likely), None)
    if level is not None:
        error = next((r.error for r in level.requests if not r.ok), None)
        raise _does_not_fit(result, vm, level.oom, error, level_oom_figure(level, result))
    measured = result.measured
    if result.complete and measured and not any(r.ok for r in measured):
        raise ProbeError(f"all {len(measured)} measured runs failed on {vm}: {measured[0].error}")
    requests = [r for level in result.rounds for r in level.requests]
    if result.complete and result.options.measures_levels and not any(r.ok for r in requests):
        loads = [load.error for load in result.thread_loads if load.error]
        why = (requests[0].error if requests else None) or (loads[0] if loads else "no level ran")
        raise ProbeError(f"no request of any concurrency level completed on {vm}: {why}")


def _does_not_fit(
    result: ProbeResult, vm: str, oom: dict[str, Any] | None, error: str | None, figure: str
) -> ModelDoesNotFit:
    evidence = (oom or {}).get("evidence") or [error or "the runner was killed"]
    return ModelDoesNotFit(
        f"model does not fit in RAM: {result.options.model}'s runner was OOM-killed on "
        f"{vm} ({_gib(_mem_total(result))} RAM); {evidence[0]}",
        hint=f"give {vm} more RAM (`labctl resize {vm} --ram SIZE --reboot`), probe fewer "
        "users or a smaller model"
        if result.rounds
        else f"give {vm} more RAM (`labctl resize {vm} --ram SIZE --reboot`) or probe a "
        "smaller model",
        figure=figure,
    )


def _mem_total(result: ProbeResult) -> int | None:
    return result.facts.mem_total_bytes if result.facts else None


def level_oom_figure(level: LevelRound, result: ProbeResult) -> str:
    """An OOM kill while N users were served: their KV caches on top of the weights."""
    users = f"{level.users} user{'s' if level.users != 1 else ''}"
    mem_total = _mem_total(result)
    if level.peak_rss is None or not mem_total:
        return f"OOM-killed serving {users}"
    return f"OOM-killed serving {users}, Ollama held {_gib(level.peak_rss)} of {_gib(mem_total)}"


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
