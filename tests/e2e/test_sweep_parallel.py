"""`labctl sweep --parallel 2` through the real CLI on a two-node simulator with real guests.

The sweep clones the extra VM (NAME-2) with `Lab.up`, deploys the Ollama TEST DOUBLE on it from
the lab file's [deploy] (mirror included), and two workers pull the shapes from one queue. The
simulator's template lives on local storage of node `pve`, so the clone cannot go to `pve2`
(PVE: "can't clone VM to node ... (VM uses local storage)"): the sweep says so and puts it next
to NAME. Then: every shape is recorded, by both VMs; the minimum is the one a serial sweep finds;
NAME is back in its shape; the clone is removed; nothing is left on the host.

Own resources (not shared with tests/e2e/conftest.py): bridge lpbr80, 10.213.80.0/24, prefix lp80.
Sizes as in tests/e2e/conftest.py: real RAM, the gemma2:2b-shaped model on the real llama-server
fits "3G", not "2G" (llama-server allocates ~2.0 GiB with Ollama's CPU settings).
"""

from __future__ import annotations

import contextlib
import os
import re
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.e2e_lab import MODEL, E2eLab, guest_lab
from tests.support.lab import CliResult, Lab

pytestmark = [pytest.mark.e2e, pytest.mark.guests, pytest.mark.slow]

BRIDGE, SUBNET, PREFIX = "lpbr80", "10.213.80.0/24", "lp80"
VM, CLONE = "pw", "pw-2"
SWEEP = (
    "sweep",
    VM,
    "--cores",
    "1,2",
    "--ram",
    "2G,3G",
    "--min-tps",
    "1",
    "--runs",
    "1",
    "--warmup",
    "0",
    "--num-predict",
    "8",
)


@pytest.fixture(scope="module")
def parallel_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[E2eLab]:
    with guest_lab(
        tmp_path_factory.mktemp("e2e-parallel"),
        bridge=BRIDGE,
        subnet=SUBNET,
        prefix=PREFIX,
        nodes=2,
        vms=(CLONE, VM),
    ) as lab:
        yield lab


def ok(lab: Lab, *args: str, timeout: float = 300) -> CliResult:
    result = lab.run(*args, timeout=timeout)
    assert result.code == 0, result
    return result


def vms(lab: Lab) -> dict[str, tuple[int, int]]:
    return {v["name"]: (v["cores"], v["memory_mib"]) for v in ok(lab, "--json", "ls").json["vms"]}


@pytest.fixture(scope="module")
def lab(parallel_lab: E2eLab) -> Lab:
    ok(parallel_lab.cli, "up", VM, "--cores", "2", "--ram", "3G", timeout=900)
    return parallel_lab.cli


def test_parallel_sweep_splits_shapes_over_a_clone_finds_the_serial_minimum_and_removes_it(
    lab: Lab,
) -> None:
    result = ok(lab, *SWEEP, "--strategy", "grid", "--parallel", "2", "--json", timeout=900)
    document = result.json
    print("\n" + result.stderr)

    # The clone: asked on the other node, refused there like PVE, made next to the VM instead.
    assert f"clone {CLONE} on pve2 for the parallel sweep" in result.stderr
    assert "local storage" in result.stderr and f"creating it on pve next to {VM}" in result.stderr
    # Deployed like VM by the same playbook: Ollama and the model from the lab file's mirror.
    assert re.search(
        rf"deploy finished in [\d.]+s \({CLONE} ok=\d+ changed=\d+\)", result.stderr
    ), result.stderr
    with contextlib.closing(
        sqlite3.connect(f"file:{lab.state / 'labctl.sqlite'}?mode=ro", uri=True)
    ) as conn:
        points = conn.execute(
            "SELECT cores, memory_mib, status, worker FROM sweep_points WHERE sweep_id = ?",
            (document["sweep"]["id"],),
        ).fetchall()
        clone_probes = conn.execute(
            "SELECT model, status FROM probes WHERE vm_name = ?", (CLONE,)
        ).fetchall()
    assert clone_probes and all(m == MODEL for m, _ in clone_probes), clone_probes
    print(points)
    assert sorted((c, m) for c, m, _, _ in points) == [(1, 2048), (1, 3072), (2, 2048), (2, 3072)]
    assert {w for *_, w in points} == {VM, CLONE}  # both VMs pulled from the queue
    assert {(c, m): s for c, m, s, _ in points}[(1, 3072)] == "ok"
    assert all(s == "oom" for c, m, s, _ in points if m == 2048)  # real OOM kills, on either VM
    assert document["stats"]["probes"] == 4 and document["stats"]["failed"] == 0
    assert document["minimum"]["cores"] == 1 and document["minimum"]["memory_mib"] == 3072

    # The clone is gone (labctl made it for the sweep), the VM is back in its shape.
    assert f"clones removed: {CLONE}" in result.stderr
    assert document["clones"] == {"removed": [CLONE], "kept": [], "left": [], "user_vms": []}
    assert lab.vm_named(CLONE) is None and vms(lab) == {VM: (2, 3072)}

    serial = ok(lab, *SWEEP, "--json", "--fresh", timeout=900).json  # smart, one VM
    assert serial["sweep"]["id"] != document["sweep"]["id"]  # measured afresh, not replayed
    assert (serial["minimum"]["cores"], serial["minimum"]["memory_mib"]) == (1, 3072)
    assert vms(lab) == {VM: (2, 3072)}


def test_down_leaves_nothing_behind(parallel_lab: E2eLab, lab: Lab) -> None:
    ok(lab, "down", VM, "--yes")
    assert ok(lab, "--json", "ls").json["vms"] == []
    assert parallel_lab.backend.cgroups.pids(PREFIX) == set()
    parallel_lab.close()
    leftovers = [
        f"cgroup {h}"
        for h in os.listdir("/sys/fs/cgroup")
        if os.path.exists(f"/sys/fs/cgroup/{h}/{PREFIX}")
    ]
    if Path("/run/netns").is_dir():
        leftovers += [n for n in os.listdir("/run/netns") if n.startswith(f"{PREFIX}-")]
    leftovers += [
        n for n in os.listdir("/sys/class/net") if n == BRIDGE or n.startswith(f"{PREFIX}v")
    ]
    with open("/proc/self/mountinfo") as fh:
        leftovers += [line.split()[4] for line in fh if str(lab.dir) in line.split()[4]]
    assert leftovers == []
