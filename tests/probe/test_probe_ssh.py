"""run.probe() through provision.guest over a real OpenSSH server on 127.0.0.1."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from provision import store
from provision.errors import ProbeError
from provision.probe.result import ProbeOptions
from provision.probe.run import probe
from tests.support.installed_double import DoubleOllama
from tests.support.reporting import RecordingReporter
from tests.support.sshd import LocalSshd


def options(double: DoubleOllama, **changes: object) -> ProbeOptions:
    values = {"runs": 2, "warmup": 1, "num_predict": 48, "ollama_url": double.url, **changes}
    return ProbeOptions(**values)  # type: ignore[arg-type]


def test_probe_over_ssh_measures_and_keeps_every_run(
    local_sshd: LocalSshd, ollama_double: DoubleOllama, tmp_path: Path
) -> None:
    conn = store.connect(tmp_path)
    recorder = store.ProbeRecorder(
        conn, store.VmRecord(name="probe-test", cores=2), "gemma2:2b", {}, "nonce"
    )
    reporter = RecordingReporter()

    result = probe(local_sshd.address, options(ollama_double), reporter, listener=recorder)

    assert result.complete and [r.ok for r in result.runs] == [True, True, True]
    assert result.facts is not None and result.facts.model.digest == ollama_double.digest
    assert result.facts.ps is not None and result.facts.ps.on_cpu is True
    summary = result.to_json()["summary"]
    assert summary["eval_tps"]["n"] == 2 and summary["eval_tps"]["median"] > 0
    for run in result.measured:
        m = run.metrics
        assert run.eval_tps == m.eval_count * 1e9 / m.eval_duration_ns  # type: ignore[operator]
        assert run.peaks.samples >= 1 and run.peaks.peak_rss is not None
    assert len(store.list_runs(conn, "probe-test")) == 2
    assert ("stage", "probe") in reporter.events


@dataclass
class DroppingReporter(RecordingReporter):
    """Kills the SSH session's server side as soon as the run numbered `at` starts."""

    at: str = ""
    drop: Callable[[], None] = field(default=lambda: None)

    def step(self, message: str) -> None:
        super().step(message)
        if message.startswith(self.at):
            self.drop()


def test_ssh_drop_mid_run_keeps_earlier_runs_and_records_the_failed_one(
    local_sshd: LocalSshd, ollama_double: DoubleOllama, tmp_path: Path
) -> None:
    conn = store.connect(tmp_path)
    recorder = store.ProbeRecorder(
        conn, store.VmRecord(name="probe-test"), "gemma2:2b", {}, "nonce"
    )

    def drop() -> None:
        for pid in local_sshd.session_pids():
            os.kill(pid, signal.SIGKILL)

    reporter = DroppingReporter(at="run 3/3", drop=drop)
    with pytest.raises(ProbeError) as raised:
        probe(
            local_sshd.address, options(ollama_double, num_predict=400), reporter, listener=recorder
        )

    assert str(raised.value) == (
        "SSH connection to probe-test lost during run 3/3 (1 measured "
        "run(s) kept; see `labctl results --vm probe-test`)"
    )
    rows = store.list_runs(conn, "probe-test", include_warmup=True)
    assert [(r["run_index"], r["ok"]) for r in rows] == [(0, True), (1, True), (2, False)]
    assert rows[2]["error"] == "SSH connection lost during the run"


def test_python3_missing_on_the_guest_is_one_clear_error(
    make_sshd: Callable[[str], LocalSshd], ollama_double: DoubleOllama
) -> None:
    # HOME too: a ~/.bashrc (as root's here) could put python3 back on PATH
    sshd = make_sshd("SetEnv PATH=/nonexistent HOME=/nonexistent\n")

    with pytest.raises(ProbeError) as raised:
        probe(sshd.address, options(ollama_double), RecordingReporter())

    assert str(raised.value) == (
        "python3 is not installed on probe-test; the probe agent "
        "needs it (install python3 on the guest (Ansible needs it too))"
    )


def test_runs_auto_measures_one_series_over_one_connection_until_the_median_is_known(
    local_sshd: LocalSshd, ollama_double: DoubleOllama, tmp_path: Path
) -> None:
    conn = store.connect(tmp_path)
    recorder = store.ProbeRecorder(
        conn, store.VmRecord(name="probe-test"), "gemma2:2b", {"runs": "auto"}, "nonce"
    )
    reporter = RecordingReporter()
    auto = options(ollama_double, runs=6, runs_auto=True, max_runs=8, num_predict=16)

    result = probe(local_sshd.address, auto, reporter, listener=recorder)
    recorder.finish("ok", None, result.summary)

    measured = result.measured
    assert 6 <= len(measured) <= 8 and all(r.ok for r in measured)
    rows = store.list_runs(conn, "probe-test", include_warmup=True)
    assert [r["run_index"] for r in rows] == list(range(len(result.runs)))  # one series
    eval_tps = result.summary["eval_tps"]
    assert eval_tps is not None and eval_tps.ci_low is not None
    assert eval_tps.within(0.05) or len(measured) == 8  # why it stopped
    assert sum(1 for e in reporter.events if e[0] == "step" and "vCPU" in e[1]) == 1
    kept = conn.execute("SELECT eval_tps_n, eval_tps_ci_low FROM probes").fetchone()
    assert tuple(kept) == (eval_tps.n, eval_tps.ci_low)
