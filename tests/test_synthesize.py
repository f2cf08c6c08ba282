"""`data synthesize` and `data review` on a real small lakehouse, with the tiny model writing the questions."""

from __future__ import annotations

import json
import random

import pytest
from click.testing import CliRunner

from text2sql.cli import main
from text2sql.config import load_config
from text2sql.data.analysis import sql_template
from text2sql.data.store import read_pairs_file
from text2sql.errors import ConfigError, DataError

TRAIN = [
    ("How many orders were cancelled?", "SELECT COUNT(*) AS order_count FROM sales.orders AS o WHERE o.status = 'cancelled'"),
    ("Orders per store channel in 2024.", "SELECT s.channel, COUNT(*) AS order_count FROM sales.orders AS o JOIN core.stores AS s "
     "ON s.store_id = o.store_id WHERE o.ordered_at >= DATE '2024-01-01' AND o.ordered_at < DATE '2025-01-01' "
     "GROUP BY s.channel ORDER BY s.channel"),
    ("How many customers per segment?", "SELECT c.segment, COUNT(*) AS customer_count FROM core.customers AS c "
     "GROUP BY c.segment ORDER BY c.segment"),
]
DEV = [("How many stores are there?", "SELECT COUNT(*) AS store_count FROM core.stores AS s")]
TEST = [
    # Same template as the first train pair: every literal swap of it would leak this test question.
    ("How many orders are pending?", "SELECT COUNT(*) AS order_count FROM sales.orders AS o WHERE o.status = 'pending'"),
]
SETTINGS = ["prompt.max_schema_tokens=256", "generate.max_new_tokens=12", "generate.batch_size=8"]


