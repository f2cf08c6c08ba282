"""The pair store, validation, dedup, split and stats, on a real small lakehouse and real DuckDB."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from text2sql.cli import main
from text2sql.config import load_config
from text2sql.data import (
    FEATURES,
    Pair,
    add_pairs,
    dataset_stats,
    dedup_pairs,
    difficulty_of,
    load_pairs,
    split_pairs,
    sql_features,
    sql_template,
    validate_pairs,
)
from text2sql.data.split import assign_splits
from text2sql.data.stats import held_out_distance
from text2sql.data.store import load_dataset, new_pair, pair_id
from text2sql.errors import DataError

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def cfg(lakehouse_project, tmp_path):
    """The shared small lakehouse, with datasets in this test's own directory."""
    return load_config(lakehouse_project / "text2sql.yaml", [f"data.datasets_dir={tmp_path / 'datasets'}"])


def cli(cfg, *args: str):
    runner = CliRunner()
    return runner.invoke(main, [*args, "--config", str(cfg.root / "text2sql.yaml"),
                                "--set", f"data.datasets_dir={cfg.data.datasets_dir}"])


def write_pairs(cfg, records: list[dict], name: str = "demo") -> Path:
    path = cfg.path(cfg.data.datasets_dir) / name / "pairs.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


# ---------------------------------------------------------------- validation


VALIDATION_CASES = [
    # (title, sql, expected kind, message fragment)
    ("bad syntax", "SELEC order_id FROM sales.orders", "parse_error", ""),
    ("unknown table", "SELECT * FROM sales.ordrs", "unknown_table", "did you mean sales.orders"),
    ("unknown column", "SELECT custmer_id FROM sales.orders", "unknown_column", "did you mean customer_id"),
    ("runtime error", "SELECT CAST(status AS INTEGER) FROM sales.orders", "runtime_error", "Conversion"),
    ("multi-statement", "SELECT 1; SELECT 2", "refused", "2 statements"),
    ("a write", "DELETE FROM sales.orders", "refused", "DELETE"),
    ("a write inside", "CREATE TABLE x AS SELECT 1", "refused", ""),
    ("empty result", "SELECT order_id FROM sales.orders WHERE status = 'no such status'", "empty_result", "no rows"),
    ("aggregate over nothing", "SELECT MAX(order_id) FROM sales.orders WHERE 1 = 0", "empty_result", "NULLs"),
    ("limit ties", "SELECT customer_id FROM sales.orders ORDER BY status LIMIT 3", "limit_ties", "tie"),
    ("limit ties in a subquery", "SELECT COUNT(*) FROM core.customers WHERE customer_id IN "
     "(SELECT customer_id FROM sales.orders ORDER BY status LIMIT 5)", "limit_ties", "a subquery"),
    ("limit ties after an offset", "SELECT product_id FROM core.products ORDER BY category LIMIT 2 OFFSET 1",
     "limit_ties", "LIMIT 2"),
    ("limit without order", "SELECT order_id FROM sales.orders LIMIT 5", "limit_without_order", "ORDER BY"),
    ("volatile", "SELECT COUNT(*) FROM sales.orders WHERE ordered_at > now() - INTERVAL 30 DAY",
     "volatile_function", "NOW()"),
]
GOOD = [
    "SELECT COUNT(*) FROM sales.orders",
    "SELECT customer_id FROM sales.orders ORDER BY status, order_id LIMIT 3",  # tie-breaker: deterministic
    "SELECT status FROM sales.orders ORDER BY status LIMIT 3",  # ties, but the tied rows are equal
    "SELECT c.segment, COUNT(*) AS n FROM core.customers AS c JOIN sales.orders AS o ON o.customer_id = c.customer_id "
    "GROUP BY c.segment ORDER BY n DESC, c.segment",
]


