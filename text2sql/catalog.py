"""Iceberg catalogs -> `schemas/`: DuckDB-compatible CREATE TABLE DDL snapshots plus a manifest.

`schemas/<namespace>/<table>.sql` holds one table's DDL: table comment, partitioning and identifier
fields as comments, column docs as inline comments, and value hints: the distinct values of a
low-cardinality text column (`-- values: 'cancelled', 'completed', 'pending'`), read from the pinned
snapshot, so a model writes literals that exist. `schemas/manifest.json` records, per table, the
Iceberg schema id and snapshot id the DDL was taken from, the DDL's sha256 and its columns, so the
rest of the pipeline (validation, prompts, evaluation) works from files, without a catalog.
Everything is sorted and stably formatted so that a schema change reads as a small diff.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from text2sql.errors import CatalogError, MissingDependencyError, NoSuchTableError, SchemaSnapshotError
from text2sql.files import read_text, write_atomic

if TYPE_CHECKING:
    from pyiceberg.catalog import Catalog
    from pyiceberg.table import Table

    from text2sql.config import Config

MANIFEST = "manifest.json"
MANIFEST_FORMAT = 1


@dataclass(frozen=True)
class Column:
    name: str
    type: str
    """DuckDB type, e.g. DECIMAL(10,2), STRUCT(city VARCHAR), VARCHAR[]."""
    doc: str = ""
    required: bool = False
    values: tuple[str, ...] = ()
    """Value hint: every distinct value of a low-cardinality text column, sorted (empty = none)."""


@dataclass
class TableSnapshot:
    name: str
    """Qualified name, namespace.table."""
    ddl: str
    columns: list[Column]
    comment: str = ""
    partitioning: list[str] = field(default_factory=list)
    identifier_fields: list[str] = field(default_factory=list)
    references: list[tuple[str, str, str]] = field(default_factory=list)
    """Join keys (column, other_table, other_column)."""
    schema_id: int | None = None
    snapshot_id: int | None = None

    def column(self, name: str) -> Column | None:
        return next((c for c in self.columns if c.name.lower() == name.lower()), None)


@dataclass
class SchemaSnapshot:
    catalog: str
    tables: dict[str, TableSnapshot]
    fingerprint: str
    """sha256 of the manifest: changes when any DDL or pinned snapshot changes."""

    def table(self, name: str) -> TableSnapshot:
        """The table by qualified name (or by bare name when unambiguous)."""
        found = self.resolve(name)
        if found is None:
            import difflib

            close = difflib.get_close_matches(name, list(self.tables), n=1)
            hint = f"; did you mean {close[0]}?" if close else ""
            raise NoSuchTableError(f"no table {name!r} in the schema snapshot{hint}")
        return self.tables[found]

    def resolve(self, name: str) -> str | None:
        """Qualified name for `name` (qualified or bare, case-insensitive), or None."""
        lowered = name.lower()
        for qualified in self.tables:
            if qualified.lower() == lowered:
                return qualified
        bare = [q for q in self.tables if q.split(".", 1)[-1].lower() == lowered]
        return bare[0] if len(bare) == 1 else None

    def ddl(self, tables: list[str] | None = None) -> str:
        """DDL of the given tables (default all), in name order, separated by blank lines."""
        names = sorted(self.tables) if tables is None else tables
        return "\n\n".join(self.tables[n].ddl.strip() for n in names)

    def namespaces(self) -> list[str]:
        return sorted({n.split(".", 1)[0] for n in self.tables})

    @classmethod
    def from_duckdb(cls, path: str | Path) -> SchemaSnapshot:
        """Build a snapshot from a plain DuckDB database file (an imported benchmark database, or the warehouse
        of `warehouse.engine: duckdb`): tables of schema `main` by bare name, others as `schema.table`, with
        their COMMENT ON text as table comment and column docs."""
        import duckdb

        path = Path(path)
        if not path.is_file():
            raise SchemaSnapshotError(f"database file not found: {path}")
        try:
            con = duckdb.connect(str(path), read_only=True)
        except duckdb.Error as exc:
            raise SchemaSnapshotError(f"cannot open DuckDB database {path}: {_one_line(exc)}") from None
        try:
            rows = con.execute(
                "SELECT schema_name, table_name, column_name, data_type, is_nullable, comment "
                "FROM duckdb_columns() WHERE NOT internal AND database_name = current_database() "
                "ORDER BY schema_name, table_name, column_index"
            ).fetchall()
            comments = con.execute(
                "SELECT schema_name, table_name, comment FROM duckdb_tables() "
                "WHERE NOT internal AND database_name = current_database()"
            ).fetchall()
            fks = con.execute(
                "SELECT schema_name, table_name, constraint_column_names, referenced_table, referenced_column_names "
                "FROM duckdb_constraints() WHERE constraint_type = 'FOREIGN KEY' AND database_name = current_database()"
            ).fetchall()
        finally:
            con.close()

        def qualified(schema: str, table: str) -> str:
            return table if schema == "main" else f"{schema}.{table}"

        by_table: dict[str, list[Column]] = {}
        for schema, table, column, dtype, nullable, doc in rows:
            by_table.setdefault(qualified(schema, table), []).append(Column(column, dtype, doc or "", not nullable))
        table_comments = {qualified(schema, table): comment or "" for schema, table, comment in comments}
        refs: dict[str, list[tuple[str, str, str]]] = {}
        for schema, table, cols, ref_table, ref_cols in fks:
            name = qualified(schema, table)
            other = ref_table if schema == "main" or "." in ref_table else f"{schema}.{ref_table}"
            for c, rc in zip(cols, ref_cols):
                refs.setdefault(name, []).append((c, other, rc))
        tables = {}
        for name, cols in by_table.items():
            t = TableSnapshot(name=name, ddl="", columns=cols, comment=" ".join(table_comments.get(name, "").split()),
                              references=sorted(refs.get(name, [])))
            t.ddl = render_ddl(t)
            tables[name] = t
        digest = hashlib.sha256("\n".join(tables[n].ddl for n in sorted(tables)).encode()).hexdigest()
        return cls(catalog=path.stem, tables=dict(sorted(tables.items())), fingerprint=digest)


@dataclass(frozen=True)
class SchemaChange:
    kind: str
    """added_table | removed_table | added_column | removed_column | retyped_column."""
    table: str
    column: str = ""
    old: str = ""
    new: str = ""

    def __str__(self) -> str:
        if self.kind.endswith("table"):
            return f"{self.kind:15s} {self.table}"
        detail = f" {self.old} -> {self.new}" if self.kind == "retyped_column" else f" {self.new or self.old}"
        return f"{self.kind:15s} {self.table}.{self.column}{detail}"


# ---------------------------------------------------------------- catalogs


def load_catalog(cfg: Config, name: str | None = None) -> Catalog:
    """Load an Iceberg catalog by name: from text2sql.yaml's `catalog.catalogs`, else pyiceberg's own config.

    Raises:
        CatalogError: unknown name, or the catalog cannot be reached.
        MissingDependencyError: pyiceberg is not installed (a host set up by hand: a training callback then goes on
            without its dev queries instead of stopping on a traceback).
    """
    try:
        from pyiceberg.catalog import load_catalog as pyiceberg_load_catalog
    except ImportError as exc:
        raise MissingDependencyError("'pyiceberg' is not installed: it reads the Iceberg catalogs (pip install "
                                     "'pyiceberg[sql-sqlite,pyarrow]>=0.12,<0.13', a text2sql dependency)") from exc

    name = name or cfg.catalog.name
    props = dict(cfg.catalog.catalogs.get(name, {}))
    props = {k: _resolve_local(cfg, k, v) for k, v in props.items()}
    if not props:
        from pyiceberg.utils.config import Config as PyicebergConfig

        if PyicebergConfig().get_catalog_config(name) is None:
            known = ", ".join(sorted(cfg.catalog.catalogs)) or "none"
            raise CatalogError(
                f"unknown catalog {name!r}: not in text2sql.yaml catalog.catalogs ({known}) "
                "nor in pyiceberg's config (~/.pyiceberg.yaml or PYICEBERG_CATALOG__* env)"
            )
    if props.get("type") == "sql" and props.get("uri", "").startswith("sqlite:///"):
        db = Path(props["uri"][len("sqlite:///"):])
        if not db.is_file():
            raise CatalogError(f"catalog {name!r}: sqlite file {db} does not exist; run `text2sql lakehouse create`")
    try:
        catalog = pyiceberg_load_catalog(name, **props)
        catalog.list_namespaces()  # fail here, with a clear message, if it cannot be reached
    except CatalogError:
        raise
    except Exception as exc:  # pyiceberg raises many kinds (connection, auth, config); report them all the same way
        raise CatalogError(f"catalog {name!r}: cannot load or reach it: {_one_line(exc)}") from None
    return catalog


def _resolve_local(cfg: Config, key: str, value: Any) -> Any:
    """Make relative sqlite:/// and file:// locations absolute, against the project root."""
    if not isinstance(value, str):
        return value
    if key == "uri" and value.startswith("sqlite:///") and not value.startswith("sqlite:////"):
        return "sqlite:///" + str(cfg.path(value[len("sqlite:///"):]))
    if key == "warehouse" and value.startswith("file://") and not value.startswith("file:///"):
        return cfg.path(value[len("file://"):]).as_uri()
    return value


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