def write_dataset(root, name="demo", train=TRAIN, dev=DEV, test=TEST):
    path = root / "datasets" / name
    path.mkdir(parents=True, exist_ok=True)
    rows = [(q, s, "train") for q, s in train] + [(q, s, "dev") for q, s in dev] + [(q, s, "test") for q, s in test]
    records = [{"id": f"p-{i:04d}", "question": q, "sql": s, "split": split, "author": "test", "created": "2026-11-30"}
               for i, (q, s, split) in enumerate(rows)]
    (path / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@pytest.fixture
def synth_cfg(lakehouse_project, tiny_model, tmp_path):
    write_dataset(tmp_path)
    overrides = [f"data.datasets_dir={tmp_path / 'datasets'}", f"model.base={tiny_model}", *SETTINGS]
    return load_config(lakehouse_project / "text2sql.yaml", overrides)


def synthetic_records(cfg, name="demo"):
    path = cfg.path(cfg.data.datasets_dir) / name / "synthetic.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


@pytest.mark.slow
def test_synthesis_guards_validates_and_repeats_with_the_same_seed(synth_cfg):
    from text2sql.data.store import Pair
    from text2sql.synthesize import synthesize_pairs
    from text2sql.data.validate import validate_pairs

    report = synthesize_pairs(synth_cfg, n=8, seed=3, keep_unconfirmed=True, progress=False)
    records = synthetic_records(synth_cfg)
    assert report.dropped["template_leak"] >= 1, "literal swaps of the train pair copy the test template"
    assert records and len(records) == report.kept <= 8
    held_out = {sql_template(s) for _, s in DEV + TEST}
    assert not [r for r in records if sql_template(r["sql"]) in held_out]
    curated = {s for _, s in TRAIN + DEV + TEST}
    assert not [r for r in records if r["sql"] in curated]
    for r in records:
        assert r["author"] == "synth" and r["split"] == "train" and r["question"]
        assert r["notes"].startswith("synthesized from p-000") and r["tags"][0] == "synthetic"
        assert r["confirmed"] is False or r["confirmed"] is True
    checked = validate_pairs(synth_cfg, [Pair(r["question"], r["sql"], id=r["id"]) for r in records])
    assert [(c.id, [str(p) for p in c.problems]) for c in checked.pairs if c.problems] == []
    assert report.validated >= report.kept and report.generated >= report.validated

    # Same seed, same data, same model -> the same candidates.
    first = [(r["id"], r["question"], r["sql"], r["confirmed"]) for r in records]
    (synth_cfg.path(synth_cfg.data.datasets_dir) / "demo" / "synthetic.jsonl").unlink()
    synthesize_pairs(synth_cfg, n=8, seed=3, keep_unconfirmed=True, progress=False)
    assert [(r["id"], r["question"], r["sql"], r["confirmed"]) for r in synthetic_records(synth_cfg)] == first

    # Without --keep-unconfirmed only confirmed candidates stay (the random tiny model confirms few, if any).
    again = synthesize_pairs(synth_cfg, n=4, seed=4, progress=False)
    kept_now = [r for r in synthetic_records(synth_cfg) if r["id"] not in {f[0] for f in first}]
    assert all(r["confirmed"] for r in kept_now)
    assert again.dropped["unconfirmed"] == again.validated - again.dropped["no_question"] \
        - again.dropped["question_leak"] - again.confirmed


@pytest.mark.slow
def test_a_second_run_adds_new_candidates_and_never_asks_the_model_about_the_file_s_again(synth_cfg):
    """Growing the file to 1k or 3k pairs takes several runs: each proposes n candidates that are not in it yet."""
    from text2sql.synthesize import synthesize_pairs

    first = synthesize_pairs(synth_cfg, n=6, seed=5, keep_unconfirmed=True, progress=False)
    before = {r["id"]: r for r in synthetic_records(synth_cfg)}
    second = synthesize_pairs(synth_cfg, n=6, seed=5, keep_unconfirmed=True, progress=False)
    after = synthetic_records(synth_cfg)
    assert first.kept == len(before) > 0 and second.dropped["already_synthesized"] >= 1  # the same seed: met again
    assert [r for r in after if r["id"] in before] == list(before.values()), "earlier records stay as they were"
    added = [r for r in after if r["id"] not in before]
    assert len(added) == second.kept == second.written - first.written, "every kept candidate is a new one"


def test_bad_n_and_no_train_pairs_are_clear_errors(synth_cfg, tmp_path):
    for n in ("0", "-3"):
        result = CliRunner().invoke(main, ["data", "synthesize", "--config", str(synth_cfg.root / "text2sql.yaml"),
                                           "--set", f"data.datasets_dir={tmp_path / 'datasets'}", "--n", n])
        assert result.exit_code == 1 and result.output.startswith("error: --n must be a positive"), result.output
    write_dataset(tmp_path, "heldout", train=[])
    result = CliRunner().invoke(main, ["data", "synthesize", "heldout", "--config", str(synth_cfg.root / "text2sql.yaml"),
                                       "--set", f"data.datasets_dir={tmp_path / 'datasets'}", "--n", "5"])
    assert result.exit_code == 1 and "has no train pairs" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "datasets" / "heldout" / "synthetic.jsonl").exists()


def test_mutations_keep_the_house_style_and_add_tie_breakers(synth_cfg):
    from text2sql.catalog import load_snapshot
    from text2sql.data.analysis import parse_sql
    from text2sql.data.mutate import MutationContext, mutate_order_limit, mutate_period, mutate_window
    from text2sql.warehouse import QueryRunner

    with QueryRunner.from_config(synth_cfg) as runner:
        ctx = MutationContext(load_snapshot(synth_cfg), None, runner)
        fiscal = mutate_period(parse_sql(TRAIN[1][1]), ctx, random.Random(0))
        assert len(fiscal) == 1 and "JOIN core.fiscal_calendar AS fc ON fc.calendar_date = CAST(o.ordered_at AS DATE)" \
            in fiscal[0] and "fc.fiscal_year = 202" in fiscal[0] and "ordered_at >=" not in fiscal[0]
        back = mutate_period(parse_sql(fiscal[0]), ctx, random.Random(0))
        assert back and "fiscal_calendar" not in back[0] and "o.ordered_at >= DATE '20" in back[0]
        shifted = mutate_window(parse_sql(TRAIN[1][1]), ctx, random.Random(0))
        assert all("DATE '" in s and "CAST('" not in s for s in shifted) and len(set(shifted)) == len(shifted)
        top = mutate_order_limit(parse_sql(TRAIN[2][1]), ctx, random.Random(0))
        assert top and "ORDER BY customer_count" in top[0] and "c.segment ASC LIMIT" in top[0]


