"""Generation and predict on a tiny Llama built in the test; SQL extraction."""

from __future__ import annotations

import json
import os

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


def test_predict_counts_and_reports_replies_cut_at_the_reply_budget(tiny_project):
    """A reply that used every generate.max_new_tokens token is counted, in the stats and on stderr; a shorter one
    (it ended with its end-of-turn token) is not."""
    from text2sql.generate import replies_at_limit, stats_path

    out = tiny_project.parent / "cut.jsonl"
    result = CliRunner().invoke(main, ["predict", "--config", str(tiny_project), "--model", str(load_config(tiny_project).model.base),
                                       "--split", "test", "--out", str(out), "--set", "generate.max_new_tokens=3"])
    assert result.exit_code == 0, result.output
    gen = load_generator(load_config(tiny_project).model.base, load_config(tiny_project, ["generate.max_new_tokens=3"]))
    raws = [json.loads(line)["raw"] for line in out.read_text().splitlines()]
    lengths = [len(gen.tokenizer(r, add_special_tokens=False)["input_ids"]) for r in raws]
    cut = sum(n >= 3 for n in lengths)
    assert cut >= 1  # an untrained model does not stop within 3 tokens
    assert json.loads(stats_path(out).read_text())["cut_at_max_new_tokens"] == cut
    assert f"{cut} of {len(raws)} replies used all generate.max_new_tokens=3 tokens" in result.stderr
    assert replies_at_limit(gen, ["", raws[0]]) == (lengths[0] >= 3)


def test_predict_with_the_static_engine_says_where_decoding_time_went(tiny_project):
    """Through the static engine, predict's stats give its decode steps, time per step and prefill time: on the
    H200 a batch-64 step cost more than the weights' and cache's reads explain, and these say by how much."""
    from text2sql.generate import stats_path

    out = tiny_project.parent / "static.jsonl"
    base = str(load_config(tiny_project).model.base)
    result = CliRunner().invoke(main, ["predict", "--config", str(tiny_project), "--model", base,
                                       "--split", "test", "--out", str(out), "--set", "generate.max_new_tokens=5",
                                       "--set", "generate.decoding=static", "--set", "generate.batch_size=2"])
    assert result.exit_code == 0, result.output
    stats = json.loads(stats_path(out).read_text())
    questions = len(out.read_text().splitlines())
    # a step gives each occupied slot of the 2 a token (the first comes from the prefill); an untrained model's
    # replies run to the 5-token budget
    assert questions / 2 <= stats["decode_steps"] <= 5 * questions
    assert stats["ms_per_step"] > 0 and stats["prefill_seconds"] > 0
    assert stats["prefills"] >= 1 and stats["prefill_tokens"] > 0
    assert 0 < stats["prefill_forward_seconds"] <= stats["prefill_seconds"]


def test_the_engine_accounts_each_prompt_token_once_computed_or_read_from_a_kept_prefix(tiny_project):
    """Three questions through two slots: two prefills at least, the later one starting from the prefix the first
    kept (the instructions at least: the tiny schema is pruned per question). Every prompt token is either computed
    in a prefill or read from a kept prefix, once."""
    from text2sql.catalog import load_snapshot
    from text2sql.engine import Request
    from text2sql.generate import decode_engine, encode_chats
    from text2sql.prompt import build_messages

    cfg = load_config(tiny_project)
    gen = load_generator(cfg.model.base, cfg)
    chats = [build_messages(q, load_snapshot(cfg), gen.prompt, gen.tokenizer) for q, _, _ in PAIRS[:3]]
    ids, shared = encode_chats(gen, chats)
    engine = decode_engine(gen, 2)
    engine.run([Request(row, 4, shared=n) for row, n in zip(ids, shared)])
    spent = engine.account()
    assert spent["prefills"] >= 2
    assert spent["prefill_tokens"] + spent["prefill_cached_tokens"] == sum(len(row) for row in ids)
    assert spent["prefill_cached_tokens"] > 0  # the third question read the kept prefix
    assert 0 < spent["prefill_forward_s"] <= spent["prefill_s"]


