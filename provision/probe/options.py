"""The probe's options from the command line over the lab file's [probe] section.

Also the bounds of the level options, checked before anything runs: `--concurrency` and
`--num-thread` are comma-separated lists (`1,2,4`; `auto,1,2,4` for threads).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from provision.errors import UsageError
from provision.probe.result import DEFAULT_PROMPT, ProbeOptions
from provision.probe.stats import AUTO_MIN_RUNS

MAX_RUNS = 1000
MAX_THREADS_UNKNOWN_VM = 256  # before the VM is known: more is a typo, not a thread count
THREADS_PER_VCPU_BOUND = 4  # with the VM known: 4 x vCPUs (oversubscription worth measuring)
DEFAULT_NUM_CTX = 4096  # Ollama 0.32's default context per slot (OLLAMA_CONTEXT_LENGTH unset)
# The KV cache of one parallel slot per context token, f16 K and V: gemma2:2b's 26 layers x 2 x
# 4 KV heads x 256 head dims x 2 bytes = 104 KiB, 416 MiB per 4096-token slot (llama-server
# logs 2 x 208 MiB). Ollama gives llama-server num_ctx x OLLAMA_NUM_PARALLEL tokens of context
# (llm/llama_server.go:375), so N users need N x num_ctx x this, on top of the weights.
KV_BYTES_PER_TOKEN = 26 * 2 * 4 * 256 * 2

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
    num_thread: str | None = None,
    num_ctx: int | None = None,
    prompt_file: Path | None = None,
    cold: bool = False,
    concurrency: str | None = None,
) -> ProbeOptions:
    """Command-line values over the lab file's [probe] section over labctl's defaults."""
    prompt = str(config.get("probe.prompt") or "") or DEFAULT_PROMPT
    if prompt_file is not None:
        try:
            prompt = prompt_file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            raise UsageError(f"cannot read --prompt-file {prompt_file}: {error}") from None
    threads_text = num_thread or str(config.get("probe.num_thread") or "")
    users_text = concurrency or str(config.get("probe.concurrency") or "")
    threads = parse_counts(threads_text, "--num-thread", allow_auto=True) if threads_text else ()
    users = parse_counts(users_text, "--concurrency") if users_text else ()
    options = ProbeOptions(
        model=model or str(config.get("probe.model")),
        **run_count(runs if runs is not None else config.get("probe.runs")),
        max_runs=max_runs if max_runs is not None else int(config.get("probe.max_runs")),
        warmup=warmup if warmup is not None else int(config.get("probe.warmup")),
        num_predict=num_predict
        if num_predict is not None
        else int(config.get("probe.num_predict")),
        num_thread=threads[0] if len(threads) == 1 else None,
        num_ctx=num_ctx,
        prompt=prompt,
        cold=cold,
        concurrency=tuple(u for u in users if u is not None),
        thread_counts=threads if len(threads) > 1 or users else (),
        check_shape=bool(config.get("probe.check_shape")),
    ).validated()
    check_level_bounds(options, None, None)
    return options


def parse_counts(text: str, flag: str, *, allow_auto: bool = False) -> tuple[int | None, ...]:
    """`1,2,4` (or `auto,1,2` where allowed) as a tuple; None stands for auto. UsageError else."""
    values: list[int | None] = []
    for item in (part.strip() for part in text.split(",")):
        if allow_auto and item.lower() == "auto":
            values.append(None)
            continue
        try:
            value = int(item)
        except ValueError:
            what = "whole numbers or auto" if allow_auto else "whole numbers"
            raise UsageError(f"{flag} takes {what} separated by commas, got {text!r}") from None
        if value < 1:
            raise UsageError(f"{flag} values must be at least 1, got {value}")
        values.append(value)
    if not values:
        raise UsageError(f"{flag} is empty")
    return tuple(dict.fromkeys(values))


def check_level_bounds(options: ProbeOptions, cores: int | None, memory_mib: int | None) -> None:
    """Refuse thread counts and user counts the VM cannot hold, before anything runs.

    Threads: at most 4 x the VM's vCPUs (256 while the VM is unknown). Users: N slots of
    num_ctx tokens of KV cache each (KV_BYTES_PER_TOKEN) must fit in the VM's RAM even before
    the weights are counted; a level beyond that can only be OOM-killed.
    """
    limit = THREADS_PER_VCPU_BOUND * cores if cores else MAX_THREADS_UNKNOWN_VM
    where = f"4 x the VM's {cores} vCPU(s)" if cores else "the sane bound"
    for threads in (*options.thread_counts, options.num_thread):
        if threads is not None and threads > limit:
            raise UsageError(f"--num-thread {threads} is above {where} ({limit})")
    if memory_mib and options.concurrency:
        slot = (options.num_ctx or DEFAULT_NUM_CTX) * KV_BYTES_PER_TOKEN
        most = max(1, memory_mib * 2**20 // slot)
        if options.max_users > most:
            raise UsageError(
                f"--concurrency {options.max_users} is more than the VM can hold: "
                f"{options.max_users} x {slot / 2**20:.0f} MiB of KV cache per user "
                f"(context {options.num_ctx or DEFAULT_NUM_CTX}) is over its "
                f"{memory_mib} MiB; at most {most}"
            )


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
