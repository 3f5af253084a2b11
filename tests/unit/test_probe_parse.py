"""The probe's parsers on Ollama's verbatim responses (tests/fixtures/ollama, see its README)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from provision.errors import ProbeError
from provision.probe.facts import GuestFacts, ModelFacts, PsFacts, avx_warning, find_tags_entry
from provision.probe.parse import (
    OllamaMetrics,
    RunPeaks,
    Sample,
    fatal_error,
    parse_event,
    stat,
    summarize,
)
from provision.probe.parse import RunResult as Run

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "ollama"


def fixture(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


def test_final_stream_object_gives_ollamas_own_rates() -> None:
    metrics = OllamaMetrics.from_response(fixture("docs_api_generate_stream_final.json"))

    assert metrics.eval_count == 259 and metrics.eval_duration_ns == 4232710000
    assert metrics.eval_tps == pytest.approx(259 / 4.23271)
    assert metrics.prompt_tps == pytest.approx(26 / 0.130079)
    assert metrics.load_s == pytest.approx(6.338219291)
    assert metrics.total_duration_ns == 10706818083
    assert metrics.done_reason is None  # this older docs example has no done_reason


def test_real_gemma2_response_matches_ollama_run_verbose_arithmetic() -> None:
    metrics = OllamaMetrics.from_response(fixture("real_gemma2_2b_generate_nostream_trimmed.json"))

    assert metrics.done_reason == "stop"
    assert metrics.prompt_eval_count == 15
    assert round(metrics.eval_tps or 0, 2) == round(282 / 4.573, 2) == 61.67
    assert round(metrics.prompt_tps or 0, 2) == 5.77


@pytest.mark.parametrize("name", ["docs_api_generate_load.json", "docs_api_generate_unload.json"])
def test_load_and_unload_answers_report_no_metrics_not_zero(name: str) -> None:
    metrics = OllamaMetrics.from_response(fixture(name))

    assert metrics.eval_count is None and metrics.eval_tps is None
    assert metrics.prompt_tps is None and metrics.load_s is None


def test_a_zero_duration_is_no_rate_rather_than_a_division_error() -> None:
    metrics = OllamaMetrics.from_response({"eval_count": 3, "eval_duration": 0})
    assert metrics.eval_tps is None


def test_tags_entry_gives_the_model_digest_and_size() -> None:
    model = ModelFacts.from_tags_entry(fixture("real_gemma2_2b_tags_entry.json"))

    assert model.digest == "8ccf136fdd5298f3ffe2d69862750ea7fb56555fa4d5b18c04e3fa4d82ee09d7"
    assert model.size_bytes == 1629518495
    assert (model.family, model.parameter_size, model.quantization) == ("gemma2", "2.6B", "Q4_0")


def test_model_lookup_in_tags_uses_ollamas_latest_default() -> None:
    tags = fixture("docs_api_tags.json")

    assert find_tags_entry(tags, "llama3.2")["name"] == "llama3.2:latest"  # type: ignore[index]
    assert find_tags_entry(tags, "deepseek-r1:latest") is not None
    assert find_tags_entry(tags, "gemma2:2b") is None


def test_ps_says_whether_the_model_runs_on_cpu() -> None:
    cpu = PsFacts.from_entry(fixture("synthetic_api_ps_gemma2_cpu.json")["models"][0])
    gpu = PsFacts.from_entry(fixture("docs_api_ps.json")["models"][0])

    assert (cpu.on_cpu, cpu.processor, cpu.context_length) == (True, "100% CPU", 4096)
    assert (gpu.on_cpu, gpu.processor, gpu.context_length) == (False, "100% GPU", None)
    split = PsFacts(size_bytes=15_000, size_vram_bytes=3_450, context_length=None)
    assert split.processor == "77%/23% CPU/GPU"  # as `ollama ps` prints devstral in ollama.md
    assert PsFacts(size_bytes=1, size_vram_bytes=None, context_length=None).on_cpu is None


def _facts(flags: dict[str, bool] | None) -> GuestFacts:
    return GuestFacts.from_event(
        {
            "vcpus": 4,
            "cpu_model": "Common KVM processor",
            "flags": flags,
            "kernel": "6.8.0",
            "mem_total": 8 << 30,
            "tags_entry": fixture("real_gemma2_2b_tags_entry.json"),
        }
    )


def test_missing_avx2_warns_and_names_the_proxmox_cpu_type() -> None:
    warning = avx_warning(_facts({"avx": False, "avx2": False, "avx512f": False, "fma": False}))

    assert warning is not None
    assert "lacks avx, avx2, avx512f, fma" in warning and "Proxmox cpu type" in warning
    assert "x86-64-v2-AES" in warning and "host" in warning


def test_no_warning_with_avx2_or_when_flags_are_unknown() -> None:
    assert avx_warning(_facts({"avx": True, "avx2": True, "avx512f": False, "fma": True})) is None
    assert avx_warning(_facts(None)) is None


def _sample(t: float, available: int, rss: int | None, load: float) -> Sample:
    return Sample.from_event(
        {
            "t": t,
            "load1": load,
            "cpu_pct": 50.0,
            "busiest_core_pct": 90.0,
            "mem_total": 1000,
            "mem_available": available,
            "swap_used": 0,
            "ollama_rss": rss,
        }
    )


def test_peaks_take_the_worst_sample_and_skip_unreported_values() -> None:
    peaks = RunPeaks.from_samples(
        [_sample(0.1, 700, 100, 0.5), _sample(0.2, 400, None, 1.5), _sample(0.3, 600, 300, 1.0)]
    )

    assert (peaks.peak_mem_used, peaks.min_mem_available) == (600, 400)
    assert (peaks.peak_rss, peaks.peak_load1, peaks.samples) == (300, 1.5, 3)
    assert RunPeaks.from_samples([]).peak_rss is None


def _run(
    index: int,
    tps_count: int,
    *,
    warmup: bool = False,
    ok: bool = True,
    kind: str = "warm",
    load_ns: int = 1_000_000,
) -> Run:
    return Run(
        index=index,
        warmup=warmup,
        ok=ok,
        error=None if ok else "boom",
        metrics=OllamaMetrics(
            eval_count=tps_count, eval_duration_ns=1_000_000_000, load_duration_ns=load_ns
        ),
        peaks=RunPeaks.from_samples([]),
        ttft_s=0.5,
        load_kind=kind,
    )


def test_summary_leaves_out_warmups_and_failures_and_keeps_cold_loads_apart() -> None:
    runs = [
        _run(0, 99, warmup=True, kind="cold", load_ns=9_000_000_000),
        _run(1, 10),
        _run(2, 30, kind="cold", load_ns=2_000_000_000),
        _run(3, 20),
        _run(4, 1000, ok=False),
    ]

    summary = summarize(runs)

    assert summary["eval_tps"] == stat([10, 30, 20])
    assert (summary["eval_tps"].median, summary["eval_tps"].n) == (20, 3)  # type: ignore[union-attr]
    assert summary["load_s_cold"] == stat([2.0])
    assert summary["load_s_warm"] == stat([0.001, 0.001])
    assert summary["prompt_tps"] is None  # Ollama reported no prompt counts


def test_agent_lines_that_are_not_events_are_skipped() -> None:
    assert parse_event('{"event": "end", "runs": 1}') == {"event": "end", "runs": 1}
    assert parse_event("Welcome to Ubuntu 24.04") is None
    assert parse_event('{"no": "event"}') is None
    assert parse_event("{broken") is None


@pytest.mark.parametrize(
    ("kind", "hint"),
    [
        ("ollama_not_installed", "run `labctl deploy gemma`"),
        ("ollama_not_running", "`labctl deploy gemma`"),
        ("model_missing", "run `labctl deploy gemma` to pull it"),
        ("no_python", "install python3"),
        ("broken_python", "`python3 -V`"),
    ],
)
def test_fatal_agent_errors_carry_their_fix(kind: str, hint: str) -> None:
    error = fatal_error(
        {"event": "error", "kind": kind, "message": "text from the agent", "model": "gemma2:2b"},
        "gemma",
    )

    assert isinstance(error, ProbeError) and error.exit_code == 7
    assert hint in str(error) and "\n" not in str(error)


def test_fatal_errors_name_the_vm_and_what_is_wrong() -> None:
    missing = fatal_error(
        {"kind": "model_missing", "message": "models there: llama3.2:latest", "model": "gemma2:2b"},
        "gemma",
    )
    assert str(missing) == (
        "model gemma2:2b is not pulled on gemma (models there: "
        "llama3.2:latest) (run `labctl deploy gemma` to pull it)"
    )
    stopped = fatal_error({"kind": "ollama_not_running", "message": "x"}, "gemma")
    assert str(stopped).startswith("Ollama is not running on gemma: x")
    odd = fatal_error({"kind": "agent_bug", "message": "KeyError: 'x'"}, "gemma")
    assert str(odd) == "the probe failed on gemma: KeyError: 'x'" and odd.exit_code == 7