def test_questions_one_at_a_time_share_the_prefix_up_to_their_own_definitions(tiny_project):
    """The system message ends with the definitions chosen for its question, so a lone request (the server's case)
    must keep, and find, only the part before them: v0.16's server kept whole system messages no other question
    starts with, and prefilled every request's ~2.5 k tokens. Same replies as without the prefix cache."""
    from tests.test_prompt import with_definitions

    from text2sql.catalog import load_snapshot
    from text2sql.data.definitions import load_definitions
    from text2sql.engine import Request
    from text2sql.generate import decode_engine, encode_chats
    from text2sql.prompt import build_messages

    with_definitions(tiny_project)
    cfg = load_config(tiny_project, ["prompt.max_schema_tokens=100000", "prompt.max_definition_tokens=300"])
    gen = load_generator(cfg.model.base, cfg)
    definitions = load_definitions(cfg, "demo")
    questions = ["Net sales in FY2025?", "How many cancelled orders?", "Average order value by store?"]
    chats = [build_messages(q, load_snapshot(cfg), gen.prompt, gen.tokenizer, definitions=definitions)
             for q in questions]
    assert len({chat[0]["content"] for chat in chats}) == 3  # each question its own definitions
    ids, shared = encode_chats(gen, chats)
    head = gen.tokenizer.decode(ids[0][:shared[0]])
    assert len(set(shared)) == 1 and "Business definitions (table aliases" in head and "\n- " not in head

    def one_at_a_time(prefix_lengths):
        engine = decode_engine(gen, 4)
        requests = [Request(row, 4, shared=n) for row, n in zip(ids, prefix_lengths)]
        for request in requests:
            engine.run([request])
        return [r.outputs[0] for r in requests], engine.account()

    replies, spent = one_at_a_time(shared)
    assert spent["prefill_cached_tokens"] == 2 * shared[0]  # the 2nd and 3rd read what the 1st kept
    assert spent["prefill_tokens"] == sum(map(len, ids)) - 2 * shared[0]
    gen._engines.clear()
    gen._prefixes.clear()
    assert one_at_a_time([0] * 3)[0] == replies


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


def test_generation_dtype_is_bfloat16_where_the_hardware_has_it(tiny_project, monkeypatch):
    """auto: bfloat16 on CUDA and on a CPU with bfloat16 units (AMX or AVX512-BF16), float32 on other CPUs; a set
    dtype is loaded as is."""
    import torch

    from text2sql.generate import generation_dtype

    for probe in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"):
        monkeypatch.setattr(torch.cpu, probe, lambda: False, raising=False)
    assert generation_dtype("auto", "cpu") == torch.float32
    assert generation_dtype("auto", "cuda") == torch.bfloat16
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True, raising=False)
    assert generation_dtype("auto", "cpu") == torch.bfloat16
    assert generation_dtype("float32", "cpu") == torch.float32 and generation_dtype("bfloat16", "cpu") == torch.bfloat16
    for dtype in ("float32", "bfloat16"):
        gen = load_generator(load_config(tiny_project).model.base, load_config(tiny_project, [f"generate.dtype={dtype}"]))
        assert gen.model.dtype == getattr(torch, dtype)


def test_not_a_model_dir_is_a_model_error(tiny_project, tmp_path):
    with pytest.raises(ModelError, match="is not a model dir"):
        load_generator(tmp_path, load_config(tiny_project))


