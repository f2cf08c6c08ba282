"""The one prompt builder: schema DDL + question (+ retrieved examples) -> chat messages.

Training, `predict`, `eval --model` and `serve` all build their inputs here and render them with
`render_prompt`, so the model sees at inference exactly the text it was trained on. A training record
is TRL's conversational prompt-completion format; TRL applies the chat template, whose assistant turn
ends with the end-of-turn token (`<|im_end|>` for ChatML), so that token lies inside the loss mask.

No heavy imports: a tokenizer, when given, is only used to count tokens and render the chat template.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from text2sql.catalog import SchemaSnapshot
    from text2sql.config import PromptConfig

INSTRUCTIONS = (
    "You write one DuckDB SQL query that answers the user's question, using only the tables below. "
    "Reply with the SQL query only, no explanation."
)
PROMPT_FILE = "prompt.json"
"""Prompt settings saved in every run/merged dir, so predict and serve rebuild the training prompt."""

# Words that name many columns (order_id, created_at, ...) and so say nothing about which table is meant.
_GENERIC_WORDS = frozenset({"id", "at", "by", "of", "to", "is", "on", "in", "name", "date", "type", "code", "key", "no"})
_WORD = re.compile(r"[a-z0-9]+")


def build_messages(
    question: str,
    snapshot: SchemaSnapshot,
    cfg: PromptConfig,
    tokenizer: Any = None,
    examples: Iterable[Any] = (),
) -> list[dict[str, str]]:
    """Chat messages for one question: system = instructions + schema DDL; earlier turns = examples; user = question.

    Args:
        question: the natural-language question.
        snapshot: the schema (a `SchemaSnapshot`); only the tables `select_tables` keeps are shown.
        cfg: the prompt section of the config (schema budget, extra system text).
        tokenizer: counts schema tokens for the budget; without one, 4 characters count as a token.
            Pass the same tokenizer everywhere (train, predict, serve) or the pruning may differ.
        examples: pairs (anything with `.question` and `.sql`) shown as earlier user/assistant turns.

    >>> from text2sql.catalog import Column, SchemaSnapshot, TableSnapshot
    >>> from text2sql.config import PromptConfig
    >>> t = TableSnapshot("core.stores", "CREATE TABLE core.stores (id INTEGER);", [Column("id", "INTEGER")])
    >>> msgs = build_messages("How many stores?", SchemaSnapshot("demo", {"core.stores": t}, "x"), PromptConfig())
    >>> [m["role"] for m in msgs], msgs[-1]["content"]
    (['system', 'user'], 'How many stores?')
    """
    count = _token_counter(tokenizer)
    tables = select_tables(question, snapshot, cfg.max_schema_tokens, count)
    system = INSTRUCTIONS + (f"\n{cfg.system.strip()}" if cfg.system.strip() else "")
    system += "\n\n" + snapshot.ddl(tables)
    messages = [{"role": "system", "content": system}]
    for ex in examples:
        messages.append({"role": "user", "content": ex.question.strip()})
        messages.append({"role": "assistant", "content": ex.sql.strip()})
    messages.append({"role": "user", "content": question.strip()})
    return messages


def build_example(
    pair: Any,
    snapshot: SchemaSnapshot,
    cfg: PromptConfig,
    tokenizer: Any = None,
    examples: Iterable[Any] = (),
) -> dict[str, list[dict[str, str]]]:
    """A training record in TRL's conversational prompt-completion format.

    The completion is the gold SQL as the assistant turn; the chat template closes it with the
    end-of-turn token, which TRL keeps inside the completion (loss) mask.
    """
    return {
        "prompt": build_messages(pair.question, snapshot, cfg, tokenizer, examples),
        "completion": [{"role": "assistant", "content": pair.sql.strip()}],
    }


def render_prompt(tokenizer: Any, messages: list[dict[str, str]]) -> str:
    """The exact text the model sees before it writes its reply (chat template + generation prompt).

    Tokenize it with `add_special_tokens=False`: the template already holds every special token.
    """
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def select_tables(
    question: str,
    snapshot: SchemaSnapshot,
    max_tokens: int,
    count_tokens: Callable[[str], int] = lambda text: math.ceil(len(text) / 4),
) -> list[str]:
    """Tables whose DDL goes into the prompt, in name order. Deterministic.

    When the whole schema fits in `max_tokens`, every table is kept. Otherwise tables are ranked and
    added in rank order while they fit (a table too big for what is left is skipped, smaller ones
    after it may still fit; the first-ranked table is always kept):
      1. tables the question names: score = 2 x (question words equal to a word of the table name)
         + (question words equal to a column name or a non-generic word of one); highest first,
         ties by name;
      2. their join neighbours (`TableSnapshot.references`, both directions), by name;
      3. every other table, by name.
    Words are lower-cased alphanumeric runs with a plural `s`/`ies` folded, so "customers" matches
    `customer` and "categories" matches `category`.

    >>> from text2sql.catalog import Column, SchemaSnapshot, TableSnapshot
    >>> def t(name, cols, refs=()): return TableSnapshot(name, "x" * 400, [Column(c, "INT") for c in cols], references=list(refs))
    >>> snap = SchemaSnapshot("d", {"a.stores": t("a.stores", ["store_id"]),
    ...     "a.orders": t("a.orders", ["order_id", "customer_id"], [("customer_id", "a.customers", "customer_id")]),
    ...     "a.customers": t("a.customers", ["customer_id"]), "a.zones": t("a.zones", ["zone_id"])}, "f")
    >>> select_tables("How many orders are there?", snap, max_tokens=200)
    ['a.customers', 'a.orders']
    """
    names = sorted(snapshot.tables)
    sizes = {n: count_tokens(snapshot.tables[n].ddl.strip()) for n in names}
    if sum(sizes.values()) <= max_tokens:
        return names
    words = set(_words(question))
    scores = {n: _match_score(words, snapshot.tables[n]) for n in names}
    matched = sorted((n for n in names if scores[n] > 0), key=lambda n: (-scores[n], n))
    neighbours = sorted({m for n in matched for m in _neighbours(snapshot, n)} - set(matched))
    ranked = matched + neighbours + [n for n in names if n not in matched and n not in neighbours]
    kept, used = [], 0
    for name in ranked:
        if not kept or used + sizes[name] <= max_tokens:
            kept.append(name)
            used += sizes[name]
    return sorted(kept)


class ExampleIndex:
    """BM25 retrieval of the train pairs most similar to a question, for k-shot prompts. Deterministic.

    >>> from types import SimpleNamespace as P
    >>> idx = ExampleIndex([P(id="1", question="total sales by store", sql="...", db=None),
    ...                     P(id="2", question="number of customers", sql="...", db=None)])
    >>> [p.id for p in idx.search("How many customers are there?", k=1)]
    ['2']
    """

    def __init__(self, pairs: Sequence[Any], k1: float = 1.2, b: float = 0.75):
        self.pairs = list(pairs)
        self.k1, self.b = k1, b
        self._docs = [Counter(_words(p.question)) for p in self.pairs]
        lengths = [sum(d.values()) for d in self._docs]
        self._avg_len = (sum(lengths) / len(lengths)) if lengths else 1.0
        df = Counter(w for d in self._docs for w in d)
        n = len(self._docs)
        self._idf = {w: math.log(1 + (n - f + 0.5) / (f + 0.5)) for w, f in df.items()}

    def search(self, question: str, k: int, db: str | None = None, exclude_id: str | None = None) -> list[Any]:
        """The k best-scoring pairs of the same db (ties: by id), leaving out `exclude_id` and the question itself."""
        if k <= 0:
            return []
        query = set(_words(question))
        norm_q = " ".join(_words(question))
        scored = []
        for pair, doc in zip(self.pairs, self._docs):
            if getattr(pair, "db", None) != db or pair.id == exclude_id:
                continue
            if " ".join(_words(pair.question)) == norm_q:  # never show the model its own answer
                continue
            length = sum(doc.values())
            score = sum(
                self._idf[w] * doc[w] * (self.k1 + 1) / (doc[w] + self.k1 * (1 - self.b + self.b * length / self._avg_len))
                for w in query if w in doc
            )
            scored.append((-score, str(pair.id), pair))
        scored.sort(key=lambda s: s[:2])
        return [p for _, _, p in scored[:k]]


def save_prompt_settings(directory: Path, cfg: PromptConfig, dataset: str) -> Path:
    """Write prompt.json (the prompt section + the dataset k-shot examples come from) into a run dir."""
    path = Path(directory) / PROMPT_FILE
    payload = {"prompt": dataclasses.asdict(cfg), "instructions": INSTRUCTIONS, "dataset": dataset}
    path.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
    return path


def load_prompt_settings(directory: Path, default: PromptConfig) -> tuple[PromptConfig, str | None]:
    """The prompt settings a model was trained with (and its dataset), or `default` for a plain base model."""
    from text2sql.config import PromptConfig

    path = Path(directory) / PROMPT_FILE
    if not path.is_file():
        return default, None
    payload = json.loads(path.read_text())
    return PromptConfig(**payload["prompt"]), payload.get("dataset")


def _words(text: str) -> list[str]:
    return [_fold_plural(w) for w in _WORD.findall(text.lower())]


def _fold_plural(word: str) -> str:
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 3 and word.endswith("s") and not word.endswith("ss"):
        return word[:-1]
    return word


def _match_score(words: set[str], table: Any) -> int:
    bare = table.name.split(".")[-1]
    name_hits = len(words & set(_words(bare.replace("_", " "))))
    column_words = set()
    for col in table.columns:
        column_words.add(col.name.lower())
        column_words.update(w for w in _words(col.name.replace("_", " ")) if w not in _GENERIC_WORDS)
    return 2 * name_hits + len(words & column_words)


def _neighbours(snapshot: SchemaSnapshot, name: str) -> set[str]:
    """Tables joined to `name` by a reference in either direction."""
    out = set()
    for _, other, _ in snapshot.tables[name].references:
        resolved = snapshot.resolve(other)
        if resolved:
            out.add(resolved)
    for other_name, other in snapshot.tables.items():
        if any(snapshot.resolve(target) == name for _, target, _ in other.references):
            out.add(other_name)
    out.discard(name)
    return out


def _token_counter(tokenizer: Any) -> Callable[[str], int]:
    if tokenizer is None:
        return lambda text: math.ceil(len(text) / 4)
    return lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])
