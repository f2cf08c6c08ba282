"""Execution accuracy: comparison rules on a real DuckDB, the evaluate() pipeline, reports, eval compare."""

from __future__ import annotations

import hashlib
import json
import time
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace

import duckdb
import pytest
import yaml

from text2sql.config import load_config
from text2sql.data import Pair, import_spider, load_pairs
from text2sql.errors import DataError
from text2sql.evaluate import (
    ResultSet,
    compare_reports,
    compare_results,
    compute_metrics,
    evaluate,
    exact_match,
    extract_sql,
    order_key_columns,
    read_predictions,
    score_pairs,
    tie_query,
    write_report,
)

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).parent / "fixtures"
SPIDER_SAMPLES = [REPO / "shared" / "data" / "spider-sample", REPO.parent / "shared" / "data" / "spider-sample"]
EX_CASES = yaml.safe_load((FIXTURES / "ex_cases.yaml").read_text())

EMP = """
CREATE TABLE emp(id INTEGER, name VARCHAR, dept VARCHAR, salary DECIMAL(10,2), score DOUBLE, hired DATE);
INSERT INTO emp VALUES
  (1, 'ann', 'eng', 100.00, 1.5, '2020-01-01'),
  (2, 'bob', 'eng', 90.00, NULL, '2020-02-01'),
  (3, 'cy', 'ops', 90.00, 'NaN', '2021-03-01'),
  (4, 'di', 'ops', 80.00, 2.5, '2021-04-01'),
  (5, 'ed', 'hr', 70.00, 2.5, '2022-05-01');
"""


@pytest.fixture(scope="module")
def con():
    con = duckdb.connect(":memory:")
    con.execute("SET TimeZone = 'Europe/Paris'")  # results with a time zone come back in local time
    con.execute(EMP)
    yield con
    con.close()


def run(con, sql: str) -> ResultSet:
    cur = con.execute(sql)
    return ResultSet([d[0] for d in cur.description], cur.fetchall())


def verdict(con, case: dict, mode: str) -> str:
    gold, pred = run(con, case["gold"]), run(con, case["pred"])
    tie_sql = tie_query(case["gold"])
    tie_rows = run(con, tie_sql).rows if tie_sql else None
    cmp = compare_results(gold, pred, gold_sql=case["gold"], mode=mode, tie_rows=tie_rows)
    return "correct" if cmp.equal else "wrong_result"


@pytest.mark.parametrize("case", EX_CASES, ids=[c["title"] for c in EX_CASES])
def test_ex_case(con, case):
    if "TIMESTAMPTZ" in case["gold"] + case["pred"]:
        pytest.importorskip("pytz", reason="DuckDB needs pytz to return TIMESTAMP WITH TIME ZONE values")
    got = {mode: verdict(con, case, mode) for mode in case["expect"]}
    assert got == case["expect"]
    if case.get("flag") == "empty_gold":
        assert run(con, case["gold"]).rows == []


def test_every_rule_has_a_passing_and_a_failing_case():
    strict = [c["expect"].get("strict") for c in EX_CASES]
    assert strict.count("correct") >= 15 and strict.count("wrong_result") >= 15


def test_limit_tie_would_fail_without_the_tie_rows(con):
    gold_sql = "SELECT name, salary FROM emp ORDER BY salary DESC LIMIT 2"
    gold = run(con, gold_sql)
    kept = gold.rows[1][0]
    other = "cy" if kept == "bob" else "bob"
    pred = ResultSet(gold.columns, [gold.rows[0], (other, Decimal("90.00"))])
    assert not compare_results(gold, pred, gold_sql=gold_sql).equal
    tie_rows = run(con, tie_query(gold_sql)).rows
    assert compare_results(gold, pred, gold_sql=gold_sql, tie_rows=tie_rows).equal
    too_many = ResultSet(gold.columns, [gold.rows[0], ("bob", Decimal("90.00")), ("cy", Decimal("90.00"))])
    assert not compare_results(gold, too_many, gold_sql=gold_sql, tie_rows=tie_rows).equal


@pytest.mark.parametrize("direction", ["DESC", "ASC"])
def test_limit_tie_on_a_key_that_is_not_an_output_column(con, direction):
    """ORDER BY count(*) ... LIMIT (two Spider concert golds): the tie query brings the key as an extra column,
    so another row tied with the gold's last one is correct, and rows before the tie still count in order."""
    limit = 1 if direction == "DESC" else 2  # eng and ops have 2 employees each, hr 1
    gold_sql = f"SELECT dept FROM emp GROUP BY dept ORDER BY count(*) {direction} LIMIT {limit}"
    untied = tie_query(gold_sql)
    assert untied.endswith(f"COUNT(*) AS __t2s_tie_key0 FROM emp GROUP BY dept ORDER BY COUNT(*) {direction}")
    gold, tie_rows = run(con, gold_sql), run(con, untied).rows
    kept = gold.rows[-1][0]
    other = ("ops" if kept == "eng" else "eng",)
    before = gold.rows[:-1]  # hr, alone before the tie when ascending
    pred = ResultSet(gold.columns, [*before, other])
    assert not compare_results(gold, pred, gold_sql=gold_sql).equal
    assert compare_results(gold, pred, gold_sql=gold_sql, tie_rows=tie_rows).equal
    assert compare_results(gold, gold, gold_sql=gold_sql, tie_rows=tie_rows).equal
    assert not compare_results(gold, ResultSet(gold.columns, [*before, ("hr",)] if not before else [other, ("hr",)]),
                               gold_sql=gold_sql, tie_rows=tie_rows).equal  # not tied / tied rows out of order
    assert not compare_results(gold, ResultSet(gold.columns, [*before, ("eng",), ("ops",)]), gold_sql=gold_sql,
                               tie_rows=tie_rows).equal  # both tied rows: one too many


