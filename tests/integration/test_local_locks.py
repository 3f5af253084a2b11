"""LocalLocks.one_of: at most N holders among the threads and processes sharing a state dir, and
a slot held by a process that dies is free again."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from provision.pve.cluster import LocalLocks

HOLD_A_SLOT = """
import sys, time
from pathlib import Path
from provision.pve.cluster import LocalLocks
with LocalLocks(Path(sys.argv[1])).one_of("agent-pve", 1):
    print("holding", flush=True)
    time.sleep(60)
"""


def test_no_more_than_count_hold_slots_at_once(tmp_path: Path) -> None:
    lock = threading.Lock()
    holding = 0
    peak = 0

    def work() -> None:
        nonlocal holding, peak
        with LocalLocks(tmp_path).one_of("agent-pve", 2):
            with lock:
                holding += 1
                peak = max(peak, holding)
            time.sleep(0.1)
            with lock:
                holding -= 1

    threads = [threading.Thread(target=work) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert peak == 2 and holding == 0


def test_a_slot_held_by_a_killed_process_is_free_again(tmp_path: Path) -> None:
    repo = Path(__file__).resolve().parents[2]
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_A_SLOT, str(tmp_path)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(repo)},
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "holding"
        got = threading.Event()

        def take() -> None:
            with LocalLocks(tmp_path).one_of("agent-pve", 1):
                got.set()

        waiter = threading.Thread(target=take, daemon=True)
        waiter.start()
        assert not got.wait(0.3)  # the live holder keeps its slot
        holder.send_signal(signal.SIGKILL)
        assert got.wait(5)
    finally:
        holder.kill()
        holder.wait()


def test_slot_names_from_hosts_and_addresses_stay_file_names(tmp_path: Path) -> None:
    with LocalLocks(tmp_path).one_of("agent-[fd00::1]:8006/pve", 1):
        names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["agent-_fd00__1__8006_pve.0.lock"]
