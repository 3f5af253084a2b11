"""labctl's whole story through the real CLI on shape-limited simulator guests:
up (deploy) -> probe -> results -> resize (2 cores vs 1) -> OOM -> sweep (SIGKILLed and resumed;
smart vs grid) -> report -> sweep stopped by Ctrl-C -> down, nothing left behind.

Real: the `labctl` process, HTTPS + proxmoxer to the simulator, a systemd-nspawn guest whose
cgroups give it the VM's cores (capped at this host's CPUs) and its real RAM, OpenSSH in the
guest, Ansible installing the Ollama TEST DOUBLE from a local mirror, the double starting the
REAL llama.cpp llama-server on a GGUF model with gemma2:2b's architecture and size (random
weights: speed and memory are real, the text is not), the kernel OOM-killing it in a VM too
small for it, SQLite.

The tests share one VM (tests/e2e/conftest.py) and run in file order; each puts the VM in the
shape it needs first. Figures that matter are printed (pytest -s) for digging.
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
import re
import resource
import signal
import sqlite3
import statistics
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Self

import pytest

from provision.errors import ExitCode
from provision.store import RESULT_COLUMNS
from tests.support.e2e_lab import BRIDGE, MODEL_BYTES, PREFIX, VM, E2eLab
from tests.support.guests import system_ssh
from tests.support.lab import CliResult, Lab

pytestmark = [pytest.mark.e2e, pytest.mark.guests, pytest.mark.slow]

MIB = 1 << 20
MEM_SCALE = 1.0  # the VM's real RAM: llama-server needs ~2.0 GiB for this model
HOST_CPUS = len(os.sched_getaffinity(0))
# E2E_KEEP_OUTPUTS=FILE appends the probe table and the sweep output of the run (for the README)
OUTPUTS = os.environ.get("E2E_KEEP_OUTPUTS", "")
SPEEDUP = 1.3  # 2 cores vs 1 must beat this; llama.cpp gives ~1.7x eval tok/s on idle CPUs
QUIET_CPUS = 0.3  # other jobs using less than this on average: the host counts as quiet
PROBE = ("--warmup", "1", "--runs", "3", "--num-predict", "8")
SWEEP = (
    "sweep",
    VM,
    "--cores",
    "1,2",
    "--ram",
    "1G,2G,3G",
    "--min-tps",
    "3",
    "--runs",
    "1",
    "--warmup",
    "0",
    "--num-predict",
    "8",
)


def ok(lab: Lab, *args: str, timeout: float = 300) -> CliResult:
    result = lab.run(*args, timeout=timeout)
    assert result.code == 0, result
    return result


def shape_of(lab: Lab) -> tuple[int, int]:
    [vm] = [v for v in ok(lab, "--json", "ls").json["vms"] if v["name"] == VM]
    assert vm["status"] == "running" and not vm["pending"], vm
    return vm["cores"], vm["memory_mib"]


def put_in_shape(lab: Lab, cores: int, ram: str) -> None:
    """`labctl resize --reboot` to this shape (nothing happens when the VM has it already)."""
    before = shape_of(lab)
    resized = ok(lab, "--json", "resize", VM, "--cores", str(cores), "--ram", ram, "--reboot").json
    after = (cores, int(ram[:-1]) * 1024)
    assert resized["rebooted"] is (before != after), resized
    assert shape_of(lab) == after


def keep_output(title: str, text: str) -> None:
    if not OUTPUTS:
        return
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())
    with open(OUTPUTS, "a") as fh:
        fh.write(f"==== {title} ({when} UTC)\n{text.rstrip()}\n\n")


@contextlib.contextmanager
def db(lab: Lab) -> Iterator[sqlite3.Connection]:
    """labctl's database, read-only, closed after use."""
    conn = sqlite3.connect(f"file:{lab.state / 'labctl.sqlite'}?mode=ro", uri=True)
    try:
        yield conn
    finally:
        conn.close()


@pytest.fixture(scope="session")
def up(e2e: E2eLab) -> CliResult:
    """`labctl up` once for the session: clone, boot, agent IP, pinned key, SSH, deploy."""
    result = e2e.cli.run("up", VM, "--cores", "2", "--ram", "3G", timeout=900)
    assert result.code == 0, result
    return result


@pytest.fixture
def lab(e2e: E2eLab, up: CliResult) -> Lab:
    return e2e.cli


