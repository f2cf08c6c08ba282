"""Warehouse engines: `duckdb` (a DuckDB database file as the warehouse) and `auto` (materialized or iceberg by the
size of the pinned snapshots), each through the real CLI, sandbox and server."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import httpx
import pytest
from click.testing import CliRunner
from test_serve import ScriptedEngine, serving
from tinymodel import pair_records

from text2sql.catalog import load_snapshot
from text2sql.cli import main
from text2sql.config import load_config
from text2sql.errors import ConfigError
from text2sql.warehouse import QueryRunner, WarehouseSpec, choose_engine, pinned_data_bytes

SHOP_PAIRS = [
    ("How many orders are there?", "SELECT count(*) FROM shop.orders", "test"),
    ("Total order amount per city?", "SELECT c.city, sum(o.amount) AS total FROM shop.orders o "
     "JOIN shop.customers c ON c.id = o.customer_id GROUP BY c.city ORDER BY c.city", "test"),
    ("Which regions are there?", "SELECT label FROM regions ORDER BY code", "test"),
]


def make_duckdb_warehouse(path: Path) -> None:
    """A DuckDB file with tables in a schema and in main, keys, and COMMENT ON text."""
    con = duckdb.connect(str(path))
    con.execute("""
        CREATE SCHEMA shop;
        CREATE TABLE shop.customers (id INTEGER PRIMARY KEY, name VARCHAR, city VARCHAR);
        CREATE TABLE shop.orders (id INTEGER PRIMARY KEY, customer_id INTEGER REFERENCES shop.customers (id),
                                  amount DECIMAL(10, 2), placed DATE);
        CREATE TABLE regions (code VARCHAR, label VARCHAR);
        COMMENT ON TABLE shop.orders IS 'One row per order placed in the web shop';
        COMMENT ON COLUMN shop.orders.amount IS 'Order total in EUR, tax included';
        INSERT INTO shop.customers VALUES (1, 'Ada', 'Paris'), (2, 'Bo', 'Oslo'), (3, 'Cy', 'Paris');
        INSERT INTO shop.orders VALUES (1, 1, 10.50, DATE '2026-01-02'), (2, 1, 4.25, DATE '2026-01-03'),
                                       (3, 2, 99.00, DATE '2026-02-01'), (4, 3, 1.00, DATE '2026-02-05');
        INSERT INTO regions VALUES ('eu', 'Europe'), ('na', 'North America');
    """)
    con.close()


@pytest.fixture
def duck_project(tmp_path) -> Path:
    """A project whose warehouse is one DuckDB file, with schemas/ pulled and a dataset of three pairs."""
    root = tmp_path / "duckproj"
    root.mkdir()
    make_duckdb_warehouse(root / "lake.duckdb")
    (root / "text2sql.yaml").write_text("warehouse:\n  engine: duckdb\n  duckdb_path: lake.duckdb\n"
                                        "data:\n  dataset: shop\n")
    data = root / "datasets" / "shop"
    data.mkdir(parents=True)
    (data / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in pair_records(SHOP_PAIRS)))
    result = CliRunner().invoke(main, ["schema", "pull", "--config", str(root / "text2sql.yaml")])
    assert result.exit_code == 0, result.output
    return root


def invoke(root: Path, *args: str):
    return CliRunner().invoke(main, [*args, "--config", str(root / "text2sql.yaml")])


# ---------------------------------------------------------------- engine: duckdb


def test_schema_pull_reads_a_duckdb_file_with_its_comments(duck_project):
    ddl = (duck_project / "schemas" / "shop" / "orders.sql").read_text()
    assert ddl.startswith("-- shop.orders: One row per order placed in the web shop\n")
    assert "amount DECIMAL(10,2), -- Order total in EUR, tax included" in ddl
    assert "-- Join: customer_id = shop.customers.id" in ddl
    manifest = json.loads((duck_project / "schemas" / "manifest.json").read_text())
    assert manifest["catalog"] == "lake" and sorted(manifest["tables"]) == ["regions", "shop.customers", "shop.orders"]
    assert (duck_project / "schemas" / "regions.sql").is_file()  # schema main: a bare name

    unchanged = invoke(duck_project, "schema", "diff")
    assert unchanged.exit_code == 0 and "added_column" not in unchanged.output, unchanged.output
    con = duckdb.connect(str(duck_project / "lake.duckdb"))
    con.execute("ALTER TABLE shop.customers ADD COLUMN email VARCHAR")
    con.close()
    diff = invoke(duck_project, "schema", "diff")
    assert "added_column" in diff.output and "shop.customers.email" in diff.output


def test_query_runs_read_only_in_the_same_sandbox(duck_project):
    result = invoke(duck_project, "query", "SELECT count(*) AS n FROM orders", "--json")  # bare name: search_path
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["rows"] == [[4]]  # stdout: an earlier `eval` may have left the engine line on
    assert json.loads(invoke(duck_project, "query", "SELECT label FROM regions ORDER BY code", "--json").stdout)[
        "rows"] == [["Europe"], ["North America"]]
    refused = invoke(duck_project, "query", "DELETE FROM shop.orders")
    assert refused.exit_code == 1 and "refused" in refused.output

    # Past the SQL check (checked=True), the connection itself still refuses writes and file access.
    cfg = load_config(duck_project / "text2sql.yaml")
    spec = WarehouseSpec.from_config(cfg)
    assert spec.engine == "duckdb" and spec.database == str((duck_project / "lake.duckdb").resolve())
    with QueryRunner.from_config(cfg, spec=spec) as runner:
        write = runner.run("INSERT INTO shop.regions VALUES ('x', 'y')", checked=True)
        outside = runner.run(f"SELECT * FROM read_csv('{duck_project / 'text2sql.yaml'}')", checked=True)
        after = runner.run("SELECT count(*) FROM shop.orders", checked=True)
    assert write.error_kind == "refused" and outside.error_kind == "runtime_error"  # the worker runs only queries
    assert after.rows == [(4,)]


def test_validate_and_eval_on_a_duckdb_warehouse(duck_project, tmp_path):
    validate = invoke(duck_project, "data", "validate")
    assert validate.exit_code == 0, validate.output
    assert "warehouse engine: duckdb (warehouse.engine: duckdb)" in validate.stderr
    assert "3 pairs: 3 ok" in validate.stdout

    records = pair_records(SHOP_PAIRS)
    predictions = tmp_path / "predictions.jsonl"
    predictions.write_text("\n".join(json.dumps({"id": r["id"], "sql": sql}) for r, sql in zip(records, [
        records[0]["sql"], records[1]["sql"], "SELECT label FROM regions ORDER BY code DESC"])) + "\n")
    result = invoke(duck_project, "eval", "--predictions", str(predictions), "--release", "duck")
    assert result.exit_code == 0, result.output
    assert "warehouse engine: duckdb" in result.stderr
    report = json.loads((duck_project / "eval" / "reports" / "duck" / "report.json").read_text())
    assert report["metrics"]["correct"] == 2 and report["metrics"]["n"] == 3
    assert report["inputs"]["settings"]["engine"] == "duckdb"


def test_serve_answers_from_a_duckdb_warehouse(duck_project):
    cfg = load_config(duck_project / "text2sql.yaml", ["serve.token_env=''"])
    with ScriptedEngine() as engine, serving(cfg, upstream=engine.url) as url, \
            httpx.Client(base_url=url, timeout=60) as client:
        engine.script("SELECT name FROM shop.customers WHERE city = 'Paris' ORDER BY id")
        body = client.post("/v1/sql", json={"question": "Customers in Paris?", "execute": True}).json()
        system = engine.requests[0]["body"]["messages"][0]["content"]
    assert body["valid"] is True and body["rows"] == [["Ada"], ["Cy"]], body
    assert "One row per order placed in the web shop" in system  # the pulled comments reach the prompt


def test_duckdb_engine_settings_are_checked(tmp_path):
    path = tmp_path / "text2sql.yaml"
    path.write_text("warehouse:\n  engine: duckdb\n")
    with pytest.raises(ConfigError, match="warehouse.duckdb_path: empty, but warehouse.engine is duckdb"):
        load_config(path)
    with pytest.raises(ConfigError, match=r"warehouse.engine: 'lake' is not one of auto, materialized, iceberg, "
                                          r"duckdb; warehouse.materialize_max_bytes: must be >= 0, got -1"):
        load_config(path, ["warehouse.engine=lake", "warehouse.materialize_max_bytes=-1"])
    result = CliRunner().invoke(main, ["schema", "pull", "--config", str(path),
                                       "--set", "warehouse.duckdb_path=gone.duckdb"])
    assert result.exit_code == 1 and result.output.startswith("error: warehouse.duckdb_path:")
    assert "gone.duckdb not found" in result.output


# ---------------------------------------------------------------- engine: auto


def test_auto_materializes_small_lakehouses_and_reads_big_ones_in_place(project):
    cfg = load_config(project / "text2sql.yaml")
    snapshot = load_snapshot(cfg)
    assert cfg.warehouse.engine == "auto"
    total, unknown = pinned_data_bytes(cfg, snapshot)
    on_disk = sum(p.stat().st_size for p in (project / ".lakehouse" / "warehouse").rglob("*.parquet"))
    assert unknown == [] and total == on_disk > 0  # the summaries count every data file of the pinned snapshots

    engine, why = choose_engine(cfg, snapshot)
    assert engine == "materialized" and "<= warehouse.materialize_max_bytes 2.0 GB" in why
    small = load_config(project / "text2sql.yaml", [f"warehouse.materialize_max_bytes={total - 1}"])
    engine, why = choose_engine(small, snapshot)
    assert engine == "iceberg" and "> warehouse.materialize_max_bytes" in why
    assert choose_engine(load_config(project / "text2sql.yaml", [f"warehouse.materialize_max_bytes={total}"]),
                         snapshot)[0] == "materialized"

    spec = WarehouseSpec.from_config(small, snapshot)
    assert spec.engine == "iceberg" and spec.database == ":memory:" and spec.allowed_directories
    with QueryRunner.from_config(small, spec=spec) as runner:
        in_place = runner.run("SELECT count(*), sum(quantity) FROM sales.order_lines").rows
    with QueryRunner.from_config(cfg) as runner:
        copied = runner.run("SELECT count(*), sum(quantity) FROM sales.order_lines").rows
    assert in_place == copied and in_place[0][0] > 0


def test_validate_and_eval_say_which_engine_ran(project, tmp_path):
    from tinymodel import PAIRS

    data = project / "datasets" / "demo"
    data.mkdir(parents=True)
    records = pair_records(PAIRS[:4])
    (data / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    predictions = tmp_path / "predictions.jsonl"
    predictions.write_text("".join(json.dumps({"id": r["id"], "sql": r["sql"]}) + "\n" for r in records))
    tiny = ["--set", "warehouse.materialize_max_bytes=1000"]

    validate = invoke(project, "data", "validate", *tiny)
    assert validate.exit_code == 0, validate.output
    assert "warehouse engine: iceberg (auto: the pinned snapshots hold" in validate.stderr
    result = invoke(project, "eval", "--predictions", str(predictions), "--split", "all", "--release", "big", *tiny)
    assert result.exit_code == 0, result.output
    assert "warehouse engine: iceberg" in result.stderr
    report = json.loads((project / "eval" / "reports" / "big" / "report.json").read_text())
    assert report["inputs"]["settings"]["engine"] == "iceberg" and report["metrics"]["ex"] == 1.0

    default = invoke(project, "eval", "--predictions", str(predictions), "--split", "all", "--release", "small")
    assert "warehouse engine: materialized (auto:" in default.stderr
    report = json.loads((project / "eval" / "reports" / "small" / "report.json").read_text())
    assert report["inputs"]["settings"]["engine"] == "materialized" and report["metrics"]["ex"] == 1.0
