"""The probe's options from the command line over the lab file's [probe] section."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from provision.errors import UsageError
from provision.probe.run import DEFAULT_PROMPT, ProbeOptions

if TYPE_CHECKING:
    from provision.config import LabConfig


def options_from_config(
    config: LabConfig,
    *,
    model: str | None = None,
    runs: int | None = None,
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
        runs=runs if runs is not None else int(config.get("probe.runs")),
        warmup=warmup if warmup is not None else int(config.get("probe.warmup")),
        num_predict=num_predict
        if num_predict is not None
        else int(config.get("probe.num_predict")),
        num_thread=num_thread,
        num_ctx=num_ctx,
        prompt=prompt,
        cold=cold,
    ).validated()
