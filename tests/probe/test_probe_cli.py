"""`labctl probe` / `labctl results` through the real CLI entry point (in this process)."""

from __future__ import annotations

import csv
import io
import json
import subprocess
from pathlib import Path

import pytest

from provision import store
from provision.probe.parse import OllamaMetrics, RunPeaks, RunResult
from tests.support.cli import labctl as run_labctl
from tests.support.lab import Lab


def labctl(state: Path, *args: str) -> subprocess.CompletedProcess[str]:
    done = run_labctl("--state-dir", str(state), *args)
    return subprocess.CompletedProcess(done.args, done.code, done.stdout, done.stderr)


def keep_probe(state: Path, vm: str, tps: list[float]) -> None:
    conn = store.connect(state)
    recorder = store.ProbeRecorder(
        conn,
        store.VmRecord(name=vm, vmid=101, node="pve1", cores=2, memory_mib=4096, cpu_type="host"),
        "gemma2:2b",
        {},
        "nonce",
    )
    for index, rate in enumerate(tps):
        recorder.on_run(
            RunResult(
                index=index,
                warmup=index == 0,
                ok=True,
                error=None,
                metrics=OllamaMetrics(eval_count=int(rate * 10), eval_duration_ns=10 * 10**9),
                peaks=RunPeaks.from_samples([]),
                ttft_s=0.3,
                load_kind="warm",
            )
        )
    recorder.finish("ok")


def test_results_json_csv_and_filter(tmp_path: Path) -> None:
    keep_probe(tmp_path, "gemma", [9.0, 12.0, 14.0])
    keep_probe(tmp_path, "small", [3.0, 4.0])

    done = labctl(tmp_path, "results", "--json")
    assert done.returncode == 0, done.stderr
    runs = json.loads(done.stdout)["runs"]
    assert [(r["vm_name"], r["eval_tps"]) for r in runs] == [
        ("gemma", 12.0),
        ("gemma", 14.0),
        ("small", 4.0),
    ]

    done = labctl(tmp_path, "results", "--vm", "small", "--csv")
    rows = list(csv.DictReader(io.StringIO(done.stdout)))
    assert done.returncode == 0 and len(rows) == 1
    assert rows[0]["vm_name"] == "small" and rows[0]["cores"] == "2"
    assert rows[0]["eval_tps"] == "4.0" and rows[0]["prompt_tps"] == ""  # not reported

    done = labctl(tmp_path, "results", "--vm", "gemma", "--all")
    assert done.returncode == 0 and "gemma" in done.stdout and "9.00" in done.stdout


def test_results_without_runs_says_how_to_get_some(tmp_path: Path) -> None:
    done = labctl(tmp_path, "results", "--vm", "nothing")

    assert done.returncode == 0 and done.stdout == ""
    assert "no probe runs kept for VM nothing yet: run `labctl probe NAME`" in done.stderr


def test_results_refuses_json_and_csv_together(tmp_path: Path) -> None:
    done = labctl(tmp_path, "results", "--json", "--csv")
    assert done.returncode == 2 and "choose one of --json and --csv" in done.stderr


def test_probe_of_an_unknown_vm_is_a_proxmox_error(api_lab: Lab) -> None:
    done = api_lab.run("probe", "ghost")

    assert done.code == 4, done
    assert "error: no VM named ghost" in done.stderr and "Traceback" not in done.stderr


def test_probe_rejects_bad_numbers_and_unreadable_prompt_files(api_lab: Lab) -> None:
    done = api_lab.run("probe", "ghost", "--runs", "0")
    assert done.code == 2 and "--runs" in done.stderr

    done = api_lab.run("probe", "ghost", "--prompt-file", "/nonexistent/prompt.txt")
    assert done.code == 2, done
    assert done.stderr.startswith("error: cannot read --prompt-file /nonexistent/prompt.txt")


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (("--runs", "soon"), "error: --runs must be a whole number or \"auto\", got 'soon'"),
        (("--runs", "1001"), "error: --runs must be 1-1000 (or auto), got 1001"),
    ],
)
def test_probe_refuses_runs_that_are_neither_a_count_nor_auto(
    api_lab: Lab, args: tuple[str, ...], said: str
) -> None:
    done = api_lab.run("probe", "ghost", *args)
    assert done.code == 2, done
    assert said in done.stderr and "Traceback" not in done.stderr
    assert done.stderr.count("\n") == 1  # one line


def test_lab_file_runs_must_be_a_count_or_auto(api_lab: Lab) -> None:
    api_lab.write(probe={"runs": "often"})
    done = api_lab.run("probe", "ghost")
    assert done.code == 3, done
    assert 'probe.runs must be a whole number or "auto", got the string "often"' in done.stderr