def list_table_names(catalog: Catalog, namespaces: list[str] | None = None) -> list[str]:
    """Qualified names of every table in the given namespaces (default: all), sorted."""
    from pyiceberg.exceptions import NoSuchNamespaceError

    all_namespaces = [".".join(ns) for ns in catalog.list_namespaces()]
    wanted = namespaces or all_namespaces
    names = []
    for ns in wanted:
        try:
            names += [".".join(ident) for ident in catalog.list_tables(ns)]
        except NoSuchNamespaceError:
            raise NoSuchTableError(f"namespace {ns!r} not found; the catalog has: {', '.join(sorted(all_namespaces)) or 'none'}") from None
    return sorted(names)


def describe_table(table: Table, name: str, max_hint_values: int = 0, max_hint_chars: int = 0) -> TableSnapshot:
    """A TableSnapshot (DDL, columns, partitioning) of an Iceberg table at its current snapshot.

    With `max_hint_values`, text columns with at most that many distinct values at the snapshot get them as
    value hints (`value_hints`).
    """
    schema = table.schema()
    snapshot = table.current_snapshot()
    hints = value_hints(table, max_hint_values, max_hint_chars) if max_hint_values > 0 and snapshot else {}
    columns = [Column(f.name, duckdb_type(f.field_type), _doc(f), f.required, hints.get(f.name, ()))
               for f in schema.fields]
    partitioning = [f"{pf.transform}({schema.find_field(pf.source_id).name})" for pf in table.spec().fields]
    identifier = [schema.find_field(i).name for i in sorted(schema.identifier_field_ids)]
    t = TableSnapshot(
        name=name, ddl="", columns=columns, comment=table.properties.get("comment", ""),
        partitioning=partitioning, identifier_fields=identifier,
        references=_references(table.properties.get("text2sql.references", "")),
        schema_id=schema.schema_id, snapshot_id=snapshot.snapshot_id if snapshot else None,
    )
    t.ddl = render_ddl(t)
    return t


