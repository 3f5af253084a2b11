"""Sizing for a service (`--users N --max-ttft-p95 T --min-tps-per-user R`): the targets, the
verdict at N users, the one-line answer, the capacity table, the plot and the exports."""

from __future__ import annotations

import json

import pytest

from provision.errors import UsageError
from provision.report.capacity import capacity_cells
from provision.report.document import render_markdown
from provision.report.export import to_json
from provision.report.model import SweepReport, build_report
from provision.report.plot import render_png
from provision.report.table import render_table
from provision.shape import Shape
from provision.sweep.model import Measurement, Space, Status, Targets, evaluate
from provision.sweep.service import LevelPoint, ServiceTargets, parse_service
from provision.sweep.strategy import search
from tests.support.replay import Replay, one_at_a_time

G = 1024
SPACE = Space(cores=(1, 2, 4), ram_mib=(2048, 4096), cpu_types=("host",))
SERVICE = ServiceTargets(users=3, max_ttft_p95_s=2.0, min_tps_per_user=4.0)


def levels_of(cores: int) -> tuple[LevelPoint, ...]:
    """A CPU-bound server: throughput grows with cores, each user gets a share, the prompt of
    the last user in line waits for the others'."""
    single = 3.0 * cores
    return tuple(
        LevelPoint(
            users=users,
            ttft_p95_s=round(0.6 * users / cores + 0.2, 2),
            tps_per_user=round(single * (1 + 0.3 * (users - 1)) / users, 2),
            aggregate_tps=round(single * (1 + 0.3 * (users - 1)), 2),
            completed=users,
            failed=0,
        )
        for users in SERVICE.levels
    )


def table() -> dict[Shape, Measurement]:
    found = {}
    for shape in SPACE.shapes():
        if shape.memory_mib < 4096:
            found[shape] = Measurement(shape, Status.OOM, error="OOM")
        else:
            found[shape] = Measurement(
                shape,
                Status.OK,
                eval_tps=3.0 * shape.cores,
                ttft_s=0.3,
                mem_total_mib=shape.memory_mib,
                peak_used_mib=2900,
                levels=levels_of(shape.cores),
            )
    return found


def service_report() -> SweepReport:
    targets = Targets(service=SERVICE)
    result = search(SPACE, targets, one_at_a_time(Replay(table())), strategy="grid")
    return build_report(
        sweep_id="5e41ce00",
        vm="gemma",
        status="done",
        created_at="",
        updated_at="",
        spec={"strategy": "grid", "probe": {"model": "gemma2:2b"}},
        result=result,
        probes=result.probes,
        reboots=result.probes,
    )


def test_levels_are_powers_of_two_below_the_users_then_the_users() -> None:
    assert ServiceTargets(1, 2.0).levels == (1,)
    assert ServiceTargets(3, 2.0).levels == (1, 2, 3)
    assert ServiceTargets(6, 2.0).levels == (1, 2, 4, 6)


def test_the_minimum_is_the_smallest_shape_meeting_every_target_at_n_users() -> None:
    # 2 vCPU at 3 users: p95 TTFT 1.1 s, 3.2 tok/s each (< 4); 4 vCPU: 0.65 s, 6.4 tok/s each
    report = service_report()
    assert report.result.minimum is not None
    assert report.result.minimum.shape == Shape(4, 4096, "host")
    assert report.recommendation == (
        "Minimum: 4 vCPU / 4 GiB (cpu=host) serves 3 users at p95 TTFT <= 2 s "
        "(6.4 tok/s each, p95 TTFT 0.65 s)"
    )
    two = table()[Shape(2, 4096, "host")]
    assert evaluate(two, Targets(service=SERVICE)).reasons == ("3.2 tok/s each < 4 at 3 users",)


def test_a_failed_request_or_a_missing_level_is_a_miss() -> None:
    four = table()[Shape(4, 4096, "host")]
    failing = LevelPoint(3, 0.5, 9.0, 27.0, completed=2, failed=1)
    with_failure = Measurement(four.shape, Status.OK, levels=(*four.levels[:2], failing))
    assert (
        "1 of 3 requests failed at 3 users" in evaluate(with_failure, Targets(service=SERVICE)).why
    )
    short = Measurement(four.shape, Status.OK, levels=four.levels[:2])
    assert evaluate(short, Targets(service=SERVICE)).why == "not measured at 3 users"


def test_capacity_table_shows_each_shape_by_users_and_marks_misses() -> None:
    report = service_report()
    rows = {row["shape"]: row["cells"] for row in capacity_cells(report)}
    assert rows["4 vCPU / 4 GiB (cpu=host)"][-1] == "0.65 s / 6.4 ok"
    assert rows["2 vCPU / 4 GiB (cpu=host)"][-1] == "1.10 s / 3.2 miss"
    text = render_table(report, width=160)
    assert "capacity: p95 TTFT / eval tok/s each, by users at once" in text
    assert "3 users" in text


def test_json_carries_every_level_and_markdown_the_capacity_table() -> None:
    report = service_report()
    document = to_json(report)
    four = next(p for p in document["points"] if p["cores"] == 4 and p["memory_mib"] == 4096)
    assert [lv["users"] for lv in four["levels"]] == [1, 2, 3]
    assert json.loads(json.dumps(document))["sweep"]["targets"]["service"]["users"] == 3
    markdown = render_markdown(report, "plot.png")
    assert "## Capacity: p95 TTFT / eval tok/s each, by users at once" in markdown
    four = "| 0.35 s / 12.0 ok | 0.50 s / 7.8 ok | 0.65 s / 6.4 ok | 3 users |"
    two = "| 0.50 s / 6.0 ok | 0.80 s / 3.9 miss | 1.10 s / 3.2 miss | 1 user |"
    assert f"| 4 vCPU / 4 GiB (cpu=host) {four}" in markdown
    assert f"| 2 vCPU / 4 GiB (cpu=host) {two}" in markdown
    assert render_png(report).startswith(b"\x89PNG")


@pytest.mark.parametrize(
    ("users", "ttft", "tps", "said"),
    [
        (0, "2s", None, "--users must be 1-64, got 0"),
        (-1, "2s", None, "--users must be 1-64, got -1"),
        (3, "fast", None, "invalid --max-ttft-p95 'fast'"),
        (3, None, "a", "invalid --min-tps-per-user 'a'"),
        (3, None, "0", "--min-tps-per-user must be a positive number"),
        (3, None, None, "--users N needs a target"),
        (None, "2s", None, "--max-ttft-p95 and --min-tps-per-user need --users N"),
    ],
)
def test_bad_service_targets_are_one_line_usage_errors(
    users: int | None, ttft: str | None, tps: str | None, said: str
) -> None:
    with pytest.raises(UsageError, match=said.replace("(", r"\(")):
        parse_service(users, ttft, tps)


def test_targets_without_users_keep_the_identity_of_earlier_sweeps() -> None:
    assert "service" not in Targets(min_tps=10).to_dict()
    assert Targets.from_dict(Targets(service=SERVICE).to_dict()).service == SERVICE
