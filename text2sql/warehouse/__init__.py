"""DuckDB over Iceberg, and the sandbox every untrusted query runs in.

`WarehouseSpec.from_config(cfg)` describes how to open a DuckDB connection in which every catalog
table is queryable as `namespace.table`, pinned to the snapshot recorded in `schemas/`, by one of the
engines of `warehouse.engine`:

- `materialized`: pyiceberg scans each table at its pinned snapshot into Arrow, once, into a
  DuckDB file under `warehouse.cache_dir` keyed by the snapshot fingerprint; queries then open that
  file read-only. Fastest per query, and the sandbox needs no file access at all; but a full copy.
- `iceberg`: DuckDB's iceberg extension (loaded from the pip package's file) reads the Iceberg
  metadata and parquet files on every query through views pinned with `snapshot_from_id`: no copy.
- `auto` (default): `materialized` while the pinned snapshots hold at most `warehouse.materialize_max_bytes`
  (their `total-files-size` summaries, read through pyiceberg), else `iceberg` (`choose_engine`).
- `duckdb`: the DuckDB database file `warehouse.duckdb_path` is the warehouse (no Iceberg catalog, no
  snapshots: queries see what the file holds), opened read-only like a materialized file.

Which engine ran, and why, is logged on the `text2sql.warehouse` logger (the CLI prints it on stderr).
`bench/warehouse_engines.py` measures materialized against iceberg.

Every query goes through `check_sql` (sqlglot: exactly one read-only SELECT/WITH query whose tables and
columns exist) and then `QueryRunner`: worker processes
holding a read-only, locked-down connection (no external access, memory limit, thread count, row cap),
with a timeout that interrupts the query and kills the worker if it does not stop.

Model replies are judged whole by `judge_reply` (eval and serve alike): the SQL located in the reply, never
a write cut down to a read, checked by `check_reply_sql` with DuckDB's own parser and binder. Behind every
check, a worker runs one statement per call on a fresh cursor (no temp object outlives its query) under
an address-space cap (`MEMORY_SLACK_BYTES`).

The package's modules, lowest first (each imports only from those before it):

    engines   specs, engine choice, materialization, the locked-down connection
    guard     `check_sql`, `judge_reply` and DuckDB's parser/binder checks
    sandbox   worker processes, `QueryRunner`, `run_query`, `render_table`

Everything used elsewhere is importable from here: `from text2sql.warehouse import QueryRunner`.
"""

from __future__ import annotations

from text2sql.warehouse.engines import (
    WarehouseSpec,
    choose_engine,
    materialize,
    open_connection,
    pinned_data_bytes,
    spec_fingerprint,
)
from text2sql.warehouse.guard import (
    FORBIDDEN_FUNCTIONS,
    SQLCheck,
    check_reply_sql,
    check_sql,
    extract_sql,
    judge_reply,
    locate_sql,
)
from text2sql.warehouse.sandbox import (
    KILL_GRACE_S,
    MEMORY_SLACK_BYTES,
    QueryResult,
    QueryRunner,
    _parse_bytes,  # tests check the size parser
    render_table,
    run_query,
)

__all__ = [
    "FORBIDDEN_FUNCTIONS", "KILL_GRACE_S", "MEMORY_SLACK_BYTES", "QueryResult", "QueryRunner", "SQLCheck",
    "WarehouseSpec", "check_reply_sql", "check_sql", "choose_engine", "extract_sql", "judge_reply", "locate_sql",
    "materialize", "open_connection", "pinned_data_bytes", "render_table", "run_query", "spec_fingerprint",
]
