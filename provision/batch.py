"""Work on several VMs at once, a bounded number at a time, each VM's outcome kept apart.

`labctl down --all` and `labctl up` (every VM of the lab file) run their per-VM work through
`each_vm`: one VM failing does not stop the others, and the caller gets every outcome.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from typing import Generic, TypeVar

from provision.errors import LabctlError, UsageError

T = TypeVar("T")
DEFAULT_JOBS = 8  # PVE serves API calls with a few workers per node; more gains little


@dataclass(frozen=True)
class Outcome(Generic[T]):
    """What became of one VM: its result, or the error that stopped its work."""

    name: str
    result: T | None = None
    error: LabctlError | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def parse_jobs(value: str | None) -> int:
    """--jobs N: at least 1; absent, DEFAULT_JOBS."""
    if value is None:
        return DEFAULT_JOBS
    try:
        jobs = int(value)
    except ValueError:
        raise UsageError(f"--jobs takes a whole number, got {value!r}") from None
    if jobs < 1:
        raise UsageError(f"--jobs must be at least 1, got {jobs}")
    return jobs


def each_vm(names: Sequence[str], work: Callable[[str], T], jobs: int) -> list[Outcome[T]]:
    """Run work(name) for every name, at most `jobs` at once; outcomes in the names' order.

    A LabctlError ends that VM's work only. Anything else (a bug, Ctrl-C) cancels the VMs not
    yet started and propagates once the running ones have finished.
    """
    if jobs <= 1 or len(names) <= 1:
        return [_one(name, work) for name in names]
    outcomes: dict[str, Outcome[T]] = {}
    with ThreadPoolExecutor(max_workers=min(jobs, len(names))) as pool:
        futures = {pool.submit(_one, name, work): name for name in names}
        try:
            for future in as_completed(futures):
                outcomes[futures[future]] = future.result()
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise
    return [outcomes[name] for name in names]


def first_error(outcomes: Sequence[Outcome[T]]) -> LabctlError | None:
    """The error of the first VM that failed (its exit code is the command's), else None."""
    return next((o.error for o in outcomes if o.error is not None), None)


def _one(name: str, work: Callable[[str], T]) -> Outcome[T]:
    try:
        return Outcome(name, result=work(name))
    except LabctlError as error:
        return Outcome(name, error=error)
