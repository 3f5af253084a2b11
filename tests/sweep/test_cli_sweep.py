"""`labctl sweep` / `labctl report` through the real CLI entry point.

The Proxmox side (AppContext.lab) and the per-VM workers and clones (SweepSession.make_worker,
make_clones) are replaced by the fake VM and table prober of the loop tests, so these tests
check the command line: parsing, bad input refused before anything changes, report files, JSON,
exit codes, resume. The same commands run against the simulator's real guests in tests/e2e.
"""

from __future__ import annotations

import contextlib
import json
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from provision.cli import main
from provision.cli.app import AppContext
from provision.errors import ExitCode
from provision.shape import NodeCapacity, Shape
from provision.sweep.loop import Worker
from provision.sweep.session import SweepSession
from tests.support.sweep_fakes import FakeVm, TableProber
from tests.support.sweep_tables import gemma_table

G = 1024
LAB = """
[proxmox]
host = "127.0.0.1"
token_id = "root@pam!labctl"
fingerprint = "AA:BB"
"""


@dataclass
class FakeInfo:
    name: str
    shape: Shape
    node: str = "pve1"
    status: str = "running"


@dataclass
class FakeLab:
    vm: FakeVm
    node: NodeCapacity = field(default_factory=lambda: NodeCapacity("pve1", 16, 64 * G, 48 * G))
    finds: int = 0
    clones: set[str] = field(default_factory=set)  # VMs besides `vm` (parallel sweeps)
    downs: list[str] = field(default_factory=list)
    leased: list[str] = field(default_factory=list)  # VMs the sweep held the lease of

    def find(self, name: str) -> FakeInfo:
        self.finds += 1
        return FakeInfo(name, self.vm.shape)

    def node_capacity(self, node: str) -> NodeCapacity:
        return self.node

    def managed_names(self) -> list[str]:
        return sorted(self.clones | {self.vm.name})

    def down(self, name: str) -> None:
        self.downs.append(name)
        self.clones.discard(name)

    def lease(self, name: str, command: str, wait_s: float | None = None) -> Any:
        self.leased.append(name)
        return contextlib.nullcontext()


@dataclass
class Harness:
    tmp: Path
    vm: FakeVm
    probers: list[TableProber]
    lab: FakeLab
    rendezvous: threading.Barrier | None = None  # parallel workers: each probes once first
    interrupt_after: int | None = None  # the user presses Ctrl-C after this many probes

    def run(self, *args: str) -> tuple[int, str, str]:
        raise NotImplementedError  # replaced by the fixture