def test_errors_are_never_compared():
    timeout = SimpleNamespace(columns=[], rows=[], error_kind="timeout")
    gold = ResultSet(["n"], [])
    cmp = compare_results(gold, timeout)
    assert not cmp.equal and "timeout" in cmp.reason
    for mode in ("strict", "lenient", "set"):
        assert not compare_results(gold, timeout, mode=mode).equal
    with pytest.raises(ValueError, match="exclude"):
        compare_results(timeout, timeout)


def test_wrong_result_diff_names_counts_and_rows(con):
    gold = run(con, "SELECT name FROM emp WHERE dept = 'eng'")
    pred = run(con, "SELECT name FROM emp WHERE dept IN ('eng', 'hr')")
    cmp = compare_results(gold, pred)
    assert cmp.reason == "row count 3 differs from the gold 2"
    assert cmp.diff["gold_shape"] == [2, 1] and cmp.diff["pred_shape"] == [3, 1]
    assert cmp.diff["only_in_pred"] == [["ed"]] and cmp.diff["only_in_gold"] == []
    order = compare_results(
        run(con, "SELECT name FROM emp ORDER BY id"), run(con, "SELECT name FROM emp ORDER BY id DESC"),
        gold_sql="SELECT name FROM emp ORDER BY id",
    )
    assert "order" in order.reason


def test_timestamps_with_a_time_zone_compare_in_utc():
    import datetime as dt

    paris = dt.timezone(dt.timedelta(hours=2))
    gold = ResultSet(["t"], [(dt.datetime(2020, 1, 1, 12, tzinfo=paris),)])
    assert compare_results(gold, ResultSet(["t"], [(dt.datetime(2020, 1, 1, 10),)])).equal
    assert compare_results(gold, ResultSet(["t"], [(dt.datetime(2020, 1, 1, 10, tzinfo=dt.timezone.utc),)])).equal
    assert not compare_results(gold, ResultSet(["t"], [(dt.datetime(2020, 1, 1, 12),)])).equal
    assert not compare_results(gold, ResultSet(["t"], [(dt.datetime(2020, 1, 1, 10),)]), mode="set").equal


def test_numbers_within_and_beyond_tolerance():
    gold = ResultSet(["x"], [(1_000_000.0,)])
    assert compare_results(gold, ResultSet(["x"], [(1_000_000.5,)]), rel_tol=1e-6).equal
    assert not compare_results(gold, ResultSet(["x"], [(1_000_002.0,)]), rel_tol=1e-6).equal
    assert compare_results(ResultSet(["x"], [(0.0,)]), ResultSet(["x"], [(1e-17,)])).equal
    big = 2**62 + 1  # integers beyond float precision stay exact
    assert not compare_results(ResultSet(["x"], [(big,)]), ResultSet(["x"], [(big + 1,)]), rel_tol=0).equal


def test_permutation_search_is_fast_with_many_look_alike_columns():
    import time

    rows = [tuple((i >> b) & 1 for b in range(8)) for i in range(256)]
    shuffled = [tuple(reversed(r)) for r in rows]
    start = time.perf_counter()
    assert compare_results(ResultSet(list("abcdefgh"), rows), ResultSet(list("abcdefgh"), shuffled)).equal
    assert time.perf_counter() - start < 2


@pytest.mark.parametrize(
    "sql, columns, keys",
    [
        ("SELECT a, b FROM t ORDER BY b", ["a", "b"], (1,)),
        ("SELECT a, b FROM t ORDER BY 2 DESC, a", ["a", "b"], (1, 0)),
        ("SELECT a, count(*) AS n FROM t GROUP BY a ORDER BY n DESC", ["a", "n"], (1,)),
        ("SELECT a, count(*) FROM t GROUP BY a ORDER BY count(*) DESC", ["a", "count_star()"], (1,)),
        ("SELECT * FROM t ORDER BY b", ["a", "b"], (1,)),
        ("SELECT a FROM t ORDER BY b", ["a"], (0,)),  # key not in the output: exact order
        ("WITH x AS (SELECT a FROM t ORDER BY a) SELECT a FROM x", ["a"], None),
        ("SELECT a FROM (SELECT a FROM t ORDER BY a) s", ["a"], None),
        ("(SELECT a FROM t) UNION ALL (SELECT a FROM u) ORDER BY a", ["a"], (0,)),
        ("(SELECT a FROM t ORDER BY a)", ["a"], (0,)),
        ("SELECT a FROM t", ["a"], None),
    ],
)
def test_order_key_columns(sql, columns, keys):
    assert order_key_columns(sql, columns) == keys


def test_exact_match_normalizes_sql():
    assert exact_match("SELECT a FROM t WHERE b = 1", "select A from T where b=1")
    assert not exact_match("SELECT a FROM t WHERE b = 1", "SELECT a FROM t WHERE b = 2")
    assert not exact_match("SELECT a FROM t", None)
    assert not exact_match("SELECT a FROM t", "SELEC a FRM t")