def test_synthetic_mixing_is_train_only_and_capped(synth_cfg, tmp_path):
    from text2sql.data.synthesize import candidate_record
    from text2sql.train import _load_splits

    path = tmp_path / "datasets" / "demo" / "synthetic.jsonl"
    records = [candidate_record(f"Question {i}?", f"SELECT {i} AS n", id=f"s-{i:010d}", confirmed=True)
               for i in range(5)]
    records[0]["split"] = "test"  # a hand-edited file must not smuggle a pair into dev or test
    records[1]["confirmed"] = records[3]["confirmed"] = False
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    train, dev = _load_splits(synth_cfg, "demo")
    assert [p.id for p in train] == ["p-0000", "p-0001", "p-0002"], "exclude is the default"
    cfg = load_config(synth_cfg.root / "text2sql.yaml", [f"data.datasets_dir={tmp_path / 'datasets'}",
                                                          "data.synthetic=include", "data.synthetic_ratio=1.0"])
    train, dev = _load_splits(cfg, "demo")
    synthetic = [p for p in train if p.id.startswith("s-")]
    assert len(synthetic) == 3 and all(p.split == "train" for p in train) and [p.id for p in dev] == ["p-0003"]
    cfg = load_config(synth_cfg.root / "text2sql.yaml", [f"data.datasets_dir={tmp_path / 'datasets'}",
                                                          "data.synthetic=confirmed", "data.synthetic_ratio=5"])
    train, _ = _load_splits(cfg, "demo")
    assert [p.id for p in train if p.id.startswith("s-")] == ["s-0000000000", "s-0000000002", "s-0000000004"]
    with pytest.raises(ConfigError, match="data.synthetic: 'maybe'"):
        load_config(synth_cfg.root / "text2sql.yaml", ["data.synthetic=maybe"])
    with pytest.raises(ConfigError, match="data.synthetic_ratio"):
        load_config(synth_cfg.root / "text2sql.yaml", ["data.synthetic_ratio=-1"])


