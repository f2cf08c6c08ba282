"""Batched greedy generation with a base model, an adapter run dir or a merged dir; `predict` to JSONL.

The prompt is rebuilt with the settings the model was trained with (its `prompt.json`), by
`text2sql.prompt.PromptBuilder`, so predict and serve feed the model the text it was trained on. Generation runs
in eval mode with the KV cache on (a model left in training mode, dropout active, writes garbage),
left-padded batches of similar lengths, stopping at the end-of-turn token.
"""

from __future__ import annotations

import json
import sys
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from text2sql.data import by_database, load_pairs, question_subset
from text2sql.engine import MIN_CACHED_PREFIX, PREFIX_CACHES, DecodeEngine, Request, common_prefix_len
from text2sql.errors import MODEL_PACKAGES, ModelError, require_all
from text2sql.files import write_atomic
from text2sql.models import adapter_base, resolve_model_dir, set_end_of_turn
from text2sql.progress import progress_bar
from text2sql.prompt import (PromptBuilder, PromptSettings, correction_messages, model_prompt_settings, render_prompt,
                             shared_system_head, worth_retrying)
from text2sql.select import open_target, select_candidates
from text2sql.warehouse import QueryRunner, extract_sql as extract

if TYPE_CHECKING:
    from text2sql.config import Config, PromptConfig


@dataclass
class Generator:
    model: Any
    tokenizer: Any
    model_dir: Path | None = None
    kind: str = "model"
    """base | adapter | merged | full (a run trained with method full) | model (built in memory)."""
    prompt: PromptConfig | None = None
    """Prompt settings to build inputs with: the model's own (prompt.json) or the project's."""
    dataset: str | None = None
    """Dataset whose train split supplied k-shot examples in training."""
    batch_size: int = 16
    max_new_tokens: int = 512
    prefix_cache: bool = True
    settings: PromptSettings | None = None
    """What the model's prompt is made of (`prompt.model_prompt_settings`); `prompt` and `dataset` are parts of it."""
    decoding: str = "eager"
    """eager (transformers' `generate` per batch) | static (`text2sql.engine`: static KV cache, per-step admission,
    CUDA graphs on CUDA); `load_generator` resolves `generate.decoding: auto`."""
    stats: dict[str, float] = field(default_factory=dict)
    _prefixes: OrderedDict = field(default_factory=OrderedDict, repr=False)
    """KV caches of the latest shared prefixes (token ids -> cache), most recent last."""
    _engines: dict = field(default_factory=dict, repr=False)
    """Static-decoding engines by slot count (predict's batch size, the server's max_batch_size)."""

    def unload(self) -> None:
        """Free the model, its decode engines and KV caches, so another model gets the memory."""
        import gc

        import torch

        self._engines.clear()
        self._prefixes.clear()
        self.model = None
        gc.collect()
        if torch.cuda.is_available():
            torch._dynamo.reset()  # compiled engines keep the model's graphs
            torch.cuda.empty_cache()


def load_generator(model_dir: str | Path, cfg: Config) -> Generator:
    """Load a model for generation: a base model (dir or known name), an adapter run/checkpoint dir, or a merged dir.

    Raises:
        ModelError: the path is none of these, or an adapter's base model is missing.
    """
    require_all(MODEL_PACKAGES, "train")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_model_dir(cfg, model_dir)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = generation_dtype(cfg.generate.dtype, device)
    if (path / "adapter_config.json").is_file():
        from peft import PeftModel

        base = AutoModelForCausalLM.from_pretrained(adapter_base(path), dtype=dtype).to(device)
        model, kind = PeftModel.from_pretrained(base, path), "adapter"
    elif (path / "config.json").is_file():
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device)
        kind = "merged" if (path / "run_manifest.json").is_file() else "full" if (path / "manifest.json").is_file() else "base"
    else:
        raise ModelError(f"{path} is not a model dir (config.json), an adapter run dir (adapter_config.json) or a known model name")
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(path if _has_tokenizer(path) else adapter_base(path))
    set_end_of_turn(tokenizer, model)
    settings = model_prompt_settings(path, cfg.prompt)
    decoding = cfg.generate.decoding
    if decoding == "auto":
        decoding = "static" if device == "cuda" else "eager"
    return Generator(model, tokenizer, path, kind, settings.prompt, settings.dataset, cfg.generate.batch_size,
                     cfg.generate.max_new_tokens, cfg.generate.prefix_cache, settings=settings, decoding=decoding)