def test_validation_detects_each_failure_kind(cfg):
    pairs = [Pair(title, sql) for title, sql, _, _ in VALIDATION_CASES]
    pairs += [Pair(f"good {i}", sql) for i, sql in enumerate(GOOD)]
    report = validate_pairs(cfg, pairs)
    by_id = {r.id: r for r in report.pairs}
    for (title, _, kind, fragment), pair in zip(VALIDATION_CASES, pairs):
        problems = by_id[pair.id].problems
        assert [p.kind for p in problems] == [kind], (title, problems)
        assert fragment in problems[0].message, (title, problems[0].message)
    for pair in pairs[len(VALIDATION_CASES):]:
        assert by_id[pair.id].status == "ok", (pair.sql, by_id[pair.id].problems)
        assert by_id[pair.id].rows > 0
    assert report.count("error") == 7 and not report.passed()
    assert report.by_kind()["refused"] == 3


def test_validation_timeout_kills_a_runaway_query(cfg):
    slow = Pair("runaway", "SELECT COUNT(*) FROM sales.order_lines AS a, sales.order_lines AS b, sales.order_lines AS c "
                "WHERE a.quantity + b.quantity + c.quantity > 100")
    started = time.perf_counter()
    report = validate_pairs(cfg, [slow], timeout_s=1)
    assert [p.kind for p in report.pairs[0].problems] == ["timeout"]
    assert time.perf_counter() - started < 10


def test_validation_uses_the_database_of_a_benchmark_pair(cfg, tmp_path):
    import duckdb

    ds = load_dataset(cfg, "bench")
    (ds.path / "databases").mkdir(parents=True)
    con = duckdb.connect(str(ds.path / "databases" / "shop.duckdb"))
    con.execute("CREATE TABLE item (id INTEGER PRIMARY KEY, name VARCHAR)")
    con.execute("INSERT INTO item VALUES (1, 'pen'), (2, 'ink')")
    con.close()
    (ds.path / "dataset.yaml").write_text("databases:\n  shop: databases/shop.duckdb\n")
    pairs = [Pair("How many items?", "SELECT COUNT(*) FROM item", db="shop"),
             Pair("Item names?", "SELECT nam FROM item", db="shop"),
             Pair("Other db?", "SELECT 1", db="nope")]
    report = validate_pairs(cfg, pairs, dataset="bench")
    assert [r.status for r in report.pairs] == ["ok", "error", "error"]
    assert "did you mean name" in report.pairs[1].problems[0].message
    assert report.pairs[2].problems[0].kind == "unknown_db"


def test_validate_cli_exit_codes(cfg):
    write_pairs(cfg, [{"id": "ok-1", "question": "How many orders?", "sql": "SELECT COUNT(*) FROM sales.orders"}], "good")
    write_pairs(cfg, [{"id": "w-1", "question": "None?", "sql": "SELECT 1 FROM sales.orders WHERE status = 'x'"}], "warn")
    write_pairs(cfg, [{"id": "bad-1", "question": "Typo?", "sql": "SELECT * FROM sales.ordrs"}], "bad")
    assert cli(cfg, "data", "validate", "good").exit_code == 0
    result = cli(cfg, "data", "validate", "warn")
    assert result.exit_code == 0 and "empty_result" in result.output
    assert cli(cfg, "data", "validate", "warn", "--strict").exit_code == 1
    result = cli(cfg, "data", "validate", "bad")
    assert result.exit_code == 1 and "unknown_table" in result.output and "1 with errors" in result.output
    result = cli(cfg, "data", "validate", "bad", "--json")
    assert json.loads(result.stdout)["pairs"][0]["problems"][0]["kind"] == "unknown_table"  # stderr: the engine line


# ---------------------------------------------------------------- store


def test_add_then_load_round_trip_with_stable_ids_and_defaults(cfg):
    pair = new_pair({"question": "How many stores are there?", "sql": "SELECT COUNT(*) FROM core.stores",
                     "tags": ["b", "a", "b"]})
    result = add_pairs(cfg, [pair])
    assert result.report.pairs[0].status == "ok"
    (loaded,) = load_pairs(cfg)
    assert loaded == pair
    assert loaded.id == pair_id("how many stores are there", "select count(*)  from CORE.STORES") == pair.id
    assert loaded.tags == ["a", "b"] and loaded.difficulty == "easy" and loaded.created and loaded.forced is False
    path = load_dataset(cfg).pairs_file
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0600
    record = json.loads(path.read_text())
    assert list(record) == ["id", "question", "sql", "db", "tags", "difficulty", "author", "created", "notes", "split",
                            "forced"]


