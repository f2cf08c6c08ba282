"""Catalog -> schemas/ on real pyiceberg SqlCatalogs in temp dirs, checked with real DuckDB."""

import json
from pathlib import Path

import duckdb
import pyarrow as pa
import pytest
from pyiceberg.catalog.sql import SqlCatalog
from pyiceberg.partitioning import PartitionField, PartitionSpec
from pyiceberg.schema import Schema
from pyiceberg.transforms import BucketTransform, DayTransform
from pyiceberg.types import (DecimalType, ListType, LongType, MapType, NestedField, StringType, StructType,
                             TimestamptzType)

from tests.conftest import write_project
from text2sql.catalog import diff_schemas, load_catalog, load_snapshot, pull_schemas, read_snapshot
from text2sql.config import load_config
from text2sql.errors import CatalogError, NoSuchTableError, SchemaSnapshotError


@pytest.fixture
def events_project(tmp_path):
    """A project whose catalog holds one table with docs, nested types, decimals and partitioning."""
    cfg = load_config(write_project(tmp_path))
    (tmp_path / ".lakehouse" / "warehouse").mkdir(parents=True)
    catalog = SqlCatalog("demo", uri=f"sqlite:///{tmp_path}/.lakehouse/catalog.db",
                         warehouse=(tmp_path / ".lakehouse" / "warehouse").as_uri())
    catalog.create_namespace("web")
    schema = Schema(
        NestedField(1, "event_id", LongType(), required=True, doc="Unique event id"),
        NestedField(2, "happened_at", TimestamptzType(), required=True, doc="When it happened, UTC"),
        NestedField(3, "amount", DecimalType(12, 3), doc="Order value in EUR"),
        NestedField(4, "device", StructType(
            NestedField(5, "os", StringType(), doc="Operating system"),
            NestedField(6, "screen width", LongType())), doc="Client device"),
        NestedField(7, "labels", ListType(8, StringType(), element_required=False), doc="Free labels"),
        NestedField(9, "attrs", MapType(10, StringType(), 11, StringType()), doc="Extra attributes"),
        identifier_field_ids=[1],
    )
    spec = PartitionSpec(PartitionField(2, 1000, DayTransform(), "day"), PartitionField(1, 1001, BucketTransform(4), "bucket"))
    table = catalog.create_table("web.events", schema, partition_spec=spec, properties={"comment": "Clickstream events"})
    table.append(pa.Table.from_pylist([], schema=table.schema().as_arrow()))
    return cfg, catalog


def test_round_trip_ddl_runs_in_duckdb(events_project):
    cfg, _ = events_project
    manifest = pull_schemas(cfg)
    ddl = (cfg.path("schemas") / "web" / "events.sql").read_text()
    assert "-- web.events: Clickstream events" in ddl
    assert "-- Partitioned by: day(happened_at), bucket[4](event_id)" in ddl
    assert "-- Identifier fields: event_id" in ddl
    assert "event_id BIGINT NOT NULL, -- Unique event id" in ddl
    assert "amount DECIMAL(12,3)" in ddl and "TIMESTAMPTZ NOT NULL" in ddl
    assert 'STRUCT(os VARCHAR, "screen width" BIGINT)' in ddl and "VARCHAR[]" in ddl and "MAP(VARCHAR, VARCHAR)" in ddl
    assert "os: Operating system" in ddl
    con = duckdb.connect()
    con.execute("CREATE SCHEMA web")
    con.execute(ddl)  # DuckDB itself accepts the DDL
    types = dict(con.execute("SELECT column_name, data_type FROM duckdb_columns() WHERE table_name='events'").fetchall())
    assert types["amount"] == "DECIMAL(12,3)" and types["labels"] == "VARCHAR[]"
    entry = manifest["tables"]["web.events"]
    assert entry["schema_id"] == 0 and entry["snapshot_id"] is not None and len(entry["ddl_sha256"]) == 64


def test_pull_is_deterministic_and_sorted(events_project):
    cfg, _ = events_project
    pull_schemas(cfg)
    first = (cfg.path("schemas") / "manifest.json").read_text()
    pull_schemas(cfg)
    assert (cfg.path("schemas") / "manifest.json").read_text() == first
    assert list(json.loads(first)["tables"]) == sorted(json.loads(first)["tables"])


def test_diff_detects_added_column_and_table(events_project):
    cfg, catalog = events_project
    pull_schemas(cfg)
    assert diff_schemas(cfg) == []
    with catalog.load_table("web.events").update_schema() as update:
        update.add_column("referrer", StringType(), doc="HTTP referrer")
    catalog.create_table("web.sessions", Schema(NestedField(1, "session_id", LongType(), required=True)))
    changes = [str(c) for c in diff_schemas(cfg)]
    assert any("added_column" in c and "web.events.referrer" in c for c in changes)
    assert any("added_table" in c and "web.sessions" in c for c in changes)


def test_diff_detects_retyped_and_removed(events_project):
    cfg, catalog = events_project
    pull_schemas(cfg)
    with catalog.load_table("web.events").update_schema() as update:
        update.delete_column("labels")
    changes = [str(c) for c in diff_schemas(cfg)]
    assert changes == ["removed_column  web.events.labels VARCHAR[]"]


def test_edited_ddl_is_detected(events_project):
    cfg, _ = events_project
    pull_schemas(cfg)
    path = cfg.path("schemas") / "web" / "events.sql"
    path.write_text(path.read_text() + "-- edited\n")
    with pytest.raises(SchemaSnapshotError, match="edited by hand"):
        load_snapshot(cfg)