@pytest.mark.parametrize(
    "text, sql",
    [
        ("SELECT 1", "SELECT 1"),
        ("  SELECT 1;  ", "SELECT 1"),
        ("```sql\nSELECT a FROM t;\n```\nThis query returns a.", "SELECT a FROM t"),
        ("Here it is:\n```\nSELECT 2\n```", "SELECT 2"),
        ("SELECT 'a;b' FROM t; DROP TABLE t", "SELECT 'a;b' FROM t; DROP TABLE t"),  # whole: never cut to a read
        ("", None),
        ("```sql\n```", None),
    ],
)
def test_extract_sql_from_a_completion(text, sql):
    assert extract_sql(text) == sql


# ---------------------------------------------------------------- the pipeline on a real lakehouse

DEMO_PAIRS = [
    ("count", "How many orders are there?", "SELECT count(*) FROM sales.orders", "easy", ["count"]),
    ("by-channel", "Orders per sales channel", "SELECT s.channel, count(*) AS orders FROM sales.orders o "
     "JOIN core.stores s ON s.store_id = o.store_id GROUP BY s.channel", "medium", ["join", "group"]),
    ("top-products", "Five best-selling products by units", "SELECT p.product_name, sum(l.quantity) AS units "
     "FROM sales.order_lines l JOIN core.products p USING (product_id) GROUP BY p.product_name "
     "ORDER BY units DESC LIMIT 5", "hard", ["join", "order"]),
    ("revenue", "Revenue of completed orders", "SELECT sum(l.quantity * l.unit_price - l.discount_amount) "
     "FROM sales.order_lines l JOIN sales.orders o USING (order_id) WHERE o.status = 'completed'", "medium", ["sum"]),
    ("first-orders", "The first three orders", "SELECT order_id, ordered_at FROM sales.orders "
     "ORDER BY ordered_at, order_id LIMIT 3", "easy", ["order"]),
    ("no-rows", "Orders with a negative shipping amount", "SELECT order_id FROM sales.orders "
     "WHERE shipping_amount < 0", "easy", ["filter"]),
    ("broken-gold", "A gold query that does not run", "SELECT 1 / 0 FROM sales.orders WHERE "
     "CAST(status AS INTEGER) > 0", "easy", ["filter"]),
]


def pair(id: str, question: str, sql: str, difficulty: str = "easy", tags=(), db=None) -> Pair:
    return Pair(id=id, question=question, sql=sql, difficulty=difficulty, tags=list(tags), db=db, split="test")


