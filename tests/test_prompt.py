"""The prompt builder: messages, schema pruning, k-shot retrieval, TRL records (no model needed)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from text2sql.catalog import load_snapshot
from text2sql.config import PromptConfig, load_config
from text2sql.prompt import (
    INSTRUCTIONS,
    ExampleIndex,
    build_example,
    build_messages,
    load_prompt_settings,
    save_prompt_settings,
    select_tables,
)


@pytest.fixture(scope="module")
def snapshot(lakehouse_project):
    return load_snapshot(load_config(lakehouse_project / "text2sql.yaml"))


def pair(id, question, sql, db=None):
    return SimpleNamespace(id=id, question=question, sql=sql, db=db)


def test_messages_hold_instructions_schema_examples_and_question(snapshot):
    cfg = PromptConfig(max_schema_tokens=100_000, system="Dates are UTC.")
    example = pair("p-1", "How many stores are there?", "SELECT count(*) FROM core.stores")
    msgs = build_messages(" How many customers are there? ", snapshot, cfg, examples=[example])

    assert [m["role"] for m in msgs] == ["system", "user", "assistant", "user"]
    system = msgs[0]["content"]
    assert system.startswith(INSTRUCTIONS + "\nDates are UTC.\n\n")
    assert system.endswith(snapshot.ddl())  # the whole schema fits the budget
    assert msgs[1:3] == [{"role": "user", "content": example.question}, {"role": "assistant", "content": example.sql}]
    assert msgs[-1] == {"role": "user", "content": "How many customers are there?"}


def test_example_is_trl_prompt_completion_with_sql_as_assistant_turn(snapshot):
    p = pair("p-1", "How many stores?", "SELECT count(*) FROM core.stores\n")
    record = build_example(p, snapshot, PromptConfig())
    assert record["prompt"] == build_messages(p.question, snapshot, PromptConfig())
    assert record["completion"] == [{"role": "assistant", "content": "SELECT count(*) FROM core.stores"}]


def test_whole_schema_kept_when_it_fits(snapshot):
    assert select_tables("anything", snapshot, max_tokens=100_000) == sorted(snapshot.tables)


def test_pruning_keeps_named_tables_then_join_neighbours_within_budget(snapshot):
    def size(name):
        return len(snapshot.tables[name].ddl.strip()) // 4 + 1

    budget = size("sales.returns") + size("sales.orders") + size("sales.order_lines") + 5
    kept = select_tables("What is the total refund amount of returns?", snapshot, budget)

    assert "sales.returns" in kept  # named by the question
    assert set(kept) - {"sales.returns"} <= {"sales.orders", "sales.order_lines", "core.products"}  # its joins
    assert sum(size(n) for n in kept) <= budget
    assert kept == sorted(kept)
    assert select_tables("What is the total refund amount of returns?", snapshot, budget) == kept


def test_pruning_matches_plural_words_and_columns(snapshot):
    budget = len(snapshot.tables["core.customers"].ddl) // 4 + 1
    assert select_tables("Which customers have the gold loyalty tier?", snapshot, budget) == ["core.customers"]
    # no table named: ranked by column words (`promo_code` names a column of marketing.promotions only)
    small = len(snapshot.tables["marketing.promotions"].ddl) // 4 + 1
    assert select_tables("list every promo code", snapshot, small) == ["marketing.promotions"]


def test_pruning_keeps_the_first_table_even_over_budget(snapshot):
    assert select_tables("How many stores are there?", snapshot, max_tokens=1) == ["core.stores"]


def test_example_index_ranks_by_overlap_excludes_self_and_other_dbs():
    pool = [
        pair("a", "How many customers are there?", "q1"),
        pair("b", "How many stores are in the north region?", "q2"),
        pair("c", "Total revenue per store", "q3"),
        pair("d", "How many customers signed up in 2024?", "q4", db="other"),
    ]
    index = ExampleIndex(pool)
    assert [p.id for p in index.search("How many stores are there?", 2)] == ["b", "c"]
    assert [p.id for p in index.search("How many customers are there?", 3, exclude_id="zzz")] == ["b", "c"]
    assert [p.id for p in index.search("customers signed up", 1, db="other")] == ["d"]
    assert [p.id for p in index.search("store revenue", 1, exclude_id="c")] == ["b"]
    assert index.search("anything", 0) == []


def test_prompt_settings_round_trip(tmp_path):
    cfg = PromptConfig(max_schema_tokens=300, k_shot=2, system="Be brief.")
    save_prompt_settings(tmp_path, cfg, "demo")
    assert load_prompt_settings(tmp_path, PromptConfig()) == (cfg, "demo")
    assert load_prompt_settings(tmp_path / "none", PromptConfig(k_shot=5)) == (PromptConfig(k_shot=5), None)
