"""Business definitions: the demo file, schema checks against a real snapshot, budget selection, `data validate`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from text2sql.catalog import load_snapshot, read_snapshot
from text2sql.cli import main
from text2sql.config import load_config
from text2sql.data.definitions import (
    Definition,
    Definitions,
    check_definitions,
    load_definitions,
    read_definitions,
)
from text2sql.errors import DataError

REPO = Path(__file__).resolve().parents[1]
DEMO_DEFINITIONS = REPO / "datasets" / "demo" / "definitions.yaml"


@pytest.fixture
def cfg(lakehouse_project, tmp_path):
    return load_config(lakehouse_project / "text2sql.yaml", [f"data.datasets_dir={tmp_path / 'datasets'}"])


def write_dataset(cfg, definitions: str | None, name: str = "d") -> Path:
    root = cfg.path(cfg.data.datasets_dir) / name
    root.mkdir(parents=True, exist_ok=True)
    (root / "pairs.jsonl").write_text(json.dumps(
        {"id": "ok-1", "question": "How many orders?", "sql": "SELECT COUNT(*) FROM sales.orders"}) + "\n")
    if definitions is not None:
        (root / "definitions.yaml").write_text(definitions)
    return root


def test_the_demo_definitions_resolve_against_the_committed_schemas():
    defs = read_definitions(DEMO_DEFINITIONS)
    assert check_definitions(defs, read_snapshot(REPO / "schemas")) == []
    terms = {d.term for d in defs.items}
    # The README's definitions and conventions each have an entry.
    for term in ("completed orders", "net sales", "fiscal calendar", "calendar period", "ratios",
                 "deterministic order", "listing order", "customer listing", "returns join"):
        assert term in terms
    assert defs.aliases["fc"] == "core.fiscal_calendar"


def test_an_unknown_column_names_the_term_and_the_file(cfg):
    root = write_dataset(cfg, "version: 1\naliases: {o: sales.orders}\ndefinitions:\n"
                              "  - {term: order total, kind: measure, meaning: m, sql: SUM(o.total_amount)}\n"
                              "  - {term: completed, kind: filter, meaning: m, sql: o.status = 'completed'}\n")
    problems = check_definitions(load_definitions(cfg, "d"), load_snapshot(cfg))
    assert len(problems) == 1
    assert str(root / "definitions.yaml") in problems[0]
    assert "'order total'" in problems[0] and "o.total_amount" in problems[0]


@pytest.mark.parametrize("sql, fragment", [
    ("SUM(o.", "does not parse"),
    ("x.status = 'a'", "alias 'x'"),
    ("SELECT r.qty FROM sales.returns AS r", "unknown column r.qty"),
    ("SELECT 1 FROM sales.nope", "unknown table sales.nope"),
])
def test_fragment_problems(cfg, sql, fragment):
    write_dataset(cfg, f'version: 1\naliases: {{o: sales.orders}}\ndefinitions:\n  - term: t\n    kind: measure\n'
                       f'    meaning: m\n    sql: "{sql}"\n')
    problems = check_definitions(load_definitions(cfg, "d"), load_snapshot(cfg))
    assert len(problems) == 1 and fragment in problems[0] and "'t'" in problems[0]


def test_queries_may_define_their_own_aliases_and_struct_fields_resolve(cfg):
    write_dataset(cfg, "aliases: {c: core.customers}\ndefinitions:\n"
                       "  - {term: city, kind: dimension, meaning: m, sql: c.address.city}\n"
                       "  - {term: firsts, kind: filter, meaning: m,"
                       " sql: 'SELECT x.customer_id FROM sales.orders AS x'}\n")
    assert check_definitions(load_definitions(cfg, "d"), load_snapshot(cfg)) == []


def test_malformed_file_lists_every_problem(cfg):
    write_dataset(cfg, "version: 1\ndefinitions:\n  - {term: a, kind: metric, meaning: m, sql: x}\n"
                       "  - {term: a, kind: rule, meaning: m, colour: red}\n  - {kind: rule}\n")
    with pytest.raises(DataError, match=r"definitions.yaml: .*kind 'metric'.*term 'a': unknown keys.*defined twice"
                                        r".*definition #3: term is missing"):
        load_definitions(cfg, "d")


def test_no_file_is_empty_definitions(cfg):
    write_dataset(cfg, None)
    defs = load_definitions(cfg, "d")
    assert not defs and defs.render() == ""


def test_data_validate_exits_1_on_a_bad_definitions_file(cfg):
    def run():
        return CliRunner().invoke(main, ["data", "validate", "d", "--config", str(cfg.root / "text2sql.yaml"),
                                         "--set", f"data.datasets_dir={cfg.data.datasets_dir}"])

    write_dataset(cfg, "aliases: {o: sales.orders}\ndefinitions:\n"
                       "  - {term: completed, kind: filter, meaning: m, sql: o.status = 'completed'}\n")
    assert run().exit_code == 0
    write_dataset(cfg, "aliases: {o: sales.orders}\ndefinitions:\n"
                       "  - {term: order total, kind: measure, meaning: m, sql: SUM(o.total_amount)}\n")
    result = run()
    assert result.exit_code == 1
    assert "'order total'" in result.output and "definitions.yaml" in result.output
    assert "definitions: 1 errors" in result.output


def test_budget_keeps_the_relevant_definitions_in_file_order():
    defs = read_definitions(DEMO_DEFINITIONS)
    full = defs.render()
    assert full.splitlines()[0].startswith("Business definitions (table aliases: o = sales.orders")
    assert defs.render("anything", max_tokens=10**6) == full
    question = "What was the net revenue by store region in FY2025?"
    kept = [d.term for d in defs.select(question, max_tokens=400)]
    # Named by the question (net revenue, store region, FY), and what net sales is built from (completed orders).
    assert {"net sales", "completed orders", "fiscal calendar", "store join"} <= set(kept)
    assert "promotion duration" not in kept and "customer age" not in kept
    order = [d.term for d in defs.items]
    assert kept == sorted(kept, key=order.index)
    text = defs.render(question, max_tokens=400)
    assert len(text) / 4 <= 400 and "SUM(ol.quantity * ol.unit_price - ol.discount_amount)" in text
    assert defs.render(question, max_tokens=400) == text  # deterministic
    assert len(defs.render(question, max_tokens=150)) / 4 <= 150


def test_fingerprint_follows_content_not_layout(tmp_path):
    a = Definitions({"o": "sales.orders"}, (Definition("x", "rule", "m"),))
    assert a.fingerprint == Definitions.from_json(a.to_json()).fingerprint
    b = Definitions({"o": "sales.orders"}, (Definition("x", "rule", "m2"),))
    assert a.fingerprint != b.fingerprint
    path = tmp_path / "definitions.yaml"
    shutil.copy(DEMO_DEFINITIONS, path)
    path.write_text("# a comment\n" + path.read_text())
    assert read_definitions(path).fingerprint == read_definitions(DEMO_DEFINITIONS).fingerprint