def _proposals(tmp_path):
    from text2sql.data.synthesize import candidate_record

    good = [("How many completed orders?", "SELECT COUNT(*) AS n FROM sales.orders AS o WHERE o.status = 'completed'", True),
            ("How many returns?", "SELECT COUNT(*) AS n FROM sales.returns AS r", True),
            ("How many products?", "SELECT COUNT(*) AS n FROM core.products AS p", False),
            ("Bad one", "SELECT nope FROM core.products", True)]
    records = [candidate_record(q, s, id=f"s-{i:010d}", author="synth", notes="synthesized from p-0000 by literal",
                                confirmed=c) for i, (q, s, c) in enumerate(good)]
    records[1]["split"] = "test"
    path = tmp_path / "datasets" / "demo" / "synthetic.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_review_moves_pairs_atomically_and_finishes_an_interrupted_move(synth_cfg, tmp_path, monkeypatch):
    from text2sql.data import review
    from text2sql.data.review import read_entries, review_pairs

    source = _proposals(tmp_path)
    pairs_file = tmp_path / "datasets" / "demo" / "pairs.jsonl"
    before = pairs_file.read_text()

    def crash(*args, **kwargs):
        raise RuntimeError("killed between the two writes")

    monkeypatch.setattr(review, "_write_source", crash)
    with pytest.raises(RuntimeError):
        review_pairs(synth_cfg, source="synthetic", accept_all=True, confirmed_only=True)
    monkeypatch.undo()
    moved = [p for p, _ in read_pairs_file(pairs_file)]  # both files still parse
    assert len(read_entries(source, "synthetic")) == 4
    assert [p.id for p in moved if p.id.startswith("s-")] == ["s-0000000000", "s-0000000001"]
    assert all(p.split == "train" for p in moved if p.id.startswith("s-")), "a synthetic pair never lands in test"
    assert pairs_file.read_text().startswith(before), "curated lines are kept byte for byte"

    report = review_pairs(synth_cfg, source="synthetic", accept_all=True, confirmed_only=True)
    ids = [p.id for p, _ in read_pairs_file(pairs_file)]
    assert len(ids) == len(set(ids)) and ids.count("s-0000000000") == 1
    assert set(report.accepted) == {"s-0000000000", "s-0000000001"}
    assert list(report.refused) == ["s-0000000003"] and "unknown_column" in report.refused["s-0000000003"]
    assert [e.pair.id for e in read_entries(source, "synthetic")] == ["s-0000000002", "s-0000000003"]

    result = CliRunner().invoke(main, ["data", "review", "--config", str(synth_cfg.root / "text2sql.yaml"), "--set",
                                       f"data.datasets_dir={tmp_path / 'datasets'}", "--reject", "s-0000000003",
                                       "--accept", "s-0000000002"])
    assert result.exit_code == 0, result.output
    assert read_entries(source, "synthetic") == [] and "s-0000000002" in [p.id for p, _ in read_pairs_file(pairs_file)]
    result = CliRunner().invoke(main, ["data", "review", "--config", str(synth_cfg.root / "text2sql.yaml"), "--set",
                                       f"data.datasets_dir={tmp_path / 'datasets'}", "--accept", "s-9"])
    assert result.exit_code == 1 and result.output.startswith("error: no entry 's-9'")


def test_review_turns_accepted_feedback_into_train_pairs(synth_cfg, tmp_path):
    from text2sql.data.review import list_entries, review_pairs

    feedback = tmp_path / "datasets" / "demo" / "feedback.jsonl"
    rows = [{"id": "fb-0123456789ab", "question": "How many stores do we have?", "sql": "SELECT COUNT(*) FROM core.stores",
             "model_sql": "SELECT COUNT(*) FROM core.stores", "verdict": "right", "run": "runs/x",
             "created": "2026-11-30T03:00:00+00:00", "author": "feedback", "db": None},
            {"id": "fb-ba9876543210", "question": "How many online stores?",
             "sql": "SELECT COUNT(*) FROM core.stores AS s WHERE s.channel = 'online'",
             "model_sql": "SELECT COUNT(*) FROM core.stores", "verdict": "wrong", "run": "runs/x",
             "created": "2026-11-30T03:01:00+00:00", "author": "feedback", "db": None}]
    feedback.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert [e.pair.id for e in list_entries(synth_cfg, source="feedback")] == ["fb-0123456789ab", "fb-ba9876543210"]
    report = review_pairs(synth_cfg, source="feedback", accept=["fb-ba9876543210"])
    assert report.accepted == ["fb-ba9876543210"] and report.remaining == 1
    added = {p.id: p for p, _ in read_pairs_file(tmp_path / "datasets" / "demo" / "pairs.jsonl")}["fb-ba9876543210"]
    assert (added.split, added.author, added.created) == ("train", "feedback", "2026-11-30")
    assert "marked wrong and corrected" in added.notes
    feedback.write_text(feedback.read_text() + "{not json\n")
    with pytest.raises(DataError, match="feedback.jsonl:2: not valid JSON"):
        list_entries(synth_cfg, source="feedback")