def test_add_refuses_duplicates_and_failing_pairs_unless_forced(cfg):
    good = new_pair({"question": "How many products?", "sql": "SELECT COUNT(*) FROM core.products"})
    add_pairs(cfg, [good])
    before = load_dataset(cfg).pairs_file.read_bytes()
    with pytest.raises(DataError, match="already present"):
        add_pairs(cfg, [new_pair({"question": "How many products?", "sql": "select count(*) from core.products"})])
    bad = new_pair({"question": "Revenue?", "sql": "SELECT revenue FROM sales.orders"})
    with pytest.raises(DataError, match="fail validation.*unknown_column"):
        add_pairs(cfg, [bad])
    assert load_dataset(cfg).pairs_file.read_bytes() == before
    add_pairs(cfg, [bad], force=True)
    forced = load_pairs(cfg)[-1]
    assert forced.forced and "unknown_column" in forced.notes


def test_add_refuses_to_part_an_sql_template_across_splits_unless_forced(cfg):
    """`data split` keeps pairs of one SQL template (literals masked) in one split; `data add --split` must not part
    them, or a test question's twin is trained on."""
    orders_in = lambda year, split=None: new_pair({
        "question": f"How many orders in {year}?", "split": split,
        "sql": f"SELECT COUNT(*) FROM sales.orders WHERE EXTRACT(year FROM ordered_at) = {year}"})
    add_pairs(cfg, [orders_in(2024, "test")])
    before = load_dataset(cfg).pairs_file.read_bytes()
    leak = r"1 pair\(s\) would put one SQL template .* has the template of p-\w+ \(test\)"
    with pytest.raises(DataError, match=leak):
        add_pairs(cfg, [orders_in(2025, "train")])
    stores = new_pair({"question": "How many stores?", "sql": "SELECT COUNT(*) FROM core.stores", "split": "train"})
    with pytest.raises(DataError, match="would put one SQL template"):  # twins within one batch too
        add_pairs(cfg, [stores, new_pair({"question": "Stores?", "sql": "select count(*) from core.stores",
                                          "split": "dev"})])
    assert load_dataset(cfg).pairs_file.read_bytes() == before
    add_pairs(cfg, [orders_in(2023, "test"), orders_in(2022), stores])  # its own split; no split yet; a new template
    add_pairs(cfg, [orders_in(2025, "train")], force=True)
    forced = load_pairs(cfg)[-1]
    assert forced.split == "train" and forced.forced and "[forced: the SQL template of" in forced.notes
    result = cli(cfg, "data", "add", "-q", "Orders in 2021?", "-s", "SELECT COUNT(*) FROM sales.orders WHERE "
                 "EXTRACT(year FROM ordered_at) = 2021", "--split", "dev")
    last = result.output.strip().splitlines()[-1]  # after the warehouse's one-time info line, if it was built here
    assert result.exit_code == 1 and last.startswith("error: ") and "would put one SQL template" in last
    assert "Traceback" not in result.output


def test_add_cli_single_and_from_file(cfg, tmp_path):
    result = cli(cfg, "data", "add", "-q", "How many returns?", "-s", "SELECT COUNT(*) FROM sales.returns",
                 "--tags", "returns,count", "--author", "ana")
    assert result.exit_code == 0, result.output
    batch = tmp_path / "batch.yaml"
    batch.write_text("- question: Which stores are online?\n"
                     "  sql: SELECT store_name FROM core.stores WHERE channel = 'online'\n"
                     "- question: Bad one\n  sql: SELECT nope FROM core.stores\n")
    result = cli(cfg, "data", "add", "--from", str(batch))
    assert result.exit_code == 1 and "unknown_column" in result.output
    assert len(load_pairs(cfg)) == 1  # nothing of the failing batch was written
    result = cli(cfg, "data", "add", "--from", str(batch), "--force")
    assert result.exit_code == 0 and "[forced]" in result.output
    pairs = load_pairs(cfg)
    assert [p.author for p in pairs][0] == "ana" and pairs[0].tags == ["count", "returns"]
    assert [p.forced for p in pairs] == [False, False, True]
    assert cli(cfg, "data", "add", "-q", "only a question").exit_code == 2


