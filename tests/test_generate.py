"""Generation and predict on a tiny Llama built in the test; SQL extraction."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from tinymodel import PAIRS, one_torch_thread

from text2sql.cli import main
from text2sql.config import load_config
from text2sql.errors import ModelError
from text2sql.generate import Generator, extract_sql, generate, load_generator


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    with one_torch_thread():
        yield


@pytest.mark.parametrize(
    ("reply", "sql"),
    [
        ("SELECT count(*) FROM core.stores", "SELECT count(*) FROM core.stores"),
        ("SELECT 1;", "SELECT 1"),
        ("```sql\nSELECT a\nFROM t\n```\nThis lists a.", "SELECT a\nFROM t"),
        ("```\nWITH x AS (SELECT 1) SELECT * FROM x;\n```", "WITH x AS (SELECT 1) SELECT * FROM x"),
        ("Sure! Here is the query:\nSELECT name FROM t", "SELECT name FROM t"),
        ("SELECT ';' AS s FROM t; DROP TABLE t;", "SELECT ';' AS s FROM t; DROP TABLE t"),  # kept whole: refused
        ("DELETE FROM t", "DELETE FROM t"),  # a write stays a write, never cut to "FROM t"
        ("```sql\nSELECT 1", "SELECT 1"),  # cut off by max_new_tokens inside the fence
        ("", None),
        ("We have 10 customers.", None),
        ("```sql\n```", None),
    ],
)
def test_extract_sql(reply, sql):
    assert extract_sql(reply) == sql


def test_predict_writes_one_record_per_question_in_split_order(tiny_project):
    result = CliRunner().invoke(main, ["predict", "--config", str(tiny_project), "--model", str(load_config(tiny_project).model.base),
                                       "--split", "test", "--out", str(tiny_project.parent / "p.jsonl")])
    assert result.exit_code == 0, result.output
    out = tiny_project.parent / "p.jsonl"
    assert result.stdout.strip() == str(out)
    records = [json.loads(line) for line in out.read_text().splitlines()]
    ids = [json.loads(line)["id"] for line in (tiny_project.parent / "datasets/demo/pairs.jsonl").read_text().splitlines()
           if json.loads(line)["split"] == "test"]
    assert [r["id"] for r in records] == ids
    for r in records:
        assert set(r) == {"id", "sql", "raw"}
        assert isinstance(r["raw"], str) and r["sql"] == extract_sql(r["raw"])  # a str, or None: no query in the reply
        assert "<|im_end|>" not in r["raw"]


def test_batched_generation_equals_one_at_a_time(tiny_project):
    from text2sql.catalog import load_snapshot
    from text2sql.prompt import build_messages

    cfg = load_config(tiny_project)
    gen = load_generator(cfg.model.base, cfg)
    assert gen.kind == "base"
    snapshot = load_snapshot(cfg)
    chats = [build_messages(q, snapshot, gen.prompt, gen.tokenizer) for q, _, _ in PAIRS[:5]]
    batched = generate(gen, chats, max_new_tokens=12)
    gen.batch_size = 1
    assert batched == [generate(gen, [c], max_new_tokens=12)[0] for c in chats]


@pytest.mark.parametrize("batch_size", [1, 3, 16])
def test_shared_prefix_cache_gives_the_replies_of_a_full_prefill(tiny_project, batch_size):
    """The schema's KV cache, prefilled once and reused (pads after it), must not change a single reply."""
    from text2sql.catalog import load_snapshot
    from text2sql.generate import MIN_CACHED_PREFIX, _question_start
    from text2sql.prompt import build_messages, render_prompt

    cfg = load_config(tiny_project)
    gen = load_generator(cfg.model.base, cfg)
    snapshot = load_snapshot(cfg)
    questions = [q for q, _, _ in PAIRS[:5]] + ["x", PAIRS[0][0]]  # a one-word question; a repeated one
    chats = [build_messages(q, snapshot, gen.prompt, gen.tokenizer) for q in questions]
    row = gen.tokenizer(render_prompt(gen.tokenizer, chats[0]), add_special_tokens=False)["input_ids"]
    assert 100 < _question_start(gen.tokenizer, chats[0], row, {}) < len(row)  # the schema is shared, the question not
    gen.batch_size, gen.prefix_cache = batch_size, False
    full = generate(gen, chats, max_new_tokens=16)
    gen.prefix_cache = True
    cached = generate(gen, chats, max_new_tokens=16)
    assert gen._prefixes and all(len(p) >= MIN_CACHED_PREFIX for p in gen._prefixes)  # caches were kept and used
    assert cached == full
    assert generate(gen, chats[:2], max_new_tokens=16) == full[:2]  # a reused cache is not one a batch extended


def test_a_retry_reuses_the_prefix_cache_of_its_question(tiny_project):
    """serve's retry adds turns after the question: the cached system message + schema must still serve it."""
    from text2sql.catalog import load_snapshot
    from text2sql.prompt import build_messages
    from text2sql.serve import correction_messages

    cfg = load_config(tiny_project)
    gen = load_generator(cfg.model.base, cfg)
    first = build_messages(PAIRS[0][0], load_snapshot(cfg), gen.prompt, gen.tokenizer)
    generate(gen, [first], max_new_tokens=8)
    cached = dict(gen._prefixes)
    retry = correction_messages(first, "SELECT nope FROM core.stores", "unknown_column", "unknown column 'nope'")
    replies = generate(gen, [retry], max_new_tokens=8)
    assert dict(gen._prefixes) == cached  # no new prefix: the question's cache served the retry
    gen.prefix_cache = False
    assert generate(gen, [retry], max_new_tokens=8) == replies


def test_generation_runs_in_eval_mode_even_on_a_model_left_training(tiny_model):
    """A model left in training mode (dropout on) must still generate deterministically."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    base = AutoModelForCausalLM.from_pretrained(tiny_model)
    model = get_peft_model(base, LoraConfig(r=4, lora_dropout=0.9, init_lora_weights=False, target_modules="all-linear"))
    model.train()
    gen = Generator(model, tok)
    chats = [[{"role": "user", "content": q}] for q, _, _ in PAIRS[:3]]
    first = generate(gen, chats, max_new_tokens=8)
    assert not model.training
    assert generate(gen, chats, max_new_tokens=8) == first


def test_not_a_model_dir_is_a_model_error(tiny_project, tmp_path):
    with pytest.raises(ModelError, match="is not a model dir"):
        load_generator(tmp_path, load_config(tiny_project))