def test_measure_and_dimension_swaps_follow_the_definitions(synth_cfg, tmp_path):
    from text2sql.catalog import load_snapshot
    from text2sql.data.analysis import parse_sql
    from text2sql.data.definitions import read_definitions
    from text2sql.data.mutate import MutationContext, mutate_group_by, mutate_measure
    from text2sql.warehouse import QueryRunner

    path = tmp_path / "definitions.yaml"
    path.write_text(
        "version: 1\naliases: {o: sales.orders, ol: sales.order_lines, s: core.stores}\ndefinitions:\n"
        "  - {term: net sales, kind: measure, meaning: m, sql: 'SUM(ol.quantity * ol.unit_price - ol.discount_amount)'}\n"
        "  - {term: units sold, kind: measure, meaning: m, sql: SUM(ol.quantity)}\n"
        "  - {term: refunds, kind: measure, meaning: m, sql: SUM(r.refund_amount)}\n"
        "  - {term: store region, kind: dimension, meaning: m, sql: s.region}\n")
    sql = ("SELECT s.channel, SUM(ol.quantity * ol.unit_price - ol.discount_amount) AS net_sales FROM sales.orders AS o "
           "JOIN sales.order_lines AS ol ON ol.order_id = o.order_id JOIN core.stores AS s ON s.store_id = o.store_id "
           "WHERE o.status = 'completed' GROUP BY s.channel ORDER BY net_sales DESC, s.channel")
    with QueryRunner.from_config(synth_cfg) as runner:
        ctx = MutationContext(load_snapshot(synth_cfg), read_definitions(path), runner)
        swapped = mutate_measure(parse_sql(sql), ctx, random.Random(0))
        # refunds needs sales.returns (alias r), which the query does not read.
        assert swapped == [sql.replace("SUM(ol.quantity * ol.unit_price - ol.discount_amount) AS net_sales",
                                       "SUM(ol.quantity) AS units_sold").replace("BY net_sales", "BY units_sold")]
        regrouped = mutate_group_by(parse_sql(sql), ctx, random.Random(0))
        assert any("SELECT s.region AS store_region," in s and "GROUP BY s.region ORDER BY net_sales DESC, store_region"
                   in s for s in regrouped), regrouped
        assert not [s for s in regrouped if "GROUP BY o.status" in s], "a column pinned by WHERE is no dimension"


def test_split_reassign_keeps_synthetic_pairs_and_their_group_in_train():
    from text2sql.data.split import assign_splits
    from text2sql.data.store import Pair

    pairs = [Pair(f"Orders with status {s}?", f"SELECT COUNT(*) FROM sales.orders WHERE status = '{s}'", split="test")
             for s in ("a", "b")]
    pairs += [Pair("Orders with status c?", "SELECT COUNT(*) FROM sales.orders WHERE status = 'c'", author="synth",
                   split="test")]
    pairs += [Pair(f"How many rows in t{i}?", f"SELECT COUNT(*) FROM t{i}") for i in range(12)]
    for reassign in (False, True):
        assigned = assign_splits(pairs, {"train": 0.2, "dev": 0.2, "test": 0.6}, seed=1, reassign=reassign)
        assert [assigned[p.id] for p in pairs[:3]] == ["train"] * 3
        assert "test" in assigned.values()


