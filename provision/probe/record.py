"""Record one probe run in the results database: the one place `labctl probe` and the sweep share.

A probe row is started before the agent runs, every finished run is committed as it arrives
(store.ProbeRecorder), and the row is finished as ok, oom or failed. The SQLite connection is
opened for this probe alone and closed whatever happens: sweep workers probe in threads, and a
connection may only be used by the thread that opened it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from provision import store
from provision.errors import InvalidShape, LabctlError, ModelDoesNotFit
from provision.probe import run as probe_run
from provision.probe.result import ProbeOptions, ProbeResult
from provision.probe.shape_check import ExpectedShape
from provision.progress import Reporter


def kept_options(options: ProbeOptions) -> dict[str, Any]:
    """The probe options stored with each probe (the prompt by its length only).

    `--runs auto` is kept as runs "auto" with its max_runs; a fixed count keeps the same keys as
    before it existed, so the identity of earlier sweeps (identity_options) does not change."""
    kept = {
        "model": options.model,
        "runs": options.runs,
        "warmup": options.warmup,
        "num_predict": options.num_predict,
        "num_thread": options.num_thread,
        "num_ctx": options.num_ctx,
        "cold": options.cold,
        "seed": options.seed,
        "prompt_chars": len(options.prompt),
    }
    if options.runs_auto:
        kept |= {"runs": "auto", "max_runs": options.max_runs}
    if options.measures_levels:  # likewise only when asked for
        kept |= {
            "concurrency": list(options.concurrency),
            "thread_counts": list(options.thread_counts),
        }
    return kept


def identity_options(options: ProbeOptions) -> dict[str, Any]:
    """kept_options plus a hash of the prompt: another prompt of the same length is another
    sweep."""
    digest = hashlib.sha256(options.prompt.encode()).hexdigest()[:16]
    return {**kept_options(options), "prompt_sha256": digest}


@dataclass(frozen=True)
class RecordedProbe:
    """A probe kept under `probe_id`: its result, or why the model did not fit in RAM."""

    probe_id: int
    result: ProbeResult | None
    did_not_fit: ModelDoesNotFit | None = None

    def completed(self) -> ProbeResult:
        """The result; the ModelDoesNotFit error when the model did not fit."""
        if self.result is None:
            assert self.did_not_fit is not None
            raise self.did_not_fit
        return self.result


def record_probe(
    state_dir: Path,
    vm: store.VmRecord,
    address: Any,
    options: ProbeOptions,
    reporter: Reporter,
    *,
    stored_options: dict[str, Any] | None = None,
) -> RecordedProbe:
    """Probe the guest at `address` and keep the probe and its runs in the results database.

    A model that does not fit is an outcome (kept as 'oom'); a guest that does not see the VM's
    shape is kept as 'invalid' (nothing measured) and raised; any other failure, Ctrl-C
    included, is kept as 'failed' and raised. `stored_options` default to kept_options(options).
    """
    expected = (
        ExpectedShape(vm.cores, vm.memory_mib)
        if options.check_shape and vm.cores and vm.memory_mib
        else None
    )
    connection = store.connect(state_dir)
    try:
        recorder = store.ProbeRecorder(
            connection,
            vm,
            options.model,
            stored_options if stored_options is not None else kept_options(options),
            "unload+nonce" if options.cold else "nonce",
        )
        try:
            result = probe_run.probe(
                address, options, reporter, listener=recorder, expected=expected
            )
        except InvalidShape as error:
            recorder.finish("invalid", str(error))
            raise
        except ModelDoesNotFit as error:
            recorder.finish("oom", str(error))
            return RecordedProbe(recorder.probe_id, None, did_not_fit=error)
        except (LabctlError, KeyboardInterrupt) as error:
            recorder.finish("failed", str(error) or type(error).__name__)
            raise
        recorder.finish("ok", None, result.summary, num_parallel=result.num_parallel)
        return RecordedProbe(recorder.probe_id, result)
    finally:
        connection.close()