@pytest.fixture()
def labctl(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Any:
    config = tmp_path / "labctl.toml"
    config.write_text(LAB)
    config.chmod(0o600)
    vm = FakeVm(shape=Shape(12, 32 * G, "host"))
    lab = FakeLab(vm)
    probers: list[TableProber] = []

    def fake_worker(session: Any, name: str, *rest: Any) -> Worker:
        worker_vm = vm if name == "gemma" else FakeVm(name=name, shape=vm.shape)
        prober = TableProber(
            worker_vm,
            gemma_table(),
            rendezvous=harness.rendezvous,
            interrupt_after=harness.interrupt_after,
        )
        probers.append(prober)
        return Worker(worker_vm, prober)

    monkeypatch.setattr(AppContext, "lab", lambda app: lab)
    monkeypatch.setattr(SweepSession, "make_worker", fake_worker)
    monkeypatch.setattr(
        SweepSession,
        "make_clones",
        lambda session, info, plan: [f"{info.name}-{i}" for i in range(2, session.parallel + 1)],
    )

    def run(*args: str) -> tuple[int, str, str]:
        code = main(["--config", str(config), "--state-dir", str(tmp_path / "state"), *args])
        out, err = capsys.readouterr()
        return code, out, err

    harness = Harness(tmp_path, vm, probers, lab)
    harness.run = run  # type: ignore[method-assign]
    return harness


SWEEP = (
    "sweep",
    "gemma",
    "--cores",
    "1,2,4,8,12",
    "--ram",
    "2G,4G,8G,16G,32G",
    "--cpu-type",
    "host,x86-64-v2-AES",
)


def test_sweep_prints_the_table_and_the_minimum_and_writes_an_html_report(labctl: Any) -> None:
    code, out, err = labctl.run(*SWEEP, "--min-tps", "10")
    assert code == 0, err
    assert "Minimum: 4 vCPU / 4 GiB (cpu=host): 10.4 tok/s" in out
    assert "<- minimum" in out
    report = Path(err.split("report: ")[1].split()[0])
    assert report.suffix == ".html" and report.is_file()
    html = report.read_text()
    assert "data:image/png;base64," in html and "Minimum: 4 vCPU / 4 GiB" in html
    assert labctl.vm.shape == Shape(12, 32 * G, "host")  # restored


def test_json_is_one_document_with_the_minimum_and_every_point(labctl: Any) -> None:
    code, out, _ = labctl.run(*SWEEP, "--min-tps", "10", "--json")
    assert code == 0
    document = json.loads(out)
    assert document["minimum"]["cores"] == 4 and document["minimum"]["memory_mib"] == 4 * G
    assert document["stats"]["probes"] * 2 <= document["stats"]["shapes"]
    assert {p["state"] for p in document["points"]} >= {"meets", "misses", "oom"}


def test_rerunning_the_same_sweep_probes_nothing_and_report_regenerates_it(labctl: Any) -> None:
    code, out, _ = labctl.run(*SWEEP, "--min-tps", "10", "--json")
    first = json.loads(out)
    code, out, _ = labctl.run(*SWEEP, "--min-tps", "10", "--json")
    assert code == 0
    assert labctl.probers[-1].probed == []
    sweep_id = json.loads(out)["sweep"]["id"]
    assert sweep_id == first["sweep"]["id"]

    code, out, _ = labctl.run("report", sweep_id[:4], "--csv")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].startswith("cores,memory_mib,cpu_type,state")
    assert any(line.startswith("4,4096,host,meets,True,True") for line in lines)

    code, out, _ = labctl.run("report", sweep_id, "--md", "--out", str(labctl.tmp / "r.md"))
    assert code == 0
    assert (labctl.tmp / "r.md").read_text().count("![eval tok/s by vCPUs](r.png)") == 1
    assert (labctl.tmp / "r.png").read_bytes().startswith(b"\x89PNG")

    code, out, _ = labctl.run("report", sweep_id)
    assert code == 0 and "Minimum: 4 vCPU / 4 GiB" in out

    code, out, _ = labctl.run("report", "--list")
    assert sweep_id in out