def test_up_deploys_and_probe_measures_real_numbers_that_results_keeps(
    e2e: E2eLab, up: CliResult, lab: Lab
) -> None:
    deployed = re.search(r"deploy finished in [\d.]+s \(e2e ok=\d+ changed=(\d+)\)", up.stderr)
    assert deployed and int(deployed[1]) > 0, up.stderr[-2000:]

    probe = ok(lab, "probe", VM, *PROBE, "--json").json

    summary = probe["summary"]
    assert summary["eval_tps"]["n"] == 3 and summary["eval_tps"]["median"] > 0
    assert 0 < summary["ttft_s"]["median"] < 30
    facts = probe["facts"]
    assert facts["vcpus"] == min(2, HOST_CPUS)  # the VM's cores, capped at this host's CPUs
    assert facts["mem_total_bytes"] == int(3072 * MIB * MEM_SCALE)  # lxcfs shows the limit
    assert facts["model"]["name"] == "gemma2:2b" and facts["model"]["size_bytes"] >= MODEL_BYTES
    assert facts["on_cpu"] is True and facts["ollama_version"]
    # Ollama loads the weights into RAM on CPU (mmap off), plus KV cache: all of it fits
    assert MODEL_BYTES < summary["peak_rss"]["max"] < facts["mem_total_bytes"]
    assert summary["peak_rss"]["max"] <= summary["peak_mem_used"]["max"] < facts["mem_total_bytes"]
    measured = [r for r in probe["runs"] if not r["warmup"]]
    assert len(measured) == 3 and all(r["ok"] for r in measured)
    for run in measured:
        assert run["sample_hz"] >= 5 and run["samples"] >= 2, run
        ollama = run["ollama"]
        assert run["eval_tps"] == pytest.approx(
            ollama["eval_count"] / (ollama["eval_duration_ns"] / 1e9), rel=0.01
        )
    assert probe["sampler"]["min_sample_hz"] >= 5
    print(
        f"\n2 vCPU probe: eval {summary['eval_tps']['median']:.2f} tok/s, "
        f"TTFT {summary['ttft_s']['median']:.3f} s, "
        f"peak RSS {summary['peak_rss']['max'] / MIB:.0f} MiB "
        f"of {facts['mem_total_bytes'] / MIB:.0f} MiB, "
        f"sampling >= {probe['sampler']['min_sample_hz']:.1f} Hz"
    )

    kept = [
        r
        for r in ok(lab, "results", "--vm", VM, "--json").json["runs"]
        if r["probe_id"] == probe["probe_id"]
    ]
    assert [r["eval_tps"] for r in kept] == pytest.approx([r["eval_tps"] for r in measured])
    assert {(r["cores"], r["memory_mib"], bool(r["ok"])) for r in kept} == {(2, 3072, True)}
    rows = list(csv.DictReader(io.StringIO(ok(lab, "results", "--csv").stdout)))
    assert rows and list(rows[0]) == list(RESULT_COLUMNS)
    mine = [r for r in rows if r["probe_id"] == str(probe["probe_id"])]
    assert [float(r["eval_tps"]) for r in mine] == pytest.approx([r["eval_tps"] for r in measured])