@pytest.mark.parametrize("batch_size, prefix_cache", [(1, True), (3, True), (16, False)])
def test_static_decoding_gives_the_replies_of_eager_generate(tiny_project, batch_size, prefix_cache, monkeypatch):
    """The static-cache engine (compile off on CPU): slots joining and leaving mid-batch, the columns shifting
    right for a long prompt and left at the cache's end, and still every greedy reply equals `generate`'s."""
    from text2sql import engine as engine_module
    from text2sql.catalog import load_snapshot
    from text2sql.generate import decode_engine
    from text2sql.prompt import build_messages
    from text2sql.serve import correction_messages

    cfg = load_config(tiny_project)
    gen = load_generator(cfg.model.base, cfg)
    assert gen.decoding == "eager"  # auto on a CPU
    snapshot = load_snapshot(cfg)
    chats = [build_messages(q, snapshot, gen.prompt, gen.tokenizer) for q, _, _ in PAIRS[:5]]
    chats += [[{"role": "user", "content": "x"}],  # a short prompt without the schema
              correction_messages(chats[0], "SELECT nope FROM core.stores", "unknown_column", "no column nope")]
    gen.batch_size, gen.prefix_cache = batch_size, prefix_cache
    eager = generate(gen, chats, max_new_tokens=20)
    gen.decoding = "static"
    monkeypatch.setattr(engine_module, "CACHE_TOKENS_STEP", 1)  # a cache just long enough: it shifts often
    assert generate(gen, chats, max_new_tokens=20) == eager
    engine = decode_engine(gen)
    assert engine.steps > 0 and not engine.compile and engine.idle()
    if batch_size > 1:  # requests behind one prefix (or none) were prefilled together, left-padded
        assert engine.prefills < len(chats)
    assert generate(gen, chats[::-1], max_new_tokens=20) == eager[::-1]  # a warm engine, another admission order
    assert engine.shifts > 0  # the write column moved for a longer prompt (or past the cache end)
    assert eager[0].startswith(generate(gen, chats[:1], max_new_tokens=3)[0])  # stops at max_new_tokens


def test_static_engine_samples_n_candidates_and_streams_tokens(tiny_project):
    from text2sql.engine import Request
    from text2sql.generate import decode_engine, encode_chats

    cfg = load_config(tiny_project)
    gen = load_generator(cfg.model.base, cfg)
    chat = [{"role": "user", "content": PAIRS[0][0]}]
    (ids,), (shared,) = encode_chats(gen, [chat])
    seen: list[tuple[int, int]] = []
    done: list[Request] = []
    greedy = Request(ids, 10, n=1, on_tokens=lambda r, i: seen.append((i, len(r.outputs[i]))), on_done=done.append)
    sampled = Request(ids, 10, n=3, temperature=5.0)
    decode_engine(gen, 4).run([greedy, sampled])
    assert done == [greedy] and seen == [(0, k) for k in range(1, len(greedy.outputs[0]) + 1)]
    assert len(sampled.outputs) == 3 and len({tuple(o) for o in sampled.outputs}) > 1  # hot sampling differs
    gen.decoding = "eager"
    assert gen.tokenizer.decode(greedy.outputs[0], skip_special_tokens=True) == generate(gen, [chat], 10)[0]


def test_a_warm_engine_takes_a_self_correction_prompt_without_growing_its_cache(tiny_project, monkeypatch):
    """Serving warms the engine once; a retry's longer prompt must fit the cache it sized, or the compiled steps
    would be built again for the new length while a user waits."""
    from text2sql import engine as engine_module
    from text2sql.catalog import load_snapshot
    from text2sql.engine import Request
    from text2sql.generate import decode_engine, encode_chats
    from text2sql.prompt import build_messages
    from text2sql.serve import correction_messages

    cfg = load_config(tiny_project)
    gen = load_generator(cfg.model.base, cfg)
    chat = build_messages(PAIRS[0][0], load_snapshot(cfg), gen.prompt, gen.tokenizer)
    retry = correction_messages(chat, "SELECT store_nme, count(*) FROM core.stores GROUP BY 1", "unknown_column",
                                "Binder Error: column store_nme not found; candidates: store_name, store_id")
    (ids, retry_ids), shared = encode_chats(gen, [chat, retry])
    monkeypatch.setattr(engine_module, "CACHE_TOKENS_STEP", 1)  # no rounding up to hide a tight size
    engine = decode_engine(gen, 2)
    engine.warm(ids, shared[0], 32)
    size = engine.cache_tokens
    assert size >= len(ids) + 32
    engine.run([Request(retry_ids, 32, shared=shared[1])])
    assert engine.cache_tokens == size and len(retry_ids) > len(ids)


