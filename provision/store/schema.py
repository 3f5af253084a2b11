"""The schema: the database file, its migrations and the connection every caller uses."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from provision import __version__
from provision.errors import ConfigError

DB_NAME = "labctl.sqlite"

MIGRATIONS: list[str] = [
    # v1: probes and their runs
    """
    CREATE TABLE probes (
        id INTEGER PRIMARY KEY,
        started_at TEXT NOT NULL,
        finished_at TEXT,
        status TEXT NOT NULL DEFAULT 'running',  -- running | ok | failed | oom
        error TEXT,
        vm_name TEXT NOT NULL,
        vmid INTEGER,
        node TEXT,
        cores INTEGER,
        memory_mib INTEGER,
        cpu_type TEXT,
        labctl_version TEXT NOT NULL,
        model TEXT NOT NULL,
        options_json TEXT NOT NULL,
        cache_bust TEXT,
        vcpus INTEGER,
        cpu_model TEXT,
        avx2 INTEGER,
        kernel TEXT,
        mem_total_bytes INTEGER,
        ollama_version TEXT,
        model_digest TEXT,
        model_size_bytes INTEGER,
        on_cpu INTEGER,
        facts_json TEXT,
        summary_json TEXT
    );
    CREATE INDEX probes_by_vm ON probes (vm_name, started_at);
    CREATE TABLE probe_runs (
        id INTEGER PRIMARY KEY,
        probe_id INTEGER NOT NULL REFERENCES probes (id) ON DELETE CASCADE,
        run_index INTEGER NOT NULL,
        warmup INTEGER NOT NULL,
        ok INTEGER NOT NULL,
        error TEXT,
        oom INTEGER NOT NULL DEFAULT 0,
        recorded_at TEXT NOT NULL,
        started_at REAL,
        load_kind TEXT,
        done_reason TEXT,
        eval_count INTEGER,
        eval_duration_ns INTEGER,
        prompt_eval_count INTEGER,
        prompt_eval_duration_ns INTEGER,
        load_duration_ns INTEGER,
        total_duration_ns INTEGER,
        eval_tps REAL,
        prompt_tps REAL,
        ttft_s REAL,
        wall_s REAL,
        peak_mem_used_bytes INTEGER,
        min_mem_available_bytes INTEGER,
        peak_swap_used_bytes INTEGER,
        peak_rss_bytes INTEGER,
        peak_load1 REAL,
        mean_cpu_pct REAL,
        peak_busiest_core_pct REAL,
        samples INTEGER,
        sample_hz REAL,
        sampler_cpu_pct REAL,
        UNIQUE (probe_id, run_index)
    );
    """,
    # v2: the samples behind each run's peaks, for plots of a run over time
    """
    CREATE TABLE probe_samples (
        run_id INTEGER NOT NULL REFERENCES probe_runs (id) ON DELETE CASCADE,
        t REAL NOT NULL,
        load1 REAL,
        cpu_pct REAL,
        busiest_core_pct REAL,
        mem_used_bytes INTEGER,
        mem_available_bytes INTEGER,
        swap_used_bytes INTEGER,
        ollama_rss_bytes INTEGER
    );
    CREATE INDEX probe_samples_by_run ON probe_samples (run_id, t);
    """,
    # v3: sweeps (owner: provision/sweep/db.py) and each shape they measured
    """
    CREATE TABLE sweeps (
        id TEXT PRIMARY KEY,                 -- what users type: labctl report ID
        identity TEXT NOT NULL,              -- sha256 of vm + space + targets + probe options
        vm TEXT NOT NULL,
        spec_json TEXT NOT NULL,             -- space, targets, probe options, strategy
        original_shape TEXT,                 -- JSON shape of the VM before the sweep touched it
        status TEXT NOT NULL,                -- running | done | interrupted | failed
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        labctl_version TEXT NOT NULL
    );
    CREATE INDEX sweeps_by_identity ON sweeps (identity, created_at);
    CREATE TABLE sweep_points (
        sweep_id TEXT NOT NULL REFERENCES sweeps (id) ON DELETE CASCADE,
        seq INTEGER NOT NULL,                -- measurement order within the sweep
        cores INTEGER NOT NULL,
        memory_mib INTEGER NOT NULL,
        cpu_type TEXT NOT NULL,
        status TEXT NOT NULL,                -- ok | oom | failed
        eval_tps REAL,
        ttft_s REAL,
        mem_total_mib INTEGER,
        peak_used_mib INTEGER,
        error TEXT NOT NULL DEFAULT '',
        rebooted INTEGER NOT NULL DEFAULT 0,
        worker TEXT NOT NULL DEFAULT '',
        duration_s REAL,
        probe_id INTEGER REFERENCES probes (id) ON DELETE SET NULL,
        details_json TEXT NOT NULL DEFAULT '{}',
        measured_at TEXT NOT NULL,
        PRIMARY KEY (sweep_id, cores, memory_mib, cpu_type)
    );
    """,
    # v4: how well each median eval tok/s is known (`--runs auto`): the runs it rests on and the
    # 95 % confidence interval of the median (provision/probe/stats.py)
    """
    ALTER TABLE probes ADD COLUMN runs_auto INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE probes ADD COLUMN eval_tps_n INTEGER;
    ALTER TABLE probes ADD COLUMN eval_tps_ci_low REAL;
    ALTER TABLE probes ADD COLUMN eval_tps_ci_high REAL;
    ALTER TABLE sweep_points ADD COLUMN eval_tps_n INTEGER;
    ALTER TABLE sweep_points ADD COLUMN eval_tps_ci_low REAL;
    ALTER TABLE sweep_points ADD COLUMN eval_tps_ci_high REAL;
    """,
    # v5: a service sweep (`--users N`) keeps each shape's concurrency levels
    # (owner: provision/sweep/db.py; the levels themselves: provision/sweep/service.py)
    """
    CREATE TABLE sweep_point_levels (
        sweep_id TEXT NOT NULL,
        cores INTEGER NOT NULL,
        memory_mib INTEGER NOT NULL,
        cpu_type TEXT NOT NULL,
        users INTEGER NOT NULL,              -- concurrent streams
        ttft_p95_s REAL,
        tps_per_user REAL,                   -- median eval tok/s of one stream
        aggregate_tps REAL,                  -- all streams together
        completed INTEGER NOT NULL,
        failed INTEGER NOT NULL,
        PRIMARY KEY (sweep_id, cores, memory_mib, cpu_type, users),
        FOREIGN KEY (sweep_id, cores, memory_mib, cpu_type)
            REFERENCES sweep_points (sweep_id, cores, memory_mib, cpu_type) ON DELETE CASCADE
    );
    """,
    # v6: concurrency levels and thread counts (provision/probe/concurrency.py): each level's
    # repeats and their requests, each thread count's load (counted apart), the CPU topology
    # the guest saw, OLLAMA_NUM_PARALLEL in force, and why a point was invalid
    """
    ALTER TABLE probes ADD COLUMN num_parallel INTEGER;
    ALTER TABLE probes ADD COLUMN cpu_sockets INTEGER;
    ALTER TABLE probes ADD COLUMN cpu_cores INTEGER;
    ALTER TABLE probes ADD COLUMN cpu_threads_per_core INTEGER;
    ALTER TABLE probes ADD COLUMN shape_problem TEXT;  -- set when status = 'invalid'
    CREATE TABLE probe_thread_loads (
        id INTEGER PRIMARY KEY,
        probe_id INTEGER NOT NULL REFERENCES probes (id) ON DELETE CASCADE,
        num_thread INTEGER,                  -- NULL: auto (Ollama's choice)
        ok INTEGER NOT NULL,
        error TEXT,
        load_s REAL,                         -- Ollama's load_duration of the loading request
        wall_s REAL,                         -- the load and the warm-up requests, in the guest
        runner_argv_threads INTEGER,         -- -t N on the runner's command line (NULL: none)
        runner_tasks INTEGER,                -- /proc/PID/task entries of the runner
        runner_parallel INTEGER              -- -np N: the runner's parallel slots
    );
    CREATE TABLE probe_levels (
        id INTEGER PRIMARY KEY,
        probe_id INTEGER NOT NULL REFERENCES probes (id) ON DELETE CASCADE,
        level_index INTEGER NOT NULL,        -- measurement order within the probe
        users INTEGER NOT NULL,
        repeat INTEGER NOT NULL,
        num_thread INTEGER,
        wall_s REAL NOT NULL,
        agent_cpu_s REAL,
        sampler_cpu_s REAL,
        sampler_wall_s REAL,
        samples INTEGER,
        peak_rss_bytes INTEGER,
        UNIQUE (probe_id, level_index)
    );
    CREATE TABLE probe_level_requests (
        level_id INTEGER NOT NULL REFERENCES probe_levels (id) ON DELETE CASCADE,
        slot INTEGER NOT NULL,
        ok INTEGER NOT NULL,
        error TEXT,
        ttft_s REAL,
        queue_wait_s REAL,
        eval_count INTEGER,
        eval_tps REAL,
        tokens INTEGER NOT NULL,
        gaps_json TEXT NOT NULL DEFAULT '[]',  -- inter-token gaps (s), timed in the guest
        PRIMARY KEY (level_id, slot)
    );
    """,
]


def db_path(state_dir: Path) -> Path:
    return Path(state_dir) / DB_NAME


def connect(state_dir: Path) -> sqlite3.Connection:
    """Open (creating if needed) the results database and bring its schema up to date."""
    path = db_path(state_dir)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    if not path.exists():
        path.touch(mode=0o600)
    try:
        conn = sqlite3.connect(path, timeout=30, isolation_level=None)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute("PRAGMA journal_mode = WAL")  # probe and sweep may write at the same time
        migrate(conn, where=str(path))
    except sqlite3.DatabaseError as error:
        raise ConfigError(f"results database {path} is unusable: {error}") from None
    return conn


def schema_version(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def migrate(
    conn: sqlite3.Connection,
    *,
    where: str = "the results database",
    migrations: list[str] | None = None,
) -> int:
    """Apply the migrations the database lacks, each atomically; returns the final version."""
    steps = MIGRATIONS if migrations is None else migrations
    while True:
        version = schema_version(conn)
        if version > len(steps):
            raise ConfigError(
                f"{where} has schema version {version}, newer than this labctl "
                f"({__version__}) knows ({len(steps)})",
                hint="upgrade labctl",
            )
        if version == len(steps):
            return version
        try:
            conn.executescript(
                f"BEGIN IMMEDIATE;\n{steps[version]}\nPRAGMA user_version = {version + 1};\nCOMMIT;"
            )
        except sqlite3.OperationalError:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            if schema_version(conn) == version:  # not a concurrent migrator: a real failure
                raise
