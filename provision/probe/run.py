"""Drive the probe agent on a guest over SSH and turn its events into a ProbeResult.

The agent (agent.py, stdlib only) is piped to the guest's `python3 -`; its options travel as
one base64 argument, so no quoting of prompts through the remote shell is needed. It streams
JSON lines back; collect.py keeps every run as soon as its line arrives (listener.on_run), so
a dropped connection loses only the run in flight.
"""

from __future__ import annotations

import base64
import json
import shlex
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from provision.errors import ProbeError
from provision.probe.collect import Collector, consume
from provision.probe.parallel import num_parallel_at_least
from provision.probe.result import ProbeListener, ProbeOptions, ProbeResult
from provision.probe.shape_check import ExpectedShape
from provision.probe.stats import AUTO_MIN_RUNS, auto_runs_done
from provision.progress import Reporter

AGENT_PATH = Path(__file__).with_name("agent.py")
NO_PYTHON_EXIT = 127
AGENT_MIN_PYTHON = (3, 10)  # the agent uses zip(strict=...); Ubuntu 24.04 has 3.12, Debian 12 3.11


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
    address: Any,
    options: ProbeOptions,
    reporter: Reporter,
    listener: ProbeListener | None = None,
    expected: ExpectedShape | None = None,
) -> ProbeResult:
    """Run the probe on the guest at `address` (a provision.guest.GuestAddress).

    With `expected`, the guest must see that shape before anything is measured (InvalidShape
    otherwise). Concurrency levels run with OLLAMA_NUM_PARALLEL >= their largest level
    (parallel.py), put back afterwards.

    With `--runs auto` the agent runs in batches on one SSH connection: AUTO_MIN_RUNS measured
    runs first, then one more at a time until the median eval tok/s is known to +-5 % or
    max_runs ran. The agent itself always runs a fixed number: the decision is statistics, and
    statistics live on the host.
    """
    from provision import guest  # the lifecycle helper's paramiko wrapper

    options = options.validated()
    vm = getattr(address, "name", "") or getattr(address, "host", "")
    reporter.stage("probe")
    reporter.step(f"connecting to {vm} ...")
    collector = Collector(options, reporter, listener, vm, expected)
    with (
        guest.connect(address) as session,
        num_parallel_at_least(
            session, options.max_users, options.ollama_url, reporter
        ) as num_parallel,
    ):
        for batch in _batches(options, collector.result):
            collector.start_batch()
            lines = session.stream_lines(
                agent_command(batch), stdin=agent_source(), timeout=_overall_timeout(batch)
            )
            consume(collector, lines)
            if not collector.result.complete:
                raise _stopped_early(session, vm)
    result = collector.result
    facts_value = result.facts.ollama_num_parallel if result.facts else None
    result.num_parallel = num_parallel if num_parallel is not None else facts_value
    if options.runs_auto:
        reporter.step(result.precision_note())
    return result


def _batches(options: ProbeOptions, result: ProbeResult) -> Iterator[ProbeOptions]:
    """The agent invocations of one probe: one, or `--runs auto`'s growing series."""
    if not options.runs_auto:
        yield options
        return
    yield replace(options, runs=AUTO_MIN_RUNS)
    while not auto_runs_done(result.summary["eval_tps"], len(result.measured), options.max_runs):
        yield replace(options, runs=1, warmup=0)


def _stopped_early(session: Any, vm: str) -> ProbeError:
    exit_code = getattr(session, "last_exit_code", None)
    stderr = getattr(session, "last_stderr", "").strip().splitlines()
    return ProbeError(
        f"the probe agent on {vm} stopped without reporting its end "
        f"(exit code {exit_code})" + (f": {stderr[-1]}" if stderr else "")
    )


def _overall_timeout(options: ProbeOptions) -> float:
    if options.measures_levels:
        levels = len(options.concurrency or (1,)) * max(1, len(options.thread_counts))
        return options.run_timeout_s * (levels * options.runs + options.warmup + 2)
    return options.run_timeout_s * (options.runs + options.warmup + 1)
