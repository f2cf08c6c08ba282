"""DuckDB over Iceberg and the sandbox, on a real small lakehouse."""

import time
from pathlib import Path

import pytest

from text2sql.catalog import load_snapshot
from text2sql.config import load_config
from text2sql.warehouse import QueryRunner, WarehouseSpec, check_sql, materialize

COUNT = "SELECT count(*) FROM sales.orders"


@pytest.fixture(scope="module")
def cfg(lakehouse_project):
    return load_config(lakehouse_project / "text2sql.yaml")


@pytest.mark.parametrize("engine", ["materialized", "iceberg"])
def test_both_engines_agree(lakehouse_project, engine):
    cfg = load_config(lakehouse_project / "text2sql.yaml", [f"warehouse.engine={engine}"])
    sql = ("SELECT s.channel, count(DISTINCT o.order_id), sum(l.quantity * l.unit_price) FROM sales.orders o "
           "JOIN core.stores s ON s.store_id = o.store_id JOIN sales.order_lines l ON l.order_id = o.order_id "
           "GROUP BY 1 ORDER BY 1")
    with QueryRunner.from_config(cfg) as runner:
        result = runner.run(sql)
        bare = runner.run("SELECT count(*) FROM orders")  # bare names resolve through search_path
    assert result.error_kind is None, result.error
    assert [r[0] for r in result.rows] == ["online", "outlet", "retail"]
    assert bare.rows[0][0] == 2000
    test_both_engines_agree.results = getattr(test_both_engines_agree, "results", []) + [result.rows]
    if len(test_both_engines_agree.results) == 2:
        assert test_both_engines_agree.results[0] == test_both_engines_agree.results[1]


def test_pinned_snapshot_ignores_later_appends(project):
    import pyarrow as pa

    from text2sql.catalog import load_catalog

    for engine in ("materialized", "iceberg"):
        cfg = load_config(project / "text2sql.yaml", [f"warehouse.engine={engine}"])
        with QueryRunner.from_config(cfg) as runner:
            before = runner.run(COUNT).rows[0][0]
        if engine == "materialized":
            table = load_catalog(cfg).load_table("sales.orders")
            rows = table.scan(limit=5).to_arrow()
            table.append(pa.Table.from_batches(rows.to_batches(), schema=table.schema().as_arrow()))
            assert table.scan().to_arrow().num_rows == before + 5
        with QueryRunner.from_config(cfg) as runner:
            assert runner.run(COUNT).rows[0][0] == before


def test_materialized_cache_is_reused(cfg):
    first = materialize(cfg)
    mtime = first.stat().st_mtime_ns
    assert materialize(cfg) == first and first.stat().st_mtime_ns == mtime


@pytest.mark.parametrize("sql, kind", [
    ("SELEC 1", "parse_error"),
    ("", "parse_error"),
    ("SELECT 1; SELECT 2", "refused"),
    ("DELETE FROM sales.orders", "refused"),
    ("INSERT INTO sales.orders SELECT * FROM sales.orders", "refused"),
    ("COPY sales.orders TO '/tmp/x.csv'", "refused"),
    ("ATTACH '/tmp/x.db' AS x", "refused"),
    ("INSTALL httpfs", "refused"),
    ("LOAD httpfs", "refused"),
    ("PRAGMA database_list", "refused"),
    ("SET threads = 8", "refused"),
    ("SELECT * FROM read_csv('/etc/passwd')", "refused"),
    ("SELECT read_text('/etc/passwd')", "refused"),
    ("WITH x AS (DELETE FROM sales.orders RETURNING *) SELECT * FROM x", "refused"),
    ("SELECT * FROM sales.ordrs", "unknown_table"),
    ("SELECT segmnt FROM core.customers", "unknown_column"),
])
def test_check_sql_kinds(lakehouse_project, sql, kind):
    check = check_sql(sql, read_snapshot(lakehouse_project))
    assert not check.ok and check.kind == kind, check


def read_snapshot(root: Path):
    from text2sql.catalog import read_snapshot as read

    return read(root / "schemas")


def test_check_sql_suggests_and_accepts(lakehouse_project):
    snap = read_snapshot(lakehouse_project)
    assert "did you mean segment" in check_sql("SELECT segmnt FROM core.customers", snap).message
    assert "did you mean sales.orders" in check_sql("SELECT 1 FROM sales.ordrs", snap).message
    ok = check_sql("WITH t AS (SELECT c.address.city AS city FROM customers c) SELECT city, count(*) FROM t GROUP BY 1", snap)
    assert ok.ok and ok.tables == ["core.customers"]


def test_sandbox_blocks_what_the_parser_might_miss(cfg, tmp_path):
    """Straight to the locked connection, bypassing check_sql: it is read-only and sees no files."""
    from text2sql.warehouse import open_connection

    con = open_connection(WarehouseSpec.from_config(cfg))
    for sql in (f"COPY (SELECT 1) TO '{tmp_path}/x.csv'", "SELECT * FROM read_csv('/etc/passwd')",
                "CREATE TABLE sales.t AS SELECT 1", "SET enable_external_access = true",
                f"ATTACH '{tmp_path}/y.db' AS y", "INSTALL httpfs"):
        with pytest.raises(Exception):
            con.execute(sql)
    assert not list(tmp_path.iterdir())
    assert con.execute(COUNT).fetchone()[0] == 2000


