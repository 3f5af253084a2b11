"""`labctl probe --concurrency` and `--num-thread` through the real CLI on a simulator guest.

Real: the labctl process, a systemd-nspawn guest with the VM's cores and RAM, OpenSSH, the
Ollama TEST DOUBLE deployed by the Ansible role as a systemd service, the REAL llama-server it
starts (a GGUF file of gemma2:2b's size), sudo and systemd in the guest for OLLAMA_NUM_PARALLEL.
"""

from __future__ import annotations

import csv
import io
import signal
import sqlite3
import subprocess
import time
from collections.abc import Iterator

import pytest

from provision.errors import ExitCode
from provision.store import LEVEL_COLUMNS
from tests.support.e2e_lab import E2eLab, guest_lab
from tests.support.guests import system_ssh
from tests.support.lab import CliResult, Lab

pytestmark = [pytest.mark.guests, pytest.mark.slow]

VM = "lv"
BRIDGE, SUBNET, PREFIX = "lvbr93", "10.213.93.0/24", "lv93"
DROPIN = "/etc/systemd/system/ollama.service.d/zz-labctl-probe.conf"


@pytest.fixture(scope="module")
def levels_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[E2eLab]:
    with guest_lab(
        tmp_path_factory.mktemp("levels"), bridge=BRIDGE, subnet=SUBNET, prefix=PREFIX, vms=(VM,)
    ) as lab:
        ok(lab.cli, "up", VM, "--cores", "2", "--ram", "3G")
        yield lab


def ok(lab: Lab, *args: str) -> CliResult:
    result = lab.run(*args, timeout=900)
    assert result.code == 0, result
    return result


def in_guest(lab: Lab, command: str) -> str:
    [ip] = [v["ip"] for v in ok(lab, "--json", "ls").json["vms"] if v["name"] == VM]
    done = subprocess.run(
        system_ssh(lab.key, lab.state / "known_hosts", f"labctl@{ip}", command),
        capture_output=True,
        timeout=60,
        check=False,
    )
    return done.stdout.decode().strip()


def test_concurrency_levels_run_with_enough_slots_and_put_the_service_back(
    levels_lab: E2eLab,
) -> None:
    lab = levels_lab.cli
    before = in_guest(lab, "systemctl show -p Environment --value ollama")

    probe = ok(
        lab, "probe", VM, "--concurrency", "1,2", "--runs", "1", "--num-predict", "8", "--json"
    )

    document = probe.json
    assert document["num_parallel"] == 2 and "OLLAMA_NUM_PARALLEL 1 -> 2" in probe.stderr
    levels = document["levels"]
    assert [(lv["users"], lv["completed"], lv["failed"]) for lv in levels] == [(1, 1, 0), (2, 2, 0)]
    for level in levels:
        assert level["aggregate_tps"] > 0 and level["ttft_p95_s"] >= level["ttft_p50_s"] > 0
        assert level["itl_p50_s"] > 0 and level["queue_wait_p50_s"] is not None
    [load] = document["thread_loads"]
    assert load["ok"] and load["runners"][0]["argv_parallel"] == 2
    assert document["facts"]["topology"]["processors"] == 2
    # put back: our drop-in gone, the service's environment as the role left it
    assert in_guest(lab, f"test -e {DROPIN} && echo left || echo gone") == "gone"
    assert in_guest(lab, "systemctl show -p Environment --value ollama") == before
    table = ok(lab, "results", "--levels", "--csv").stdout
    rows = list(csv.DictReader(io.StringIO(table)))
    assert list(rows[0]) == list(LEVEL_COLUMNS) and [r["users"] for r in rows] == ["1", "2"]


def levels_kept(lab: Lab) -> int:
    try:
        with sqlite3.connect(lab.state / "labctl.sqlite") as db:
            return int(db.execute("SELECT COUNT(*) FROM probe_levels").fetchone()[0])
    except sqlite3.OperationalError:  # not created yet
        return 0


def test_ctrl_c_during_the_levels_keeps_those_measured_and_puts_the_service_back(
    levels_lab: E2eLab,
) -> None:
    lab = levels_lab.cli
    before_env = in_guest(lab, "systemctl show -p Environment --value ollama")
    before = levels_kept(lab)
    child = lab.start("probe", VM, "--concurrency", "1,2", "--runs", "3", "--num-predict", "48")
    try:
        deadline = time.monotonic() + 300
        while levels_kept(lab) == before and time.monotonic() < deadline:
            assert child.poll() is None, child.communicate()
            time.sleep(0.1)
        child.send_signal(signal.SIGINT)  # what Ctrl-C sends
        _, stderr = child.communicate(timeout=300)
    finally:
        if child.poll() is None:
            child.kill()
            child.communicate()

    assert child.returncode == ExitCode.INTERRUPTED, stderr
    assert "putting OLLAMA_NUM_PARALLEL back" in stderr and "Traceback" not in stderr
    assert in_guest(lab, f"test -e {DROPIN} && echo left || echo gone") == "gone"
    assert in_guest(lab, "systemctl show -p Environment --value ollama") == before_env
    with sqlite3.connect(lab.state / "labctl.sqlite") as db:
        status = db.execute("SELECT status FROM probes ORDER BY id DESC LIMIT 1").fetchone()[0]
    assert status == "failed" and levels_kept(lab) > before  # what was measured is kept


def test_thread_counts_are_loaded_apart_and_the_runner_runs_with_them(
    levels_lab: E2eLab,
) -> None:
    lab = levels_lab.cli
    probe = ok(
        lab, "probe", VM, "--num-thread", "auto,1,3", "--runs", "1", "--num-predict", "4", "--json"
    )

    loads = probe.json["thread_loads"]
    assert [load["num_thread"] for load in loads] == [None, 1, 3]
    assert [load["runners"][0]["argv_threads"] for load in loads] == [None, 1, 3]
    assert all(load["load_s"] > 0 for load in loads)  # each change reloads, counted apart
    assert [(lv["num_thread"], lv["users"]) for lv in probe.json["levels"]] == [
        (None, 1),
        (1, 1),
        (3, 1),
    ]
    assert "computes on 3 threads but the guest has 2 vCPU(s)" in probe.stderr


def test_a_guest_not_seeing_its_ram_is_an_invalid_point_not_a_measurement(
    levels_lab: E2eLab,
) -> None:
    lab = levels_lab.cli
    vmid = next(v["vmid"] for v in ok(lab, "--json", "ls").json["vms"] if v["name"] == VM)
    # The guest's memory limit raised behind Proxmox's back: it sees 4 GiB, the VM has 3
    limit = levels_lab.backend.cgroups.path("memory", vmid) / "memory.limit_in_bytes"
    limit.write_text(str(4 << 30))
    try:
        result = lab.run("probe", VM, "--runs", "1", "--num-predict", "4", timeout=600)
    finally:
        limit.write_text(str(3 << 30))

    assert result.code == 7, result
    assert "does not see its shape (MemTotal is 4096 MiB, the VM has 3072 MiB" in result.stderr
    with sqlite3.connect(lab.state / "labctl.sqlite") as db:
        status, problem, runs = db.execute(
            "SELECT status, shape_problem, (SELECT count(*) FROM probe_runs r"
            " WHERE r.probe_id = p.id) FROM probes p ORDER BY id DESC LIMIT 1"
        ).fetchone()
    assert status == "invalid" and "MemTotal is 4096 MiB" in problem and runs == 0
