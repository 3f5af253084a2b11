"""The capacity arithmetic behind a refused guest start, and what it reads from /proc."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from provision.sim.guests.capacity import (
    Footprint,
    GuestsHeld,
    HostReader,
    HostUsage,
    check_capacity,
)
from provision.sim.guests.errors import HostCapacityError

GIB = 2**30
ROOMY = HostUsage(
    inotify_instances_max=1024,
    inotify_instances_used=0,
    inotify_watches_max=524288,
    inotify_watches_used=0,
    mem_available=20 * GIB,
    tasks_max=32768,
    tasks=200,
)


def refusal(held: GuestsHeld, memory: int = GIB, **host: int) -> str:
    with pytest.raises(HostCapacityError) as caught:
        check_capacity(105, memory, held, HostUsage(**{**ROOMY.__dict__, **host}))
    return str(caught.value)


def test_a_host_with_room_lets_the_guest_start() -> None:
    check_capacity(105, GIB, GuestsHeld(39, 312, 1014), ROOMY)


def test_forty_guests_over_the_default_inotify_limit_are_refused_naming_limit_and_fix() -> None:
    held = GuestsHeld(guests=39, inotify_instances=120, inotify_watches=400)
    message = refusal(held, inotify_instances_max=128, inotify_instances_used=120 + 10)
    assert message == (
        "cannot start VM 105: 40 guests need ~320 inotify instances besides the 10 the host "
        "uses, fs.inotify.max_user_instances is 128 (run scripts/sim-host-setup.sh)"
    )


def test_guests_still_booting_count_with_the_estimate_not_what_they_hold_yet() -> None:
    # 15 guests claimed but none has its inotify instances yet: 16 x 8 = 128 do not fit in 120
    message = refusal(GuestsHeld(15, 0, 0), inotify_instances_max=120)
    assert "16 guests need ~128 inotify instances, fs.inotify.max_user_instances is 120" in message
    check_capacity(
        105,
        GIB,
        GuestsHeld(14, 0, 0),
        HostUsage(**{**ROOMY.__dict__, "inotify_instances_max": 120}),
    )


def test_guests_that_hold_more_than_the_estimate_count_with_what_they_hold() -> None:
    # 2 guests hold 100 instances: one more needs 108, the estimate (24) would let it in
    message = refusal(GuestsHeld(2, 100, 0), inotify_instances_max=107, inotify_instances_used=100)
    assert "3 guests need ~108 inotify instances, fs.inotify.max_user_instances is 107" in message


def test_inotify_watches_are_checked_like_instances() -> None:
    message = refusal(GuestsHeld(0, 0, 0), inotify_watches_max=8192, inotify_watches_used=8180)
    assert message == (
        "cannot start VM 105: 1 guest needs ~32 inotify watches besides the 8180 the host uses, "
        "fs.inotify.max_user_watches is 8192 (run scripts/sim-host-setup.sh)"
    )


def test_a_memory_limit_beyond_what_the_host_has_available_is_refused() -> None:
    message = refusal(GuestsHeld(0, 0, 0), memory=4 * GIB, mem_available=3 * GIB)
    assert message == (
        "cannot start VM 105: its memory limit of 4096 MiB is more than the host's 3072 MiB "
        "available (MemAvailable) (stop other guests or start the simulator with a smaller "
        "--mem-scale)"
    )


def test_a_host_near_its_task_limit_is_refused() -> None:
    message = refusal(GuestsHeld(0, 0, 0), tasks_max=1000, tasks=990)
    assert message.startswith(
        "cannot start VM 105: the host runs 990 tasks and a booting guest needs ~32 more, "
        "kernel.pid_max/threads-max allow 1000"
    )


def test_the_footprint_is_what_a_booted_debian_guest_was_measured_to_hold() -> None:
    assert Footprint() == Footprint(inotify_instances=8, inotify_watches=32, tasks=32)


def _fake_proc(root: Path) -> Path:
    (root / "sys/fs/inotify").mkdir(parents=True)
    (root / "sys/kernel").mkdir(parents=True)
    (root / "sys/fs/inotify/max_user_instances").write_text("128\n")
    (root / "sys/fs/inotify/max_user_watches").write_text("8192\n")
    (root / "sys/kernel/pid_max").write_text("32768\n")
    (root / "sys/kernel/threads-max").write_text("20000\n")
    (root / "meminfo").write_text("MemTotal: 24000000 kB\nMemAvailable:   2048 kB\n")
    (root / "loadavg").write_text("0.50 0.40 0.30 2/345 9999\n")
    for pid, fds in {"10": {"3": 2, "4": 0}, "11": {"5": 1}}.items():
        (root / pid / "fd").mkdir(parents=True)
        (root / pid / "fdinfo").mkdir()
        for fd, watches in fds.items():
            target = "anon_inode:inotify" if watches else "socket:[1234]"
            os.symlink(target, root / pid / "fd" / fd)
            (root / pid / "fdinfo" / fd).write_text(
                "pos:\t0\n" + "inotify wd:1 ino:2 sdev:3 mask:4\n" * watches
            )
    return root


def test_the_reader_counts_inotify_descriptors_and_their_watches_from_proc(
    tmp_path: Path,
) -> None:
    usage, held = HostReader(_fake_proc(tmp_path)).usage(guest_pids=[11])
    assert usage == HostUsage(
        inotify_instances_max=128,
        inotify_instances_used=2,
        inotify_watches_max=8192,
        inotify_watches_used=3,
        mem_available=2048 * 1024,
        tasks_max=20000,
        tasks=345,
    )
    assert held == (1, 1)