def test_snapshot_api(lakehouse_project):
    snap = read_snapshot(lakehouse_project / "schemas")
    assert len(snap.tables) >= 8 and len(snap.namespaces()) >= 2
    orders = snap.table("orders")
    assert orders.name == "sales.orders"
    assert ("customer_id", "core.customers", "customer_id") in orders.references
    assert all(c.doc for t in snap.tables.values() for c in t.columns), "every column has a doc"
    with pytest.raises(NoSuchTableError, match="did you mean sales.orders"):
        snap.table("sales.ordrs")


def test_unknown_catalog_and_unreachable_rest(tmp_path):
    cfg = load_config(write_project(tmp_path, "") , ["catalog.name=nope"])
    with pytest.raises(CatalogError, match="unknown catalog 'nope'"):
        load_catalog(cfg)
    cfg = load_config(write_project(tmp_path), [])
    cfg.catalog.catalogs["rest"] = {"type": "rest", "uri": "http://127.0.0.1:9"}
    with pytest.raises(CatalogError, match="catalog 'rest': cannot load or reach it") as err:
        load_catalog(cfg, "rest")
    assert "\n" not in str(err.value)


def test_schema_pull_without_pyiceberg_says_what_to_install_in_one_line(tmp_path):
    """pyiceberg is a dependency, but a host set up by hand may lack it (the GPU staging did): a command that reads
    a catalog stops with one line, no traceback."""
    import os
    import subprocess
    import sys

    shadow = tmp_path / "shadow" / "pyiceberg"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('hidden by the test')\n")
    config = write_project(tmp_path / "proj")
    repo = str(Path(__file__).resolve().parents[1])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path / "shadow"), repo]))
    done = subprocess.run([sys.executable, "-m", "text2sql.cli", "schema", "pull", "--config", str(config)], env=env,
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("error: 'pyiceberg' is not installed: it reads the Iceberg")


def test_missing_namespace(lakehouse_project):
    cfg = load_config(lakehouse_project / "text2sql.yaml")
    with pytest.raises(NoSuchTableError, match="namespace 'nope' not found"):
        pull_schemas(cfg, namespaces=["nope"])


def test_lakehouse_is_rich_and_deterministic(lakehouse_project, tmp_path):
    """Two builds with the same seed pin the same snapshots; the domain has the promised shapes."""
    from tests.conftest import build_project

    build_project(tmp_path / "again")
    a = json.loads((lakehouse_project / "schemas" / "manifest.json").read_text())
    b = json.loads((tmp_path / "again" / "schemas" / "manifest.json").read_text())
    assert a == b
    tables = a["tables"]
    assert len(tables) >= 8 and len({n.split(".")[0] for n in tables}) >= 2
    parts = " ".join(p for t in tables.values() for p in t["partitioning"])
    assert "day(" in parts and "month(" in parts and "bucket[" in parts
    types = " ".join(c["type"] for t in tables.values() for c in t["columns"])
    for wanted in ("DECIMAL(", "DATE", "TIMESTAMPTZ", "STRUCT(", "[]"):
        assert wanted in types
    assert all(t["comment"] and t["identifier_fields"] for t in tables.values())


def test_value_hints_list_the_values_of_low_cardinality_text_columns(lakehouse_project, tmp_path):
    """The distinct values of the pinned snapshot go into the DDL comment, unless the doc names them all already,
    there are too many, or the list is too long; the DDL still runs in DuckDB, and the manifest keeps them."""
    cfg = load_config(lakehouse_project / "text2sql.yaml", [f"catalog.schemas_dir={tmp_path / 'schemas'}"])
    pull_schemas(cfg)
    snapshot = load_snapshot(cfg)
    stores = snapshot.table("core.stores").ddl
    assert "country VARCHAR NOT NULL, -- ISO country code; values: 'CA', 'US'" in stores
    con = duckdb.connect()
    con.execute("CREATE SCHEMA core")
    con.execute(stores)
    holidays = snapshot.table("core.fiscal_calendar").column("holiday_name").values
    assert "New Year's Day" in holidays and list(holidays) == sorted(holidays)
    assert "'New Year''s Day'" in snapshot.table("core.fiscal_calendar").ddl  # quoted as SQL literals
    orders = snapshot.table("sales.orders")
    assert orders.column("status").values == ()  # its doc names completed, cancelled and pending already
    assert "values:" not in orders.ddl
    customers = snapshot.table("core.customers")
    assert customers.column("first_name").values == () and customers.column("email").values == ()  # too many

    # The limits: fewer values allowed, or a shorter list, and the hints go.
    few = load_config(lakehouse_project / "text2sql.yaml", [f"catalog.schemas_dir={tmp_path / 'few'}",
                                                            "catalog.max_hint_values=5", "catalog.max_hint_chars=60"])
    pull_schemas(few)
    small = load_snapshot(few)
    assert small.table("core.stores").column("country").values == ("CA", "US")
    assert small.table("core.stores").column("city").values == ()  # 16 cities > 5
    assert small.table("core.fiscal_calendar").column("holiday_name").values == ()  # over 60 characters
    off = load_config(lakehouse_project / "text2sql.yaml", [f"catalog.schemas_dir={tmp_path / 'off'}",
                                                            "catalog.max_hint_values=0"])
    pull_schemas(off)
    assert "values:" not in load_snapshot(off).ddl()
    assert diff_schemas(cfg) == []  # hints are comments: no schema change