def test_malformed_line_names_file_and_line_and_nothing_is_rewritten(cfg):
    path = write_pairs(cfg, [{"question": "Q1", "sql": "SELECT 1"}, {"question": "Q2", "sql": "SELECT 2"}])
    path.write_text(path.read_text() + '{"question": "Q3", "sql": \n{"question": "Q4", "sql": "SELECT 4", "colour": 1}\n')
    before = path.read_bytes()
    with pytest.raises(DataError, match=r"pairs\.jsonl:3: not valid JSON.*pairs\.jsonl:4: unknown keys \['colour'\]"):
        load_pairs(cfg)
    with pytest.raises(DataError, match=r"pairs\.jsonl:3"):
        add_pairs(cfg, [new_pair({"question": "Q5", "sql": "SELECT 5"})], check=False)
    assert path.read_bytes() == before
    result = cli(cfg, "data", "validate")
    assert result.exit_code == 1 and "pairs.jsonl:3" in result.output and "Traceback" not in result.output


@pytest.mark.parametrize("record, message", [
    ({"question": "", "sql": "SELECT 1"}, "'question' must be a non-empty string"),
    ({"question": "q", "sql": "SELECT 1", "split": "validation"}, "'split' 'validation' is not null or one of"),
    ({"question": "q", "sql": "SELECT 1", "difficulty": "trivial"}, "'difficulty' 'trivial'"),
    ({"question": "q", "sql": "SELECT 1", "tags": "a,b"}, "'tags' must be a list of strings"),
    ({"question": "q", "sql": "SELECT 1", "created": "28/11/2026"}, "not an ISO date"),
    ({"question": "q", "sql": "SELECT 1", "forced": "yes"}, "'forced' must be true or false"),
    ([1, 2], "must be a JSON object"),
])
def test_record_errors(cfg, record, message):
    write_pairs(cfg, [record])
    with pytest.raises(DataError, match=r"pairs\.jsonl:1: .*" + message.replace("[", r"\[").replace("(", r"\(")):
        load_pairs(cfg)


def test_duplicate_ids_and_missing_split_are_errors(cfg):
    write_pairs(cfg, [{"id": "a", "question": "Q1", "sql": "SELECT 1"}, {"id": "a", "question": "Q2", "sql": "SELECT 2"}])
    with pytest.raises(DataError, match=r":2: duplicate id 'a' \(first on line 1\)"):
        load_pairs(cfg)
    write_pairs(cfg, [{"question": "Q1", "sql": "SELECT 1"}])
    with pytest.raises(DataError, match="no pairs in split 'test'.*data split"):
        load_pairs(cfg, split="test")
    with pytest.raises(DataError, match="not found"):
        load_pairs(cfg, dataset="absent")


def test_unchanged_lines_are_kept_byte_for_byte(cfg):
    hand = '{"sql": "SELECT 1",   "question": "Hand written", "id": "h-1"}'
    path = write_pairs(cfg, [])
    path.write_text(hand + "\n")
    add_pairs(cfg, [new_pair({"question": "Q2", "sql": "SELECT 2"})], check=False)
    lines = path.read_text().splitlines()
    assert lines[0] == hand and len(lines) == 2


def test_a_failed_write_leaves_the_old_file(cfg, monkeypatch):
    path = write_pairs(cfg, [{"question": "Q1", "sql": "SELECT 1"}])
    before = path.read_bytes()

    def crash(*args):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        add_pairs(cfg, [new_pair({"question": "Q2", "sql": "SELECT 2"})], check=False)
    assert path.read_bytes() == before
    assert [p.name for p in path.parent.iterdir() if p.name.endswith(".tmp")] == []


_WRITER = """
import sys
from text2sql.config import load_config
from text2sql.data.add import add_pairs
from text2sql.data.store import new_pair
cfg = load_config(sys.argv[1], [f"data.datasets_dir={sys.argv[2]}"])
for i in range(100000):
    add_pairs(cfg, [new_pair({"question": f"Q {i} " + "x" * 2000, "sql": f"SELECT {i}"})], check=False)
"""


