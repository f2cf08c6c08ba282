"""`data import spider`: the shared Spider slice and hand-made SQLite databases, imported into real DuckDB files."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import duckdb
import pytest
from click.testing import CliRunner

from text2sql.catalog import SchemaSnapshot
from text2sql.cli import main
from text2sql.config import load_config
from text2sql.data import import_spider, load_dataset, load_pairs, validate_pairs
from text2sql.data.spider import compare_rows, transpile_gold
from text2sql.errors import DataError

# ../shared next to the checkout (a worktree under wt/ finds it one level further up).
SPIDER_SAMPLE = next((d / "shared" / "data" / "spider-sample" for d in Path(__file__).resolve().parents[2:4]
                      if (d / "shared" / "data" / "spider-sample").is_dir()), Path("shared/data/spider-sample"))


@pytest.fixture
def cfg(tmp_path):
    """A project with no lakehouse: a Spider import needs none."""
    (tmp_path / "text2sql.yaml").write_text("data:\n  dataset: spider-sample\n")
    return load_config(tmp_path / "text2sql.yaml")


@pytest.mark.skipif(not SPIDER_SAMPLE.is_dir(), reason="the shared Spider sample is not here")
@pytest.mark.slow  # ~50 s on 2 busy cores: the import, then validation of all 127 golds
def test_import_the_shared_spider_sample(cfg):
    config = str(cfg.root / "text2sql.yaml")
    result = CliRunner().invoke(main, ["data", "import", "spider", str(SPIDER_SAMPLE), "--config", config])
    assert result.exit_code == 0, result.output
    assert "kept 127 of 127 questions whose SQLite and DuckDB results agree, 2 of them up to rows tied at a LIMIT " \
        "(see ties in import-report.json)" in result.output
    report = json.loads((cfg.root / "datasets" / "spider-sample" / "import-report.json").read_text())
    assert report["questions"] == 127 and report["kept"] == 127 and report["dropped"] == []
    # Two golds cut a tie with ORDER BY count(*) ... LIMIT 1: SQLite and DuckDB keep different tied years; kept.
    assert [(t["db"], t["index"]) for t in report["ties"]] == [("concert_singer", 26), ("concert_singer", 27)]
    assert all(t["reason"].startswith("limit_ties:") for t in report["ties"])

    ds = load_dataset(cfg)
    assert sorted(ds.databases) == ["concert_singer", "pets_1", "poker_player"]
    assert all(p.is_file() for p in ds.databases.values())
    assert "*/databases/" in (cfg.root / "datasets" / ".gitignore").read_text()
    pairs = load_pairs(cfg, split="dev")
    assert len(pairs) == report["kept"] and {p.db for p in pairs} == set(ds.databases)
    assert all("SQLite gold:" in p.notes and p.tags == ["spider"] for p in pairs)
    assert sum("tied rows" in p.notes for p in pairs) == 2
    # Bare columns next to aggregates keep SQLite's groups: ANY_VALUE, not extra GROUP BY keys.
    assert any(p.sql.startswith("SELECT ANY_VALUE(T2.name), COUNT(*)") and p.sql.endswith("GROUP BY T1.stadium_id")
               for p in pairs)
    assert not any('"' in p.sql and "'" not in p.sql for p in pairs if "= \"" in p.sql)  # no "string" identifiers left

    # Types follow SQLite's affinities, corrected by the data; foreign keys survive where the data allows.
    concert = SchemaSnapshot.from_duckdb(ds.databases["concert_singer"])
    types = {c.name: c.type for c in concert.tables["concert"].columns}
    assert types["Year"] == "BIGINT" and types["Theme"] == "VARCHAR"  # declared text, holds years
    singer = {c.name: c.type for c in concert.tables["singer"].columns}
    assert singer["Is_male"] == "VARCHAR" and singer["Age"] == "BIGINT"
    assert ("Stadium_ID", "stadium", "Stadium_ID") in concert.tables["concert"].references

    # Every kept gold passes validation on its database.
    validation = validate_pairs(cfg)
    assert validation.count("error") == 0, [r.to_json() for r in validation.pairs if r.status == "error"]


def _make_benchmark(root: Path) -> Path:
    """A tiny Spider-format benchmark with dirty data and golds that agree, differ, or fail."""
    db_dir = root / "database" / "shop"
    db_dir.mkdir(parents=True)
    con = sqlite3.connect(db_dir / "shop.sqlite")
    con.executescript("""
        CREATE TABLE maker (id int PRIMARY KEY, name text, founded text);
        CREATE TABLE item (id INTEGER PRIMARY KEY, maker_id text REFERENCES maker(id), name varchar(20),
                           price real, stock int, flag bool, code);
        INSERT INTO maker VALUES (1, 'Acme', '1990'), (2, 'Brightline', '2005'), (3, 'Copper', '2011');
        INSERT INTO item VALUES (1, '1', 'pen', 1.5, 10, 'T', 'A1'), (2, '1', 'ink', 3, 'n/a', 'F', 7),
                                (3, '2', 'Pad', 2.25, 5, 'T', 'B2'), (4, '3', 'cup', NULL, 0, 'F', 'C3');
    """)
    con.commit()
    con.close()
    join = "FROM maker AS T1 JOIN item AS T2 ON T1.id = T2.maker_id"
    golds = [
        ("How many items?", "SELECT count(*) FROM item"),
        ("Items whose name has a P?", 'SELECT name FROM item WHERE name LIKE "%p%"'),
        ("Makers founded after 2000?", "SELECT name FROM maker WHERE founded > 2000"),
        ("Half the number of items?", "SELECT count(*) / 2 FROM item"),
        ("Most expensive item's maker?", f"SELECT T1.name, max(T2.price) {join}"),
        ("Items per maker?", f"SELECT T1.name, count(*) {join} GROUP BY T1.id"),
        ("Cheapest first?", "SELECT name FROM item ORDER BY price"),
        ("Type of the price?", "SELECT typeof(price) FROM item WHERE id = 1"),
        ("Items by stock?", "SELECT name FROM item ORDER BY stock"),
        ("Nonsense?", "SELECT name FROM item WHERE colour = 'red'"),
        ("How many items?", "SELECT count(*) FROM item"),
        # Spider's tvshow case: a bare column (id) that varies within the group; as an extra GROUP BY key it
        # would split the groups and HAVING would keep none.
        ("An item of a maker with several items?", "SELECT id FROM item GROUP BY maker_id HAVING count(*) > 1"),
    ]
    (root / "dev.json").write_text(json.dumps([{"db_id": "shop", "question": q, "query": s} for q, s in golds]))
    (root / "tables.json").write_text(json.dumps([{
        "db_id": "shop", "table_names_original": ["maker", "item"],
        "column_names_original": [[-1, "*"], [0, "id"], [0, "name"], [0, "founded"], [1, "id"], [1, "maker_id"]],
        "foreign_keys": [[5, 1]], "primary_keys": [1, 4]}]))
    return root


def test_import_checks_each_gold_on_both_engines(cfg, tmp_path):
    report = import_spider(cfg, _make_benchmark(tmp_path / "bench"), name="shop")
    reasons = {d["index"]: d["reason"] for d in report.dropped}
    assert report.kept == 8, reasons
    assert reasons[7].startswith("results_differ") and "'real'" in reasons[7]  # SQLite's typeof is not DuckDB's
    assert reasons[8].startswith("results_differ: order differs")  # SQLite sorts 5 before 10; in VARCHAR '10' < '5'

    assert reasons[9].startswith("unknown_column")
    assert reasons[10].startswith("duplicate")
    sqls = [p.sql for p in load_pairs(cfg, "shop")]
    assert "SELECT name FROM item WHERE name ILIKE '%p%'" in sqls
    assert "SELECT COUNT(*) // 2 FROM item" in sqls
    assert any("ARG_MAX(T1.name, T2.price)" in s for s in sqls)
    assert ("SELECT ANY_VALUE(T1.name), COUNT(*) FROM maker AS T1 JOIN item AS T2 ON T1.id = T2.maker_id "
            "GROUP BY T1.id") in sqls
    assert "SELECT ANY_VALUE(id) FROM item GROUP BY maker_id HAVING COUNT(*) > 1" in sqls  # 1 row, as on SQLite
    # SQLite puts NULL first under ASC, DuckDB last: kept only in the form that agrees.
    assert "SELECT name FROM item ORDER BY price NULLS FIRST" in sqls

    con = duckdb.connect(str(load_dataset(cfg, "shop").database("shop")), read_only=True)
    types = dict(con.execute("SELECT column_name, data_type FROM duckdb_columns() WHERE table_name = 'item'").fetchall())
    assert types == {"id": "BIGINT", "maker_id": "BIGINT", "name": "VARCHAR", "price": "DOUBLE", "stock": "VARCHAR",
                     "flag": "VARCHAR", "code": "VARCHAR"}
    assert con.execute("SELECT stock FROM item WHERE id = 2").fetchone() == ("n/a",)
    fks = con.execute("SELECT referenced_table FROM duckdb_constraints() WHERE constraint_type = 'FOREIGN KEY'").fetchall()
    assert fks == [("maker",)]
    con.close()


def test_reimport_replaces_the_dataset(cfg, tmp_path):
    bench = _make_benchmark(tmp_path / "bench")
    first = import_spider(cfg, bench, name="shop")
    one = [{"db_id": "shop", "question": "Count?", "query": "SELECT count(*) FROM maker"}]
    (bench / "dev.json").write_text(json.dumps(one))
    with pytest.raises(DataError, match=r"dataset 'shop' exists .*pairs.jsonl\): --force replaces it"):
        import_spider(cfg, bench, name="shop")
    assert len(load_pairs(cfg, "shop")) == 8
    second = import_spider(cfg, bench, name="shop", force=True)
    assert first.kept == 8 and second.kept == 1 and len(load_pairs(cfg, "shop")) == 1


def test_import_errors(cfg, tmp_path):
    with pytest.raises(DataError, match="dev.json not found"):
        import_spider(cfg, tmp_path)
    (tmp_path / "dev.json").write_text('[{"question": "q"}]')
    with pytest.raises(DataError, match="expected a list of"):
        import_spider(cfg, tmp_path)
    (tmp_path / "dev.json").write_text("[]")
    with pytest.raises(DataError, match=r"dev.json holds no questions: expected a list of \{db_id, question, query\}"):
        import_spider(cfg, tmp_path)
    (tmp_path / "dev.json").write_text(json.dumps([{"db_id": "gone", "question": "q", "query": "SELECT 1"}]))
    with pytest.raises(DataError, match=r"no SQLite database under .*database for the 1 db_id\(s\) of dev.json: "
                                        r"expected database/<db_id>/<db_id>.sqlite, e.g. database/gone/gone.sqlite"):
        import_spider(cfg, tmp_path, name="gone")
    assert not (cfg.root / "datasets" / "gone").exists()  # nothing written


def test_import_of_an_empty_folder_is_a_one_line_error(cfg, tmp_path):
    empty, config = tmp_path / "empty", str(cfg.root / "text2sql.yaml")
    empty.mkdir()
    result = CliRunner().invoke(main, ["data", "import", "spider", str(empty), "--config", config])
    assert result.exit_code == 1
    assert result.output.count("\n") == 1 and result.output.startswith("error: ")
    assert "dev.json not found" in result.output
    (empty / "dev.json").write_text(json.dumps([{"db_id": "shop", "question": "q", "query": "SELECT 1"}]))
    result = CliRunner().invoke(main, ["data", "import", "spider", str(empty), "--config", config])
    assert result.exit_code == 1 and result.output.count("\n") == 1
    assert "error: no SQLite database under" in result.output and "database/shop/shop.sqlite" in result.output


def test_eval_transpiles_sqlite_predictions_like_golds(cfg, tmp_path):
    import_spider(cfg, _make_benchmark(tmp_path / "bench"), name="shop")
    by_index = {int(p.notes.split("[")[1].split("]")[0]): p for p in load_pairs(cfg, "shop")}
    # As a Spider model writes them: SQLite's LIKE ignores case, "x" is a string, and a bare column with count(*).
    written = {1: "SELECT name FROM item WHERE name LIKE '%p%'", 2: 'SELECT name FROM maker WHERE founded > "2000"',
               5: "SELECT T1.name, count(*) FROM maker AS T1 JOIN item AS T2 ON T1.id = T2.maker_id GROUP BY T1.id"}
    predictions = tmp_path / "predictions.jsonl"
    predictions.write_text("".join(json.dumps({"id": by_index[i].id, "sql": sql}) + "\n" for i, sql in written.items()))
    config = ["--config", str(cfg.root / "text2sql.yaml")]

    def ex(*args):
        result = CliRunner().invoke(main, ["eval", "--predictions", str(predictions), "--dataset", "shop", "--split",
                                           "all", *args, *config])
        assert result.exit_code == 0, result.output
        release = args[args.index("--release") + 1]
        return json.loads((cfg.root / "eval" / "reports" / release / "report.json").read_text())

    as_duckdb = ex("--release", "as-duckdb")
    assert as_duckdb["metrics"]["correct"] == 0 and as_duckdb["inputs"]["predictions"]["dialects"] == {"duckdb": 8}
    as_sqlite = ex("--release", "as-sqlite", "--dialect", "sqlite")
    assert as_sqlite["metrics"]["correct"] == 3, [e["reason"] for e in as_sqlite["examples"]]
    record = next(e for e in as_sqlite["examples"] if e["id"] == by_index[1].id)
    assert record["predicted"] == "SELECT name FROM item WHERE name ILIKE '%p%'"
    assert record["predicted_sqlite"] == written[1]

    # Or per line: a "dialect" field.
    predictions.write_text("".join(json.dumps({"id": by_index[i].id, "sql": sql, "dialect": "sqlite"}) + "\n"
                                   for i, sql in written.items()))
    assert ex("--release", "per-line")["metrics"]["correct"] == 3
    predictions.write_text(json.dumps({"id": by_index[1].id, "sql": "SELECT 1", "dialect": "tsql"}) + "\n")
    bad = CliRunner().invoke(main, ["eval", "--predictions", str(predictions), "--dataset", "shop", "--split", "all",
                                    *config])
    assert bad.exit_code == 1 and "dialect 'tsql' is not one of duckdb, sqlite" in bad.output


def test_transpile_gold_rewrites_sqlite_idioms():
    cols = {"singer": {"name": "VARCHAR", "age": "BIGINT", "country": "VARCHAR"}}
    assert transpile_gold('SELECT name FROM singer WHERE country = "France"', cols) == \
        "SELECT name FROM singer WHERE country = 'France'"
    assert transpile_gold('SELECT "name" FROM singer', cols) == 'SELECT "name" FROM singer'  # a real column stays
    assert transpile_gold("SELECT age / 2, age / 2.0 FROM singer", cols) == "SELECT age // 2, age / 2.0 FROM singer"
    assert transpile_gold("SELECT avg(age) / 2 FROM singer", cols) == "SELECT AVG(age) / 2 FROM singer"
    assert transpile_gold("SELECT country, name, min(age) FROM singer GROUP BY country", cols) == \
        "SELECT country, ARG_MIN(name, age), MIN(age) FROM singer GROUP BY country"
    assert transpile_gold("SELECT name, count(*) FROM singer", cols) == "SELECT ANY_VALUE(name), COUNT(*) FROM singer"
    assert transpile_gold("SELECT name FROM singer GROUP BY country HAVING count(*) > 2", cols) == \
        "SELECT ANY_VALUE(name) FROM singer GROUP BY country HAVING COUNT(*) > 2"
    assert transpile_gold("SELECT country, count(*) AS n FROM singer GROUP BY country ORDER BY n DESC", cols) == \
        "SELECT country, COUNT(*) AS n FROM singer GROUP BY country ORDER BY n DESC"


@pytest.mark.parametrize("expected, actual, keys, agree", [
    ([(1, "a"), (2, "b")], [(2.0, "b"), (1, "a")], None, True),
    ([(1, "a"), (2, "b")], [(2, "b"), (1, "a")], (0,), False),  # ordered by the first column
    ([(1, "a"), (1, "b")], [(1, "b"), (1, "a")], (0,), True),  # a tie may come in either order
    ([(0.1 + 0.2,)], [(0.3,)], None, True),
    ([("2016",)], [(2016,)], None, True),  # a text column of years became BIGINT
    ([("x",)], [("X",)], None, False),
    ([(None,)], [(None,)], None, True),
    ([(1,)], [(1,), (1,)], None, False),
])
def test_compare_rows(expected, actual, keys, agree):
    assert (compare_rows(expected, actual, keys) == "") is agree
