"""A sweep store on any database file (or ":memory:"), with labctl's whole schema."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from provision import store
from provision.sweep.db import SweepStore


def sweep_store_at(path: Path | str) -> SweepStore:
    """What `open_store(state_dir)` gives, on a database file of the test's choosing."""
    connection = sqlite3.connect(str(path), isolation_level=None)
    connection.row_factory = sqlite3.Row
    connection.execute("PRAGMA foreign_keys = ON")
    store.migrate(connection)
    return SweepStore(connection)