def test_a_killed_writer_leaves_a_valid_file(cfg, tmp_path):
    """SIGKILL a process in the middle of its writes: the file is whole, every line parses."""
    datasets = cfg.path(cfg.data.datasets_dir)
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(cfg.root / "text2sql.yaml"), str(datasets)], cwd=REPO)
    path = datasets / "demo" / "pairs.jsonl"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (not path.exists() or path.read_text().count("\n") < 30):
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    pairs = load_pairs(cfg)
    assert len(pairs) >= 30
    assert [p.sql for p in pairs] == [f"SELECT {i}" for i in range(len(pairs))]
    add_pairs(cfg, [new_pair({"question": "after", "sql": "SELECT -1"})], check=False)  # the next writer cleans up
    assert [p.name for p in path.parent.iterdir() if p.name.endswith(".tmp")] == []


def _add_many(config_path: str, datasets: str, worker: int, count: int) -> None:
    cfg = load_config(config_path, [f"data.datasets_dir={datasets}"])
    for i in range(count):
        add_pairs(cfg, [new_pair({"question": f"Question {i} of worker {worker}?", "sql": f"SELECT {worker * 1000 + i}"})],
                  check=False)


def test_concurrent_adds_from_four_processes_lose_nothing(cfg):
    datasets = str(cfg.path(cfg.data.datasets_dir))
    ctx = mp.get_context("spawn")
    workers = [ctx.Process(target=_add_many, args=(str(cfg.root / "text2sql.yaml"), datasets, w, 50)) for w in range(4)]
    for p in workers:
        p.start()
    for p in workers:
        p.join(120)
        assert p.exitcode == 0
    pairs = load_pairs(cfg)
    assert len(pairs) == 200
    assert {p.sql for p in pairs} == {f"SELECT {w * 1000 + i}" for w in range(4) for i in range(50)}
    for w in range(4):  # each worker's pairs are in the order it wrote them
        mine = [p.sql for p in pairs if p.sql.startswith(f"SELECT {w * 1000}") or p.question.endswith(f"worker {w}?")]
        assert mine == [f"SELECT {w * 1000 + i}" for i in range(50)]


def test_concurrent_cli_adds_validate_and_lose_nothing(cfg, tmp_path):
    """4 real `text2sql data add --from` processes, 50 validated pairs each."""
    procs = []
    for w in range(4):
        batch = tmp_path / f"batch{w}.jsonl"
        ids = [w * 1000 + i + 1 for i in range(50)]
        batch.write_text("".join(json.dumps({"question": f"Order {n}?",
                                             "sql": f"SELECT order_id FROM sales.orders WHERE order_id = {n}"}) + "\n"
                                 for n in ids))
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "text2sql.cli", "data", "add", "--from", str(batch), "--force",
             "--config", str(cfg.root / "text2sql.yaml"), "--set", f"data.datasets_dir={cfg.data.datasets_dir}"],
            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    assert len(load_pairs(cfg)) == 200


# ---------------------------------------------------------------- dedup


def test_exact_duplicates_and_apply(cfg):
    write_pairs(cfg, [
        {"id": "a", "question": "How many orders?", "sql": "SELECT COUNT(*) FROM sales.orders", "created": "2026-01-02"},
        {"id": "b", "question": "how many  ORDERS", "sql": "select count(*)\nfrom SALES.ORDERS", "created": "2026-01-01"},
        {"id": "c", "question": "How many orders?", "sql": "SELECT COUNT(*) FROM sales.orders WHERE status = 'x'"},
        {"id": "d", "question": "How many orders?", "sql": "SELECT COUNT(*) FROM sales.orders", "db": "other"},
    ])
    report = dedup_pairs(cfg, semantic=False)
    assert report.exact == [["b", "a"]] and report.near == []  # the earliest created first: it is the one kept
    result = cli(cfg, "data", "dedup", "--exact-only", "--apply")
    assert result.exit_code == 0 and "removed 1" in result.output
    assert [p.id for p in load_pairs(cfg)] == ["b", "c", "d"]