def test_no_shape_meets_the_target_exit_8_and_the_report_shows_the_best_seen(labctl: Any) -> None:
    code, out, err = labctl.run(*SWEEP, "--min-tps", "40")
    assert code == ExitCode.SWEEP
    assert "No shape meets every target (eval >= 40 tok/s). Best seen: 12 vCPU / 32 GiB" in out
    assert err.strip().splitlines()[-1].startswith("error: No shape meets every target")


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (("--cores", "", "--ram", "4G"), "invalid core list"),
        (("--cores", "1,,2", "--ram", "4G"), "invalid core list"),
        (("--cores", "4-2", "--ram", "4G"), "invalid core range"),
        (("--cores", "2", "--ram", "4X"), "unknown unit"),
        (("--cores", "2", "--ram", "4G", "--cpu-type", "host,"), "invalid cpu type list"),
        (("--cores", "2", "--ram", "4G", "--min-tps", "fast"), "invalid --min-tps"),
        (("--cores", "2", "--ram", "4G", "--min-tps", "-3"), "positive"),
        (("--cores", "2", "--ram", "4G", "--max-ttft", "2 minutes"), "invalid duration"),
        (("--cores", "2", "--ram", "4G", "--min-free-mem", "100%"), "cannot be met"),
        (("--cores", "2", "--ram", "4G,8G", "--min-free-mem", "8G"), "cannot be met"),
        (("--cores", "2,32", "--ram", "4G"), "32 cores is more than node pve1 has"),
        (("--cores", "2", "--ram", "4G,128G"), "RAM is more than node pve1 has free"),
        (("--cores", "2", "--ram", "4G", "--users", "0", "--max-ttft-p95", "2s"), "1-64, got 0"),
        (("--cores", "2", "--ram", "4G", "--users", "-1", "--max-ttft-p95", "2s"), "got -1"),
        (("--cores", "2", "--ram", "4G", "--users", "3", "--max-ttft-p95", "fast"), "'fast'"),
        (("--cores", "2", "--ram", "4G", "--users", "3"), "--users N needs a target"),
        (("--cores", "2", "--ram", "4G", "--min-tps-per-user", "5"), "need --users N"),
        (("--cores", "2", "--ram", "4G", "--min-tps", "1", "--runs", "soon"), "'soon'"),
        (("--cores", "2", "--ram", "4G", "--min-tps", "1", "--num-thread", "0"), "at least 1"),
        (("--cores", "1,2", "--ram", "4G", "--min-tps", "1", "--num-thread", "auto,9"), "(8)"),
        (
            (
                "--cores",
                "2",
                "--ram",
                "4G",
                "--users",
                "2",
                "--max-ttft-p95",
                "2s",
                "--runs",
                "auto",
            ),
            "--runs auto is not for it",
        ),
    ],
)
def test_bad_input_is_one_line_exit_2_and_changes_nothing(
    labctl: Any, args: tuple[str, ...], fragment: str
) -> None:
    code, out, err = labctl.run("sweep", "gemma", *args)
    assert code == ExitCode.USAGE and out == ""
    assert fragment in err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert labctl.vm.history == [] and labctl.probers == []


@pytest.mark.parametrize("parallel", [(), ("--parallel", "1")])
def test_keep_clones_without_a_parallel_sweep_is_exit_2_before_proxmox_is_asked(
    labctl: Any, parallel: tuple[str, ...]
) -> None:
    code, out, err = labctl.run(*SWEEP, "--min-tps", "10", "--keep-clones", *parallel)
    assert code == ExitCode.USAGE and out == ""
    assert err == (
        "error: --keep-clones needs --parallel N (N >= 2): only a parallel sweep "
        "makes clones to keep\n"
    )
    assert labctl.lab.finds == 0 and labctl.vm.history == [] and labctl.probers == []
    assert not (labctl.tmp / "state" / "labctl.sqlite").exists()  # no sweep recorded either


def test_unknown_sweep_id_is_exit_2(labctl: Any) -> None:
    code, _, err = labctl.run("report", "nosuch")
    assert code == ExitCode.USAGE and "no sweep 'nosuch'" in err


def test_parallel_splits_the_grid_between_the_vms_and_gives_the_same_answer(labctl: Any) -> None:
    labctl.rendezvous = threading.Barrier(3)
    code, out, err = labctl.run(
        *SWEEP, "--min-tps", "10", "--strategy", "grid", "--parallel", "3", "--json"
    )
    assert code == 0, err
    assert len(labctl.probers) == 3 and all(p.probed for p in labctl.probers)
    assert sum(len(p.probed) for p in labctl.probers) == 50
    assert json.loads(out)["minimum"]["cores"] == 4
    assert labctl.lab.leased == ["gemma", "gemma-2", "gemma-3"]  # each VM it resizes and probes


def test_ctrl_c_restores_the_vm_exits_130_and_the_rerun_resumes(labctl: Any) -> None:
    labctl.interrupt_after = 2
    code, out, err = labctl.run(*SWEEP, "--min-tps", "10")
    assert code == ExitCode.INTERRUPTED and out == ""
    assert "interrupted; run the same command again to resume it" in err
    assert labctl.vm.shape == Shape(12, 32 * G, "host")
    first = labctl.probers[-1].probed
    labctl.interrupt_after = None
    code, out, _ = labctl.run(*SWEEP, "--min-tps", "10", "--json")
    assert code == 0
    assert not set(labctl.probers[-1].probed) & set(first)
    assert json.loads(out)["minimum"]["cores"] == 4