def value_hints(table: Table, max_values: int, max_chars: int) -> dict[str, tuple[str, ...]]:
    """Distinct values of each top-level text column of the table's current (pinned) snapshot that has at most
    `max_values` of them, sorted; a column is left out when its hint would exceed `max_chars`, when a value is
    long or holds a line break, or when its doc already names every value (the hint would add nothing).

    One scan of the text columns, batch by batch; a column drops out as soon as it passes `max_values`, and
    the scan stops when none is left.
    """
    from pyiceberg.types import StringType

    fields = [f for f in table.schema().fields if isinstance(f.field_type, StringType)]
    if not fields or table.current_snapshot() is None:
        return {}
    seen: dict[str, set[str]] = {f.name: set() for f in fields}
    scan = table.scan(selected_fields=tuple(seen), snapshot_id=table.current_snapshot().snapshot_id)
    for batch in scan.to_arrow_batch_reader():
        for name in list(seen):
            values = seen[name]
            values.update(v for v in batch.column(name).unique().to_pylist() if v is not None)
            if len(values) > max_values:
                del seen[name]
        if not seen:
            break
    hints = {}
    for f in fields:
        values = sorted(seen.get(f.name, ()))
        if not values or any(len(v) > 40 or "\n" in v or "\r" in v for v in values):
            continue
        doc_words = set(re.findall(r"[a-z0-9_]+", (f.doc or "").lower()))
        if all(v.lower() in doc_words for v in values):
            continue
        if len(_hint_text(values)) <= max_chars:
            hints[f.name] = tuple(values)
    return hints