def test_semantic_near_duplicates(cfg):
    write_pairs(cfg, [
        {"id": "a", "question": "How many orders were placed?", "sql": "SELECT COUNT(*) FROM sales.orders"},
        {"id": "b", "question": "How many orders have been placed?", "sql": "SELECT COUNT(order_id) FROM sales.orders"},
        {"id": "c", "question": "How many orders were placed in 2023?", "sql": "SELECT 2023"},
        {"id": "d", "question": "How many orders were placed in 2024?", "sql": "SELECT 2024"},
        {"id": "e", "question": "List the customers who live in Germany.", "sql": "SELECT 1"},
        {"id": "f", "question": "What is the total refund amount per return reason?", "sql": "SELECT 2"},
    ])
    report = dedup_pairs(cfg, threshold=0.9)
    assert [(a, b) for a, b, _ in report.near] == [("a", "b")]  # c/d differ in their numbers: not duplicates
    assert report.near[0][2] > 0.9 and report.groups == [["a", "b"]]
    assert len(load_pairs(cfg)) == 6  # a report only
    result = cli(cfg, "data", "dedup", "--apply")
    assert result.exit_code == 0 and "removed 1" in result.output
    assert [p.id for p in load_pairs(cfg)] == ["a", "c", "d", "e", "f"]


# ---------------------------------------------------------------- split


def _templated_pairs() -> list[Pair]:
    """40 SQL templates (10 per difficulty), each asked with 3 different literals."""
    shapes = [
        "SELECT COUNT(*) FROM sales.orders WHERE order_id > {v}",
        "SELECT status, COUNT(*) FROM sales.orders WHERE customer_id > {v} GROUP BY status ORDER BY status",
        "SELECT o.order_id FROM sales.orders AS o JOIN core.customers AS c ON c.customer_id = o.customer_id "
        "WHERE c.customer_id = {v} AND o.status = 'completed' ORDER BY 1 LIMIT 5",
        "SELECT c.segment FROM core.customers AS c WHERE c.customer_id IN (SELECT customer_id FROM sales.orders "
        "WHERE order_id > {v}) GROUP BY c.segment HAVING COUNT(*) > 1",
    ]
    pairs = []
    for t in range(40):
        shape = shapes[t % len(shapes)].replace("SELECT ", f"SELECT 1 AS t{t}, ", 1)  # the alias makes the template
        pairs += [Pair(f"Question {t}.{v}", shape.format(v=v)) for v in range(3)]
    return pairs


def test_split_is_leakage_safe_stratified_and_seeded():
    pairs = _templated_pairs()
    ratios = {"train": 0.6, "dev": 0.1, "test": 0.3}
    first = assign_splits(pairs, ratios, seed=1)
    assert first == assign_splits(list(reversed(pairs)), ratios, seed=1)  # order does not matter
    assert first != assign_splits(pairs, ratios, seed=2)
    by_template: dict[str, set[str]] = {}
    for p in pairs:
        by_template.setdefault(sql_template(p.sql), set()).add(first[p.id])
    assert len(by_template) == 40 and all(len(s) == 1 for s in by_template.values())
    for difficulty in {p.difficulty for p in pairs}:
        members = [first[p.id] for p in pairs if p.difficulty == difficulty]
        assert abs(members.count("test") / len(members) - 0.3) < 0.15, difficulty
        assert members.count("train") > members.count("test") > 0


def test_split_writes_in_place_and_keeps_existing_assignments(cfg):
    pairs = _templated_pairs()
    write_pairs(cfg, [p.to_record() for p in pairs])
    report = split_pairs(cfg, seed=3)
    assert report.changed == 120 and report.groups == 40 and not report.straddling
    assert sum(sum(c.values()) for c in report.counts.values()) == 120
    before = {p.id: p.split for p in load_pairs(cfg)}
    assert set(before.values()) == {"train", "dev", "test"}
    # A new pair with the template of an existing group joins that group's split; nothing else moves.
    sibling = Pair("Question 0.new", pairs[0].sql.replace("> 0", "> 99"))
    add_pairs(cfg, [sibling], check=False)
    again = split_pairs(cfg, seed=99)
    after = {p.id: p.split for p in load_pairs(cfg)}
    assert again.changed == 1 and after[sibling.id] == before[pairs[0].id]
    assert all(after[k] == v for k, v in before.items())
    assert split_pairs(cfg, seed=3, reassign=True).changed > 0
    result = cli(cfg, "data", "split", "--reassign", "--seed", "3", "--ratios", "train=0.5,dev=0.2,test=0.3")
    assert result.exit_code == 0 and "40 SQL templates" in result.output
    assert cli(cfg, "data", "split", "--ratios", "train=0.5,test=0.2").exit_code == 1


