"""One `labctl sweep` on a lab: its workers, the loop, and the parallel clones' fate afterwards.

A worker is one VM the sweep resizes and probes: NAME itself and, with --parallel N, the clones
NAME-2..NAME-N (provision.sweep.clones makes them). Each worker of a parallel sweep reports on
its own progress channel. Whatever way the loop ends (done, failed, Ctrl-C), the clones the
sweep made are removed afterwards, or disowned with keep_clones, and what became of them is
returned (CloneFate) and told through `notify`.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from provision.errors import LabctlError, UsageError
from provision.progress import Reporter
from provision.sweep.db import SweepStore, open_store
from provision.sweep.loop import SweepLoop, SweepPlan, Worker

if TYPE_CHECKING:
    from provision.config import LabConfig
    from provision.probe.result import ProbeOptions
    from provision.pve.lifecycle import Lab, VmInfo
    from provision.sweep.progress import SharedProgress


@dataclass
class CloneFate:
    """What happened to the parallel clones (the `clones` key of `sweep --json`).

    removed: destroyed at the end; kept: made by the sweep, kept with --keep-clones (now the
    user's); left: made by the sweep, but removing them failed (a warning says why);
    user_vms: VMs named NAME-k that the sweep used but did not make, never removed.
    """

    removed: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    left: list[str] = field(default_factory=list)
    user_vms: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, list[str]]:
        return asdict(self)


@dataclass(frozen=True)
class SweepRun:
    """A finished sweep: where its points are kept, and its clones' fate."""

    store: SweepStore
    sweep_id: str
    clones: CloneFate


def running_vm(lab: Lab, name: str) -> VmInfo:
    """The VM to sweep; a usage error unless it is running."""
    info = lab.find(name)
    if info.status != "running":
        raise UsageError(f"VM {name} is {info.status}", hint=f"run `labctl up {name}` first")
    return info


def _silent(message: str) -> None:
    pass


@dataclass
class SweepSession:
    """Runs one sweep of VM `info.name` (and its clones) through the sweep loop."""

    config: LabConfig
    state_dir: Path
    lab: Lab
    options: ProbeOptions
    stored_options: dict[str, Any]  # kept with each probe (provision.probe.record)
    reporter: Reporter
    notify: Callable[[str], None] = _silent  # people-facing notes (the CLI: stderr)
    parallel: int = 1
    keep_clones: bool = False
    allow_overcommit: bool = False
    wait_s: float | None = None  # for a VM another command holds: None = refuse at once

    def run(self, info: VmInfo, plan: SweepPlan) -> SweepRun:
        """Make the clones, sweep, then remove the clones (also when the sweep fails).

        The sweep holds the lease of NAME and of each clone for its whole run, so no other
        labctl command (here or on another machine) resizes or probes them meanwhile.
        """
        with ExitStack() as leases:
            command = f"sweep {info.name}"
            leases.enter_context(self.lab.lease(info.name, command, self.wait_s))
            return self._run_leased(
                info,
                plan,
                lambda clone: leases.enter_context(self.lab.lease(clone, command, self.wait_s)),
            )

    def _run_leased(self, info: VmInfo, plan: SweepPlan, hold: Callable[[str], object]) -> SweepRun:
        try:
            clones = self.make_clones(info, plan)
            for clone in clones:
                hold(clone)
            progress = self._progress()
            workers = [self.make_worker(info.name, False, progress)]
            workers += [self.make_worker(clone, not self.keep_clones, progress) for clone in clones]
            store = open_store(self.state_dir)
            channel = progress.channel() if progress else self.reporter
            outcome = SweepLoop(store, workers, channel).run(plan)
        finally:
            clone_fate = self.after_clones(info.name)
        return SweepRun(store, outcome.record.id, clone_fate)

    def make_clones(self, info: VmInfo, plan: SweepPlan) -> list[str]:
        """NAME-2..NAME-N, created (on other nodes when there are any) and deployed like NAME."""
        if self.parallel <= 1:
            return []
        from provision.sweep.clones import ensure_clones

        return ensure_clones(
            self.config,
            self.state_dir,
            self.lab,
            info,
            self.parallel,
            plan.space,
            reporter=self.reporter,
            allow_overcommit=self.allow_overcommit,
        )

    def make_worker(
        self, name: str, disposable: bool = False, progress: SharedProgress | None = None
    ) -> Worker:
        """Resize and probe VM `name`; a clone removed after the sweep is `disposable`."""
        from provision.pve.lifecycle import Lab
        from provision.sweep.lab import LabProber, LabShapeController

        lab = self.lab
        reporter = progress.channel(name) if progress else None
        if reporter is not None:  # the same connection, this worker's progress channel
            lab = Lab(self.config, self.state_dir, reporter, client=self.lab.client)
        prober = LabProber(
            lab,
            name,
            self.options,
            self.state_dir,
            reporter or self.reporter,
            dict(self.stored_options),
        )
        return Worker(
            LabShapeController(lab, name, self.allow_overcommit),
            prober,
            disposable=disposable,
            reporter=reporter,
        )

    def _progress(self) -> SharedProgress | None:
        """Several workers at once: each reports on its own channel, naming its VM."""
        if self.parallel <= 1:
            return None
        from provision.sweep.progress import SharedProgress

        return SharedProgress(self.reporter)

    def after_clones(self, name: str) -> CloneFate:
        """Remove the clones the sweep made (also after a failure), or say that they stay."""
        fate = CloneFate()
        if self.parallel <= 1:
            return fate
        from provision.sweep.clones import (
            clone_names,
            disown_clones,
            owned_clones,
            remove_clones,
        )

        names = clone_names(name, self.parallel)
        ours = [c for c in names if c in owned_clones(self.state_dir)]
        fate.user_vms = [c for c in names if c not in ours]
        if self.keep_clones:
            disown_clones(self.state_dir, names)
            fate.kept = ours
            self.notify(f"clones kept: {', '.join(names)}; `labctl down NAME --yes` removes one")
            return fate
        self.reporter.stage("clones")
        try:
            fate.removed, fate.left = remove_clones(
                self.lab, self.state_dir, name, self.parallel, self.reporter
            )
        except LabctlError as error:  # never hide the sweep's own outcome behind the cleanup's
            self.reporter.warn(
                f"could not remove the sweep's clones: {error}; "
                "`labctl ls` shows them, `labctl down NAME --yes` removes one"
            )
            fate.left = ours
            return fate
        if fate.removed:
            self.notify(f"clones removed: {', '.join(fate.removed)}")
        if fate.left:
            self.notify(
                f"clones left: {', '.join(fate.left)}; `labctl down NAME --yes` removes one"
            )
        return fate
