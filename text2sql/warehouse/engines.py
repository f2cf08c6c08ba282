"""The warehouse specs: which engine opens the pinned snapshots (`choose_engine`), the materialized copy
(`materialize`), and the locked-down DuckDB connection every worker opens (`open_connection`).

Which engine ran, and why, is logged on the `text2sql.warehouse` logger (the CLI prints it on stderr).
`bench/warehouse_engines.py` measures materialized against iceberg.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from text2sql.catalog import SchemaSnapshot, load_catalog, load_snapshot
from text2sql.errors import NoSuchTableError, SchemaSnapshotError

if TYPE_CHECKING:
    from text2sql.config import Config

log = logging.getLogger("text2sql.warehouse")


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
    # Timestamps are stored in UTC and gold answers assume it: never inherit the host's time zone. GLOBAL, so that
    # every cursor (the per-query connections of a worker) has it too.
    con.execute("SET GLOBAL TimeZone = 'UTC'")
    # After this nothing can read or write files outside allowed_directories, load extensions, or undo it.
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")
    return con


def spec_fingerprint(spec: WarehouseSpec) -> str:
    """A short stable id of what a spec opens (for result caches)."""
    return hashlib.sha256(repr(spec).encode()).hexdigest()[:16]
