"""Shape parsing: the forms users type, and one-line errors for everything else."""

from __future__ import annotations

import pytest

from provision.errors import ExitCode, UsageError
from provision.shape import (
    NodeCapacity,
    Shape,
    check_fits,
    format_mib,
    parse_cores,
    parse_cores_list,
    parse_disk_gib,
    parse_ram,
    parse_ram_list,
)


@pytest.mark.parametrize(
    ("text", "mib"),
    [
        ("512M", 512),
        ("8G", 8192),
        ("8GiB", 8192),
        ("8gb", 8192),
        ("1.5G", 1536),
        ("2048", 2048),
        (4096, 4096),
        ("1T", 1048576),
        (" 16G ", 16384),
    ],
)
def test_ram_accepts_the_forms_users_type(text: str | int, mib: int) -> None:
    assert parse_ram(text) == mib


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("32X", "unknown unit"),
        ("0", "positive"),
        ("-4G", "positive"),
        ("256M", "minimum"),
        ("", "invalid RAM"),
        ("G", "invalid RAM"),
        ("1.0001M", "whole number"),
        ("8 G B", "invalid"),
    ],
)
def test_ram_rejects_bad_input_with_one_line(text: str, fragment: str) -> None:
    with pytest.raises(UsageError) as caught:
        parse_ram(text)
    assert fragment in str(caught.value)
    assert "\n" not in str(caught.value)
    assert caught.value.exit_code == ExitCode.USAGE


@pytest.mark.parametrize("text", ["0", "-2", "two", "1.5", ""])
def test_cores_must_be_a_whole_number_from_one(text: str) -> None:
    with pytest.raises(UsageError):
        parse_cores(text)


def test_core_lists_accept_ranges_and_commas() -> None:
    assert parse_cores_list("1,2,4-6,4") == [1, 2, 4, 5, 6]
    assert parse_cores_list("2-4") == [2, 3, 4]


@pytest.mark.parametrize("text", ["", "1,,2", "4-2", "a,b", "0,1", ","])
def test_malformed_core_lists_are_usage_errors(text: str) -> None:
    with pytest.raises(UsageError):
        parse_cores_list(text)


def test_ram_lists_sort_and_dedupe() -> None:
    assert parse_ram_list("8G,2G,2048") == [2048, 8192]
    with pytest.raises(UsageError):
        parse_ram_list("2G,,4G")


def test_disk_is_whole_gib() -> None:
    assert parse_disk_gib("40G") == 40
    with pytest.raises(UsageError):
        parse_disk_gib("1.5G")


def test_shape_larger_than_node_is_refused_unless_overcommit() -> None:
    node = NodeCapacity(node="pve", cpus=8, memory_total_mib=32768, memory_free_mib=16384)
    with pytest.raises(UsageError, match="more than node pve has"):
        check_fits(Shape(cores=12, memory_mib=4096), node)
    with pytest.raises(UsageError, match="free"):
        check_fits(Shape(cores=4, memory_mib=32768), node)
    check_fits(Shape(cores=12, memory_mib=32768), node, allow_overcommit=True)
    check_fits(Shape(cores=8, memory_mib=16384), node)


def test_labels_read_naturally() -> None:
    assert format_mib(8192) == "8 GiB"
    assert format_mib(1536) == "1.5 GiB"
    assert format_mib(512) == "512 MiB"
    assert Shape(4, 4096).label == "4 vCPU / 4 GiB (cpu=host)"