class NeighbourCpu:
    """CPUs that jobs other than this test (and its guest) used on the host while it measured.

    Host busy time (/proc/stat, steal included: time the hypervisor took) minus the guests'
    cgroup, this process (simulator, mirror) and the labctl processes it waited for.
    """

    def __enter__(self) -> Self:
        self.start = self._now()
        return self

    def __exit__(self, *exc: object) -> None:
        end = self._now()
        wall, busy, guests, ours = (b - a for a, b in zip(self.start, end, strict=True))
        self.cpus = max(0.0, (busy - guests - ours) / wall)

    @staticmethod
    def _now() -> tuple[float, float, float, float]:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
        user, nice, system, _idle, _iowait, irq, softirq, steal = fields
        busy = (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")
        guests = int(Path(f"/sys/fs/cgroup/cpuacct/{PREFIX}/cpuacct.usage").read_text()) / 1e9
        ours = sum(
            u.ru_utime + u.ru_stime
            for u in (
                resource.getrusage(resource.RUSAGE_SELF),
                resource.getrusage(resource.RUSAGE_CHILDREN),
            )
        )
        return time.monotonic(), busy, guests, ours


def _median_eval_tps(lab: Lab, cores: int, *, keep_table: bool = False) -> tuple[float, float]:
    """Resize (reboot) to `cores`, probe with 2 threads whatever the cores: (median eval tok/s,
    CPUs the neighbours used meanwhile)."""
    put_in_shape(lab, cores, "3G")
    if not keep_table:
        with NeighbourCpu() as neighbours:
            probe = ok(lab, "probe", VM, *PROBE, "--num-thread", "2", "--json").json
        assert probe["facts"]["vcpus"] == min(cores, HOST_CPUS)
        return float(probe["summary"]["eval_tps"]["median"]), neighbours.cpus
    with NeighbourCpu() as neighbours:
        table = ok(lab, "probe", VM, *PROBE, "--num-thread", "2").stdout  # what people read
    keep_output("labctl probe e2e --warmup 1 --runs 3 --num-predict 8 --num-thread 2", table)
    runs = ok(lab, "results", "--vm", VM, "--json").json["runs"]
    latest = max(r["probe_id"] for r in runs)
    kept = [r["eval_tps"] for r in runs if r["probe_id"] == latest]
    assert len(kept) == 3 and min(kept) > 0
    median = statistics.median(kept)
    assert re.search(rf"│ eval tok/s\s+│\s+{median:.2f} │", table), table  # table = database
    assert f"e2e 2 vCPU / 3 GiB (cpu=host): {min(cores, HOST_CPUS)} vCPU" in table, table
    return median, neighbours.cpus


def test_a_two_core_vm_runs_the_model_measurably_faster_than_a_one_core_vm(lab: Lab) -> None:
    # Other jobs on this 2-core host (other test suites, the hypervisor's steal) can take a CPU
    # from the 2-core guest; then 2 cores are really no faster. Each pair is judged only when the
    # host was quiet while it was measured; a busy pair is measured again (at most 4 pairs) and
    # the test is skipped, with the figures, when the host never was quiet. A quiet pair that
    # misses fails at once: cores that do not count (no cpuset, threads serialised) miss always.
    order, pairs = [2, 1], []
    for attempt in range(4):
        measured = {c: _median_eval_tps(lab, c, keep_table=attempt == 0 and c == 2) for c in order}
        two, one = measured[2][0], measured[1][0]
        busy = max(measured[2][1], measured[1][1])
        pairs.append(
            f"2 vCPU {two:.2f} vs 1 vCPU {one:.2f} tok/s = {two / one:.2f}x "
            f"(neighbours used {busy:.2f} CPUs)"
        )
        print(f"\neval tok/s medians (2 threads): {pairs[-1]}")
        if two > SPEEDUP * one:
            return
        assert busy > QUIET_CPUS, f"a quiet host, yet 2 cores are not {SPEEDUP}x 1 core: {pairs}"
        order.reverse()  # start from the shape the VM is in: one reboot fewer
    pytest.skip(f"host too busy to compare cores (other jobs took a CPU): {pairs}")


def test_a_vm_too_small_for_the_model_has_its_runner_oom_killed_exit_9(
    e2e: E2eLab, lab: Lab
) -> None:
    # 1 GiB: the server fits, llama-server's 1.5 GiB of weights + KV do not. No more cores than
    # this host has: a guest that sees fewer than its VM's is an invalid point, not an OOM.
    cores = min(2, HOST_CPUS)
    put_in_shape(lab, cores, "1G")
    vmid = lab.vm_named(VM)["vmid"]  # type: ignore[index]
    kills_before = e2e.backend.oom_kills(vmid)

    result = lab.run("probe", VM, "--warmup", "0", "--runs", "1", "--num-predict", "8")

    assert result.code == ExitCode.MODEL_DOES_NOT_FIT, result
    error = result.stderr.strip().splitlines()[-1]
    assert error.startswith("error: model does not fit in RAM"), result.stderr
    assert "labctl resize e2e --ram" in error and "Traceback" not in result.stderr
    assert f"probe: {cores} vCPU, 1.0 GiB RAM" in result.stderr  # the guest's facts
    assert e2e.backend.oom_kills(vmid) > kills_before  # the kernel really killed it
    runs = ok(lab, "results", "--vm", VM, "--json").json["runs"]
    assert runs[-1]["memory_mib"] == 1024 and runs[-1]["oom"] and not runs[-1]["ok"]
    put_in_shape(lab, 2, "3G")


def _points(lab: Lab) -> int:
    try:
        with db(lab) as conn:
            return int(conn.execute("SELECT COUNT(*) FROM sweep_points").fetchone()[0])
    except sqlite3.OperationalError:  # not created yet
        return 0


def _wait_for_first_point(lab: Lab, child: Any, timeout_s: float = 180) -> None:
    """Until the sweep running in `child` has committed a measured shape."""
    before = _points(lab)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert child.poll() is None, f"the sweep ended before it was stopped: {child.stderr.read()}"
        try:
            with db(lab) as conn:
                if conn.execute("SELECT COUNT(*) FROM sweep_points").fetchone()[0] > before:
                    return
        except sqlite3.OperationalError:  # not created yet
            pass
        time.sleep(0.1)
    raise AssertionError("the sweep recorded no point in time")


def test_sweep_finds_the_minimum_survives_sigkill_and_agrees_with_grid(lab: Lab) -> None:
    put_in_shape(lab, 2, "3G")
    with db(lab) as conn:
        last_probe = conn.execute("SELECT COALESCE(MAX(id), 0) FROM probes").fetchone()[0]

    child = lab.start(*SWEEP, "--json")
    try:
        _wait_for_first_point(lab, child)
        # a second controller (its own state dir, as on another machine) is refused: the
        # running sweep holds the VM's lease in its Notes
        second = lab.run(*SWEEP, "--json", state=lab.dir / "second-controller")
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.communicate()
    assert second.code == ExitCode.PROXMOX, second
    assert f"{VM} is held by `labctl sweep {VM}` on " in second.stderr, second.stderr
    with db(lab) as conn:
        [(sweep_id, status)] = conn.execute("SELECT id, status FROM sweeps").fetchall()
        killed = conn.execute("SELECT cores, memory_mib FROM sweep_points").fetchall()
    assert status == "running"  # nobody got to say otherwise

    resumed = lab.run(*SWEEP, "--json", timeout=600)
    assert resumed.code == 0, resumed
    document = resumed.json
    assert document["sweep"]["id"] == sweep_id and document["sweep"]["status"] == "done"
    assert f"resuming, {len(killed)} shapes already measured" in resumed.stderr
    # the killed sweep's lease is taken over at once: its process is gone from this machine
    assert "that process is gone from this machine" in resumed.stderr, resumed.stderr
    with db(lab) as conn:
        probed = conn.execute(
            "SELECT cores, memory_mib, status FROM probes WHERE id > ?", (last_probe,)
        ).fetchall()
    for shape in killed:  # measured before the kill, never probed again
        assert [p[:2] for p in probed].count(shape) == 1, (shape, probed)

    assert document["minimum"]["cores"] == 1 and document["minimum"]["memory_mib"] == 3072
    assert document["recommendation"].startswith("Minimum: 1 vCPU / 3 GiB")
    small = [p for p in document["points"] if p["memory_mib"] < 3072]
    assert small and not any(p["feasible"] for p in small)
    assert any(p["state"] == "oom" for p in small), small
    assert ("1", "2048", "oom") in {tuple(map(str, p)) for p in probed}  # a real OOM, recorded
    assert shape_of(lab) == (2, 3072)  # put back
    report = Path(document["report_files"][0])
    assert report.is_file() and "data:image/png;base64," in report.read_text()

    again = ok(lab, "report", sweep_id, "--json").json
    assert again["minimum"] == document["minimum"] and again["points"] == document["points"]
    html = lab.state / "again.html"
    ok(lab, "report", sweep_id, "--html", "--out", str(html))
    assert "Minimum: 1 vCPU / 3 GiB" in html.read_text()

    grid = ok(lab, *SWEEP, "--strategy", "grid", "--fresh", timeout=600)  # the output people read
    keep_output(
        "labctl sweep e2e --cores 1,2 --ram 1G,2G,3G --min-tps 3 --runs 1 --warmup 0 "
        "--num-predict 8 --strategy grid --fresh",
        grid.stdout + grid.stderr,
    )
    grid_id = Path(grid.stderr.split("report: ")[1].split()[0]).parent.name
    assert grid_id != sweep_id
    grid_document = ok(lab, "report", grid_id, "--json").json
    assert grid_document["minimum"] == {**grid_document["minimum"], "cores": 1, "memory_mib": 3072}
    smart_probes, grid_probes = document["stats"]["probes"], grid_document["stats"]["probes"]
    print(
        "\nsmart sweep points: "
        + ", ".join(f"{p['cores']}c/{p['memory_mib']}M {p['state']}" for p in document["points"])
    )
    print(
        f"smart: {smart_probes} probes, grid: {grid_probes} probes; "
        f"smart {document['recommendation']}; grid {grid_document['recommendation']}"
    )
    assert grid_probes == 6 and smart_probes < grid_probes
    assert shape_of(lab) == (2, 3072)


def test_ctrl_c_stops_a_sweep_and_puts_the_vm_back(lab: Lab) -> None:
    put_in_shape(lab, 2, "3G")
    # another sweep (another target), one the VM's own shape meets even on a busy host, so the
    # search goes on to smaller shapes and is still running when Ctrl-C comes
    other_target = ["1" if arg == "3" else arg for arg in SWEEP]
    child = lab.start(*other_target)
    try:
        _wait_for_first_point(lab, child)
        child.send_signal(signal.SIGINT)  # what Ctrl-C sends
        _, stderr = child.communicate(timeout=180)
    finally:
        if child.poll() is None:
            child.kill()
            child.communicate()
    assert child.returncode == ExitCode.INTERRUPTED, stderr
    assert "interrupted; run the same command again to resume it" in stderr, stderr
    assert "Traceback" not in stderr
    with db(lab) as conn:
        statuses = conn.execute("SELECT status FROM sweeps ORDER BY rowid").fetchall()
    assert statuses[-1] == ("interrupted",), statuses
    assert shape_of(lab) == (2, 3072)  # put back on the way out


def guest_shell(lab: Lab, command: str) -> str:
    """Run a command in the VM over the system's ssh, with labctl's key and pinned host keys."""
    [vm] = [v for v in ok(lab, "--json", "ls").json["vms"] if v["name"] == VM]
    done = subprocess.run(
        system_ssh(lab.key, lab.state / "known_hosts", f"labctl@{vm['ip']}", command),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done
    return done.stdout


def test_ollama_stopped_and_model_gone_probe_says_deploy_and_deploy_fixes_it(lab: Lab) -> None:
    guest_shell(lab, "ollama rm gemma2:2b && sudo systemctl stop ollama")

    broken = lab.run("probe", VM, "--warmup", "0", "--runs", "1", "--num-predict", "8")
    assert broken.code == ExitCode.PROBE, broken
    assert "Ollama is not running on e2e" in broken.stderr and "labctl deploy e2e" in broken.stderr
    assert "Traceback" not in broken.stderr

    ok(lab, "deploy", VM, timeout=600)
    assert "gemma2:2b" in guest_shell(lab, "ollama list")
    fixed = ok(lab, "probe", VM, "--warmup", "0", "--runs", "1", "--num-predict", "8", "--json")
    assert fixed.json["summary"]["eval_tps"]["median"] > 0


def _host_leftovers(work: Path) -> list[str]:
    """What a guest backend could leave on the host (as tests/sim_guests checks it)."""
    found = [
        f"cgroup {h}"
        for h in os.listdir("/sys/fs/cgroup")
        if os.path.exists(f"/sys/fs/cgroup/{h}/{PREFIX}")
    ]
    if Path("/run/netns").is_dir():
        found += [f"netns {n}" for n in os.listdir("/run/netns") if n.startswith(f"{PREFIX}-")]
    found += [
        f"link {n}"
        for n in os.listdir("/sys/class/net")
        if n == BRIDGE or n.startswith(f"{PREFIX}v")
    ]
    with open("/proc/self/mountinfo") as fh:
        found += [f"mount {line.split()[4]}" for line in fh if str(work) in line.split()[4]]
    return found


def test_down_removes_the_vm_and_nothing_is_left_behind(e2e: E2eLab, lab: Lab) -> None:
    vmid = lab.vm_named(VM)["vmid"]  # type: ignore[index]
    ok(lab, "down", VM, "--yes")
    assert lab.vm_named(VM) is None and ok(lab, "--json", "ls").json["vms"] == []
    assert not (Path("/run/netns") / f"{PREFIX}-{vmid}").exists()
    assert e2e.backend.cgroups.pids(PREFIX) == set()  # no guest process survives
    inventory = lab.state / "inventory" / "labctl.yml"
    assert not inventory.exists() or "e2e" not in inventory.read_text()
    e2e.close()
    assert _host_leftovers(lab.dir) == []