def _hint_text(values) -> str:
    return "values: " + ", ".join("'" + v.replace("'", "''") + "'" for v in values)


def _doc(f) -> str:
    """A column's doc, with the docs of a struct's fields appended."""
    from pyiceberg.types import StructType

    doc = (f.doc or "").strip()
    if isinstance(f.field_type, StructType):
        inner = "; ".join(f"{s.name}: {s.doc}" for s in f.field_type.fields if s.doc)
        if inner:
            doc = f"{doc} ({inner})" if doc else inner
    return doc


def _references(prop: str) -> list[tuple[str, str, str]]:
    """Parse 'col->ns.table.col,...' (the text2sql.references table property)."""
    refs = []
    for item in filter(None, (p.strip() for p in prop.split(","))):
        col, _, target = item.partition("->")
        table, _, other = target.rpartition(".")
        if col and table and other:
            refs.append((col.strip(), table.strip(), other.strip()))
    return sorted(refs)


def duckdb_type(t) -> str:
    """The DuckDB type for an Iceberg type."""
    from pyiceberg import types as it

    simple = {
        it.BooleanType: "BOOLEAN", it.IntegerType: "INTEGER", it.LongType: "BIGINT", it.FloatType: "FLOAT",
        it.DoubleType: "DOUBLE", it.DateType: "DATE", it.TimeType: "TIME", it.TimestampType: "TIMESTAMP",
        it.TimestamptzType: "TIMESTAMPTZ", it.StringType: "VARCHAR", it.UUIDType: "UUID", it.BinaryType: "BLOB",
    }
    for cls, name in simple.items():
        if isinstance(t, cls):
            return name
    if isinstance(t, it.DecimalType):
        return f"DECIMAL({t.precision},{t.scale})"
    if isinstance(t, it.FixedType):
        return "BLOB"
    if isinstance(t, it.StructType):
        return "STRUCT(" + ", ".join(f"{_quote(f.name)} {duckdb_type(f.field_type)}" for f in t.fields) + ")"
    if isinstance(t, it.ListType):
        return f"{duckdb_type(t.element_type)}[]"
    if isinstance(t, it.MapType):
        return f"MAP({duckdb_type(t.key_type)}, {duckdb_type(t.value_type)})"
    type_name = type(t).__name__
    if "Timestamp" in type_name:  # nanosecond timestamps (format v3)
        return "TIMESTAMPTZ" if "tz" in type_name.lower() else "TIMESTAMP"
    raise SchemaSnapshotError(f"no DuckDB type for Iceberg type {t}")