def test_pool_composes_transforms_when_single_ones_run_out(synth_cfg):
    """Three train pairs give few single mutations: the pool then composes them, still distinct and leak-free."""
    from text2sql.catalog import load_snapshot
    from text2sql.data.analysis import normalize_sql
    from text2sql.data.store import load_dataset
    from text2sql.data.synthesize import Progress, SynthesisReport, mutation_pool

    ds = load_dataset(synth_cfg)
    pairs = [p for p, _ in read_pairs_file(ds.pairs_file)]
    train = [p for p in pairs if p.split == "train"]
    held_out = [p for p in pairs if p.split != "train"]

    def pool(seed):
        report = SynthesisReport(requested=200, sources=len(train), path=ds.path / "unused.jsonl")
        with Progress(False) as bar:
            return mutation_pool(synth_cfg, ds, load_snapshot(synth_cfg), train, pairs, held_out, seed, 200, report, bar)

    candidates = pool(5)
    composed = [c for c in candidates if "+" in c.method]
    assert composed, [c.method for c in candidates]
    assert all(len(set(c.method.split("+"))) == len(c.method.split("+")) <= 3 for c in composed)
    keys = [normalize_sql(c.sql) for c in candidates]
    assert len(set(keys)) == len(keys) and not set(keys) & {normalize_sql(p.sql) for p in pairs}
    leaked = {sql_template(p.sql) for p in held_out}
    assert not [c.sql for c in candidates if sql_template(c.sql) in leaked]
    assert [(c.sql, c.method) for c in pool(5)] == [(c.sql, c.method) for c in candidates]