def test_timeout_stops_runaway_query_and_pool_recovers(cfg):
    runaway = "SELECT count(*) FROM sales.order_lines a, sales.order_lines b, sales.order_lines c"
    with QueryRunner.from_config(cfg, workers=2, timeout_s=1.0) as runner:
        started = time.perf_counter()
        results = runner.run_many([runaway, COUNT, runaway, COUNT])
        elapsed = time.perf_counter() - started
    assert [r.error_kind for r in results] == ["timeout", None, "timeout", None]
    assert results[1].rows == [(2000,)]
    assert elapsed < 10


def test_batched_replies_keep_the_timeout_and_survive_a_killed_worker(cfg, monkeypatch):
    from text2sql.warehouse import sandbox

    runaway = "SELECT count(*) FROM sales.order_lines a, sales.order_lines b, sales.order_lines c"
    replies = [COUNT, runaway, "", COUNT, "DROP TABLE sales.orders"]
    with QueryRunner.from_config(cfg, workers=1, timeout_s=1.0, snapshot=load_snapshot(cfg)) as runner:
        answers = dict(runner.judge_and_run_each(replies))  # one worker: it goes on after the interrupt
        assert sorted(answers) == list(range(len(replies)))
        assert [a[2].rows for a in (answers[0], answers[3])] == [[(2000,)], [(2000,)]]
        assert answers[1][2].error_kind == "timeout"
        assert (answers[2][1].kind, answers[2][2]) == ("no_sql", None)
        assert (answers[4][1].kind, answers[4][2]) == ("refused", None)
        # A worker that gives no answer in time is killed; the replies after it go to a new one.
        monkeypatch.setattr(sandbox, "KILL_GRACE_S", -0.5)
        answers = dict(runner.judge_and_run_each([COUNT, runaway, COUNT]))
    assert answers[1][2].error_kind == "timeout" and "killed" in answers[1][2].error
    assert answers[0][2].rows == answers[2][2].rows == [(2000,)]


def test_row_cap_and_runtime_error(cfg):
    with QueryRunner.from_config(cfg, max_rows=7) as runner:
        capped = runner.run("SELECT * FROM sales.orders")
        broken = runner.run("SELECT CAST('x' AS INTEGER)")
    assert len(capped.rows) == 7 and capped.truncated
    assert broken.error_kind == "runtime_error" and "Conversion" in broken.error


def test_snapshot_from_duckdb_file(tmp_path):
    import duckdb

    from text2sql.catalog import SchemaSnapshot

    db = tmp_path / "shop.duckdb"
    con = duckdb.connect(str(db))
    con.execute("CREATE TABLE a (id INTEGER PRIMARY KEY, name VARCHAR NOT NULL)")
    con.execute("CREATE TABLE b (id INTEGER, a_id INTEGER REFERENCES a(id))")
    con.close()
    snap = SchemaSnapshot.from_duckdb(db)
    assert set(snap.tables) == {"a", "b"} and snap.tables["b"].references == [("a_id", "a", "id")]
    assert "name VARCHAR NOT NULL" in snap.tables["a"].ddl
    with QueryRunner(WarehouseSpec.from_duckdb_file(db), snapshot=snap) as runner:
        assert runner.run("SELECT count(*) FROM a").rows == [(0,)]


def test_time_zone_is_utc_whatever_the_host_says(cfg, monkeypatch):
    monkeypatch.setenv("TZ", "America/New_York")
    with QueryRunner.from_config(cfg) as runner:
        result = runner.run("SELECT extract(hour FROM TIMESTAMPTZ '2024-01-31 23:30:00+00')")
    assert result.rows == [(23,)]


def test_a_worker_without_pytz_refuses_to_start_and_says_what_to_install(tmp_path):
    """Without pytz, DuckDB fails every TIMESTAMPTZ result as if the SQL were wrong (a GPU host without it scored
    right answers as runtime errors): the sandbox must refuse to start instead."""
    import os
    import subprocess
    import sys

    shadow = tmp_path / "shadow" / "pytz"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('hidden by the test')\n")
    script = ("from text2sql.errors import MissingDependencyError\n"
              "from text2sql.warehouse import QueryRunner, WarehouseSpec\n"
              "with QueryRunner(WarehouseSpec()) as runner:\n"
              "    try:\n"
              "        print('ran', runner.run(\"SELECT TIMESTAMPTZ '2025-01-01 00:00:00+00' AS t\").rows)\n"
              "    except MissingDependencyError as exc:\n"
              "        print('missing:', exc)\n")
    repo = str(Path(__file__).resolve().parents[1])

    def run(extra_path: list[str]) -> str:
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([*extra_path, repo]))
        done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    assert run([]).startswith("ran [(datetime.datetime(2025, 1, 1, 0, 0, tzinfo=")
    assert run([str(tmp_path / "shadow")]) == ("missing: 'pytz' is not installed: DuckDB needs it to return "
                                               "TIMESTAMP WITH TIME ZONE values (pip install pytz)")