def generation_dtype(setting: str, device: str):
    """`generate.dtype` as a torch dtype; auto: bfloat16 on CUDA and on a CPU with bfloat16 units, else float32
    (without those units a CPU emulates bfloat16 matmuls: not measured here, so not chosen)."""
    import torch

    if setting == "auto":
        units = any(getattr(torch.cpu, probe, lambda: False)() for probe in ("_is_amx_tile_supported",
                                                                             "_is_avx512_bf16_supported"))
        setting = "bfloat16" if device == "cuda" or units else "float32"
    return getattr(torch, setting)


def decode_engine(gen: Generator, max_batch_size: int | None = None):
    """The generator's static-decoding engine with this many slots (built once; compiled on CUDA)."""
    slots = max_batch_size or gen.batch_size
    if slots not in gen._engines:
        compile = next(gen.model.parameters()).device.type == "cuda"
        gen._engines[slots] = DecodeEngine(gen.model, gen.tokenizer.eos_token_id, slots, compile, gen._prefixes)
    return gen._engines[slots]


def encode_chats(gen: Generator, messages: list[list[dict[str, str]]]) -> tuple[list[list[int]], list[int]]:
    """Token ids of each rendered chat, and how many of its leading tokens come before the question (0 with the
    prefix cache off)."""
    tok = gen.tokenizer
    ids = [tok(render_prompt(tok, m), add_special_tokens=False)["input_ids"] for m in messages]
    # Where each prompt stops being shared: its tokens before the question (system message, schema, ...).
    heads: dict[str, list[int]] = {}  # one rendering per distinct system message, not one per prompt
    shared = [_question_start(tok, m, row, heads) for m, row in zip(messages, ids)] if gen.prefix_cache else [0] * len(ids)
    return ids, shared


@dataclass(frozen=True)
class Sampling:
    """Sampled instead of greedy decoding (the extra candidates of `generate_candidates`)."""

    temperature: float = 0.7
    top_p: float = 0.95
    seed: int = 0


@dataclass(frozen=True)
class Candidate:
    """One reply to a question: its raw text, the SQL in it, and the model's log-probability of the reply."""

    raw: str
    sql: str | None
    logprob: float
    """Sum of the log-probabilities of the reply's tokens (up to and with its eos), under the model's own
    distribution (before temperature and top-p)."""

    def to_json(self) -> dict[str, Any]:
        return {"sql": self.sql, "raw": self.raw, "logprob": round(self.logprob, 4)}