def test_one_shape_run_decodes_a_single_batch_bucket_with_the_same_replies(tiny_project):
    """Compiled, `run` (predict) keeps one batch bucket and one cache length while the batch drains, so a fresh
    process compiles one step; the replies stay those of the power-of-two buckets (CPU: compile off, same logic)."""
    from text2sql.catalog import load_snapshot
    from text2sql.engine import Request
    from text2sql.generate import decode_engine, encode_chats
    from text2sql.prompt import build_messages

    cfg = load_config(tiny_project)
    gen = load_generator(cfg.model.base, cfg)
    snapshot = load_snapshot(cfg)
    chats = [build_messages(q, snapshot, gen.prompt, gen.tokenizer) for q, _, _ in PAIRS[:6]]
    ids, shared = encode_chats(gen, chats)
    engine = decode_engine(gen, 8)

    def replies() -> list[list[int]]:  # the later slots stop first, so the batch drains to smaller buckets
        requests = [Request(row, 14 - 2 * i, shared=n) for i, (row, n) in enumerate(zip(ids, shared))]
        engine.run(requests)
        return [r.outputs[0] for r in requests]

    drained = replies()
    assert len({batch for batch, _ in engine.shapes}) > 1  # 8, then 4 and 2 as the high slots end
    engine.shapes.clear()
    engine.one_shape = True
    assert replies() == drained
    assert engine.shapes == {(8, engine.cache_tokens)}  # 6 prompts: the 8-slot bucket, one cache length


def test_a_compiled_run_warms_its_step_first_times_it_and_keeps_the_replies(tiny_project):
    """Compiled, `run` records its step before the first prefill (the slots are empty, nothing is read), so
    predict can say what decoding costs apart from a process's compilation; the warm-up writes no reply's
    columns, and a shape is warmed once (CPU: the eager step stands in for the compiled one)."""
    from text2sql.catalog import load_snapshot
    from text2sql.engine import WARMUP_CALLS, Request
    from text2sql.generate import decode_engine, encode_chats
    from text2sql.prompt import build_messages

    cfg = load_config(tiny_project)
    gen = load_generator(cfg.model.base, cfg)
    chats = [build_messages(q, load_snapshot(cfg), gen.prompt, gen.tokenizer) for q, _, _ in PAIRS[:3]]
    ids, shared = encode_chats(gen, chats)

    def replies(engine) -> list[list[int]]:
        requests = [Request(row, 12, shared=n) for row, n in zip(ids, shared)]
        engine.run(requests)
        return [r.outputs[0] for r in requests]

    plain = replies(decode_engine(gen, 4))
    gen._engines.clear()
    engine = decode_engine(gen, 4)
    engine.compile = engine.one_shape = True
    assert replies(engine) == plain
    assert engine.warmed == {(4, engine.cache_tokens)} and engine.warmup_seconds > 0
    steps, spent = engine.steps, engine.warmup_seconds
    assert replies(engine) == plain
    assert engine.warmup_seconds == spent and engine.steps == 2 * steps  # warmed once; its calls are not steps
    assert WARMUP_CALLS >= 1


def test_the_engine_attends_on_the_key_value_heads_directly_with_the_same_result(tiny_project, monkeypatch):
    """Compiled, transformers' sdpa repeats the key/value heads for a one-token query (a copy of the whole static
    cache per layer and step); the engine's attention packs the query heads instead. Same numbers as the repeated
    heads, and the engine's model uses it (its greedy replies equal eager generate's: the static-decoding test)."""
    import torch
    from transformers.integrations.sdpa_attention import repeat_kv

    from text2sql import engine
    from text2sql.attention import PACKED_ATTENTION, packed_sdpa
    from text2sql.generate import decode_engine

    class Attention:
        num_key_value_groups = 3

    torch.manual_seed(0)
    query, key, value = torch.randn(5, 6, 1, 16), torch.randn(5, 2, 40, 16), torch.randn(5, 2, 40, 16)
    mask = torch.zeros(5, 1, 1, 40)
    mask[1, :, :, :7] = torch.finfo(torch.float32).min  # a slot whose first columns are not its own
    packed, _ = packed_sdpa(Attention(), query, key, value, mask, scaling=0.25)
    repeated = torch.nn.functional.scaled_dot_product_attention(query, repeat_kv(key, 3), repeat_kv(value, 3),
                                                                attn_mask=mask, scale=0.25).transpose(1, 2)
    assert packed.shape == repeated.shape and torch.allclose(packed, repeated, atol=1e-6)
    cfg = load_config(tiny_project)
    gen = load_generator(cfg.model.base, cfg)
    assert gen.model.config._attn_implementation == "sdpa"
    monkeypatch.setattr(engine, "PACKED_GQA", None)  # the default: packed where the step is compiled
    engine.DecodeEngine(gen.model, gen.tokenizer.eos_token_id, 4, compile=False)
    assert gen.model.config._attn_implementation == "sdpa"
    engine.DecodeEngine(gen.model, gen.tokenizer.eos_token_id, 4, compile=True)  # compiles at its first step
    assert gen.model.config._attn_implementation == PACKED_ATTENTION
    monkeypatch.setattr(engine, "PACKED_GQA", False)
    engine.DecodeEngine(gen.model, gen.tokenizer.eos_token_id, 4, compile=True)
    assert gen.model.config._attn_implementation == "sdpa"
    monkeypatch.setattr(engine, "PACKED_GQA", True)
    decode_engine(gen)
    assert gen.model.config._attn_implementation == PACKED_ATTENTION
    assert generate(gen, [[{"role": "user", "content": PAIRS[0][0]}]], max_new_tokens=6)  # prefill and decode run