def bigram_model(tiny_model, path, reply="SELECT 1"):
    """The tiny model made a bigram table that answers every chat with `reply`: the layers add nothing to the
    residual, so each position's logits depend on its own token only, and each token of `\n` + reply + eos (the
    prompt ends with `assistant\n`) points to the next one."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    chain = tokenizer.encode("\n") + tokenizer.encode(reply) + [tokenizer.eos_token_id]
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        embed, head = model.model.embed_tokens.weight, model.lm_head.weight
        embed.zero_()
        head.zero_()
        embed[:, 0], head[tokenizer.eos_token_id, 0] = 1.0, 10.0  # any other token: stop
        for k, (token, following) in enumerate(zip(chain, chain[1:]), 1):
            embed[token] = 0.0
            embed[token, k], head[following, k] = 1.0, 10.0
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.mark.slow
def test_answer_model_answers_the_round_trip_and_reconfirm_rewrites_the_flags(synth_cfg, tiny_model, tmp_path,
                                                                             monkeypatch):
    import os

    from text2sql.data.synthesize import candidate_record
    from text2sql.synthesize import reconfirm_pairs

    one = bigram_model(tiny_model, tmp_path / "select-one")  # answers every question with SELECT 1
    no_sql = "UNCONFIRMED: the model wrote no SQL for the question"
    cli = ["--config", str(synth_cfg.root / "text2sql.yaml"), "--set", f"data.datasets_dir={tmp_path / 'datasets'}",
           "--set", f"model.base={tiny_model}", *[a for s in SETTINGS for a in ("--set", s)]]
    result = CliRunner().invoke(main, ["data", "synthesize", *cli, "--n", "4", "--seed", "3", "--keep-unconfirmed",
                                       "--answer-model", str(one)])
    assert result.exit_code == 0, result.output
    assert f"round trip answered by {one.resolve()}" in result.output
    records = synthetic_records(synth_cfg)
    # The tiny model wrote the questions (SELECT 1 would be no question); the bigram one answered them with SQL
    # (the tiny model writes none, as the reconfirm with it below shows).
    assert records and all(r["question"] and r["question"] != "SELECT 1" for r in records)
    assert [r["notes"] for r in records if r["notes"].endswith(no_sql)] == []

    source = _proposals(tmp_path)  # 4 records, 3 of them confirmed; the last one's SQL fails
    source.write_text(source.read_text() + json.dumps(candidate_record(
        "What is one?", "SELECT 1 AS one", id="s-00000000ff", author="synth", confirmed=False,
        notes="synthesized from p-0001 by literal; UNCONFIRMED: a stale reason")) + "\n")
    before = source.read_text()

    def killed(fd):
        raise RuntimeError("killed while writing")

    monkeypatch.setattr(os, "fsync", killed)  # write_atomic fsyncs the temp file before renaming it over the old one
    with pytest.raises(RuntimeError, match="killed while writing"):
        reconfirm_pairs(synth_cfg, answer_model=str(one), progress=False)
    monkeypatch.undo()
    assert source.read_text() == before and [p.name for p in source.parent.iterdir() if p.suffix == ".tmp"] == []

    result = CliRunner().invoke(main, ["data", "synthesize", *cli, "--reconfirm", "--answer-model", str(one)])
    assert result.exit_code == 0, result.output
    assert f"re-judged 5 candidates of {source} with {one.resolve()}: 3 confirmed before, 1 after (+1, -3)" \
        in result.output and "pairs/s" in result.output
    old, new = [json.loads(line) for line in before.splitlines()], synthetic_records(synth_cfg)
    assert [{k: v for k, v in r.items() if k not in ("confirmed", "notes")} for r in new] \
        == [{k: v for k, v in r.items() if k not in ("confirmed", "notes")} for r in old]
    assert [r["confirmed"] for r in new] == [False, False, False, False, True]
    assert [r["notes"].split("; UNCONFIRMED: ")[0] for r in new[:4]] == ["synthesized from p-0000 by literal"] * 4
    assert "the synthetic SQL failed (" in new[3]["notes"] and new[4]["notes"] \
        == "synthesized from p-0001 by literal; confirmed by the round trip"

    result = CliRunner().invoke(main, ["data", "synthesize", *cli, "--reconfirm"])  # the tiny model answers
    assert result.exit_code == 0 and "1 confirmed before, 0 after (+0, -1)" in result.output, result.output
    assert any(r["notes"].endswith(no_sql) for r in synthetic_records(synth_cfg)), "the random tiny model's replies"


def test_reconfirm_needs_a_synthetic_file_and_takes_no_synthesis_options(synth_cfg, tmp_path):
    cli = ["data", "synthesize", "--config", str(synth_cfg.root / "text2sql.yaml"), "--set",
           f"data.datasets_dir={tmp_path / 'datasets'}", "--reconfirm"]
    path = tmp_path / "datasets" / "demo" / "synthetic.jsonl"
    for content in (None, "", "\n"):
        if content is not None:
            path.write_text(content)
        result = CliRunner().invoke(main, cli)
        assert result.exit_code == 1 and result.output == f"error: {path} is missing or empty: run " \
            "`text2sql data synthesize` first\n", result.output
    result = CliRunner().invoke(main, [*cli, "--n", "5"])
    assert result.exit_code == 2 and "--reconfirm writes no candidates" in result.output


def test_back_translation_shows_train_pairs_sql_to_question_and_never_a_held_out_one(synth_cfg, tiny_model):
    from dataclasses import replace

    from text2sql.data.store import load_dataset
    from text2sql.data.synthesize import BACK_TRANSLATION_INSTRUCTIONS, BACK_TRANSLATION_SHOTS, Candidate
    from text2sql.generate import load_generator
    from text2sql.prompt import PromptBuilder, PromptSettings
    from text2sql.synthesize import _back_translation_messages

    ds = load_dataset(synth_cfg)
    pairs = [p for p, _ in read_pairs_file(ds.pairs_file)]  # all splits: the function itself must keep to train
    by_id = {p.id: p for p in pairs}
    candidates = [
        Candidate("SELECT COUNT(*) AS order_count FROM sales.orders AS o WHERE o.status = 'returned'", "p-0000",
                  "literal"),
        Candidate("SELECT c.segment, COUNT(*) AS customer_count FROM core.customers AS c GROUP BY c.segment "
                  "ORDER BY customer_count DESC, c.segment LIMIT 2", "p-0002", "order_limit"),
        Candidate("SELECT s.channel, COUNT(*) AS store_count FROM core.stores AS s GROUP BY s.channel "
                  "ORDER BY s.channel", "p-0003", "group_by"),  # a dev pair as the source: never shown
    ]
    gen = load_generator(tiny_model, synth_cfg)
    all_messages = _back_translation_messages(synth_cfg, ds, gen, candidates, pairs)
    assert all_messages == _back_translation_messages(synth_cfg, ds, gen, candidates, pairs), "deterministic"

    settings = PromptSettings(synth_cfg.prompt, BACK_TRANSLATION_INSTRUCTIONS)
    builder = PromptBuilder.for_model(synth_cfg, replace(settings, prompt=replace(synth_cfg.prompt, k_shot=0)),
                                      gen.tokenizer, ds.name)
    held_out = [text for p in pairs if p.split != "train" for text in (p.sql, p.question)]
    for candidate, messages in zip(candidates, all_messages):
        assert messages[0] == builder.messages(candidate.sql)[0]
        assert messages[0]["content"].startswith(BACK_TRANSLATION_INSTRUCTIONS)
        assert messages[-1] == {"role": "user", "content": candidate.sql}
        shots = messages[1:-1]
        assert [m["role"] for m in shots] == ["user", "assistant"] * BACK_TRANSLATION_SHOTS  # 3 train pairs here
        shown = [(u["content"], a["content"]) for u, a in zip(shots[::2], shots[1::2])]
        assert len(shown) == 3 and set(shown) == {(p.sql, p.question) for p in pairs if p.split == "train"}
        assert not [text for m in messages for text in held_out if text in m["content"]]
    for candidate, messages in zip(candidates[:2], all_messages):  # the source pair comes first
        source = by_id[candidate.source_id]
        assert messages[1:3] == [{"role": "user", "content": source.sql},
                                 {"role": "assistant", "content": source.question}]


def test_join_mutation_joins_only_along_a_reference_of_the_tables_it_joins_on(synth_cfg):
    """A defined join whose ON condition reaches the new table through a table that does not reference it (the
    fiscal calendar's date) fans rows out: synthesis wrote "refunds by fiscal quarter for card payments" joining
    every order of a day to every return of that day. It must not be proposed; a real many-to-one path still is."""
    from text2sql.catalog import load_snapshot
    from text2sql.data.analysis import parse_sql
    from text2sql.data.definitions import read_definitions
    from text2sql.data.mutate import MutationContext, mutate_join
    from text2sql.warehouse import QueryRunner

    path = synth_cfg.root / "join-definitions.yaml"
    path.write_text(
        "version: 1\naliases: {o: sales.orders, r: sales.returns, s: core.stores, fc: core.fiscal_calendar}\n"
        "definitions:\n"
        "  - {term: fiscal calendar, kind: join, meaning: m, sql: 'fc.calendar_date = CAST(o.ordered_at AS DATE)'}\n"
        "  - {term: order store, kind: join, meaning: m, sql: 's.store_id = o.store_id'}\n")
    returns = ("SELECT fc.fiscal_quarter, SUM(r.refund_amount) AS refunds FROM sales.returns AS r JOIN "
               "core.fiscal_calendar AS fc ON fc.calendar_date = CAST(r.returned_at AS DATE) "
               "GROUP BY fc.fiscal_quarter ORDER BY fc.fiscal_quarter")
    orders = ("SELECT fc.fiscal_quarter, COUNT(*) AS orders FROM sales.orders AS o JOIN core.fiscal_calendar AS fc "
              "ON fc.calendar_date = CAST(o.ordered_at AS DATE) GROUP BY fc.fiscal_quarter ORDER BY fc.fiscal_quarter")
    with QueryRunner.from_config(synth_cfg) as runner:
        ctx = MutationContext(load_snapshot(synth_cfg), read_definitions(path), runner)
        for seed in range(4):
            assert not [s for s in mutate_join(parse_sql(returns), ctx, random.Random(seed))
                        if "fc.calendar_date = CAST(o.ordered_at" in s.split("JOIN sales.orders", 1)[-1]]
        joined = mutate_join(parse_sql(orders), ctx, random.Random(0))
        assert joined and all("JOIN core.stores AS s ON s.store_id = o.store_id" in s for s in joined), joined