def _quote(name: str) -> str:
    return name if re.fullmatch(r"[a-z_][a-z0-9_]*", name) else '"' + name.replace('"', '""') + '"'


def render_ddl(t: TableSnapshot) -> str:
    """DuckDB-compatible CREATE TABLE with the table's notes as comments and column docs inline."""
    lines = [f"-- {t.name}" + (f": {t.comment}" if t.comment else "")]
    if t.partitioning:
        lines.append(f"-- Partitioned by: {', '.join(t.partitioning)}")
    if t.identifier_fields:
        lines.append(f"-- Identifier fields: {', '.join(t.identifier_fields)}")
    for col, other, other_col in t.references:
        lines.append(f"-- Join: {col} = {other}.{other_col}")
    qualified = ".".join(_quote(p) for p in t.name.split("."))
    lines.append(f"CREATE TABLE {qualified} (")
    for i, c in enumerate(t.columns):
        comma = "," if i < len(t.columns) - 1 else ""
        null = " NOT NULL" if c.required else ""
        notes = [" ".join(c.doc.split())] if c.doc else []
        if c.values:
            notes.append(_hint_text(c.values))
        doc = " -- " + "; ".join(notes) if notes else ""
        lines.append(f"  {_quote(c.name)} {c.type}{null}{comma}{doc}")
    lines.append(");")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- snapshots on disk


