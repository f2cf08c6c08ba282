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
"""

from __future__ import annotations

import difflib
import hashlib
import logging
import multiprocessing as mp
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from text2sql.errors import SchemaSnapshotError, UnsafeSQLError
from text2sql.vocab import DIALECT

if TYPE_CHECKING:
    from text2sql.catalog import SchemaSnapshot
    from text2sql.config import Config

log = logging.getLogger("text2sql.warehouse")

# Table functions and scalar functions that reach outside the warehouse or inspect the host.
FORBIDDEN_FUNCTIONS = frozenset("""
read_csv read_csv_auto read_parquet parquet_scan read_json read_json_auto read_json_objects read_ndjson
read_ndjson_auto read_ndjson_objects read_text read_blob glob iceberg_scan iceberg_metadata iceberg_snapshots
delta_scan sqlite_scan sqlite_attach postgres_scan postgres_attach mysql_scan query query_table getenv
current_setting duckdb_settings duckdb_extensions duckdb_secrets which_secret read_xlsx st_read
""".split())

# Statement kinds other than a query, named for the refusal message.
_QUERY_TYPES = ("Select", "Union", "Intersect", "Except", "Subquery")
_WRITE_NODES = ("Insert", "Update", "Delete", "Merge", "Create", "Drop", "Alter", "Copy", "Command",
                "Attach", "Detach", "Pragma", "Set", "Use", "Transaction", "Commit", "Rollback", "Install",
                "Load", "Export", "Refresh", "Summarize", "Describe", "TruncateTable")


@dataclass
class SQLCheck:
    ok: bool
    kind: str | None = None
    """None when ok; else parse_error | refused | unknown_table | unknown_column."""
    message: str = ""
    tables: list[str] = field(default_factory=list)
    """Qualified names of the tables the query reads."""


def check_sql(sql: str, snapshot: SchemaSnapshot | None = None) -> SQLCheck:
    """Is `sql` exactly one read-only query whose tables and columns exist in the snapshot?

    >>> check_sql("DELETE FROM t").kind
    'refused'
    """
    import sqlglot
    from sqlglot import exp
    from sqlglot.errors import ParseError

    try:
        statements = [s for s in sqlglot.parse(sql, read=DIALECT) if s is not None]
    except ParseError as exc:
        return SQLCheck(False, "parse_error", _first_line(str(exc)))
    except Exception as exc:  # sqlglot's tokenizer raises a few other kinds on garbage input
        return SQLCheck(False, "parse_error", _first_line(f"{type(exc).__name__}: {exc}"))
    if not statements:
        return SQLCheck(False, "parse_error", "no SQL statement")
    if len(statements) > 1:
        return SQLCheck(False, "refused", f"{len(statements)} statements: only one query is allowed")
    tree = statements[0]
    if type(tree).__name__ not in _QUERY_TYPES:
        return SQLCheck(False, "refused", f"not a read-only query ({type(tree).__name__.upper()} statement)")
    for node in tree.walk():
        name = type(node).__name__
        if name in _WRITE_NODES:
            return SQLCheck(False, "refused", f"{name.upper()} is not allowed inside a query")
        if isinstance(node, exp.Func):
            fname = (node.name if isinstance(node, exp.Anonymous) else node.sql_name()).lower()
            if fname in FORBIDDEN_FUNCTIONS or fname.startswith(("read_", "duckdb_", "pragma_")):
                return SQLCheck(False, "refused", f"function {fname}() is not allowed")
    if isinstance(tree, exp.Select) and tree.args.get("into"):
        return SQLCheck(False, "refused", "SELECT ... INTO is not allowed")
    if snapshot is None:
        return SQLCheck(True)
    return _check_names(tree, snapshot)


def _check_names(tree, snapshot: SchemaSnapshot) -> SQLCheck:
    from sqlglot import exp
    from sqlglot.errors import OptimizeError
    from sqlglot.optimizer.qualify import qualify

    cte_names = {cte.alias_or_name.lower() for cte in tree.find_all(exp.CTE)}
    tables = []
    tree = tree.copy()
    for table in tree.find_all(exp.Table):
        if not table.name:  # a table function; forbidden ones were refused above
            continue
        if not table.db and table.name.lower() in cte_names:
            continue
        written = ".".join(p for p in (table.db, table.name) if p)
        if table.catalog:
            written = f"{table.catalog}.{written}"
        resolved = snapshot.resolve(written)
        if resolved is None:
            choices = list(snapshot.tables) + [n.split(".", 1)[-1] for n in snapshot.tables]
            close = difflib.get_close_matches(written, choices, n=1, cutoff=0.5)
            hint = f"; did you mean {snapshot.resolve(close[0]) or close[0]}?" if close else ""
            return SQLCheck(False, "unknown_table", f"unknown table {written!r}{hint}")
        ns, _, name = resolved.rpartition(".")
        # Qualify bare names so sqlglot resolves columns against the right table.
        table.set("db", exp.to_identifier(ns) if ns else None)
        table.set("catalog", None)
        tables.append(resolved)
    schema: dict[str, Any] = {}
    for qualified in set(tables):
        ns, _, name = qualified.rpartition(".")
        cols = {c.name: c.type for c in snapshot.tables[qualified].columns}
        (schema.setdefault(ns, {}) if ns else schema)[name] = cols
    try:
        qualify(tree, schema=schema, dialect=DIALECT, validate_qualify_columns=True)
    except OptimizeError as exc:
        message = _first_line(str(exc))
        col = message.split("'")[1] if message.count("'") >= 2 else ""
        known = sorted({c.name for t in set(tables) for c in snapshot.tables[t].columns})
        if col in known:  # ambiguous to sqlglot rather than unknown: DuckDB's binder is the judge of that
            return SQLCheck(True, None, f"names not checked: {message}", sorted(set(tables)))
        close = difflib.get_close_matches(col, known, n=1, cutoff=0.5) if col else []
        hint = f"; did you mean {close[0]}?" if close else ""
        return SQLCheck(False, "unknown_column", f"unknown column {col!r}{hint}" if col else message, sorted(set(tables)))
    except Exception as exc:  # qualify can trip on unusual but valid SQL: let DuckDB be the judge then
        return SQLCheck(True, None, f"names not checked: {_first_line(str(exc))}", sorted(set(tables)))
    return SQLCheck(True, tables=sorted(set(tables)))


def _first_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return (lines[0] if lines else text)[:300]


# ---------------------------------------------------------------- opening DuckDB over Iceberg


@dataclass(frozen=True)
class WarehouseSpec:
    """How a worker opens its connection. Picklable, so it crosses to worker processes."""

    database: str = ":memory:"
    """A DuckDB file opened read-only, or :memory: with `setup_sql` views."""
    setup_sql: tuple[str, ...] = ()
    """Statements run before the connection is locked (extension loads, views)."""
    allowed_directories: tuple[str, ...] = ()
    """Directories the locked connection may still read (the iceberg engine's warehouse)."""
    search_path: str = ""
    """Schemas searched for bare table names."""
    engine: str = "duckdb"
    """What reads the data: materialized | iceberg | duckdb (a DuckDB database file as it is)."""

    @classmethod
    def from_duckdb_file(cls, path: str | Path, search_path: str = "") -> WarehouseSpec:
        path = Path(path)
        if not path.is_file():
            raise SchemaSnapshotError(f"database file not found: {path}")
        return cls(database=str(path.resolve()), search_path=search_path, engine="duckdb")

    @classmethod
    def from_config(cls, cfg: Config, snapshot: SchemaSnapshot | None = None) -> WarehouseSpec:
        """The project warehouse at the snapshot pinned in schemas/, opened by the engine `choose_engine` picks
        (logged); `snapshot` when the caller has loaded it already."""
        from text2sql.catalog import load_snapshot

        snapshot = snapshot or load_snapshot(cfg)
        engine, reason = choose_engine(cfg, snapshot)
        log.info("warehouse engine: %s (%s)", engine, reason)
        if engine == "duckdb":
            path = cfg.path(cfg.warehouse.duckdb_path)
            if not path.is_file():
                raise SchemaSnapshotError(f"warehouse.duckdb_path: {path} not found (the DuckDB file to query)")
            # Tables of schema main are listed by bare name: main stays on the path after the named schemas.
            schemas = sorted({n.rpartition(".")[0] for n in snapshot.tables} - {""})
            return cls.from_duckdb_file(path, ",".join([*schemas, "main"]))
        search_path = ",".join(snapshot.namespaces())
        if engine == "materialized":
            return cls(database=str(materialize(cfg, snapshot)), search_path=search_path, engine="materialized")
        return _iceberg_spec(cfg, snapshot, search_path)


def choose_engine(cfg: Config, snapshot: SchemaSnapshot) -> tuple[str, str]:
    """(engine, why): `warehouse.engine` itself, or for `auto` materialized or iceberg by the size of the pinned
    snapshots (the sum of their `total-files-size` summaries, through pyiceberg) against
    `warehouse.materialize_max_bytes`. A table whose size the summary does not give is never copied."""
    w = cfg.warehouse
    if w.engine != "auto":
        return w.engine, f"warehouse.engine: {w.engine}"
    limit = f"warehouse.materialize_max_bytes {_size(w.materialize_max_bytes)}"
    total, unknown = pinned_data_bytes(cfg, snapshot)
    if unknown:
        return "iceberg", f"auto: the pinned snapshot of {unknown[0]} gives no total-files-size; not copied"
    if total > w.materialize_max_bytes:
        return "iceberg", f"auto: the pinned snapshots hold {_size(total)} > {limit}; read in place"
    return "materialized", f"auto: the pinned snapshots hold {_size(total)} <= {limit}; copied into a local DuckDB file"


def pinned_data_bytes(cfg: Config, snapshot: SchemaSnapshot) -> tuple[int, list[str]]:
    """(bytes of data files in the snapshots pinned in schemas/, tables whose snapshot summary gives no size)."""
    from text2sql.catalog import load_catalog

    catalog = load_catalog(cfg, snapshot.catalog)
    total, unknown = 0, []
    for name, t in snapshot.tables.items():
        if t.snapshot_id is None:  # a table with no snapshot holds no data
            continue
        pinned = _load_pinned_table(catalog, name, t.snapshot_id).snapshot_by_id(t.snapshot_id)
        size = pinned.summary.additional_properties.get("total-files-size") if pinned.summary else None
        try:
            total += int(size)
        except (TypeError, ValueError):
            unknown.append(name)
    return total, unknown


def _size(n: int) -> str:
    """A byte count for people.

    >>> _size(2_000_000_000)
    '2.0 GB'
    """
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def materialize(cfg: Config, snapshot: SchemaSnapshot | None = None) -> Path:
    """The DuckDB file holding every table at its pinned snapshot, built on first use (atomically)."""
    from text2sql.catalog import load_catalog, load_snapshot

    snapshot = snapshot or load_snapshot(cfg)
    cache = cfg.path(cfg.warehouse.cache_dir)
    target = cache / f"{snapshot.catalog}-{snapshot.fingerprint[:16]}.duckdb"
    if target.is_file():
        return target
    import duckdb

    cache.mkdir(parents=True, exist_ok=True)
    catalog = load_catalog(cfg, snapshot.catalog)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    con = duckdb.connect(str(tmp))
    try:
        for name, t in snapshot.tables.items():
            table = _load_pinned_table(catalog, name, t.snapshot_id)
            data = table.scan(snapshot_id=t.snapshot_id).to_arrow()  # noqa: F841 (read by DuckDB's replacement scan)
            ns = name.rpartition(".")[0]
            if ns:
                con.execute(f'CREATE SCHEMA IF NOT EXISTS "{ns}"')
            con.execute(f"CREATE TABLE {_qualified(name)} AS SELECT * FROM data")
        con.execute("CHECKPOINT")
    finally:
        con.close()
    os.replace(tmp, target)
    return target


def _load_pinned_table(catalog, name: str, snapshot_id: int | None):
    from pyiceberg.exceptions import NoSuchTableError as IcebergNoSuchTable

    from text2sql.errors import NoSuchTableError

    try:
        table = catalog.load_table(name)
    except IcebergNoSuchTable:
        raise NoSuchTableError(f"table {name} from schemas/ is not in the catalog: run `text2sql schema diff`") from None
    if snapshot_id is not None and table.snapshot_by_id(snapshot_id) is None:
        raise SchemaSnapshotError(
            f"{name}: snapshot {snapshot_id} pinned in schemas/ is not in the catalog (expired, or the lakehouse was "
            "rebuilt with another seed): run `text2sql schema pull`"
        )
    return table


def _iceberg_spec(cfg: Config, snapshot: SchemaSnapshot, search_path: str) -> WarehouseSpec:
    import duckdb_extension_avro
    import duckdb_extension_iceberg

    from text2sql.catalog import load_catalog

    catalog = load_catalog(cfg, snapshot.catalog)
    setup = [f"LOAD '{_extension_file(duckdb_extension_avro)}'", f"LOAD '{_extension_file(duckdb_extension_iceberg)}'"]
    dirs = set()
    for name, t in snapshot.tables.items():
        table = _load_pinned_table(catalog, name, t.snapshot_id)
        location = table.metadata_location.removeprefix("file://")
        dirs.add(table.location().removeprefix("file://"))
        ns = name.rpartition(".")[0]
        if ns:
            setup.append(f'CREATE SCHEMA IF NOT EXISTS "{ns}"')
        pin = f", snapshot_from_id={int(t.snapshot_id)}" if t.snapshot_id is not None else ""
        setup.append(f"CREATE VIEW {_qualified(name)} AS SELECT * FROM iceberg_scan('{location}'{pin})")
    return WarehouseSpec(setup_sql=tuple(setup), allowed_directories=tuple(sorted(dirs)), search_path=search_path,
                         engine="iceberg")


def _extension_file(module) -> str:
    base = Path(module.__file__).parent / "extensions"
    found = sorted(base.rglob("*.duckdb_extension"))
    if not found:
        raise SchemaSnapshotError(f"no DuckDB extension file under {base}")
    return str(found[0])


def _qualified(name: str) -> str:
    return ".".join(f'"{p}"' for p in name.split("."))


def open_connection(spec: WarehouseSpec, memory_limit: str = "2GB", threads: int = 1):
    """A DuckDB connection over the warehouse: read-only data, no external access, configuration locked."""
    import duckdb

    config = {"autoinstall_known_extensions": False, "autoload_known_extensions": False,
              "allow_community_extensions": False, "memory_limit": memory_limit, "threads": threads}
    if spec.database != ":memory:":
        con = duckdb.connect(spec.database, read_only=True, config=config)
        # DuckDB shares one instance per file within a process: a second connection finds it locked already.
        if con.execute("SELECT current_setting('lock_configuration')").fetchone()[0]:
            return con
    else:
        con = duckdb.connect(":memory:", config={**config, "allow_unsigned_extensions": False})
    for statement in spec.setup_sql:
        con.execute(statement)
    if spec.search_path:
        con.execute(f"SET search_path = '{spec.search_path}'")
    if spec.allowed_directories:
        dirs = ", ".join(f"'{d}'" for d in spec.allowed_directories)
        con.execute(f"SET allowed_directories = [{dirs}]")
    # Timestamps are stored in UTC and gold answers assume it: never inherit the host's time zone.
    con.execute("SET TimeZone = 'UTC'")
    # After this nothing can read or write files outside allowed_directories, load extensions, or undo it.
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")
    return con


# ---------------------------------------------------------------- sandboxed execution


@dataclass
class QueryResult:
    columns: list[str] = field(default_factory=list)
    rows: list[tuple] = field(default_factory=list)
    error_kind: str | None = None
    """None on success; else refused | runtime_error | timeout."""
    error: str = ""
    truncated: bool = False
    elapsed_s: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {"columns": self.columns, "rows": [[_jsonable(v) for v in r] for r in self.rows],
                "error_kind": self.error_kind, "error": self.error, "truncated": self.truncated,
                "elapsed_s": round(self.elapsed_s, 4)}


def _jsonable(v: Any) -> Any:
    import datetime as dt
    import decimal

    if isinstance(v, decimal.Decimal):
        return float(v)
    if isinstance(v, (dt.date, dt.datetime, dt.time)):
        return v.isoformat()
    if isinstance(v, (bytes, bytearray)):
        return v.hex()
    if isinstance(v, dict):
        return {k: _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    return v


def _worker_main(conn, spec: WarehouseSpec, memory_limit: str, threads: int) -> None:
    """Worker process: one locked-down connection, queries in, results out; interrupts itself at the deadline."""
    try:
        con = open_connection(spec, memory_limit, threads)
        conn.send(("ready", None))
    except Exception as exc:
        conn.send(("failed", _first_line(f"{type(exc).__name__}: {exc}")))
        return
    while True:
        try:
            message = conn.recv()
        except EOFError:
            return
        if message is None:
            return
        sql, max_rows, timeout_s = message
        timer = threading.Timer(timeout_s, con.interrupt)
        started = time.perf_counter()
        timer.start()
        try:
            cursor = con.execute(sql)
            columns = [d[0] for d in cursor.description or []]
            rows = cursor.fetchmany(max_rows + 1)
            result = QueryResult(columns, rows[:max_rows], truncated=len(rows) > max_rows)
        except Exception as exc:
            kind = "timeout" if "INTERRUPT" in str(exc).upper() else "runtime_error"
            result = QueryResult(error_kind=kind, error=_first_line(f"{type(exc).__name__}: {exc}"))
        finally:
            timer.cancel()
        result.elapsed_s = time.perf_counter() - started
        try:
            conn.send(result)
        except Exception as exc:  # a value that does not pickle
            conn.send(QueryResult(error_kind="runtime_error", error=f"result not transferable: {exc}"))


class _Worker:
    def __init__(self, spec: WarehouseSpec, memory_limit: str, threads: int):
        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_worker_main, args=(child, spec, memory_limit, threads), daemon=True)
        self.process.start()
        child.close()
        status, detail = self.conn.recv() if self.conn.poll(60) else ("failed", "worker did not start in 60 s")
        if status != "ready":
            self.kill()
            raise SchemaSnapshotError(f"cannot open the warehouse: {detail}")

    def run(self, sql: str, max_rows: int, timeout_s: float) -> QueryResult | None:
        """The result, or None when the worker had to be killed (it ignored the interrupt)."""
        self.conn.send((sql, max_rows, timeout_s))
        if self.conn.poll(timeout_s + 2.0):
            try:
                return self.conn.recv()
            except EOFError:
                return None
        return None

    def kill(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join(5)

    def close(self) -> None:
        try:
            self.conn.send(None)
        except (BrokenPipeError, OSError):
            pass
        self.process.join(2)
        self.kill()


class QueryRunner:
    """A pool of sandboxed DuckDB worker processes.

    Args:
        spec: what each worker opens.
        workers: processes (0 = one per CPU core).
        timeout_s: hard limit per query; past it the query is interrupted, and its worker killed and replaced
            if it does not stop within 2 s.
        max_rows: row cap; longer results are truncated and flagged.
        memory_limit, threads: DuckDB settings per worker.
        snapshot: when given, every query is first checked with `check_sql` against it (else only for safety).
    """

    def __init__(self, spec: WarehouseSpec, workers: int = 1, timeout_s: float = 10.0, max_rows: int = 10000,
                 memory_limit: str = "2GB", threads: int = 1, snapshot: SchemaSnapshot | None = None):
        self.spec, self.timeout_s, self.max_rows = spec, timeout_s, max_rows
        self.memory_limit, self.threads, self.snapshot = memory_limit, threads, snapshot
        self.size = workers or os.cpu_count() or 1
        self._idle: list[_Worker] = []
        self._lock = threading.Lock()
        self._available = threading.Semaphore(self.size)

    @classmethod
    def from_config(cls, cfg: Config, spec: WarehouseSpec | None = None, workers: int = 1, **kwargs) -> QueryRunner:
        w = cfg.warehouse
        options = dict(timeout_s=w.timeout_s, max_rows=w.max_rows, memory_limit=w.memory_limit, threads=w.threads)
        options.update(kwargs)
        return cls(spec or WarehouseSpec.from_config(cfg, options.get("snapshot")), workers=workers, **options)

    def run(self, sql: str, max_rows: int | None = None, checked: bool = False) -> QueryResult:
        """Run one query in the sandbox. Never raises for bad SQL: the result says what went wrong.

        `checked=True` skips `check_sql` for SQL the caller has just checked (parsing is most of the cost
        of a small query); the locked-down connection still refuses anything but reading.
        """
        check = SQLCheck(True) if checked else check_sql(sql, self.snapshot)
        if not check.ok and check.kind in ("parse_error", "refused"):
            return QueryResult(error_kind="refused" if check.kind == "refused" else "runtime_error", error=check.message)
        with self._available:
            worker = self._take()
            started = time.perf_counter()
            result = worker.run(sql, max_rows or self.max_rows, self.timeout_s)
            if result is None:
                worker.kill()
                return QueryResult(error_kind="timeout", error=f"stopped after {self.timeout_s:g} s (worker killed)",
                                   elapsed_s=time.perf_counter() - started)
            with self._lock:
                self._idle.append(worker)
            return result

    def run_many(self, sqls: list[str], max_rows: int | None = None, checked: bool = False) -> list[QueryResult]:
        """Run queries in parallel across the workers; results in input order (`checked` as in `run`)."""
        from concurrent.futures import ThreadPoolExecutor

        if self.size == 1 or len(sqls) <= 1:
            return [self.run(s, max_rows, checked) for s in sqls]
        with ThreadPoolExecutor(self.size) as pool:
            return list(pool.map(lambda s: self.run(s, max_rows, checked), sqls))

    def _take(self) -> _Worker:
        with self._lock:
            while self._idle:
                worker = self._idle.pop()
                if worker.process.is_alive():
                    return worker
        return _Worker(self.spec, self.memory_limit, self.threads)

    def close(self) -> None:
        with self._lock:
            workers, self._idle = self._idle, []
        for worker in workers:
            worker.close()

    def __enter__(self) -> QueryRunner:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def run_query(cfg: Config, sql: str, max_rows: int | None = None) -> QueryResult:
    """Check and run one read-only query on the project warehouse (the `text2sql query` command)."""
    from text2sql.catalog import load_snapshot

    snapshot = load_snapshot(cfg)
    check = check_sql(sql, snapshot)
    if not check.ok:
        raise UnsafeSQLError(f"{check.kind}: {check.message}")
    with QueryRunner.from_config(cfg, snapshot=snapshot) as runner:
        return runner.run(sql, max_rows, checked=True)  # just checked above


def render_table(result: QueryResult) -> str:
    """A terminal table of a result (or its error)."""
    if result.error_kind:
        return f"{result.error_kind}: {result.error}"
    from rich.console import Console
    from rich.table import Table

    table = Table(*result.columns)
    for row in result.rows:
        table.add_row(*("NULL" if v is None else str(v) for v in row))
    console = Console(record=True, width=160)
    with console.capture() as capture:
        console.print(table)
    footer = f"{len(result.rows)} row(s){' (truncated)' if result.truncated else ''} in {result.elapsed_s * 1000:.0f} ms"
    return capture.get() + footer


def spec_fingerprint(spec: WarehouseSpec) -> str:
    """A short stable id of what a spec opens (for result caches)."""
    return hashlib.sha256(repr(spec).encode()).hexdigest()[:16]
