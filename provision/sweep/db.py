"""Sweeps in SQLite: one row per sweep, one per measured shape, committed as soon as measured.

A sweep is found again by its identity (hash of VM, shape space, targets and probe options), so
the same command run again resumes it without probing the shapes it already has.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from provision import __version__
from provision.errors import UsageError
from provision.shape import Shape
from provision.sweep.model import Measurement, Status, shape_from_dict, shape_to_dict
from provision.sweep.service import LevelPoint

# The tables are migration v3 in provision.store.MIGRATIONS (sweeps, sweep_points).


@dataclass(frozen=True)
class SweepRecord:
    id: str
    identity: str
    vm: str
    spec: dict[str, Any]
    original_shape: Shape | None
    status: str
    created_at: str
    updated_at: str
    labctl_version: str
    resumed: bool = False


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class SweepStore:
    """Sweep rows over one SQLite connection; every write is committed at once."""

    def __init__(self, connection: sqlite3.Connection) -> None:
        self.db = connection

    def begin(
        self,
        identity: str,
        vm: str,
        spec: dict[str, Any],
        original_shape: Shape | None,
        *,
        fresh: bool = False,
    ) -> SweepRecord:
        """The sweep to continue for this identity, or a new one (always new with fresh).

        A sweep left "running" was killed before it could put the VM back, so its recorded
        original shape stays; otherwise the VM's shape now is the one to return to.
        """
        if not fresh:
            latest = self._latest(identity)
            if latest is not None:
                original = latest.original_shape
                if latest.status != "running" or original is None:
                    original = original_shape
                self.db.execute(
                    "UPDATE sweeps SET status='running', updated_at=?, spec_json=?, "
                    "original_shape=? WHERE id=?",
                    (_now(), json.dumps(spec), _shape_json(original), latest.id),
                )
                self.db.commit()
                return SweepRecord(
                    **{
                        **latest.__dict__,
                        "status": "running",
                        "spec": spec,
                        "original_shape": original,
                        "resumed": True,
                    }
                )
        sweep_id = self._new_id(identity)
        now = _now()
        self.db.execute(
            "INSERT INTO sweeps (id, identity, vm, spec_json, original_shape, status, created_at,"
            " updated_at, labctl_version) VALUES (?, ?, ?, ?, ?, 'running', ?, ?, ?)",
            (
                sweep_id,
                identity,
                vm,
                json.dumps(spec),
                _shape_json(original_shape),
                now,
                now,
                __version__,
            ),
        )
        self.db.commit()
        return self.get(sweep_id)

    def _new_id(self, identity: str) -> str:
        base = identity[:8]
        taken = {
            row[0]
            for row in self.db.execute(
                "SELECT id FROM sweeps WHERE id = ? OR id LIKE ?", (base, base + "-%")
            )
        }
        if base not in taken:
            return base
        number = 2
        while f"{base}-{number}" in taken:
            number += 1
        return f"{base}-{number}"

    def _latest(self, identity: str) -> SweepRecord | None:
        row = self.db.execute(
            "SELECT * FROM sweeps WHERE identity = ? ORDER BY created_at DESC, rowid DESC LIMIT 1",
            (identity,),
        ).fetchone()
        return _record(row) if row else None

    def get(self, sweep_id: str) -> SweepRecord:
        """A sweep by id or unique id prefix; UsageError when there is none or several."""
        rows = self.db.execute("SELECT * FROM sweeps WHERE id = ?", (sweep_id,)).fetchall()
        if not rows:
            rows = self.db.execute(
                "SELECT * FROM sweeps WHERE id LIKE ? ORDER BY created_at",
                (sweep_id.replace("%", "") + "%",),
            ).fetchall()
        if not rows:
            raise UsageError(
                f"no sweep {sweep_id!r} in this state directory",
                hint="`labctl report --list` shows the sweeps kept",
            )
        if len(rows) > 1:
            ids = ", ".join(r["id"] for r in rows)
            raise UsageError(f"sweep id {sweep_id!r} is ambiguous: {ids}")
        return _record(rows[0])

    def all(self) -> list[SweepRecord]:
        rows = self.db.execute("SELECT * FROM sweeps ORDER BY created_at, rowid").fetchall()
        return [_record(r) for r in rows]

    def record(
        self,
        sweep_id: str,
        measurement: Measurement,
        *,
        rebooted: bool = False,
        worker: str = "",
        duration_s: float | None = None,
    ) -> None:
        """Keep one measured shape; committed before returning so a kill loses nothing."""
        shape = measurement.shape
        seq = self.db.execute(
            "SELECT COALESCE(MAX(seq), 0) + 1 FROM sweep_points WHERE sweep_id = ?", (sweep_id,)
        ).fetchone()[0]
        self.db.execute(
            "INSERT OR REPLACE INTO sweep_points (sweep_id, seq, cores, memory_mib, cpu_type, "
            "status, eval_tps, ttft_s, mem_total_mib, peak_used_mib, error, rebooted, worker, "
            "duration_s, probe_id, details_json, measured_at, eval_tps_n, eval_tps_ci_low, "
            "eval_tps_ci_high) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                sweep_id,
                seq,
                shape.cores,
                shape.memory_mib,
                shape.cpu_type,
                measurement.status.value,
                measurement.eval_tps,
                measurement.ttft_s,
                measurement.mem_total_mib,
                measurement.peak_used_mib,
                measurement.error,
                int(rebooted),
                worker,
                duration_s,
                measurement.details.get("probe_id"),
                json.dumps(measurement.details, default=str),
                _now(),
                measurement.eval_tps_n,
                *(measurement.eval_tps_ci or (None, None)),
            ),
        )
        self._record_levels(sweep_id, measurement)
        self.db.execute("UPDATE sweeps SET updated_at = ? WHERE id = ?", (_now(), sweep_id))
        self.db.commit()

    def _record_levels(self, sweep_id: str, measurement: Measurement) -> None:
        shape = measurement.shape
        key = (sweep_id, shape.cores, shape.memory_mib, shape.cpu_type)
        self.db.execute(
            "DELETE FROM sweep_point_levels WHERE sweep_id = ? AND cores = ? AND memory_mib = ? "
            "AND cpu_type = ?",
            key,
        )
        self.db.executemany(
            "INSERT INTO sweep_point_levels (sweep_id, cores, memory_mib, cpu_type, users, "
            "ttft_p95_s, tps_per_user, aggregate_tps, completed, failed) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (*key, lv.users, lv.ttft_p95_s, lv.tps_per_user, lv.aggregate_tps)
                + (lv.completed, lv.failed)
                for lv in measurement.levels
            ],
        )

    def measurements(self, sweep_id: str) -> list[Measurement]:
        rows = self.db.execute(
            "SELECT * FROM sweep_points WHERE sweep_id = ? ORDER BY seq", (sweep_id,)
        ).fetchall()
        levels = self._levels(sweep_id)
        return [
            replace(m, levels=levels.get((m.shape.cores, m.shape.memory_mib, m.shape.cpu_type), ()))
            for m in map(_measurement, rows)
        ]

    def _levels(self, sweep_id: str) -> dict[tuple[int, int, str], tuple[LevelPoint, ...]]:
        found: dict[tuple[int, int, str], tuple[LevelPoint, ...]] = {}
        for row in self.db.execute(
            "SELECT * FROM sweep_point_levels WHERE sweep_id = ? ORDER BY users", (sweep_id,)
        ):
            key = (row["cores"], row["memory_mib"], row["cpu_type"])
            found[key] = (*found.get(key, ()), LevelPoint.from_dict(dict(row)))
        return found

    def point_stats(self, sweep_id: str) -> dict[str, Any]:
        row = self.db.execute(
            "SELECT COUNT(*), COALESCE(SUM(rebooted), 0), COALESCE(SUM(duration_s), 0) "
            "FROM sweep_points WHERE sweep_id = ?",
            (sweep_id,),
        ).fetchone()
        return {"probes": row[0], "reboots": row[1], "probe_seconds": round(row[2], 1)}

    def finish(self, sweep_id: str, status: str) -> None:
        self.db.execute(
            "UPDATE sweeps SET status = ?, updated_at = ? WHERE id = ?", (status, _now(), sweep_id)
        )
        self.db.commit()


def _shape_json(shape: Shape | None) -> str | None:
    return json.dumps(shape_to_dict(shape)) if shape is not None else None


def _record(row: sqlite3.Row) -> SweepRecord:
    original = json.loads(row["original_shape"]) if row["original_shape"] else None
    return SweepRecord(
        id=row["id"],
        identity=row["identity"],
        vm=row["vm"],
        spec=json.loads(row["spec_json"]),
        original_shape=shape_from_dict(original) if original else None,
        status=row["status"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        labctl_version=row["labctl_version"],
    )


def _measurement(row: sqlite3.Row) -> Measurement:
    return Measurement(
        shape=Shape(row["cores"], row["memory_mib"], row["cpu_type"]),
        status=Status(row["status"]),
        eval_tps=row["eval_tps"],
        ttft_s=row["ttft_s"],
        mem_total_mib=row["mem_total_mib"],
        peak_used_mib=row["peak_used_mib"],
        error=row["error"],
        details=json.loads(row["details_json"] or "{}"),
        eval_tps_n=row["eval_tps_n"],
        eval_tps_ci=_interval(row["eval_tps_ci_low"], row["eval_tps_ci_high"]),
    )


def _interval(low: float | None, high: float | None) -> tuple[float, float] | None:
    return (low, high) if low is not None and high is not None else None


def open_store(state_dir: Path) -> SweepStore:
    """The sweep store in labctl's database (<state>/labctl.sqlite)."""
    from provision import store  # owned by the probe module; applies every migration

    return SweepStore(store.connect(state_dir))