@pytest.mark.parametrize("dynamic", [False, True])
def test_compiled_packed_attention_gives_the_uncompiled_replies(tiny_project, monkeypatch, dynamic):
    """torch.compile of the engine's step with the packed attention (inductor on the CPU: the same tracing, no CUDA
    graphs) compiles, and its greedy replies equal those of transformers' own attention, uncompiled. With symbolic
    sizes one compile serves every bucket above 1 and a longer cache; static sizes compile each."""
    import torch
    from torch._dynamo.utils import counters

    from text2sql import attention, engine
    from text2sql.engine import DecodeEngine, Request
    from text2sql.generate import encode_chats

    cfg = load_config(tiny_project)
    gen = load_generator(cfg.model.base, cfg)
    ids, shared = encode_chats(gen, [[{"role": "user", "content": q}] for q, _, _ in PAIRS[:3]])
    monkeypatch.setattr(engine, "DYNAMIC_SHAPES", dynamic)

    def replies(decoder: DecodeEngine) -> list[list[int]]:
        requests = [Request(i, 12, shared=s) for i, s in zip(ids, shared)]
        decoder.run(requests)
        return [r.outputs[0] for r in requests]

    plain = replies(DecodeEngine(gen.model, gen.tokenizer.eos_token_id, 4, False))  # transformers' own attention
    monkeypatch.setattr(engine, "PACKED_GQA", True)
    torch._dynamo.reset()
    try:
        compiled = DecodeEngine(gen.model, gen.tokenizer.eos_token_id, 4, True)
        before = counters["stats"]["unique_graphs"]
        compiled.warm(ids[0], shared[0], 12)  # buckets 1, 2 and 4
        compiled._reserve(compiled.cache_tokens + 1)  # a longer cache
        assert replies(compiled) == plain and any(plain)
        graphs = counters["stats"]["unique_graphs"] - before
    finally:
        torch._dynamo.reset()  # no compiled step is left for other tests' models
    assert graphs == (2 if dynamic else 4)  # (bucket 1, the rest) or each of 3 buckets, then bucket 4 again
    assert gen.model.config._attn_implementation == attention.PACKED_ATTENTION


@pytest.mark.parametrize("switch, variable", [("PACKED_GQA", "T2S_PACKED_GQA"),
                                              ("DYNAMIC_SHAPES", "T2S_DYNAMIC_SHAPES")])
def test_engine_switches_follow_the_environment(switch, variable):
    """Unset, engines pick the attention by whether they compile (None) and keep static compiled sizes; the
    environment can force either."""
    import subprocess
    import sys

    probe = f"import text2sql.engine as e; print(e.{switch})"
    runs = {value: subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True,
                                  env={**os.environ, variable: value}).stdout.strip()
            for value in ("", "0", "1")}
    unset = "None" if switch == "PACKED_GQA" else "False"
    assert runs == {"": unset, "0": "False", "1": "True"}
