"""The SQL guard: a reply judged whole, the same in eval and serve; worker isolation; the memory cap; no false blocks.

Real parts only: the small demo lakehouse, DuckDB files made here, worker processes, and for serve the real HTTP
server driven by a real client with `ScriptedEngine` (a real OpenAI-style peer) supplying the hostile replies.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import duckdb
import httpx
import pytest
import yaml
from tests.test_serve import ScriptedEngine, config, config_path, serving  # noqa: F401 (config_path: a fixture)

from text2sql.catalog import SchemaSnapshot, load_snapshot
from text2sql.config import load_config
from text2sql.data import Pair
from text2sql.evaluate import evaluate, score_pairs
from text2sql.warehouse import MEMORY_SLACK_BYTES, QueryRunner, WarehouseSpec, _parse_bytes, judge_reply

REPO = Path(__file__).resolve().parents[1]
GOLD = "SELECT count(*) AS n FROM sales.orders"
HOSTILE = {
    "drop-then-gold": f"DROP TABLE sales.orders; {GOLD}",
    "insert-select": f"INSERT INTO x {GOLD}",
    "ctas": f"CREATE TABLE t AS {GOLD}",
    "create-view": f"CREATE OR REPLACE VIEW v AS {GOLD}",
    "delete": "DELETE FROM sales.orders",
    "lone-drop": "DROP TABLE sales.orders",
    "gold-then-drop": f"```sql\n{GOLD};\n```\nThen clean up:\n```sql\nDROP TABLE sales.orders;\n```",
    "attach-then-gold": f"Sure:\nATTACH 'x.db' AS x;\n{GOLD}",
}


@pytest.fixture(scope="module")
def cfg(config_path):
    return load_config(config_path)


def pair(pid: str, sql: str, db: str | None = None) -> Pair:
    return Pair(id=pid, question=pid, sql=sql, difficulty="easy", tags=[], db=db, split="test")


# ---------------------------------------------------------------- 1. a reply is judged whole, alike in eval and serve


@pytest.mark.parametrize("reply", HOSTILE.values(), ids=HOSTILE.keys())
def test_a_write_is_never_cut_down_to_a_read(reply):
    sql, check = judge_reply(reply)
    assert check.kind == "refused", check
    assert "DROP" in sql or "INSERT" in sql or "CREATE" in sql or "DELETE" in sql or "ATTACH" in sql


@pytest.mark.parametrize("reply, sql", [
    (f"```sql\n{GOLD};\n```\nThis counts the orders.", GOLD),
    (f"{GOLD}; -- all of them", GOLD),
    (f"Here you go:\n{GOLD}\n", GOLD),
    (f"{GOLD}; This counts the orders.", GOLD),
])
def test_fences_trailing_semicolons_comments_and_prose_are_fine(cfg, reply, sql):
    got, check = judge_reply(reply, load_snapshot(cfg))
    assert (got, check.ok, check.tables) == (sql, True, ["sales.orders"])


def test_hostile_replies_get_the_same_verdict_in_eval_and_serve(cfg, config_path):
    pairs = [pair(name, GOLD) for name in HOSTILE]
    run = score_pairs(cfg, pairs, dict(HOSTILE), use_cache=False)
    by_eval = {e["id"]: e for e in run.examples}
    assert {e["verdict"] for e in run.examples} == {"refused"} and not run.excluded
    for name, reply in HOSTILE.items():  # the raw reply next to the SQL judged in it, never a repaired read
        assert by_eval[name]["predicted"] == judge_reply(reply)[0] and not by_eval[name]["predicted"].startswith("FROM")
        assert by_eval[name].get("raw", reply) == reply
    with ScriptedEngine() as engine, serving(config(config_path), upstream=engine.url) as url:
        for name, reply in HOSTILE.items():
            engine.script(reply)
            body = httpx.post(f"{url}/v1/sql", json={"question": "q", "execute": True}, timeout=60).json()
            assert (body["valid"], body["error_kind"]) == (False, "refused") and "rows" not in body, name
            assert body["error"] == by_eval[name]["reason"], name
        engine.script(GOLD)
        body = httpx.post(f"{url}/v1/sql", json={"question": "q", "execute": True}, timeout=60).json()
    assert body["rows"][0][0] > 0  # the orders are all still there


def test_drop_then_gold_predictions_of_the_demo_test_split_score_zero(tmp_path, lakehouse_project):
    lake = lakehouse_project
    (tmp_path / "text2sql.yaml").write_text(yaml.safe_dump({
        "catalog": {"name": "demo", "schemas_dir": str(lake / "schemas"), "catalogs": {"demo": {
            "type": "sql", "uri": f"sqlite:///{lake / '.lakehouse' / 'catalog.db'}",
            "warehouse": (lake / ".lakehouse" / "warehouse").as_uri()}}},
        "warehouse": {"cache_dir": str(lake / ".cache" / "warehouse"), "timeout_s": 5},
        "data": {"datasets_dir": str(REPO / "datasets")},
        "eval": {"workers": 2},
    }))
    cfg = load_config(tmp_path / "text2sql.yaml")
    test = [json.loads(line) for line in (REPO / "datasets" / "demo" / "pairs.jsonl").read_text().splitlines()]
    test = [r for r in test if r["split"] == "test"]
    preds = tmp_path / "drop.jsonl"
    preds.write_text("".join(json.dumps({"id": r["id"], "sql": f"DROP TABLE sales.orders; {r['sql']}"}) + "\n"
                             for r in test))
    report = evaluate(cfg, preds, dataset="demo", split="test", release="drop")
    assert report["metrics"]["n"] > 100 and report["metrics"]["ex"] == 0.0
    assert {e["verdict"] for e in report["examples"]} == {"refused"}


# ---------------------------------------------------------------- 2. worker isolation


def test_a_temp_object_dies_with_its_query_and_a_call_runs_one_statement(cfg):
    """Straight to the worker (checked=True skips check_sql): its per-query cursor is what isolates queries."""
    with QueryRunner.from_config(cfg, workers=1) as runner:
        real = runner.run("SELECT count(*) FROM orders", checked=True).rows
        runner.run("CREATE TEMP VIEW orders AS SELECT 42 AS n", checked=True)
        pid = runner._idle[0].process.pid
        assert runner.run("SELECT count(*) FROM orders", checked=True).rows == real != [(1,)]
        runner.run("CREATE TEMP MACRO plus_one(x) AS x + 1", checked=True)
        macro = runner.run("SELECT plus_one(1)", checked=True)
        several = runner.run("SELECT 1; SELECT 2", checked=True)
        hidden = runner.run("SELECT 1; CREATE TEMP VIEW orders AS SELECT 42", checked=True)
        assert runner._idle[0].process.pid == pid  # the same long-lived worker answered every call
    assert macro.error_kind == "runtime_error" and "plus_one" in macro.error
    assert several.error_kind == "refused" and "2 statements in one call" in several.error
    assert hidden.error_kind == "refused"


# ---------------------------------------------------------------- 3. the memory cap


def test_a_memory_bomb_ends_in_time_within_the_cap_and_the_run_goes_on(cfg):
    limit, timeout_s = "100MB", 2.0
    bomb = "SELECT length(repeat('x', 4000000000))"
    with QueryRunner.from_config(cfg, workers=1, memory_limit=limit, timeout_s=timeout_s) as runner:
        runner.run("SELECT 1")
        worker = runner._idle[0].process.pid
        started = time.perf_counter()
        result = runner.run(bomb)
        elapsed = time.perf_counter() - started
        status = _proc_status(worker) if runner._idle and runner._idle[0].process.pid == worker else {}
        after = runner.run("SELECT count(*) FROM sales.orders")
    assert result.error_kind in ("runtime_error", "timeout") and elapsed <= timeout_s + 1.0, (result, elapsed)
    assert after.error_kind is None and after.rows[0][0] > 0
    if status:  # the worker survived (DuckDB reported the failed allocation): its peak stayed under the cap
        # cap = its size when ready (under 1 GiB of address space here) + memory_limit + MEMORY_SLACK_BYTES
        assert status["VmPeak"] <= status["cap"] <= 2**30 + _parse_bytes(limit) + MEMORY_SLACK_BYTES
        assert status["VmHWM"] <= _parse_bytes(limit) + MEMORY_SLACK_BYTES


def _proc_status(pid: int) -> dict:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmPeak", "VmHWM", "VmSize"):
            fields[key] = int(value.split()[0]) * 1024
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max address space"):
            fields["cap"] = int(line.split()[3])
    return fields


# ---------------------------------------------------------------- 4. no false blocks


@pytest.fixture(scope="module")
def nyc(tmp_path_factory) -> Path:
    """A benchmark-style dataset: one DuckDB file whose catalog is `nyc`."""
    root = tmp_path_factory.mktemp("nyc")
    con = duckdb.connect(str(root / "nyc.duckdb"))
    con.execute("CREATE TABLE taxi (kind VARCHAR, fare DOUBLE, tip DOUBLE)")
    con.execute("INSERT INTO taxi VALUES ('yellow', 10, 1), ('green', 7, 0.5), ('yellow', 12, 2)")
    con.close()
    (root / "dataset.yaml").write_text(yaml.safe_dump({"databases": {"nyc": "nyc.duckdb"}}))
    return root


FORMER_FALSE_BLOCKS = {
    "catalog-qualified": "SELECT count(*) FROM nyc.taxi",
    "catalog-and-schema": "SELECT sum(fare) FROM nyc.main.taxi WHERE kind = 'yellow'",
    "trailing-comment": "SELECT kind, fare FROM taxi ORDER BY fare; -- cheapest first",
    "pivot": "PIVOT taxi ON kind USING sum(fare)",
    "unpivot": "UNPIVOT taxi ON fare, tip INTO NAME what VALUE amount",
}


@pytest.mark.parametrize("sql", FORMER_FALSE_BLOCKS.values(), ids=FORMER_FALSE_BLOCKS.keys())
def test_former_false_blocks_pass_and_run(nyc, sql):
    snapshot = SchemaSnapshot.from_duckdb(nyc / "nyc.duckdb")
    got, check = judge_reply(sql, snapshot)
    assert check.ok, check
    with QueryRunner(WarehouseSpec.from_duckdb_file(nyc / "nyc.duckdb"), snapshot=snapshot) as runner:
        result = runner.run(got)
    assert result.error_kind is None and result.rows, result


@pytest.mark.parametrize("sql, kind, reason", [
    ("SELECT count(*) FROM nyc.taxis", "unknown_table", "unknown table 'taxis'; did you mean taxi?"),
    ("SELECT count(*) FROM other.main.taxi", "unknown_table", '"other" does not exist'),
    ("SELECT fair FROM nyc.taxi", "unknown_column", "unknown column 'fair'; did you mean fare?"),
    ("SELECT t.fair FROM taxi t", "unknown_column", "unknown column 'fair'; did you mean fare?"),
    ("DESCRIBE taxi", "refused", "DESCRIBE is not allowed"),
    ("SELECT * FROM (SUMMARIZE taxi)", "refused", "SUMMARIZE is not allowed"),
    ("SELECT getenv('HOME') FROM taxi", "refused", "getenv() is not allowed"),
    ("SELECT * FROM read_csv('/etc/passwd')", "refused", "read_csv() is not allowed"),
    ("PIVOT taxi ON kind USING sum(fare); DROP TABLE taxi", "refused", "2 statements"),
    ("PRAGMA database_list", "refused", "PRAGMA"),  # DuckDB parses it as a SELECT
    ("SELECT * FROM '/etc/passwd'", "unknown_table", "/etc/passwd"),  # the binder has no file access either
])
def test_what_stays_blocked(nyc, sql, kind, reason):
    _, check = judge_reply(sql, SchemaSnapshot.from_duckdb(nyc / "nyc.duckdb"))
    assert (check.ok, check.kind) == (False, kind) and reason in check.message, check


def test_a_worker_binding_by_running_gives_the_binders_verdicts(nyc):
    """On a plain DuckDB file a worker binds a reply by running it, and asks the binder only when the run fails
    there: every verdict, and every result, is the one of binding first with `judge_reply`."""
    snapshot = SchemaSnapshot.from_duckdb(nyc / "nyc.duckdb")
    replies = [*FORMER_FALSE_BLOCKS.values(), "SELECT count(*) FROM nyc.taxis", "SELECT fair FROM nyc.taxi",
               "SELECT t.fair FROM taxi t", "SELECT * FROM '/etc/passwd'", "SELECT * FROM memory.main.taxi",
               "SELECT count(*) FROM other.main.taxi", "SELECT abs(kind) FROM taxi", "SELECT fare FROM taxi WHERE kind = 1",
               "SELECT * FROM taxi, taxi", "WITH x AS (SELECT 1) SELECT * FROM x, nope", "SELECT 1 +", "DESCRIBE taxi"]
    with QueryRunner(WarehouseSpec.from_duckdb_file(nyc / "nyc.duckdb"), snapshot=snapshot) as runner:
        for reply in replies:
            sql, check = judge_reply(reply, snapshot)
            expected = runner.run(sql, checked=True) if check.ok else None
            got_sql, got_check, got = runner.judge_and_run(reply)
            assert (got_sql, got_check) == (sql, check), reply
            assert (got and (got.columns, got.rows, got.error_kind, got.error)) == (
                expected and (expected.columns, expected.rows, expected.error_kind, expected.error)), reply


def test_gold_as_prediction_scores_100_percent_on_the_former_false_blocks(nyc, cfg):
    pairs = [pair(name, sql, db="nyc") for name, sql in FORMER_FALSE_BLOCKS.items()]
    run = score_pairs(cfg, pairs, {p.id: p.sql for p in pairs}, dataset=str(nyc), use_cache=False)
    assert not run.excluded and {e["verdict"] for e in run.examples} == {"correct"}
    hostile = {p.id: f"DROP TABLE taxi; {p.sql}" for p in pairs}
    assert {e["verdict"] for e in score_pairs(cfg, pairs, hostile, dataset=str(nyc), use_cache=False).examples} == {
        "refused"}
