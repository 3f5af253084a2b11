"""A sweep killed with SIGKILL mid-way resumes without re-probing and restores the first shape.

The sweep runs in a real child process on a real SQLite file; its VM is a shape kept in a JSON
file (so it survives the kill the way a Proxmox VM's config does). The child's prober stops
forever after a few probes; the test waits until those are committed, then kills it with -9.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from provision.progress import NullReporter
from provision.shape import Shape
from provision.sweep.loop import SweepLoop, Worker
from provision.sweep.model import shape_to_dict
from tests.support.cli import REPO
from tests.support.sweep_fakes import CountingProber, FileVm
from tests.support.sweep_fakes import resume_plan as plan
from tests.support.sweep_store import sweep_store_at

G = 1024
ORIGINAL = Shape(12, 32 * G, "host")
PROBES_BEFORE_KILL = 3


CHILD = textwrap.dedent("""
    import threading
    from tests.support.sweep_fakes import FileVm, CountingProber, resume_plan as plan
    from provision.progress import NullReporter
    from tests.support.sweep_store import sweep_store_at
    from provision.sweep.loop import SweepLoop, Worker

    class StallingProber(CountingProber):
        def measure(self, shape):
            if len(self.probed) == {n}:
                threading.Event().wait()  # hang like a stuck probe until killed
            return super().measure(shape)

    from pathlib import Path
    store = sweep_store_at({db!r})
    SweepLoop(store, [Worker(FileVm(Path({vm!r})), StallingProber())], NullReporter()).run(plan())
""")


def _wait_for_points(db: Path, count: int, child: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert child.poll() is None, "the sweep process ended before it was killed"
        if db.exists():
            store = sweep_store_at(db)
            sweeps = store.all()
            if sweeps and len(store.measurements(sweeps[0].id)) >= count:
                return
        time.sleep(0.05)
    raise AssertionError(f"the sweep did not record {count} points")


def test_sigkilled_sweep_resumes_without_reprobing_and_restores_the_original_shape(
    tmp_path: Path,
) -> None:
    db, vm_file = tmp_path / "labctl.sqlite", tmp_path / "vm.json"
    vm_file.write_text(json.dumps(shape_to_dict(ORIGINAL)))
    sweep_store_at(db)  # create the schema before the child and the test both open it
    script = CHILD.format(n=PROBES_BEFORE_KILL, db=str(db), vm=str(vm_file))
    child = subprocess.Popen([sys.executable, "-c", script], cwd=REPO)  # `tests` importable
    try:
        _wait_for_points(db, PROBES_BEFORE_KILL, child)
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
    assert child.returncode == -signal.SIGKILL

    store = sweep_store_at(db)
    [record] = store.all()
    assert record.status == "running"  # nobody got to say otherwise
    kept = [m.shape for m in store.measurements(record.id)]
    assert len(kept) == PROBES_BEFORE_KILL
    vm = FileVm(vm_file)
    assert vm.current_shape() != ORIGINAL  # left in a sweep shape by the kill

    prober = CountingProber()
    outcome = SweepLoop(store, [Worker(vm, prober)], NullReporter()).run(plan())
    assert outcome.record.id == record.id
    assert not set(prober.probed) & set(kept)
    assert outcome.replayed == PROBES_BEFORE_KILL
    assert outcome.result.minimum is not None
    assert outcome.result.minimum.shape == Shape(4, 4 * G, "host")
    assert vm.current_shape() == ORIGINAL