def write_pairs(path: Path, pairs) -> None:
    """datasets/<name>/pairs.jsonl, one record per line."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(p.to_record()) + "\n" for p in pairs))


def write_predictions(path: Path, sqls: dict) -> Path:
    path.write_text("".join(json.dumps({"id": i, "sql": s}) + "\n" for i, s in sqls.items()))
    return path


@pytest.fixture
def eval_project(tmp_path, lakehouse_project) -> Path:
    """A project that reads the shared small lakehouse (read-only) and keeps its reports and caches to itself."""
    lake = lakehouse_project
    (tmp_path / "text2sql.yaml").write_text(yaml.safe_dump({
        "catalog": {"name": "demo", "schemas_dir": str(lake / "schemas"), "catalogs": {"demo": {
            "type": "sql", "uri": f"sqlite:///{lake / '.lakehouse' / 'catalog.db'}",
            "warehouse": (lake / ".lakehouse" / "warehouse").as_uri()}}},
        "warehouse": {"cache_dir": str(lake / ".cache" / "warehouse"), "timeout_s": 2},
        "eval": {"workers": 2},
    }))
    write_pairs(tmp_path / "datasets" / "demo" / "pairs.jsonl", demo_pairs())
    return tmp_path


def demo_pairs():
    return [pair(*p) for p in DEMO_PAIRS]


def test_gold_as_prediction_scores_100_percent(eval_project):
    cfg = load_config(eval_project / "text2sql.yaml")
    pairs = demo_pairs()
    run = score_pairs(cfg, pairs, {p.id: p.sql for p in pairs})
    assert [e["id"] for e in run.excluded] == ["broken-gold"]
    assert "gold query failed (runtime_error)" in run.excluded[0]["reason"]
    assert {e["verdict"] for e in run.examples} == {"correct"}
    assert all(e["verdicts"] == {"strict": "correct", "lenient": "correct", "set": "correct"} for e in run.examples)
    assert [e["id"] for e in run.examples if e["empty_gold"]] == ["no-rows"]
    assert all(e["exact_match"] for e in run.examples)
    by_id = {e["id"]: e for e in run.examples}
    assert by_id["by-channel"]["tables"] == ["core.stores", "sales.orders"]


HOSTILE = {
    "create": "CREATE TABLE sales.hacked AS SELECT 1 AS x",
    "insert": "INSERT INTO sales.orders SELECT * FROM sales.orders",
    "delete": "DELETE FROM sales.orders",
    "drop-after-select": "SELECT 1; DROP TABLE sales.orders",
    "copy": "COPY (SELECT * FROM sales.orders) TO '{tmp}/stolen.csv'",
    "copy-in-cte": "WITH x AS (SELECT 1) SELECT * FROM x; COPY sales.orders TO '{tmp}/stolen2.csv'",
    "attach": "ATTACH '{tmp}/other.duckdb' AS other",
    "install": "INSTALL httpfs",
    "load": "LOAD httpfs",
    "read-csv": "SELECT * FROM read_csv('/etc/passwd')",
    "read-text": "SELECT content FROM read_text('/etc/passwd')",
    "file-as-table": "SELECT * FROM '/etc/passwd'",
    "pragma": "PRAGMA database_list",
    "set": "SET enable_external_access = true",
    "getenv": "SELECT getenv('HOME')",
    "cross-join": "SELECT count(*) FROM sales.order_lines a, sales.order_lines b, sales.order_lines c",
}


def test_hostile_predictions_are_refused_or_contained(eval_project, lakehouse_project, tmp_path_factory):
    cfg = load_config(eval_project / "text2sql.yaml")
    outside = tmp_path_factory.mktemp("outside")
    score_pairs(cfg, demo_pairs()[:1], {})  # materialize the warehouse first, then watch its files

    def warehouse_files():
        return {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(lakehouse_project.rglob("*"))
                if p.is_file()}

    before = warehouse_files()
    hostile = [pair(f"h-{name}", name, "SELECT count(*) FROM sales.orders") for name in HOSTILE]
    pairs = hostile + demo_pairs()[:3]
    predictions = {f"h-{name}": sql.format(tmp=outside) for name, sql in HOSTILE.items()}
    predictions.update({p.id: p.sql for p in demo_pairs()[:3]})
    started = time.perf_counter()
    run = score_pairs(cfg, pairs, predictions)
    elapsed = time.perf_counter() - started
    verdicts = {e["id"][2:]: e["verdict"] for e in run.examples if e["id"].startswith("h-")}
    assert verdicts.pop("cross-join") == "timeout"
    assert set(verdicts.values()) <= {"refused", "parse_error", "unknown_table", "runtime_error"}, verdicts
    assert verdicts["delete"] == verdicts["copy"] == verdicts["attach"] == verdicts["read-csv"] == "refused"
    assert [e["verdict"] for e in run.examples if not e["id"].startswith("h-")] == ["correct"] * 3
    assert list(outside.iterdir()) == []  # nothing written or attached outside the warehouse
    assert warehouse_files() == before  # nor inside it
    assert elapsed < 30  # the runaway query was stopped at the 2 s timeout and the rest completed
    again = score_pairs(cfg, demo_pairs()[:1], {"count": "SELECT count(*) FROM sales.orders"}, use_cache=False)
    assert again.examples[0]["verdict"] == "correct"  # the data is unchanged


def test_error_taxonomy(eval_project):
    cfg = load_config(eval_project / "text2sql.yaml")
    gold = "SELECT count(*) FROM sales.orders"
    predictions = {
        "no_sql": None,
        "parse_error": "SELEC count(*) FRM sales.orders",
        "unknown_table": "SELECT count(*) FROM sales.order",
        "unknown_column": "SELECT count(order_idd) FROM sales.orders",
        "refused": "DROP TABLE sales.orders",
        "runtime_error": "SELECT CAST(status AS INTEGER) FROM sales.orders",
        "wrong_result": "SELECT count(*) + 1 FROM sales.orders",
        "correct": "SELECT count(order_id) FROM sales.orders",
    }
    pairs = [pair(v, v, gold) for v in predictions] + [pair("missing", "no prediction at all", gold)]
    run = score_pairs(cfg, pairs, predictions)
    got = {e["id"]: e["verdict"] for e in run.examples}
    assert got == {**{v: v for v in predictions}, "missing": "no_sql"}
    reasons = {e["id"]: e["reason"] for e in run.examples}
    assert "did you mean sales.orders" in reasons["unknown_table"]
    wrong = next(e for e in run.examples if e["id"] == "wrong_result")
    assert wrong["diff"]["gold_shape"] == [1, 1] and wrong["diff"]["only_in_pred"]
    metrics = compute_metrics(run.examples, run.excluded, "strict")
    assert metrics["n"] == 9 and metrics["ex"] == round(1 / 9, 4)
    assert metrics["valid_sql_rate"] == round(2 / 9, 4)
    assert metrics["verdicts"]["no_sql"] == 2


def test_limit_tie_is_resolved_by_running_the_gold_without_its_limit(eval_project):
    cfg = load_config(eval_project / "text2sql.yaml")
    gold = "SELECT store_name, channel FROM core.stores ORDER BY channel LIMIT 2"  # 3 online stores tie
    orders = {"asc": "channel, store_name", "desc": "channel, store_name DESC", "wrong": "channel DESC"}
    pairs = [pair(k, k, gold) for k in orders]
    predictions = {k: f"SELECT store_name, channel FROM core.stores ORDER BY {v} LIMIT 2" for k, v in orders.items()}
    run = score_pairs(cfg, pairs, predictions)
    assert {e["id"]: e["verdict"] for e in run.examples} == {"asc": "correct", "desc": "correct",
                                                              "wrong": "wrong_result"}
    assert all("diff" not in e for e in run.examples if e["verdict"] == "correct")


def test_timeout_vs_timeout_is_not_correct(eval_project):
    cfg = load_config(eval_project / "text2sql.yaml", ["warehouse.timeout_s=1"])
    slow = "SELECT count(*) FROM sales.order_lines a, sales.order_lines b, sales.order_lines c"
    run = score_pairs(cfg, [pair("slow", "slow", slow)], {"slow": slow}, use_cache=False)
    assert run.examples == []
    assert "timeout" in run.excluded[0]["reason"]
    assert compute_metrics(run.examples, run.excluded, "strict")["ex"] == 0.0


def test_gold_results_are_cached_on_disk(eval_project):
    cfg = load_config(eval_project / "text2sql.yaml")
    pairs = demo_pairs()[:2]
    predictions = {p.id: p.sql for p in pairs}
    assert {e["verdict"] for e in score_pairs(cfg, pairs, predictions).examples} == {"correct"}
    files = sorted((eval_project / ".cache" / "gold").rglob("*.pkl"))
    assert len(files) == 2
    # Tamper with the cached gold count: the next run must read it (and so now disagree).
    from text2sql.evaluate import _GoldCache, _target_fingerprint  # noqa: PLC0415 (white-box check of the key)
    from text2sql.catalog import load_snapshot
    from text2sql.warehouse import SQLCheck, WarehouseSpec

    fingerprint = _target_fingerprint(WarehouseSpec.from_config(cfg), load_snapshot(cfg))
    cache = _GoldCache(eval_project / ".cache" / "gold", fingerprint, cfg.warehouse.max_rows)
    ok = SQLCheck(True, tables=["sales.orders"])
    tampered = SimpleNamespace(columns=["n"], rows=[(-1,)], error_kind=None, error="", truncated=False)
    cache.put(pairs[0].sql, ok, tampered)
    # (A prediction that is the gold's text gets the gold's result without a run: change the text, not the query.)
    predictions = {p.id: f"/* predicted */ {p.sql}" for p in pairs}
    verdicts = {e["id"]: e["verdict"] for e in score_pairs(cfg, pairs, predictions).examples}
    assert verdicts == {"count": "wrong_result", "by-channel": "correct"}
    assert not list((eval_project / ".cache" / "gold").rglob("*.tmp"))
    # A different row cap is a different key: the tampered entry is not used.
    other = load_config(eval_project / "text2sql.yaml", ["warehouse.max_rows=500"])
    assert score_pairs(other, pairs[:1], predictions).examples[0]["verdict"] == "correct"


# ---------------------------------------------------------------- predictions files


def test_read_predictions_accepts_sql_and_raw_completions(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text(
        '{"id": "a", "sql": "SELECT 1"}\n\n'
        '{"id": "b", "completion": "```sql\\nSELECT 2;\\n```"}\n'
        '{"id": "c", "prediction": "SELECT 3; -- done"}\n'
        '{"id": "d", "sql": null}\n'
        '{"id": "e", "sql": "  "}\n'
    )
    assert read_predictions(path, {"a", "b", "c", "d", "e", "f"}) == {
        "a": "SELECT 1", "b": "```sql\nSELECT 2;\n```", "c": "SELECT 3; -- done", "d": None, "e": None,
    }


@pytest.mark.parametrize(
    "lines, message",
    [
        (['{"id": "a", "sql": "SELECT 1"}', '{"id": "zz", "sql": "SELECT 1"}'], r"p\.jsonl:2: unknown id 'zz'"),
        (['{"id": "a", "sql": "SELECT 1"}', '{"id": "a", "sql": "SELECT 2"}'],
         r"p\.jsonl:2: duplicate id 'a' \(first on line 1\)"),
        (['{"id": "a", "sql": "SELECT 1"', '{"id": "b", "sql": "SELECT 1"}'], r"p\.jsonl:1: not valid JSON"),
        (['["a", "SELECT 1"]'], r"p\.jsonl:1: expected an object"),
        (['{"sql": "SELECT 1"}'], r"p\.jsonl:1: missing or non-string 'id'"),
        (['{"id": "a", "query": "SELECT 1"}'], r"p\.jsonl:1: no 'sql'"),
        (['{"id": "a", "sql": 5}'], r"p\.jsonl:1: 'sql' must be a string or null"),
    ],
)
def test_bad_predictions_files_name_file_and_line(tmp_path, lines, message):
    path = tmp_path / "p.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=message):
        read_predictions(path, {"a", "b"})


def test_every_problem_in_a_predictions_file_is_reported_at_once(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"id": "x", "sql": "SELECT 1"}\nnot json\n{"id": "a", "sql": "SELECT 1"}\n{"id": "a"}\n')
    with pytest.raises(DataError, match=r"3 problem\(s\).*:1: unknown id.*:2: not valid JSON.*:4: "):
        read_predictions(path, {"a"})
    with pytest.raises(DataError, match="predictions file not found"):
        read_predictions(tmp_path / "missing.jsonl")


# ---------------------------------------------------------------- reports and eval compare


def make_report(release: str, verdicts: dict[str, str], mode: str = "strict") -> dict:
    examples = [
        {"id": i, "verdict": v, "reason": "" if v == "correct" else "x", "question": f"q {i}", "gold": "SELECT 1",
         "predicted": "SELECT 1", "difficulty": "hard" if i.startswith("h") else "easy", "tags": ["t"],
         "tables": ["sales.orders"], "verdicts": {m: v for m in ("strict", "lenient", "set")},
         "empty_gold": False, "exact_match": False}
        for i, v in verdicts.items()
    ]
    return {"release": release, "mode": mode, "model": None, "dataset": "demo", "split": "test",
            "metrics": compute_metrics(examples, [], mode), "examples": examples, "excluded": [],
            "inputs": {"dataset_hash": "d", "schema_fingerprint": "s"}}


def test_reports_are_written_as_json_markdown_and_html(eval_project):
    cfg = load_config(eval_project / "text2sql.yaml")
    pairs = demo_pairs()
    predictions = {p.id: p.sql for p in pairs}
    predictions["count"] = "SELECT count(*) + 1 FROM sales.orders"
    predictions["by-channel"] = "SELECT <b>nope</b>"
    run = score_pairs(cfg, pairs, predictions)
    report = {"release": "r1", "mode": "strict", "model": "m", "dataset": "demo", "split": "test",
              "metrics": compute_metrics(run.examples, run.excluded, "strict"), "examples": run.examples,
              "excluded": run.excluded, "inputs": {}}
    out = eval_project / "eval" / "reports" / "r1"
    write_report(report, out)
    saved = json.loads((out / "report.json").read_text())
    assert saved["metrics"]["ex"] == round(4 / 6, 4) and saved["metrics"]["n"] == 6
    assert saved["metrics"]["gold_errors"] == 1 and saved["metrics"]["empty_gold"] == 1
    assert {e["verdict"] for e in saved["examples"]} == {"correct", "wrong_result", "parse_error"}
    md = (out / "report.md").read_text()
    assert "| EX (strict) | 66.7% (4/6) |" in md and "`count` **wrong_result**" in md
    page = (out / "report.html").read_text()
    assert page.count("<svg") == 3 and "<script" not in page and "http" not in page.replace(
        'xmlns="http://www.w3.org/2000/svg"', "")
    assert "&lt;b&gt;nope&lt;/b&gt;" in page and "<b>nope</b>" not in page
    assert not list(out.glob("*.tmp")) and not list(out.glob(".*"))


def test_eval_compare_lists_regressions_and_fixes(tmp_path):
    reports = tmp_path / "eval" / "reports"
    write_report(make_report("v1", {"e1": "correct", "e2": "correct", "h1": "wrong_result", "h2": "correct"}),
                 reports / "v1")
    write_report(make_report("v2", {"e1": "correct", "e2": "timeout", "h1": "correct", "h2": "wrong_result"}),
                 reports / "v2")
    cmp = compare_reports(reports / "v1", reports / "v2", threshold=0.0)
    assert [c["id"] for c in cmp["regressions"]] == ["e2", "h2"] and [c["id"] for c in cmp["fixes"]] == ["h1"]
    assert cmp["delta"] == -0.25 and cmp["failed"]
    assert cmp["slices"]["difficulty"] == {"easy": {"a": 1.0, "b": 0.5, "delta": -0.5},
                                           "hard": {"a": 0.5, "b": 0.5, "delta": 0.0}}
    assert not compare_reports(reports / "v1", reports / "v2", threshold=0.3)["failed"]
    assert not compare_reports(reports / "v2", reports / "v1")["failed"]


def test_eval_compare_says_whether_a_difference_is_more_than_chance(tmp_path):
    """Exact McNemar on the changed examples, and 95 % Wilson intervals: 44 dev questions cannot tell most recipes
    apart, and the comparison says so instead of leaving a reader to trust a 2-point delta."""
    from click.testing import CliRunner

    from text2sql.cli import main

    (tmp_path / "text2sql.yaml").write_text("eval:\n  regression_threshold: 1.0\n")
    reports = tmp_path / "eval" / "reports"
    ids = [f"e{i}" for i in range(10)]
    write_report(make_report("base", {i: "correct" if n < 4 else "wrong_result" for n, i in enumerate(ids)}),
                 reports / "base")
    write_report(make_report("all", {i: "correct" for i in ids}), reports / "all")
    # 3 regressions (e0-e2) and 5 fixes (e4-e8): +2 correct, a split a fair coin gives often.
    write_report(make_report("mixed", {i: "correct" if 3 <= n <= 8 else "wrong_result" for n, i in enumerate(ids)}),
                 reports / "mixed")
    cmp = compare_reports(reports / "base", reports / "all")
    assert (len(cmp["fixes"]), len(cmp["regressions"]), cmp["p_value"]) == (6, 0, 0.0312)  # 2 / 2**6
    assert cmp["interval_a"] == [0.1682, 0.6873] and cmp["interval_b"] == [0.7225, 1.0]  # 4/10 and 10/10
    mixed = compare_reports(reports / "base", reports / "mixed")
    assert (len(mixed["fixes"]), len(mixed["regressions"]), mixed["p_value"]) == (5, 3, 0.7266)
    assert compare_reports(reports / "base", reports / "base")["p_value"] == 1.0
    out = CliRunner().invoke(main, ["eval", "compare", str(reports / "base"), str(reports / "mixed"),
                                    "--config", str(tmp_path / "text2sql.yaml")]).output
    assert "paired: 5 fixes, 3 regressions, exact McNemar p = 0.727 (within chance at this size); 95 % intervals " \
           "16.8%-68.7% and 31.3%-83.2%" in out, out


def test_eval_compare_cli_exit_code(tmp_path):
    from click.testing import CliRunner

    from text2sql.cli import main

    (tmp_path / "text2sql.yaml").write_text("eval:\n  regression_threshold: 0.1\n")
    reports = tmp_path / "eval" / "reports"
    write_report(make_report("v1", {"a": "correct", "b": "correct", "c": "correct", "d": "correct"}), reports / "v1")
    write_report(make_report("v2", {"a": "correct", "b": "correct", "c": "correct", "d": "no_sql"}), reports / "v2")
    write_report(make_report("v3", {"a": "correct", "b": "correct", "c": "correct", "d": "correct"}), reports / "v3")
    config = ["--config", str(tmp_path / "text2sql.yaml")]
    runner = CliRunner()
    dropped = runner.invoke(main, ["eval", "compare", "v1", "v2", *config])
    assert dropped.exit_code == 1, dropped.output
    assert "regressions: 1" in dropped.output and "FAIL: EX dropped by 25.0%" in dropped.output
    held = runner.invoke(main, ["eval", "compare", "v1", "v3", *config])
    assert held.exit_code == 0 and "regressions: 0" in held.output
    lenient = runner.invoke(main, ["eval", "compare", str(reports / "v1"), "v2", "--threshold", "0.3", *config])
    assert lenient.exit_code == 0, lenient.output
    missing = runner.invoke(main, ["eval", "compare", "v1", "nope", *config])
    assert missing.exit_code == 1 and "error: no report.json for 'nope'" in missing.output


# ---------------------------------------------------------------- evaluate() and the eval command


def test_evaluate_writes_a_release_report(eval_project):
    cfg = load_config(eval_project / "text2sql.yaml")
    sqls = {p.id: p.sql for p in demo_pairs() if p.id != "first-orders"}
    sqls["count"] = "SELEC count(*) FROM sales.orders"  # judged whole: a parse error, never cut down to "FROM ..."
    path = write_predictions(eval_project / "preds.jsonl", sqls)
    report = evaluate(cfg, path, dataset="demo", split="test", release="r1", model="tiny")
    saved = json.loads((eval_project / "eval" / "reports" / "r1" / "report.json").read_text())
    assert report["path"] == str(eval_project / "eval" / "reports" / "r1") and "path" not in saved
    assert {"release", "mode", "model", "dataset", "metrics", "examples", "inputs"} <= set(saved)
    assert (saved["release"], saved["mode"], saved["model"], saved["dataset"]) == ("r1", "strict", "tiny", "demo")
    verdicts = {e["id"]: e["verdict"] for e in saved["examples"]}
    assert verdicts["first-orders"] == "no_sql" and verdicts["count"] == "parse_error"
    assert saved["metrics"]["n"] == 6 and saved["metrics"]["ex"] == round(4 / 6, 4)
    assert set(saved["metrics"]["ex_by_difficulty"]) == {"easy", "medium", "hard"}
    inputs = saved["inputs"]
    assert set(inputs["versions"]) == {"text2sql", "duckdb", "sqlglot", "pyiceberg"}
    assert len(inputs["dataset_hash"]) == 64 and inputs["schema_fingerprint"] == inputs["schemas"]["lakehouse"]
    assert inputs["predictions"]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    with pytest.raises(DataError, match="release name"):
        evaluate(cfg, path, release="../escape")
    with pytest.raises(DataError, match=r"preds\.jsonl:1: unknown id 'nope'"):
        evaluate(cfg, write_predictions(eval_project / "preds.jsonl", {"nope": "SELECT 1"}), release="r2")


def test_evaluate_scores_a_stated_subset_with_eval_max_questions(eval_project):
    """eval.max_questions scores evenly spaced pairs of the split only; every output says it is a subset."""
    from text2sql.data import question_subset
    from text2sql.evaluate import format_summary

    cfg = load_config(eval_project / "text2sql.yaml", ["eval.max_questions=3"])
    pairs = [p for p in demo_pairs() if p.split == "test"]
    chosen = question_subset(pairs, 3)
    assert [p.id for p in chosen] == [pairs[i * len(pairs) // 3].id for i in range(3)] and len(pairs) > 3
    # Predictions for the chosen pairs only (what predict writes under the same setting): none is missing.
    path = write_predictions(eval_project / "preds.jsonl", {p.id: p.sql for p in chosen})
    report = evaluate(cfg, path, dataset="demo", split="test", release="sub", model="tiny")
    saved = json.loads((eval_project / "eval" / "reports" / "sub" / "report.json").read_text())
    assert {e["id"] for e in saved["examples"] + saved["excluded"]} == {p.id for p in chosen}
    assert saved["subset"] == {"questions": 3, "of": len(pairs), "max_questions": 3,
                               "how": f"evenly spaced in the split's file order (pair i * {len(pairs)} // 3)"}
    line = f"SUBSET: 3 of the {len(pairs)} demo/test questions"
    assert line in (eval_project / "eval" / "reports" / "sub" / "report.md").read_text()
    assert line in (eval_project / "eval" / "reports" / "sub" / "report.html").read_text()
    assert line in format_summary(report)
    whole = evaluate(load_config(eval_project / "text2sql.yaml"), write_predictions(
        eval_project / "all.jsonl", {p.id: p.sql for p in pairs}), dataset="demo", split="test", release="all")
    assert "subset" not in whole and "SUBSET" not in format_summary(whole)


def test_eval_command(eval_project):
    from click.testing import CliRunner

    from text2sql.cli import main

    path = write_predictions(eval_project / "preds.jsonl", {p.id: p.sql for p in demo_pairs()})
    config = ["--config", str(eval_project / "text2sql.yaml")]
    result = CliRunner().invoke(main, ["eval", *config, "--predictions", str(path), "--release", "gold",
                                       "--mode", "lenient"])
    assert result.exit_code == 0, result.output
    assert "EX 100.0% (6/6)" in result.output and "mode lenient" in result.output
    assert f"report: {eval_project / 'eval' / 'reports' / 'gold'}/report.html" in result.output
    path.write_text('{"id": "count", "sql": "SELECT 1"}\n{"id": "count", "sql": "SELECT 2"}\n')
    bad = CliRunner().invoke(main, ["eval", *config, "--predictions", str(path)])
    assert bad.exit_code == 1 and "duplicate id 'count' (first on line 1)" in bad.output
    assert "Traceback" not in bad.output
    missing = CliRunner().invoke(main, ["eval", *config])
    assert missing.exit_code == 2 and "--predictions" in missing.output


def test_gold_as_prediction_on_the_whole_demo_dataset(eval_project):
    cfg = load_config(eval_project / "text2sql.yaml")
    pairs = load_pairs(cfg, str(REPO / "datasets" / "demo"))
    run = score_pairs(cfg, pairs, {p.id: p.sql for p in pairs})
    assert run.excluded == []
    assert [e["id"] for e in run.examples if e["verdict"] != "correct"] == []
    assert len(run.examples) == len(pairs) >= 50


def test_gold_as_prediction_on_an_imported_spider_slice(eval_project):
    sample = next((p for p in SPIDER_SAMPLES if (p / "dev.json").is_file()), None)
    if sample is None:
        pytest.skip("shared/data/spider-sample is not here")
    cfg = load_config(eval_project / "text2sql.yaml")
    target = str(eval_project / "datasets" / "spider-sample")
    imported = import_spider(cfg, sample, name=target)
    pairs = load_pairs(cfg, target)
    run = score_pairs(cfg, pairs, {p.id: p.sql for p in pairs}, dataset=target)
    assert len(pairs) == imported.kept >= 100
    assert run.excluded == [] and {e["verdict"] for e in run.examples} == {"correct"}
    assert set(run.schemas) == {"concert_singer", "pets_1", "poker_player"}


def test_eval_imports_no_model_libraries(eval_project):
    import subprocess
    import sys

    path = write_predictions(eval_project / "preds.jsonl", {"count": "SELECT count(*) FROM sales.orders"})
    code = (
        "import sys; from text2sql.cli import main\n"
        "try:\n"
        f"    main(['eval', '--config', {str(eval_project / 'text2sql.yaml')!r}, '--predictions', {str(path)!r}])\n"
        "except SystemExit as exc:\n"
        "    assert not exc.code, exc.code\n"
        "heavy = {'torch', 'transformers', 'trl', 'peft', 'sentence_transformers', 'fastapi'}\n"
        "print(sorted(heavy & set(sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_eval_combine_makes_an_ensemble_that_eval_selects_by_execution(eval_project):
    """Three models' predictions, combined: each question goes to the answer most of them agree on by execution
    (invalid ones dropped), a tie to the earlier file; eval reports the ensemble against the first file alone."""
    from click.testing import CliRunner

    from text2sql.cli import main

    gold = {p.id: p.sql for p in demo_pairs()}
    wrong_count = "SELECT count(*) + 1 FROM sales.orders"
    files = [  # count: B and C agree (right) against A; revenue: all differ, the first file's stands;
        # first-orders: A fails to parse, B is right, C wrong: a one-one tie goes to B, the earlier file.
        {**gold, "count": wrong_count, "revenue": "SELECT 1", "first-orders": "SELEC order_id"},
        {**gold, "revenue": "SELECT 2"},
        {**gold, "revenue": "SELECT 3",
         "first-orders": "SELECT order_id, ordered_at FROM sales.orders ORDER BY ordered_at DESC, order_id LIMIT 3"},
    ]
    paths = [str(write_predictions(eval_project / f"{name}.jsonl", f)) for name, f in zip("abc", files)]
    config = ["--config", str(eval_project / "text2sql.yaml")]
    runner = CliRunner()
    combined = eval_project / "ensemble.jsonl"
    done = runner.invoke(main, ["eval", "combine", *paths, "--out", str(combined)])
    assert done.exit_code == 0 and "3 candidates each" in done.output, done.output
    records = {json.loads(line)["id"]: json.loads(line) for line in combined.read_text().splitlines()}
    assert [c["sql"] for c in records["count"]["candidates"]] == [wrong_count, gold["count"], gold["count"]]
    scored = runner.invoke(main, ["eval", "--predictions", str(combined), "--split", "test", "--release", "ens",
                                  *config])
    assert scored.exit_code == 0, scored.output
    report = json.loads((eval_project / "eval" / "reports" / "ens" / "report.json").read_text())
    verdicts = {e["id"]: e["verdict"] for e in report["examples"]}
    assert verdicts["count"] == verdicts["first-orders"] == "correct"
    assert verdicts["revenue"] == "wrong_result" and {e["predicted"] for e in report["examples"]
                                                      if e["id"] == "revenue"} == {"SELECT 1"}
    assert "candidate selection: 3 candidates" in scored.output

    one = runner.invoke(main, ["eval", "combine", paths[0], "--out", str(combined)])
    assert one.exit_code == 1 and one.output.startswith("error: combine needs two or more"), one.output
    short = write_predictions(eval_project / "short.jsonl", {"count": gold["count"]})
    other = runner.invoke(main, ["eval", "combine", paths[0], str(short), "--out", str(eval_project / "x.jsonl")])
    assert other.exit_code == 1 and "answers other questions" in other.output and "Traceback" not in other.output
    assert not (eval_project / "x.jsonl").exists()