def test_split_reports_groups_that_already_straddle(cfg):
    write_pairs(cfg, [{"id": "a", "question": "q1", "sql": "SELECT 1", "split": "train"},
                      {"id": "b", "question": "q2", "sql": "SELECT 2", "split": "test"}])
    report = split_pairs(cfg)
    assert report.straddling == [["a", "b"]]
    assert split_pairs(cfg, reassign=True).straddling == []


# ---------------------------------------------------------------- stats and difficulty


FEATURE_QUERIES = {
    "join": "SELECT 1 FROM sales.orders AS o JOIN core.stores AS s ON s.store_id = o.store_id",
    "outer_join": "SELECT 1 FROM core.stores AS s LEFT JOIN sales.orders AS o ON s.store_id = o.store_id",
    "aggregation": "SELECT SUM(quantity) FROM sales.order_lines",
    "group_by": "SELECT status FROM sales.orders GROUP BY status",
    "having": "SELECT status FROM sales.orders GROUP BY status HAVING COUNT(*) > 5",
    "window": "SELECT order_id, ROW_NUMBER() OVER (ORDER BY ordered_at) FROM sales.orders",
    "cte": "WITH x AS (SELECT 1 AS a) SELECT a FROM x",
    "subquery": "SELECT * FROM core.stores WHERE store_id IN (SELECT store_id FROM sales.orders)",
    "set_operation": "SELECT city FROM core.stores UNION SELECT 'x'",
    "date_filter": "SELECT COUNT(*) FROM sales.orders WHERE ordered_at >= DATE '2025-01-01'",
    "order_by": "SELECT store_name FROM core.stores ORDER BY store_name",
    "limit": "SELECT store_name FROM core.stores LIMIT 1",
    "case": "SELECT CASE WHEN is_active THEN 1 ELSE 0 END FROM core.products",
    "distinct": "SELECT DISTINCT channel FROM core.stores",
}


@pytest.mark.parametrize("feature", FEATURES)
def test_each_feature_is_detected(feature):
    assert feature in sql_features(FEATURE_QUERIES[feature])
    assert feature not in sql_features("SELECT store_name FROM core.stores")


def test_date_filter_uses_column_types_from_the_snapshot(cfg):
    from text2sql.catalog import load_snapshot

    sql = "SELECT COUNT(*) FROM core.customers WHERE signup_date > birth_date"
    assert "date_filter" not in sql_features(sql)
    assert "date_filter" in sql_features(sql, load_snapshot(cfg))


@pytest.mark.parametrize("sql, expected", [
    ("SELECT COUNT(*) FROM sales.orders", "easy"),
    ("SELECT status FROM sales.orders WHERE order_id = 3", "easy"),
    ("SELECT status, COUNT(*) FROM sales.orders GROUP BY status", "medium"),
    ("SELECT s.store_name, COUNT(*) FROM sales.orders AS o JOIN core.stores AS s ON s.store_id = o.store_id "
     "GROUP BY s.store_name", "medium"),
    ("SELECT s.store_name FROM sales.orders AS o JOIN core.stores AS s ON s.store_id = o.store_id "
     "WHERE o.status = 'completed' GROUP BY s.store_name ORDER BY COUNT(*) DESC LIMIT 1", "extra"),
    ("SELECT store_name FROM core.stores WHERE square_meters > (SELECT AVG(square_meters) FROM core.stores)", "hard"),
    ("SELECT city FROM core.stores EXCEPT SELECT city FROM core.stores WHERE channel = 'outlet'", "hard"),
    ("WITH t AS (SELECT customer_id, COUNT(*) AS n FROM sales.orders GROUP BY 1) "
     "SELECT c.segment, AVG(t.n), MAX(t.n) FROM t JOIN core.customers AS c USING (customer_id) GROUP BY c.segment",
     "extra"),
    ("not sql at all", "extra"),
])
def test_difficulty_of(sql, expected):
    assert difficulty_of(sql) == expected


