"""The probe's options from the command line over the lab file's [probe] section."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from provision.errors import UsageError
from provision.probe.result import DEFAULT_PROMPT, ProbeOptions
from provision.probe.stats import AUTO_MIN_RUNS

MAX_RUNS = 1000

if TYPE_CHECKING:
    from provision.config import LabConfig


def options_from_config(
    config: LabConfig,
    *,
    model: str | None = None,
    runs: int | str | None = None,
    max_runs: int | None = None,
    warmup: int | None = None,
    num_predict: int | None = None,
    num_thread: int | None = None,
    num_ctx: int | None = None,
    prompt_file: Path | None = None,
    cold: bool = False,
) -> ProbeOptions:
    """Command-line values over the lab file's [probe] section over labctl's defaults."""
    prompt = str(config.get("probe.prompt") or "") or DEFAULT_PROMPT
    if prompt_file is not None:
        try:
            prompt = prompt_file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            raise UsageError(f"cannot read --prompt-file {prompt_file}: {error}") from None
    return ProbeOptions(
        model=model or str(config.get("probe.model")),
        **run_count(runs if runs is not None else config.get("probe.runs")),
        max_runs=max_runs if max_runs is not None else int(config.get("probe.max_runs")),
        warmup=warmup if warmup is not None else int(config.get("probe.warmup")),
        num_predict=num_predict
        if num_predict is not None
        else int(config.get("probe.num_predict")),
        num_thread=num_thread,
        num_ctx=num_ctx,
        prompt=prompt,
        cold=cold,
    ).validated()


def run_count(value: int | str) -> dict[str, Any]:
    """ProbeOptions' fields for `--runs N` (1-1000) or `--runs auto` (starts at AUTO_MIN_RUNS)."""
    if value == "auto":
        return {"runs": AUTO_MIN_RUNS, "runs_auto": True}
    try:
        runs = int(value)
    except ValueError:
        raise UsageError(f'--runs must be a whole number or "auto", got {value!r}') from None
    if not 1 <= runs <= MAX_RUNS:
        raise UsageError(f"--runs must be 1-{MAX_RUNS} (or auto), got {runs}")
    return {"runs": runs, "runs_auto": False}