def test_a_parallel_sweep_removes_the_clones_it_made_even_after_ctrl_c(
    labctl: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from provision.sweep import clones

    _clones_made_by_the_sweep(labctl, monkeypatch)
    labctl.interrupt_after = 2
    code, out, err = labctl.run(*SWEEP, "--min-tps", "10", "--parallel", "2")
    assert code == ExitCode.INTERRUPTED and out == "", err
    assert labctl.lab.downs == ["gemma-2"] and "clones removed: gemma-2" in err
    assert labctl.vm.shape == Shape(12, 32 * G, "host")

    labctl.interrupt_after = None
    code, _, err = labctl.run(*SWEEP, "--min-tps", "10", "--parallel", "2", "--keep-clones")
    assert code == 0, err
    assert labctl.lab.downs == ["gemma-2"] and "clones kept: gemma-2" in err
    assert clones.owned_clones(labctl.tmp / "state") == set()  # now the user's to remove


def _clones_made_by_the_sweep(labctl: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from provision.sweep import clones

    def made_by_the_sweep(session: Any, info: Any, plan: Any) -> list[str]:
        names = clones.clone_names(info.name, session.parallel)
        clones._set_owned(session.state_dir, set(names))  # as ensure_clones does before Lab.up
        labctl.lab.clones.update(names)
        return names

    monkeypatch.setattr(SweepSession, "make_clones", made_by_the_sweep)


def test_json_says_which_clones_were_removed(labctl: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    _clones_made_by_the_sweep(labctl, monkeypatch)
    code, out, err = labctl.run(*SWEEP, "--min-tps", "10", "--parallel", "3", "--json")
    assert code == 0, err
    assert json.loads(out)["clones"] == {
        "removed": ["gemma-2", "gemma-3"],
        "kept": [],
        "left": [],
        "user_vms": [],
    }
    assert labctl.lab.downs == ["gemma-2", "gemma-3"]


def test_json_says_which_clones_were_kept(labctl: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    _clones_made_by_the_sweep(labctl, monkeypatch)
    code, out, err = labctl.run(
        *SWEEP, "--min-tps", "10", "--parallel", "2", "--keep-clones", "--json"
    )
    assert code == 0, err
    assert json.loads(out)["clones"] == {
        "removed": [],
        "kept": ["gemma-2"],
        "left": [],
        "user_vms": [],
    }
    assert labctl.lab.downs == []


def test_json_names_clones_left_behind_and_vms_the_sweep_did_not_make(
    labctl: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from provision.errors import ProxmoxError
    from provision.sweep import clones

    def one_made_one_found(session: Any, info: Any, plan: Any) -> list[str]:
        clones._set_owned(session.state_dir, {"gemma-2"})  # gemma-3 was the user's already
        labctl.lab.clones.update({"gemma-2", "gemma-3"})
        return ["gemma-2", "gemma-3"]

    def down_fails(name: str) -> None:
        raise ProxmoxError(f"VM {name} is locked (backup)")

    monkeypatch.setattr(SweepSession, "make_clones", one_made_one_found)
    monkeypatch.setattr(labctl.lab, "down", down_fails)
    code, out, err = labctl.run(*SWEEP, "--min-tps", "10", "--parallel", "3", "--json")
    assert code == 0, err
    assert json.loads(out)["clones"] == {
        "removed": [],
        "kept": [],
        "left": ["gemma-2"],
        "user_vms": ["gemma-3"],
    }
    assert "could not remove gemma-2: VM gemma-2 is locked (backup)" in err


def test_json_of_a_sweep_on_one_vm_has_no_clones(labctl: Any) -> None:
    code, out, _ = labctl.run(*SWEEP, "--min-tps", "10", "--json")
    assert code == 0
    assert json.loads(out)["clones"] == {"removed": [], "kept": [], "left": [], "user_vms": []}
