"""labctl's results database: SQLite at <state>/labctl.sqlite, schema versioned by migrations.

MIGRATIONS is an append-only list of SQL scripts; script i brings the schema from version i to
i + 1 and the version lives in `PRAGMA user_version`. Never edit a released migration: append a
new one. Each probe run is committed the moment it finishes, so an interrupted probe keeps the
runs it finished.
"""

from __future__ import annotations

from provision.store.queries import (
    LEVEL_COLUMNS,
    RESULT_COLUMNS,
    kept_levels,
    kept_runs,
    list_levels,
    list_runs,
)
from provision.store.recording import (
    ProbeRecorder,
    VmRecord,
    finish_probe,
    record_facts,
    record_run,
    start_probe,
)
from provision.store.schema import DB_NAME, MIGRATIONS, connect, db_path, migrate, schema_version

__all__ = [
    "DB_NAME",
    "LEVEL_COLUMNS",
    "MIGRATIONS",
    "RESULT_COLUMNS",
    "ProbeRecorder",
    "VmRecord",
    "connect",
    "db_path",
    "finish_probe",
    "kept_levels",
    "kept_runs",
    "list_levels",
    "list_runs",
    "migrate",
    "record_facts",
    "record_run",
    "schema_version",
    "start_probe",
]