def generate(gen: Generator, messages: list[list[dict[str, str]]], max_new_tokens: int | None = None,
             sampling: Sampling | None = None, logprobs: bool = False,
             on_batch: Callable[[int], Any] | None = None) -> list[str]:
    """Greedy (or, with `sampling`, sampled) replies, one per chat, in batches (KV cache, stop at eos); special
    tokens dropped. With `logprobs`, each reply's log-probability goes to `gen.stats["logprobs"]`.

    `on_batch(n)` is called after each batch with its size (predict's progress bar).

    The part of the prompts a batch shares (system message, schema) comes from a kept KV cache when
    `gen.prefix_cache` is on; the pads go after it, so every reply still follows its prompt directly.
    With `gen.decoding` static, `text2sql.engine` decodes greedy replies instead (same replies); sampled
    candidates and log-probabilities still come from this eager path.
    """
    import time

    import torch
    from transformers import GenerationConfig

    if not messages:
        return []
    if gen.decoding == "static" and sampling is None and not logprobs:
        return _generate_static(gen, messages, max_new_tokens or gen.max_new_tokens)
    tok, model = gen.tokenizer, gen.model
    ids, shared = encode_chats(gen, messages)
    config = GenerationConfig(
        max_new_tokens=max_new_tokens or gen.max_new_tokens, do_sample=False, use_cache=True,
        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )
    if sampling is not None:
        config.update(do_sample=True, temperature=sampling.temperature, top_p=sampling.top_p, top_k=0)
        torch.manual_seed(sampling.seed)  # batches run in a fixed order: one seed fixes every sample
    # Longest first, so each batch holds prompts of similar length (less padding) and memory peaks early.
    order = sorted(range(len(ids)), key=lambda i: (-len(ids[i]), i))
    replies: list[str] = [""] * len(ids)
    scores: list[float] = [0.0] * len(ids)
    model.eval()
    device = next(model.parameters()).device
    started, new_tokens = time.perf_counter(), 0
    with torch.inference_mode():
        for start in range(0, len(order), gen.batch_size):
            batch = order[start:start + gen.batch_size]
            rows = [ids[i] for i in batch]
            prefix_len = min(common_prefix_len(rows), *(shared[i] for i in batch))
            if prefix_len < MIN_CACHED_PREFIX:
                prefix_len = 0
            input_ids, mask = _pad(rows, tok.pad_token_id, prefix_len, device)
            processors = [_ReplyLogprob(tok.eos_token_id)] if logprobs else []
            if prefix_len:
                out = _generate_with_prefix(gen, input_ids, mask, tuple(rows[0][:prefix_len]), config, processors)
            else:
                out = model.generate(input_ids=input_ids, attention_mask=mask, generation_config=config,
                                     logits_processor=processors)
            generated = out[:, input_ids.shape[1]:]
            new_tokens += int((generated != tok.pad_token_id).sum())
            summed = processors[0].finish(out).tolist() if logprobs else [0.0] * len(batch)
            for i, row, logprob in zip(batch, generated, summed):
                replies[i] = tok.decode(row, skip_special_tokens=True, clean_up_tokenization_spaces=False)
                scores[i] = logprob
            if on_batch:
                on_batch(len(batch))
    gen.stats = {"seconds": time.perf_counter() - started, "new_tokens": new_tokens, "prompts": len(ids),
                 "prompt_tokens": [len(r) for r in ids], **({"logprobs": scores} if logprobs else {})}
    return replies


