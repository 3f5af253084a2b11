"""The level options: parsing `--concurrency` / `--num-thread` lists and their bounds; the shape
check before any measurement; the guest's CPU topology from /proc/cpuinfo."""

from __future__ import annotations

import pytest

from provision.errors import UsageError
from provision.probe.agent import cpu_topology
from provision.probe.facts import CpuTopology, GuestFacts
from provision.probe.options import check_level_bounds, parse_counts
from provision.probe.run import ProbeOptions
from provision.probe.shape_check import ExpectedShape, shape_problem

GIB = 2**30


def test_lists_parse_in_order_without_repeats() -> None:
    assert parse_counts("1,2,4", "--concurrency") == (1, 2, 4)
    assert parse_counts(" 4, 1,4", "--concurrency") == (4, 1)
    assert parse_counts("auto,1,2", "--num-thread", allow_auto=True) == (None, 1, 2)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("0", "--concurrency values must be at least 1, got 0"),
        ("-1", "--concurrency values must be at least 1, got -1"),
        ("a", "--concurrency takes whole numbers separated by commas, got 'a'"),
        ("1,,2", "--concurrency takes whole numbers separated by commas, got '1,,2'"),
        ("auto", "--concurrency takes whole numbers separated by commas, got 'auto'"),
    ],
)
def test_bad_concurrency_is_one_usage_line(text: str, message: str) -> None:
    with pytest.raises(UsageError) as caught:
        parse_counts(text, "--concurrency")
    assert str(caught.value) == message


def test_num_thread_zero_is_refused() -> None:
    with pytest.raises(UsageError, match="--num-thread values must be at least 1, got 0"):
        parse_counts("auto,0", "--num-thread", allow_auto=True)


def test_threads_above_the_bound_are_refused_before_and_after_the_vm_is_known() -> None:
    many = ProbeOptions(thread_counts=(None, 300), concurrency=(1,))
    with pytest.raises(UsageError, match=r"--num-thread 300 is above the sane bound \(256\)"):
        check_level_bounds(many, None, None)
    eight = ProbeOptions(num_thread=9)
    check_level_bounds(eight, None, None)
    with pytest.raises(UsageError, match=r"above 4 x the VM's 2 vCPU\(s\) \(8\)"):
        check_level_bounds(eight, 2, 4096)


def test_more_users_than_the_vms_ram_holds_kv_cache_for_is_refused() -> None:
    # 416 MiB of KV cache per user at 4096 tokens: a 4 GiB VM holds at most 9 users' worth
    check_level_bounds(ProbeOptions(concurrency=(1, 9)), 2, 4096)
    with pytest.raises(UsageError) as caught:
        check_level_bounds(ProbeOptions(concurrency=(1, 10)), 2, 4096)
    assert str(caught.value) == (
        "--concurrency 10 is more than the VM can hold: 10 x 416 MiB of KV cache per user "
        "(context 4096) is over its 4096 MiB; at most 9"
    )
    check_level_bounds(ProbeOptions(concurrency=(10,), num_ctx=2048), 2, 4096)


def facts(vcpus: int, processors: int, mem_bytes: int) -> GuestFacts:
    return GuestFacts.from_event(
        {
            "vcpus": vcpus,
            "mem_total": mem_bytes,
            "topology": {"processors": processors, "sockets": 1, "cores": processors},
        }
    )


def test_a_guest_seeing_its_shape_is_valid_within_the_kernels_reservations() -> None:
    expected = ExpectedShape(cores=2, memory_mib=4096)
    assert shape_problem(facts(2, 2, 4 * GIB), expected) is None
    assert shape_problem(facts(2, 2, int(3.7 * GIB)), expected) is None  # 7.5 % kept by kernel


@pytest.mark.parametrize(
    ("seen", "reason"),
    [
        ((1, 1, 4 * GIB), "nproc says 1 vCPU(s), the VM has 2"),
        ((2, 4, 4 * GIB), "/proc/cpuinfo lists 4 processor(s), the VM has 2"),
        ((2, 2, 3 * GIB), "MemTotal is 3072 MiB, the VM has 4096 MiB"),
        ((2, 2, 8 * GIB), "MemTotal is 8192 MiB, the VM has 4096 MiB"),
    ],
)
def test_a_guest_not_seeing_its_shape_says_why(seen: tuple[int, int, int], reason: str) -> None:
    problem = shape_problem(facts(*seen), ExpectedShape(cores=2, memory_mib=4096))
    assert problem is not None and problem.startswith(reason)


CPUINFO_2S_HT = "".join(
    f"processor\t: {n}\nphysical id\t: {n // 4}\ncore id\t\t: {(n % 4) // 2}\nsiblings\t: 4\n\n"
    for n in range(8)
)


def test_topology_counts_sockets_cores_and_threads_per_core() -> None:
    topology = CpuTopology.from_event(cpu_topology(CPUINFO_2S_HT))
    assert topology == CpuTopology(processors=8, sockets=2, cores=4, threads_per_core=2)
    assert topology.label == "2 socket(s), 4 core(s), 2 thread(s) per core"


def test_a_cpuinfo_without_topology_fields_counts_each_processor_as_a_core() -> None:
    plain = "processor\t: 0\nmodel name\t: QEMU\n\nprocessor\t: 1\nmodel name\t: QEMU\n\n"
    assert cpu_topology(plain) == {
        "processors": 2,
        "sockets": 1,
        "cores": 2,
        "threads_per_core": 1,
    }
