"""The one prompt builder: schema DDL + business definitions + question (+ retrieved examples) -> chat messages.

`PromptBuilder` is the only place model input is built: training records (`record`), `predict` and
`eval --model` (`generate.prompts_for`) and `serve` all call it, and render with `render_prompt`, so the
model sees at inference exactly the text it was trained on. A training run saves what its prompt is
made of in `prompt.json` (`save_prompt_settings`: the prompt section, the instructions, the dataset and the
splits its k-shot examples come from, the business definitions themselves); `model_prompt_settings` reads
them back for a model dir, so an edit to `INSTRUCTIONS`, to the config or to definitions.yaml never changes
an old run's prompt.

A training record is TRL's conversational prompt-completion format; TRL applies the chat template,
whose assistant turn ends with the end-of-turn token (`<|im_end|>` for ChatML), so that token lies
inside the loss mask.

No heavy imports: a tokenizer, when given, is only used to count tokens and render the chat template.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import json
import math
import re
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from text2sql.catalog import SchemaSnapshot, load_snapshot
from text2sql.config import Config, PromptConfig
from text2sql.data import load_dataset, load_pairs
from text2sql.data.definitions import HEADER as DEFINITIONS_HEADER, Definitions, check_definitions, load_definitions
from text2sql.data.impact import RUN_MANIFESTS
from text2sql.errors import DataError, ModelError, SchemaSnapshotError
from text2sql.files import write_atomic


INSTRUCTIONS = (
    "You write one DuckDB SQL query that answers the user's question, using only the tables below. "
    "Reply with the SQL query only, no explanation."
)
PROMPT_FILE = "prompt.json"
"""Prompt settings saved in every run/merged dir, so predict and serve rebuild the training prompt."""

# Question words that say what to do, not what to read ("list the ..." must not pick `list_price`).
_QUESTION_STOPWORDS = frozenset(
    "a an the of in on at by for to from and or with without is are was were be been there their that this "
    "what which who whom how many much list show give find get return all every each per number count "
    "do does did have has had".split()
)
_WORD = re.compile(r"[a-z]+|[0-9]+")  # "FY2025" -> "fy", "2025"
_TERMS_CACHE: dict[tuple, tuple[dict, dict]] = {}


RETRY_PROMPT = "That query failed ({kind}): {message}\nWrite a corrected query. Reply with the SQL query only."
"""The user turn added after a failed attempt; the failed SQL is the assistant turn before it (serve's retry loop,
`predict` with generate.retries)."""


def correction_messages(messages: list[dict[str, str]], failed: str, kind: str, message: str) -> list[dict[str, str]]:
    """The chat for a self-correction attempt: the failed reply as the assistant turn, then the error as a user turn.

    >>> chat = correction_messages([{"role": "user", "content": "q"}], "SELECT nme FROM t", "unknown_column", "no nme")
    >>> [m["role"] for m in chat], chat[1]["content"], chat[2]["content"].splitlines()[0]
    (['user', 'assistant', 'user'], 'SELECT nme FROM t', 'That query failed (unknown_column): no nme')
    """
    return [*messages, {"role": "assistant", "content": failed},
            {"role": "user", "content": RETRY_PROMPT.format(kind=kind, message=message)}]


def worth_retrying(error_kind: str | None) -> bool:
    """Whether a failed answer gets a self-correction attempt (serve's retries, `generate.retries`): every failure
    but a timeout, since a second slow query doubles the wait and the model cannot fix "too slow".

    >>> worth_retrying("unknown_column"), worth_retrying("timeout"), worth_retrying(None)
    (True, False, False)
    """
    return error_kind is not None and error_kind != "timeout"


def build_messages(
    question: str,
    snapshot: SchemaSnapshot,
    cfg: PromptConfig,
    tokenizer: Any = None,
    examples: Iterable[Any] = (),
    definitions: Definitions | None = None,
    instructions: str = INSTRUCTIONS,
    count_tokens: Callable[[str], int] | None = None,
) -> list[dict[str, str]]:
    """Chat messages for one question: system = instructions + schema DDL + business definitions; earlier
    turns = examples; user = question. Use `PromptBuilder`, which fills in everything after `examples` the
    same way for training and inference.

    Args:
        question: the natural-language question.
        snapshot: the schema (a `SchemaSnapshot`); only the tables `select_tables` keeps are shown.
        cfg: the prompt section of the config (schema and definitions budgets, extra system text).
        tokenizer: counts tokens for the budgets; without one, 4 characters count as a token.
            Pass the same tokenizer everywhere (train, predict, serve) or the pruning may differ.
        examples: pairs (anything with `.question` and `.sql`) shown as earlier user/assistant turns.
        definitions: shown after the schema, within `cfg.max_definition_tokens` (none when `cfg.definitions`
            is false).
        instructions: the opening of the system message (a run's saved instructions).
        count_tokens: the token counter (default: from `tokenizer`); `PromptBuilder` passes a cached one.

    >>> from text2sql.catalog import Column, SchemaSnapshot, TableSnapshot
    >>> from text2sql.config import PromptConfig
    >>> t = TableSnapshot("core.stores", "CREATE TABLE core.stores (id INTEGER);", [Column("id", "INTEGER")])
    >>> msgs = build_messages("How many stores?", SchemaSnapshot("demo", {"core.stores": t}, "x"), PromptConfig())
    >>> [m["role"] for m in msgs], msgs[-1]["content"]
    (['system', 'user'], 'How many stores?')
    """
    count = count_tokens or _token_counter(tokenizer)
    tables = select_tables(question, snapshot, cfg.max_schema_tokens, count)
    system = instructions + (f"\n{cfg.system.strip()}" if cfg.system.strip() else "")
    system += "\n\n" + snapshot.ddl(tables)
    if definitions and cfg.definitions:
        text = definitions.render(question, cfg.max_definition_tokens, count)
        if text:
            system += "\n\n" + text
    messages = [{"role": "system", "content": system}]
    for ex in examples:
        messages.append({"role": "user", "content": ex.question.strip()})
        messages.append({"role": "assistant", "content": ex.sql.strip()})
    messages.append({"role": "user", "content": question.strip()})
    return messages


def shared_system_head(system: str) -> str:
    r"""The leading part of a system message `build_messages` wrote that other questions' share: all of it but the
    business definitions chosen for this question (their block's header, the same for every question, stays).

    The decode engine keeps the KV of this part once (its prefix cache). Cut at the whole message, a lone question
    kept a prefix no other question starts with: v0.16's server prefilled all ~2.5 k tokens of every request.

    >>> shared_system_head("Write SQL.\n\nCREATE TABLE t (a INT);\n\nBusiness definitions:\n- a: b")
    'Write SQL.\n\nCREATE TABLE t (a INT);\n\nBusiness definitions:\n'
    >>> shared_system_head("Write SQL.\n\nCREATE TABLE t (a INT);")
    'Write SQL.\n\nCREATE TABLE t (a INT);'
    """
    start = system.find("\n\n" + DEFINITIONS_HEADER)
    end = system.find("\n", start + 2) if start >= 0 else -1
    return system if end < 0 else system[:end + 1]


def build_example(pair: Any, messages: list[dict[str, str]]) -> dict[str, list[dict[str, str]]]:
    """A training record in TRL's conversational prompt-completion format: `messages` (the pair's prompt)
    and the gold SQL as the assistant turn.

    The chat template closes the completion with the end-of-turn token, which TRL keeps inside the
    completion (loss) mask.
    """
    return {"prompt": messages, "completion": [{"role": "assistant", "content": pair.sql.strip()}]}


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

    When the whole schema fits in `max_tokens`, every table is kept. Otherwise each table is scored
    against the question: the sum, over the question's distinct content words w (plus each two
    consecutive ones joined by `_`, which names columns such as `promo_code`), of weight x idf(w),
    where weight is 3 for a word of the table name, 2 for a column name or a word of one, 1 for a
    word of the namespace, the table comment or a column doc, and idf(w) = ln(1 + tables / tables
    having w). Tables are then added in this order while they fit (one too big for what is left is
    skipped; the first is always kept):
      1. tables with a positive score, highest first, ties by name;
      2. their join neighbours (`TableSnapshot.references`, both directions), by name;
      3. every other table, by name.
    Content words: lower-cased letter runs (numbers dropped), plural `s`/`ies` folded ("categories"
    matches `category`), question words such as "list", "how", "many" left out.

    Measured on the demo dataset (440 pairs, SmolLM2 tokenizer, whole schema 1,895 tokens): every
    table the gold SQL reads is kept for 79.5 % of questions at 1,024 tokens, 90.0 % at 1,280 and
    94.1 % at 1,536; the misses are business words the schema does not spell out ("revenue" needs
    sales.order_lines and sales.orders).

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
    terms, idf = _table_terms(snapshot)
    words = _content_words(question, numbers=False)
    query = set(words) | {f"{a}_{b}" for a, b in itertools.pairwise(words)}
    scores = {n: sum(terms[n][w] * idf[w] for w in query if w in terms[n]) for n in names}
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

    Scores content words (question stopwords dropped, plurals folded); ties go by pair id.

    >>> from types import SimpleNamespace as P
    >>> idx = ExampleIndex([P(id="1", question="total sales by store", sql="...", db=None),
    ...                     P(id="2", question="number of customers", sql="...", db=None)])
    >>> [p.id for p in idx.search("How many customers are there?", k=1)]
    ['2']
    """

    def __init__(self, pairs: Sequence[Any], k1: float = 1.2, b: float = 0.75):
        self.pairs = list(pairs)
        self.k1, self.b = k1, b
        self._docs = [Counter(_content_words(p.question)) for p in self.pairs]
        lengths = [sum(d.values()) for d in self._docs]
        self._avg_len = (sum(lengths) / len(lengths)) if lengths else 1.0
        df = Counter(w for d in self._docs for w in d)
        n = len(self._docs)
        self._idf = {w: math.log(1 + (n - f + 0.5) / (f + 0.5)) for w, f in df.items()}

    def search(self, question: str, k: int, db: str | None = None, exclude_id: str | None = None) -> list[Any]:
        """The k best-scoring pairs of the same db (ties: by id), leaving out `exclude_id` and the question itself."""
        if k <= 0:
            return []
        query = set(_content_words(question))
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


def schema_loader(cfg: Any, dataset: str) -> Callable[[str | None], SchemaSnapshot]:
    """The schema a pair is asked against, by `pair.db`, each read once.

    `None` is the project lakehouse (`schemas/`, via `catalog.load_snapshot`: files only, no catalog
    or DuckDB needed); a db id is a benchmark database of the dataset (its `dataset.yaml` databases),
    read with `SchemaSnapshot.from_duckdb`.
    """
    cache: dict[str | None, SchemaSnapshot] = {}

    def schema_for(db: str | None) -> SchemaSnapshot:
        if db not in cache:
            if db is None:
                cache[db] = load_snapshot(cfg)
            else:
                cache[db] = SchemaSnapshot.from_duckdb(load_dataset(cfg, dataset).database(db))
        return cache[db]

    return schema_for


@dataclass(frozen=True)
class PromptSettings:
    """What a model's prompt is made of; saved in a run dir's prompt.json and read back from it."""

    prompt: PromptConfig
    instructions: str = INSTRUCTIONS
    dataset: str | None = None
    """The dataset the model was trained on: its train split gives the k-shot examples."""
    definitions: Definitions | None = None
    """The business definitions the model was trained with (saved in prompt.json); None = a model without
    prompt.json (a base model): the builder reads the dataset's definitions.yaml."""
    source: Path | None = None
    """The prompt.json these came from; None = the project config."""
    schema_fingerprints: dict[str, str] = dataclasses.field(default_factory=dict)
    """Schema fingerprint per pair db ("None" = schemas/) the model was trained on, from the run manifest."""
    example_splits: tuple[str, ...] = ("train",)
    """The splits the model was trained on (`train.splits`): the k-shot examples come from them, as in training."""


def save_prompt_settings(directory: Path, cfg: PromptConfig, dataset: str, definitions: Definitions | None = None,
                         instructions: str | None = None, example_splits: tuple[str, ...] = ("train",)) -> Path:
    """Write prompt.json into a run dir: the prompt section, the instructions, the dataset the k-shot examples
    come from, and the business definitions themselves (with their file and fingerprint), so that predict and
    serve rebuild the training prompt byte for byte even after definitions.yaml or `INSTRUCTIONS` change."""
    path = Path(directory) / PROMPT_FILE
    defs = definitions if (definitions is not None and cfg.definitions) else Definitions()
    payload = {"prompt": dataclasses.asdict(cfg), "instructions": instructions or INSTRUCTIONS, "dataset": dataset,
               "definitions": defs.to_json(), "definitions_file": defs.source,
               "definitions_fingerprint": defs.fingerprint, "example_splits": list(example_splits)}
    write_atomic(path, json.dumps(payload, indent=2, sort_keys=True) + "\n")
    return path


def load_prompt_settings(directory: Path, default: PromptConfig) -> PromptSettings:
    """The prompt settings saved in `directory` (prompt.json), or `default` for a plain base model.

    A prompt.json older than the definitions (no `definitions` key) means a model trained without them; one
    without `instructions` was trained with today's `INSTRUCTIONS` (they were always saved).
    """
    path = Path(directory) / PROMPT_FILE
    if not path.is_file():
        return PromptSettings(default)
    try:
        payload = json.loads(path.read_text())
        known = {f.name for f in dataclasses.fields(PromptConfig)}
        prompt = PromptConfig(**{k: v for k, v in payload["prompt"].items() if k in known})
        definitions = Definitions.from_json(payload.get("definitions") or {},
                                            source=payload.get("definitions_file") or "")
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
        raise ModelError(f"{path} is malformed ({type(exc).__name__}: {exc}); "
                         "retrain, or remove it to prompt as a base model") from None
    fingerprints: dict[str, str] = {}
    for name in RUN_MANIFESTS:
        manifest = Path(directory) / name
        if manifest.is_file():
            try:
                fingerprints = dict(json.loads(manifest.read_text()).get("schema_fingerprints") or {})
            except (json.JSONDecodeError, AttributeError):
                pass
            break
    return PromptSettings(prompt, payload.get("instructions") or INSTRUCTIONS, payload.get("dataset"), definitions,
                          path, fingerprints, tuple(payload.get("example_splits") or ("train",)))


def model_prompt_settings(model_dir: Path, default: PromptConfig) -> PromptSettings:
    """`load_prompt_settings` for a model dir: a run, merged or base dir holds them itself; a checkpoint dir
    keeps them one level up, in its run dir."""
    model_dir = Path(model_dir)
    return load_prompt_settings(model_dir if (model_dir / PROMPT_FILE).is_file() else model_dir.parent, default)


class PromptBuilder:
    """The only place model input is built: for training records, predict, eval and serve alike.

    Holds what every prompt of one model needs, built once: the prompt settings (the project's for
    training, the model's prompt.json for inference), the schema of each pair db, the k-shot example
    index over the train split and the business definitions, and a token counter for the budgets.

    >>> from text2sql.catalog import Column, SchemaSnapshot, TableSnapshot
    >>> t = TableSnapshot("core.stores", "CREATE TABLE core.stores (id INTEGER);", [Column("id", "INTEGER")])
    >>> schema = SchemaSnapshot("d", {"core.stores": t}, "x")
    >>> builder = PromptBuilder(PromptSettings(PromptConfig()), schema_for=lambda db: schema)
    >>> builder.messages("How many stores?")[-1]
    {'role': 'user', 'content': 'How many stores?'}
    """

    def __init__(self, settings: PromptSettings, tokenizer: Any = None,
                 schema_for: Callable[[str | None], SchemaSnapshot] | None = None,
                 examples: Sequence[Any] = (), definitions: Definitions | None = None):
        """Prefer `for_training` and `for_model`; this takes the parts as they are.

        Args:
            settings: prompt section, instructions and (saved) definitions.
            tokenizer: counts tokens for the budgets (the model's own; None = 4 characters a token).
            schema_for: the schema of a pair db (`schema_loader`).
            examples: the pairs k-shot examples are retrieved from (the train split).
            definitions: used when `settings.definitions` is None (a model without saved settings).
        """
        self.settings = settings
        self.prompt = settings.prompt
        self.tokenizer = tokenizer
        self._schema_for = schema_for
        self._index = ExampleIndex(examples) if self.prompt.k_shot > 0 and examples else None
        defs = settings.definitions if settings.definitions is not None else definitions
        self.definitions = defs if (defs and self.prompt.definitions) else Definitions()
        self._count = functools.lru_cache(maxsize=4096)(_token_counter(tokenizer))

    @classmethod
    def for_training(cls, cfg: Config, tokenizer: Any, train_pairs: Sequence[Any],
                     dataset: str | None = None) -> PromptBuilder:
        """The builder of a training run: the project's prompt section, today's instructions, the dataset's
        definitions.yaml. `save` writes these settings into the run dir.

        Raises:
            DataError: the definitions name a table or column schemas/ does not have (a model would learn them).
        """
        dataset = dataset or cfg.data.dataset
        schema_for = schema_loader(cfg, dataset)
        definitions = load_definitions(cfg, dataset) if cfg.prompt.definitions else Definitions()
        if definitions:
            problems = check_definitions(definitions, schema_for(None))
            if problems:
                raise DataError("; ".join(problems) + " (fix them, or train with --set prompt.definitions=false)")
        settings = PromptSettings(cfg.prompt, INSTRUCTIONS, dataset, definitions,
                                  example_splits=tuple(cfg.train.splits.split("+")))
        return cls(settings, tokenizer, schema_for, train_pairs)

    @classmethod
    def for_model(cls, cfg: Config, settings: PromptSettings, tokenizer: Any, dataset: str | None = None,
                  strict: bool = False, who: str = "predict") -> PromptBuilder:
        """The builder for a model's inference: its saved settings (`model_prompt_settings`), the k-shot
        examples of the dataset it was trained on, the schemas of `dataset`'s pair dbs.

        Says on stderr which project prompt settings the saved ones override, and warns when schemas/ changed
        since the model was trained.

        Raises:
            SchemaSnapshotError: with `strict`, schemas/ is not the snapshot the model was trained on.
        """
        dataset = dataset or cfg.data.dataset
        schema_for = schema_loader(cfg, dataset)
        if settings.source is not None:
            _report_overrides(cfg.prompt, settings, who)
            check_schema_unchanged(settings, schema_for, strict, who)
        examples = [p for split in settings.example_splits if settings.prompt.k_shot > 0
                    for p in load_pairs(cfg, settings.dataset or dataset, split)]
        definitions = None
        if settings.definitions is None and settings.prompt.definitions:
            definitions = load_definitions(cfg, settings.dataset or dataset)
        return cls(settings, tokenizer, schema_for, examples, definitions)

    def schema(self, db: str | None = None) -> SchemaSnapshot:
        if self._schema_for is None:
            raise SchemaSnapshotError("this prompt builder was given no schema")
        return self._schema_for(db)

    def messages(self, question: str, db: str | None = None, exclude_id: str | None = None) -> list[dict[str, str]]:
        """The chat messages for one question asked against `db` (None = the project lakehouse).

        `exclude_id`: the pair being asked, never retrieved as its own example (training and eval alike).
        """
        examples = self._index.search(question, self.prompt.k_shot, db=db, exclude_id=exclude_id) if self._index else ()
        return build_messages(question, self.schema(db), self.prompt, self.tokenizer, examples, self.definitions,
                              self.settings.instructions, self._count)

    def record(self, pair: Any) -> dict[str, list[dict[str, str]]]:
        """A training record (TRL prompt-completion) for a pair; its prompt is `messages` of its question."""
        return build_example(pair, self.messages(pair.question, pair.db, pair.id))

    def save(self, directory: Path) -> Path:
        """Write these settings as the run's prompt.json (`save_prompt_settings`)."""
        return save_prompt_settings(directory, self.prompt, self.settings.dataset or "", self.definitions,
                                    self.settings.instructions, self.settings.example_splits)


def check_schema_unchanged(settings: PromptSettings, schema_for: Callable[[str | None], SchemaSnapshot],
                           strict: bool = False, who: str = "predict") -> bool:
    """Is schemas/ the snapshot the model was trained on (the run manifest's fingerprint)? Warns on stderr when
    not, or raises with `strict`. True when unchanged or unknown (a base model, an old manifest)."""
    trained = settings.schema_fingerprints.get("None")
    if not trained:
        return True
    now = schema_for(None).fingerprint
    if now == trained:
        return True
    message = (f"schemas/ changed since the model was trained (fingerprint {trained[:12]} in its manifest, "
               f"{now[:12]} now): it may name tables or columns that no longer exist; "
               "`text2sql schema diff` lists the changes, retrain to follow them")
    if strict:
        raise SchemaSnapshotError(message + " (--strict)")
    print(f"{who}: warning: {message}", file=sys.stderr)
    return False


def _report_overrides(project: PromptConfig, settings: PromptSettings, who: str) -> None:
    """Say which prompt settings of the project (YAML or --set) the model's saved ones replace."""
    differ = [f.name for f in dataclasses.fields(PromptConfig)
              if getattr(project, f.name) != getattr(settings.prompt, f.name)]
    if differ:
        saved = ", ".join(f"prompt.{k}={getattr(settings.prompt, k)!r}" for k in differ)
        ignored = ", ".join(f"prompt.{k}={getattr(project, k)!r}" for k in differ)
        print(f"{who}: the model's {settings.source} sets {saved}; the project's {ignored} is ignored "
              "(a model is prompted as it was trained)", file=sys.stderr)


def _words(text: str, numbers: bool = True) -> list[str]:
    return [_fold_plural(w) for w in _WORD.findall(text.lower()) if numbers or not w.isdigit()]


def _content_words(text: str, numbers: bool = True) -> list[str]:
    """Words minus the question's stopwords (checked before plural folding: "does" is not "doe")."""
    return [_fold_plural(w) for w in _WORD.findall(text.lower())
            if w not in _QUESTION_STOPWORDS and (numbers or not w.isdigit())]


def _fold_plural(word: str) -> str:
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 3 and word.endswith("s") and not word.endswith("ss"):
        return word[:-1]
    return word


def _table_terms(snapshot: SchemaSnapshot) -> tuple[dict[str, dict[str, int]], dict[str, float]]:
    """Per table, word -> weight (see `select_tables`); and each word's idf over the tables. Cached per snapshot."""
    key = (snapshot.fingerprint, tuple(snapshot.tables))
    if key not in _TERMS_CACHE:
        terms = {}
        for name, table in snapshot.tables.items():
            namespace, _, bare = name.rpartition(".")
            weighted = [(w, 1) for w in _content_words(" ".join([namespace, table.comment, *(c.doc for c in table.columns)]),
                                                        numbers=False)]
            for col in table.columns:
                col_words = _words(col.name.replace("_", " "), numbers=False)
                weighted += [(w, 2) for w in [*col_words, "_".join(col_words)]]
            weighted += [(w, 3) for w in _words(bare.replace("_", " "), numbers=False)]
            weights: dict[str, int] = {}
            for w, weight in weighted:  # a word counts with its strongest role
                weights[w] = max(weights.get(w, 0), weight)
            terms[name] = weights
        df = Counter(w for weights in terms.values() for w in weights)
        idf = {w: math.log(1 + len(terms) / f) for w, f in df.items()}
        if len(_TERMS_CACHE) > 16:
            _TERMS_CACHE.clear()
        _TERMS_CACHE[key] = (terms, idf)
    return _TERMS_CACHE[key]


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