def pull_schemas(cfg: Config, catalog_name: str | None = None, namespaces: list[str] | None = None) -> dict:
    """Write DDL for every table of the catalog (or of the DuckDB file of `warehouse.engine: duckdb`), and
    manifest.json, into schemas/ (replacing what was there). Iceberg tables get value hints
    (`catalog.max_hint_values`)."""
    catalog_name, live = _live_tables(cfg, catalog_name, namespaces or cfg.catalog.namespaces or None, hints=True)
    snapshots = list(live.values())
    out = cfg.path(cfg.catalog.schemas_dir)
    out.mkdir(parents=True, exist_ok=True)
    manifest: dict[str, Any] = {"format": MANIFEST_FORMAT, "catalog": catalog_name, "tables": {}}
    for t in snapshots:
        rel = Path(*t.name.split(".")[:-1], t.name.split(".")[-1] + ".sql")
        write_atomic(out / rel, t.ddl)
        entry = asdict(t)
        del entry["ddl"], entry["name"]
        # A column's value hint is recorded only where it has one, so the manifest of a catalog without
        # hints reads as before.
        entry["columns"] = [{k: list(v) if k == "values" else v for k, v in c.items() if k != "values" or v}
                            for c in entry["columns"]]
        entry["references"] = [list(r) for r in t.references]
        entry.update(file=rel.as_posix(), ddl_sha256=hashlib.sha256(t.ddl.encode()).hexdigest())
        manifest["tables"][t.name] = dict(sorted(entry.items()))
    # Drop DDL files of tables that no longer exist, so schemas/ mirrors the catalog.
    keep = {out / e["file"] for e in manifest["tables"].values()}
    for stale in out.rglob("*.sql"):
        if stale not in keep:
            stale.unlink()
    write_atomic(out / MANIFEST, json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest


def _live_tables(cfg: Config, catalog_name: str | None, namespaces: list[str] | None,
                 hints: bool = False) -> tuple[str, dict]:
    """(catalog name, {qualified name: TableSnapshot}) of the tables in the live catalog, or in the DuckDB file
    that is the warehouse under `warehouse.engine: duckdb` (its `main` schema is namespace `main`). `hints`:
    read value hints from the catalog's pinned snapshots (one scan of each table's text columns)."""
    if cfg.warehouse.engine == "duckdb":
        path = cfg.path(cfg.warehouse.duckdb_path)
        if not path.is_file():
            raise CatalogError(f"warehouse.duckdb_path: {path} not found (the DuckDB database file to query)")
        live = SchemaSnapshot.from_duckdb(path).tables
        found = {n.rpartition(".")[0] or "main" for n in live}
        missing = sorted(set(namespaces or []) - found)
        if missing:
            raise NoSuchTableError(f"namespace {missing[0]!r} not found; {path.name} has: {', '.join(sorted(found))}")
        wanted = set(namespaces or found)
        return path.stem, {n: t for n, t in live.items() if (n.rpartition(".")[0] or "main") in wanted}
    catalog_name = catalog_name or cfg.catalog.name
    catalog = load_catalog(cfg, catalog_name)
    limits = (cfg.catalog.max_hint_values, cfg.catalog.max_hint_chars) if hints else (0, 0)
    names = list_table_names(catalog, namespaces)
    return catalog_name, {n: describe_table(catalog.load_table(n), n, *limits) for n in names}


def load_snapshot(cfg: Config) -> SchemaSnapshot:
    """Read schemas/ (no catalog needed). Raises SchemaSnapshotError if it is missing or was edited by hand."""
    return read_snapshot(cfg.path(cfg.catalog.schemas_dir))


def read_snapshot(schemas_dir: Path) -> SchemaSnapshot:
    path = Path(schemas_dir) / MANIFEST
    if not path.is_file():
        raise SchemaSnapshotError(f"{path} not found: run `text2sql schema pull`")
    raw = read_text(path, SchemaSnapshotError)
    try:
        manifest = json.loads(raw)
        tables = {}
        for name, e in manifest["tables"].items():
            ddl_path = Path(schemas_dir) / e["file"]
            if not ddl_path.is_file():
                raise SchemaSnapshotError(f"{ddl_path} is listed in {MANIFEST} but missing: run `text2sql schema pull`")
            ddl = ddl_path.read_text()
            if hashlib.sha256(ddl.encode()).hexdigest() != e["ddl_sha256"]:
                raise SchemaSnapshotError(f"{ddl_path} was edited by hand (hash differs from {MANIFEST}): run `text2sql schema pull`")
            tables[name] = TableSnapshot(
                name=name, ddl=ddl,
                columns=[Column(**{**c, "values": tuple(c.get("values", ()))}) for c in e["columns"]],
                comment=e.get("comment", ""),
                partitioning=e.get("partitioning", []), identifier_fields=e.get("identifier_fields", []),
                references=[tuple(r) for r in e.get("references", [])],
                schema_id=e.get("schema_id"), snapshot_id=e.get("snapshot_id"),
            )
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise SchemaSnapshotError(f"{path} is malformed ({_one_line(exc)}): run `text2sql schema pull`") from None
    return SchemaSnapshot(manifest["catalog"], dict(sorted(tables.items())), hashlib.sha256(raw.encode()).hexdigest())


def diff_schemas(cfg: Config, catalog_name: str | None = None) -> list[SchemaChange]:
    """Tables and columns added, removed or retyped in the live catalog since the schemas/ snapshot."""
    old = load_snapshot(cfg)
    namespaces = sorted({n.rpartition(".")[0] or "main" for n in old.tables}) or None
    _, live = _live_tables(cfg, catalog_name or old.catalog, namespaces)
    changes = []
    for name in sorted(set(old.tables) | set(live)):
        if name not in live:
            changes.append(SchemaChange("removed_table", name))
        elif name not in old.tables:
            changes.append(SchemaChange("added_table", name))
        else:
            before = {c.name: c.type for c in old.tables[name].columns}
            after = {c.name: c.type for c in live[name].columns}
            for col in sorted(set(before) | set(after)):
                if col not in after:
                    changes.append(SchemaChange("removed_column", name, col, old=before[col]))
                elif col not in before:
                    changes.append(SchemaChange("added_column", name, col, new=after[col]))
                elif before[col] != after[col]:
                    changes.append(SchemaChange("retyped_column", name, col, before[col], after[col]))
    return changes
