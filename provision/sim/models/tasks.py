"""Tasks: work run as a UPID task in its own thread, and the task read side.

`Task` itself (UPID, status, exit status, log) is `provision.sim.tasks`.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from provision.sim import permissions
from provision.sim.access import ROOT
from provision.sim.errors import PveError
from provision.sim.models.base import truthy
from provision.sim.models.state import ClusterState
from provision.sim.tasks import UPID_RE, Task, TaskError

log = logging.getLogger("provision.sim")


class TaskMixin(ClusterState):
    """Spawning tasks (`_spawn`) and GET task status, task lists and task logs."""

    def _spawn(
        self,
        node: str,
        task_type: str,
        task_id: str,
        user: str,
        work: Callable[[Task], None],
        finish: Callable[[Task], None] | None = None,
        lock_vmid: int | None = None,
    ) -> Task:
        """Create a task and run `work` in a thread; `finish` runs once the duration is over.

        Returns at once, as PVE's fork_worker returns the UPID once the forked task runs
        (pve-common `src/PVE/RESTEnvironment.pm:686-745`): the caller's pvedaemon worker is
        free again while the task runs (daemon.py). A fault registered for this task type
        replaces the work with its error.
        """
        now = time.time()
        with self.lock:
            self._next_pid += 1
            pid = self._next_pid
            node_obj = self.nodes[node]
            pstart = int((now - node_obj.booted_at) * 100) & 0xFFFFFFFF
            upid = (
                f"UPID:{node}:{pid:08X}:{pstart:08X}:{int(now):08X}:{task_type}:{task_id}:{user}:"
            )
            task = Task(
                upid,
                node,
                task_type,
                task_id,
                user,
                pid,
                pstart,
                now,
                self.settings.duration(task_type),
            )
            self.tasks[upid] = task
        injected = self.faults.take_task(task_type)
        thread = threading.Thread(
            target=self._run_task,
            args=(task, work, finish, lock_vmid, injected),
            name=f"task-{task_type}-{task_id}",
            daemon=True,
        )
        self._threads = [t for t in self._threads if t.is_alive()]
        self._threads.append(thread)
        thread.start()
        return task

    def _run_task(
        self,
        task: Task,
        work: Callable[[Task], None],
        finish: Callable[[Task], None] | None,
        lock_vmid: int | None,
        injected: str | None,
    ) -> None:
        error: str | None = None
        try:
            if injected is not None:
                raise TaskError(injected)
            with self._op_lock(lock_vmid) if lock_vmid is not None else contextlib.nullcontext():
                work(task)
                task.begun.set()
                remaining = task.starttime + task.duration - time.time()
                if remaining > 0:
                    time.sleep(remaining)
                if finish is not None:
                    finish(task)
        except (TaskError, PveError) as exc:
            error = str(exc)
        except Exception as exc:  # a backend failure must end the task, not kill the thread
            log.exception("task %s failed unexpectedly", task.upid)
            error = f"{type(exc).__name__}: {exc}"
        with self.lock:
            task.finish(error)
        self.save()

    def task(self, node: str, upid: str, user: str = ROOT) -> Task:
        """One task, for its owner or a caller with Sys.Audit on the node (Tasks.pm:527-528)."""
        match = UPID_RE.match(upid)
        if not match:
            raise PveError.params({"upid": "unable to parse worker upid"})
        permissions.task_access(self.access, user, node, match.group(8))
        with self.lock:
            task = self.tasks.get(upid)
        if task is None or task.node != node:
            raise PveError.params({"upid": "no such task"})
        return task

    def task_list(
        self, node: str, params: dict[str, Any], user: str = ROOT
    ) -> tuple[list[dict[str, Any]], int]:
        """GET /nodes/{node}/tasks, newest first: filters vmid, typefilter, source, errors; only
        the caller's own tasks without Sys.Audit on the node (Tasks.pm:184-190).

        Not simulated: userfilter, statusfilter, since/until.
        """
        self.node(node)
        auditor = permissions.sees(self.access, user, f"/nodes/{node}", ["Sys.Audit"])
        with self.lock:
            tasks = sorted(
                (t for t in self.tasks.values() if t.node == node),
                key=lambda t: t.starttime,
                reverse=True,
            )
        vmid, kind = params.get("vmid"), params.get("typefilter")
        source = params.get("source", "archive")
        chosen = [
            t
            for t in tasks
            if (vmid is None or t.id == str(vmid))
            and (kind is None or t.type == kind)
            and (source == "all" or (t.status == "running") == (source == "active"))
            and (not truthy(params.get("errors")) or t.exitstatus not in (None, "OK"))
            and (auditor or permissions.owns_task(user, t.user))
        ]
        start, limit = int(params.get("start", 0)), int(params.get("limit", 50))
        return [t.list_json() for t in chosen[start : start + limit]], len(chosen)

    def task_log(
        self, node: str, upid: str, start: int, limit: int, user: str = ROOT
    ) -> tuple[list[dict[str, Any]], int]:
        """`[{n, t}]` lines from `start` (0-based), at most `limit`, and the total line count."""
        task = self.task(node, upid, user)
        with self.lock:
            lines = list(task.log)
        chosen = lines[start : start + limit] if limit > 0 else lines[start:]
        return [{"n": start + i + 1, "t": text} for i, text in enumerate(chosen)], len(lines)