def generate_candidates(gen: Generator, messages: list[list[dict[str, str]]], num_candidates: int,
                        sampling: Sampling, max_new_tokens: int | None = None) -> list[list[Candidate]]:
    """`num_candidates` replies per chat: the greedy one first, then `num_candidates - 1` samples (seeded).

    `gen.stats` then covers both passes (seconds, new tokens, prompts = questions).
    """
    import time

    started = time.perf_counter()
    greedy = generate(gen, messages, max_new_tokens, logprobs=True)
    stats = dict(gen.stats)
    out = [[Candidate(raw, extract_sql(raw), lp)] for raw, lp in zip(greedy, stats["logprobs"])]
    extra = num_candidates - 1
    if extra > 0 and messages:
        repeated = [m for m in messages for _ in range(extra)]
        sampled = generate(gen, repeated, max_new_tokens, sampling, logprobs=True)
        for k, (raw, lp) in enumerate(zip(sampled, gen.stats["logprobs"])):
            out[k // extra].append(Candidate(raw, extract_sql(raw), lp))
        stats["new_tokens"] += gen.stats["new_tokens"]
    stats.update(seconds=time.perf_counter() - started, greedy_seconds=stats["seconds"], candidates=num_candidates)
    gen.stats = stats
    return out


class _ReplyLogprob:
    """A logits processor that sums, per row, the log-probability of each generated token up to and with eos.

    It sees the model's logits before temperature and top-p (generate applies those after the processors it is
    given), keeps the last step's log-softmax, and scores the token chosen from it at the next step (or in
    `finish`, for the last one). One [batch, vocab] tensor at a time, unlike `output_scores`.
    """

    def __init__(self, eos_token_id: int) -> None:
        self.eos = eos_token_id
        self.previous = None
        self.total = None
        self.alive = None

    def _score(self, chosen) -> None:
        import torch

        if self.previous is None:
            return
        step = self.previous.gather(1, chosen[:, None]).squeeze(1)
        self.total += torch.where(self.alive, step, torch.zeros_like(step))
        self.alive &= chosen != self.eos

    def __call__(self, input_ids, scores):
        import torch

        if self.total is None:
            self.total = torch.zeros(scores.shape[0], dtype=torch.float32, device=scores.device)
            self.alive = torch.ones(scores.shape[0], dtype=torch.bool, device=scores.device)
        self._score(input_ids[:, -1])
        self.previous = torch.log_softmax(scores.float(), dim=-1)
        return scores

    def finish(self, sequences):
        """The sums, once generate has returned `sequences` (whose last column is the last chosen token)."""
        import torch

        if self.total is None:
            return torch.zeros(sequences.shape[0])
        self._score(sequences[:, -1])
        self.previous = None
        return self.total.cpu()


def _generate_static(gen: Generator, messages: list[list[dict[str, str]]], max_new_tokens: int) -> list[str]:
    """`generate` through the static-cache engine: every prompt queued at once, each joining the decode batch as
    a slot frees up."""
    import time

    gen.model.eval()
    ids, shared = encode_chats(gen, messages)
    started = time.perf_counter()
    requests = [Request(row, max_new_tokens, shared=n) for row, n in zip(ids, shared)]
    engine = decode_engine(gen)
    before = engine.account()
    engine.run(requests)
    spent = {key: value - before[key] for key, value in engine.account().items()}
    tok = gen.tokenizer
    replies = [tok.decode(r.outputs[0], skip_special_tokens=True, clean_up_tokenization_spaces=False) for r in requests]
    gen.stats = {"seconds": time.perf_counter() - started, "new_tokens": sum(len(r.outputs[0]) for r in requests),
                 "prompts": len(ids), "prompt_tokens": [len(r) for r in ids],
                 "warmup_seconds": spent["warmup_s"], "decode_steps": spent["steps"],
                 "decode_seconds": spent["decode_s"], "prefill_seconds": spent["prefill_s"],
                 "prefills": spent["prefills"], "prefill_forward_seconds": spent["prefill_forward_s"],
                 "prefill_tokens": spent["prefill_tokens"]}
    return replies


def _question_start(tok, messages: list[dict[str, str]], row: list[int], heads: dict[str, list[int]]) -> int:
    """How many leading tokens of `row` (these messages, rendered) other questions share: the system message up
    to the definitions chosen for this question (instructions, schema; `shared_system_head`), the same for every
    question, and for a retry of that question too. `heads` keeps the rendered head of each system message seen."""
    system = messages[0]["content"] if messages and messages[0]["role"] == "system" else None
    key = shared_system_head(system) if system is not None else ""
    if key not in heads:
        head = [{"role": "system", "content": key}] if system is not None else []
        heads[key] = tok(render_prompt(tok, [*head, {"role": "user", "content": ""}]), add_special_tokens=False)["input_ids"]
    return common_prefix_len([row, heads[key]])


def _pad(rows: list[list[int]], pad_id: int, prefix_len: int, device):
    """One tensor for the batch. The pads go right after the shared prefix (before it when there is none), so
    each reply follows its prompt directly and the prefix sits at the same positions in every row; position
    ids come from the attention mask, so the pads take no positions."""
    import torch

    width = max(len(r) for r in rows)
    input_ids, mask = [], []
    for r in rows:
        n = width - len(r)
        input_ids.append(r[:prefix_len] + [pad_id] * n + r[prefix_len:])
        mask.append([1] * prefix_len + [0] * n + [1] * (len(r) - prefix_len))
    return torch.tensor(input_ids, device=device), torch.tensor(mask, device=device)


def _cache_argument(model) -> str:
    """`generate`'s name for a prefilled cache: `cache` since transformers 5.2x, `past_key_values` before."""
    import inspect

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(base.prepare_inputs_for_generation).parameters else "past_key_values"


def _generate_with_prefix(gen: Generator, input_ids, mask, prefix: tuple[int, ...], config, processors=()):
    """`generate` on rows that all start with `prefix`: from its cached KV when there is one, else with a fresh
    cache that is then cut back to the prefix (row 0) and kept, so a miss costs no extra prefill."""
    import copy

    from transformers import DynamicCache

    model, argument = gen.model, _cache_argument(gen.model)
    kept = gen._prefixes.get(prefix)
    if kept is not None:
        gen._prefixes.move_to_end(prefix)
        cache = copy.deepcopy(kept)  # generate extends the cache it is given: keep the original clean
        if input_ids.shape[0] > 1:
            cache.batch_repeat_interleave(input_ids.shape[0])
        return model.generate(input_ids=input_ids, attention_mask=mask, generation_config=config,
                              logits_processor=list(processors), **{argument: cache})
    cache = DynamicCache()
    out = model.generate(input_ids=input_ids, attention_mask=mask, generation_config=config,
                         logits_processor=list(processors), **{argument: cache})
    if input_ids.shape[0] > 1:
        import torch

        cache.batch_select_indices(torch.tensor([0], device=input_ids.device))
    cache.crop(len(prefix) - cache.get_seq_length())  # negative: drop that many (transformers 5.2x takes no length)
    gen._prefixes[prefix] = cache
    while len(gen._prefixes) > PREFIX_CACHES:
        gen._prefixes.popitem(last=False)
    return out


def extract_sql(text: str) -> str | None:
    """The SQL in a model reply, as eval and serve judge it (`warehouse.judge_reply`): a fenced block's content if
    there is one, else the reply from its first statement on, without a trailing `;`. More than one statement
    is kept whole, never cut down to its first query (so `DROP TABLE t; SELECT ...` stays what it is, and
    `DELETE FROM t` is not turned into `FROM t`). None when the reply holds no SQL.

    >>> extract_sql("Here you go:\\n```sql\\nSELECT 1;\\n```\\nThis returns 1.")
    'SELECT 1'
    >>> extract_sql("SELECT name FROM t WHERE x = 'a;b'; DROP TABLE t")
    "SELECT name FROM t WHERE x = 'a;b'; DROP TABLE t"
    >>> extract_sql("We have 10 customers.") is None
    True
    """
    return extract(text)


def predict(cfg: Config, model_dir: str | Path, split: str = "test", out: str | Path | None = None,
            dataset: str | None = None, strict: bool = False, select: bool = False) -> Path:
    """Generate SQL for every pair of a split (or the subset `eval.max_questions` picks, `data.question_subset`);
    writes JSONL {id, sql, raw} and returns its path.

    With `generate.num_candidates` > 1 each record also holds `candidates: [{sql, raw, logprob}]` (the greedy
    reply first, then the samples) and `sql` is the greedy one; `select` (needs the warehouse) then picks the
    answer here (`text2sql.select`): `sql` becomes it, `greedy_sql` keeps the greedy one and `selection` says
    why. Otherwise `eval --predictions` selects. Timing goes to `<out stem>.stats.json` beside the JSONL.

    Default output: `<model_dir>/predictions/<dataset>-<split>.jsonl` (for a known model name, under
    `model.models_dir`). Raises DataError for a missing split, ModelError for an unusable model,
    SchemaSnapshotError with `strict` when schemas/ changed since the model was trained.
    """
    require_all(MODEL_PACKAGES, "train")  # before the pairs are read: a missing package is the first thing to say
    n, retries = cfg.generate.num_candidates, cfg.generate.retries
    dataset = dataset or cfg.data.dataset
    every = load_pairs(cfg, dataset, split)
    pairs = question_subset(every, cfg.eval.max_questions)
    gen = load_generator(model_dir, cfg)
    messages = prompts_for(cfg, gen, pairs, dataset, strict=strict)
    trained_on = gen.settings.example_splits if gen.settings and gen.settings.source else ()  # a base model: none
    if split in trained_on:  # train.splits: train+dev
        print(f"predict: WARNING: {gen.model_dir} was trained on the {split} split: its {split} EX measures nothing",
              file=sys.stderr)
    if len(pairs) < len(every):
        print(f"predict: A SUBSET: {len(pairs)} of the {len(every)} {dataset}/{split} questions, evenly spaced "
              f"(eval.max_questions={cfg.eval.max_questions})", file=sys.stderr)
    print(f"predict: {len(pairs)} {dataset}/{split} questions with the {gen.kind} model {gen.model_dir}"
          f" ({gen.prompt.k_shot}-shot, batch {gen.batch_size}"
          + (f", {n} candidates each" if n > 1 else "") + ")", file=sys.stderr)
    if n > 1:
        g = cfg.generate
        candidates = generate_candidates(gen, messages, n, Sampling(g.temperature, g.top_p, g.seed))
        records = [{"id": pair.id, "sql": c[0].sql, "raw": c[0].raw, "candidates": [x.to_json() for x in c]}
                   for pair, c in zip(pairs, candidates)]
        if select or retries:  # the retries correct the selected answer (they need the warehouse anyway)
            _select_in_predict(cfg, pairs, records, candidates, dataset)
    else:
        with progress_bar("predict", len(messages), "q") as advance:
            replies = generate(gen, messages, on_batch=advance)
        records = [{"id": pair.id, "sql": extract_sql(raw), "raw": raw} for pair, raw in zip(pairs, replies)]
    s = dict(gen.stats)
    cut = replies_at_limit(gen, [r["raw"] for r in records])
    if cut:
        print(f"predict: {cut} of {len(records)} replies used all generate.max_new_tokens={gen.max_new_tokens} tokens "
              "and may be cut off mid-query: raise generate.max_new_tokens", file=sys.stderr)
    if retries:
        retried = _self_correct(cfg, gen, pairs, messages, records, dataset, retries)
        s["seconds"] += gen.stats["retry_seconds"]
        s["new_tokens"] += gen.stats["new_tokens"]
        print(f"predict: {retried} of {len(records)} answers failed the check or the sandbox and were retried "
              f"(up to {retries} times each)", file=sys.stderr)
    out = Path(out) if out else gen.model_dir / "predictions" / f"{dataset}-{split}.jsonl"
    write_atomic(out, "".join(json.dumps(r) + "\n" for r in records))
    stats = {"questions": s["prompts"], "num_candidates": n, "seconds": round(s["seconds"], 3),
             "predictions_per_s": round(s["prompts"] / s["seconds"], 3) if s["seconds"] else None,
             "new_tokens_per_s": round(s["new_tokens"] / s["seconds"], 1) if s["seconds"] else None,
             "cut_at_max_new_tokens": cut}
    warmup = s.get("warmup_seconds", 0.0)
    if warmup:  # compiling the decode step is a process's one-time cost: say what decoding itself runs at
        stats.update(warmup_seconds=round(warmup, 3),
                     decode_predictions_per_s=round(s["prompts"] / (s["seconds"] - warmup), 3))
    if s.get("decode_steps"):  # the engine's account: where decoding's time went
        per_step = 1000 * s["decode_seconds"] / s["decode_steps"]
        stats.update(decode_steps=s["decode_steps"], ms_per_step=round(per_step, 3),
                     prefill_seconds=round(s["prefill_seconds"], 3), prefills=s["prefills"],
                     prefill_forward_seconds=round(s["prefill_forward_seconds"], 3), prefill_tokens=s["prefill_tokens"])
    if s.get("greedy_seconds"):  # the greedy pass alone: what the candidates cost on top of it
        stats["greedy_predictions_per_s"] = round(s["prompts"] / s["greedy_seconds"], 3)
    if retries:
        stats.update(retries=retries, retried=retried, retry_seconds=round(gen.stats["retry_seconds"], 3))
    write_atomic(stats_path(out), json.dumps(stats, indent=2) + "\n")
    print(f"predict: wrote {out} ({s['prompts'] / s['seconds']:.1f} predictions/s, "
          f"{s['new_tokens'] / s['seconds']:.0f} new tokens/s"
          + (f"; {stats['decode_predictions_per_s']:.1f}/s after {warmup:.1f} s compiling the decode step"
             if warmup else "") + ")", file=sys.stderr)
    gen.unload()  # the next model of an ensemble gets the memory
    return out


def replies_at_limit(gen: Generator, replies: list[str]) -> int:
    """How many replies used the whole reply budget (`gen.max_new_tokens`): stopped by the limit, not by the model.
    A finished reply ends with its end-of-turn token, which decoding drops, so it re-encodes to fewer tokens."""
    tok = gen.tokenizer
    return sum(len(tok(r, add_special_tokens=False)["input_ids"]) >= gen.max_new_tokens for r in replies)


def stats_path(predictions: str | Path) -> Path:
    """Where `predict` records the generation speed of a predictions file (read by `eval` for its report)."""
    return Path(predictions).with_suffix(".stats.json")


def _select_in_predict(cfg: Config, pairs: list, records: list[dict], candidates: list[list[Candidate]],
                       dataset: str) -> None:
    """Pick each question's answer among its candidates on the warehouse (lakehouse or the pair's database)."""
    for db, indexes in by_database(pairs).items():
        spec, snapshot = open_target(cfg, dataset, db)
        with QueryRunner.from_config(cfg, spec, workers=cfg.eval.workers or 0) as runner:
            chosen = select_candidates([candidates[i] for i in indexes], runner, snapshot)
        for i, selection in zip(indexes, chosen):
            records[i].update(greedy_sql=records[i]["sql"], sql=selection.sql, selection=selection.to_json())


def _self_correct(cfg: Config, gen: Generator, pairs: list, messages: list, records: list[dict], dataset: str,
                  retries: int) -> int:
    """Serve's retry loop, batched: each answer that fails the SQL check or the sandbox gets up to `retries` more
    greedy attempts, its failed SQL and error added to the chat (`prompt.correction_messages`), as
    `prompt.worth_retrying` decides (not a timeout). Each record keeps its failed attempts in `attempts`; `gen.stats`
    then holds the retries' seconds (retry_seconds) and new tokens. Returns how many answers were retried."""
    import time

    started, new_tokens, retried = time.perf_counter(), 0, set()
    for db, pending in by_database(pairs).items():
        spec, snapshot = open_target(cfg, dataset, db)
        chats = {i: messages[i] for i in pending}
        with QueryRunner.from_config(cfg, spec, workers=1, snapshot=snapshot) as runner:
            for _ in range(retries):
                judged = dict(runner.judge_and_run_each([records[i]["sql"] for i in pending], 1))
                failed = [(i, *why) for k, i in enumerate(pending)
                          if (why := _failure(records[i]["sql"], records[i]["raw"], *judged[k]))]
                if not failed:
                    break
                for i, sql, kind, message in failed:
                    chats[i] = correction_messages(chats[i], sql, kind, message)
                    records[i].setdefault("attempts", []).append({"sql": sql, "error_kind": kind, "error": message})
                replies = generate(gen, [chats[i] for i, *_ in failed])
                new_tokens += gen.stats["new_tokens"]
                for (i, *_), raw in zip(failed, replies):
                    records[i].update(sql=extract_sql(raw), raw=raw)
                    retried.add(i)
                pending = [i for i, *_ in failed]
    gen.stats = {"retry_seconds": time.perf_counter() - started, "new_tokens": new_tokens}
    return len(retried)


def _failure(sql: str | None, raw: str, judged: str | None, check, result) -> tuple[str, str, str] | None:
    """(what the chat shows as the failed reply, error kind, message) when `judge_and_run` found `sql` failing as
    eval judges it (the raw reply when it holds no SQL), else None."""
    if not check.ok:
        return (judged or sql or raw, check.kind or "no_sql", check.message or "the reply holds no SQL query")
    if not worth_retrying(result.error_kind):
        return None
    return judged, result.error_kind, result.error


def prompts_for(cfg: Config, gen: Generator, pairs: list, dataset: str,
                strict: bool = False) -> list[list[dict[str, str]]]:
    """Chat messages for pairs, built as in training (`prompt.PromptBuilder.for_model`): the model's prompt
    settings, schema by `pair.db`, k-shot examples from the train split of the dataset the model was trained on."""
    settings = gen.settings or PromptSettings(gen.prompt or cfg.prompt, dataset=gen.dataset)
    builder = PromptBuilder.for_model(cfg, settings, gen.tokenizer, dataset, strict=strict)
    return [builder.messages(p.question, p.db, p.id) for p in pairs]


def _has_tokenizer(path: Path) -> bool:
    return (path / "tokenizer_config.json").is_file() or (path / "tokenizer.json").is_file()
