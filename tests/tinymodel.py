"""Tiny real models and a tiny training project for train/generate/serve tests (CPU, seconds).

`tiny_model_dir()` builds, once per test session, a 2-layer Llama (hidden 64) with a byte-level BPE
tokenizer trained on the fly on the demo schema, questions and SQL; it has ChatML special tokens and
chat template, with `<|im_end|>` as eos, like SmolLM2-Instruct. `make_project` writes a project
(text2sql.yaml, schemas/ copied from a built demo project, datasets/demo/pairs.jsonl) that trains on it.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import json
import shutil
import tempfile
from pathlib import Path

CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

# (question, sql, split) over the demo lakehouse's schema.
PAIRS = [
    ("How many customers are there?", "SELECT count(*) FROM core.customers", "train"),
    ("How many stores are there?", "SELECT count(*) FROM core.stores", "train"),
    ("How many products are there?", "SELECT count(*) FROM core.products", "train"),
    ("How many promotions are there?", "SELECT count(*) FROM marketing.promotions", "train"),
    ("List the names of all stores.", "SELECT store_name FROM core.stores", "train"),
    ("List every product category.", "SELECT DISTINCT category FROM core.products", "train"),
    ("How many orders were cancelled?", "SELECT count(*) FROM sales.orders WHERE status = 'cancelled'", "train"),
    ("What is the total refund amount?", "SELECT sum(refund_amount) FROM sales.returns", "train"),
    ("How many online stores are there?", "SELECT count(*) FROM core.stores WHERE channel = 'online'", "dev"),
    ("How many gold tier customers are there?", "SELECT count(*) FROM core.customers WHERE loyalty_tier = 'gold'", "dev"),
    ("How many returns are there?", "SELECT count(*) FROM sales.returns", "test"),
    ("List the promotion codes.", "SELECT promo_code FROM marketing.promotions", "test"),
    ("How many order lines are there?", "SELECT count(*) FROM sales.order_lines", "test"),
]


@contextlib.contextmanager
def one_torch_thread():
    """Run torch on one thread: as fast for a tiny model, and two OpenMP threads slow down 5x whenever
    another process holds a core (a server under test, a parallel job)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def pair_records(pairs=PAIRS) -> list[dict]:
    """pairs.jsonl records in the data contract's shape."""
    return [
        {"id": f"p-{i:010x}", "question": q, "sql": s, "db": None, "tags": [], "difficulty": "easy",
         "author": "test", "created": "2026-11-28", "notes": "", "split": split, "forced": False}
        for i, (q, s, split) in enumerate(pairs)
    ]


@functools.cache
def tiny_model_dir(schemas_dir: str | None = None) -> Path:
    """A saved tiny Llama + tokenizer (built once per process); the tokenizer also learns the schema DDL."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    out = Path(tempfile.mkdtemp(prefix="tiny-llama-"))
    atexit.register(shutil.rmtree, out, ignore_errors=True)
    corpus = [q for q, _, _ in PAIRS] + [s for _, s, _ in PAIRS]
    if schemas_dir:
        corpus += [p.read_text() for p in sorted(Path(schemas_dir).rglob("*.sql"))]
    corpus += ["You write one DuckDB SQL query that answers the user's question, using only the tables below."]

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=1024, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    bpe.train_from_iterator(corpus * 3, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|endoftext|>", chat_template=CHATML_TEMPLATE,
    )
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, bos_token_id=None,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def make_project(root: Path, schemas_from: Path, model_dir: Path, pairs=PAIRS) -> Path:
    """A project that trains `model_dir` on `pairs` against the schemas/ of a built demo project; returns text2sql.yaml."""
    root.mkdir(parents=True, exist_ok=True)
    shutil.copytree(Path(schemas_from) / "schemas", root / "schemas")
    data = root / "datasets" / "demo"
    data.mkdir(parents=True)
    (data / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in pair_records(pairs)))
    path = root / "text2sql.yaml"
    path.write_text(
        f"model:\n  base: {model_dir}\n"
        "prompt:\n  max_schema_tokens: 256\n"
        "train:\n  method: lora\n  max_steps: 6\n  per_device_train_batch_size: 4\n  learning_rate: 0.01\n"
        "  warmup_ratio: 0.0\n  logging_steps: 1\n  eval_steps: 3\n  save_steps: 3\n  lora_r: 8\n  lora_alpha: 16\n"
        "  lora_dropout: 0.0\n  max_length: 1024\n"
        "generate:\n  max_new_tokens: 16\n  batch_size: 4\n"
    )
    return path