def test_stats_counts_tables_joins_features_and_highlights_gaps(cfg):
    write_pairs(cfg, [
        {"id": "a", "question": "How many orders per store name?", "split": "train",
         "sql": "SELECT s.store_name, COUNT(*) FROM sales.orders AS o JOIN core.stores AS s ON s.store_id = o.store_id "
                "GROUP BY 1"},
        {"id": "b", "question": "Completed orders?", "sql": "SELECT COUNT(*) FROM orders WHERE status = 'completed'"},
        {"id": "c", "question": "Orders by day of week", "split": "test",
         "sql": "SELECT f.day_of_week, COUNT(*) FROM sales.orders AS o JOIN core.fiscal_calendar AS f "
                "ON CAST(o.ordered_at AS DATE) = f.calendar_date GROUP BY ALL"},
    ])
    stats = dataset_stats(cfg)
    assert stats.pairs == 3 and stats.tables["sales.orders"] == 3 and stats.tables["core.stores"] == 1
    assert stats.tables["marketing.promotions"] == 0 and "marketing.promotions" in stats.sparse_tables
    assert stats.columns["sales.orders.status"] == 1 and stats.columns["core.stores.store_name"] == 1
    assert stats.joins == {"core.stores.store_id = sales.orders.store_id": 1,
                           "core.fiscal_calendar.calendar_date = sales.orders.ordered_at": 1}
    assert "core.customers.customer_id = sales.orders.customer_id" in stats.unused_join_keys
    assert "core.stores.store_id = sales.orders.store_id" not in stats.unused_join_keys
    assert stats.features["join"] == 2 and stats.features["group_by"] == 2 and stats.features["window"] == 0
    assert stats.splits["train"]["medium"] == 1 and stats.splits["none"]["easy"] == 1
    assert stats.question_words["max"] == 6
    result = cli(cfg, "data", "stats", "--json")
    assert result.exit_code == 0
    assert json.loads(result.output)["highlights"]["sparse_features"]["window"] == 0
    result = cli(cfg, "data", "stats")
    assert result.exit_code == 0 and "fewer than 5 pairs" in result.output and "marketing.promotions" in result.output


def test_stats_distance_measures_how_far_dev_and_test_sit_from_train(cfg):
    """A dev pair that repeats a train question and template is counted and scores 1.0; test's new question does not."""
    train_sql = "SELECT COUNT(*) FROM sales.orders WHERE status = 'completed'"
    write_pairs(cfg, [
        {"id": "t1", "question": "How many completed orders are there?", "split": "train", "sql": train_sql},
        {"id": "t2", "question": "Total refund amount per return reason", "split": "train",
         "sql": "SELECT reason, SUM(refund_amount) FROM sales.returns GROUP BY reason"},
        {"id": "d1", "question": "How many completed orders are there?", "split": "dev",
         "sql": train_sql.replace("'completed'", "'cancelled'")},
        {"id": "x1", "question": "Which stores opened most recently?", "split": "test",
         "sql": "SELECT store_name FROM core.stores ORDER BY opened_on DESC LIMIT 3"},
    ])
    far = held_out_distance(cfg)
    assert set(far) == {"dev", "test"} and far["dev"]["pairs"] == far["test"]["pairs"] == 1
    assert far["dev"]["template_in_train"] == 1 and far["test"]["template_in_train"] == 0
    assert far["dev"]["nearest_train_similarity"]["max"] == pytest.approx(1.0, abs=1e-3)
    assert far["dev"]["at_or_above_threshold"] == 1 and far["test"]["at_or_above_threshold"] == 0
    assert far["test"]["nearest_train_similarity"]["max"] < 0.8
    result = cli(cfg, "data", "stats", "--distance", "--json")
    assert result.exit_code == 0 and json.loads(result.stdout)["held_out_distance"] == far
    result = cli(cfg, "data", "stats", "--distance")
    assert result.exit_code == 0 and "held-out splits against train" in result.output
    write_pairs(cfg, [{"id": "d1", "question": "How many orders?", "split": "dev", "sql": train_sql}])
    result = cli(cfg, "data", "stats", "--distance")
    assert result.exit_code == 1 and "has no pairs" in result.output and "Traceback" not in result.output


def test_data_commands_do_not_import_torch():
    code = "import sys; from text2sql.cli import main; import text2sql.data; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip() == "False"
