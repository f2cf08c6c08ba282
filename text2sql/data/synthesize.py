"""`data synthesize`: grow the training set with checked pairs, SQL first, question second.

Stages of `synthesize_pairs`, in order:

1. **Mutate** the SQL of train-split pairs (never dev or test) with sqlglot AST transforms (`MUTATIONS`): swap a
   filter literal for another real value of its column in the pinned snapshot, swap a measure for another defined
   measure, group by another dimension, calendar <-> fiscal periods, shift the time window, add or drop ORDER BY /
   LIMIT (with tie-breakers down to every output column), join along a real join path and filter on the joined
   table. Each candidate remembers its source pair and method.
2. **Template guard**: a candidate whose SQL template (`analysis.sql_template`, literals masked) is a dev or test
   template is dropped, as is one that repeats a curated pair's SQL or another candidate's.
3. **Validate** with `data validate`'s own `validate_pairs`: parses, names resolve, executes, non-empty,
   deterministic (any error or warning except large_result drops the candidate).
4. **Back-translate**: the model writes the question for each SQL through `generate.generate`, the system message
   being the text->SQL one (schema, business definitions) with the instructions turned around.
5. **Question guard**: a question at least `data.dedup_threshold` similar (the dedup embedding model) to a dev or
   test question is dropped.
6. **Round trip**: the model answers the new question with the normal text->SQL prompt; the candidate is
   `confirmed` when that SQL's result equals the synthetic SQL's (`evaluate.compare_results`, eval.mode).
   Unconfirmed candidates are kept only with `keep_unconfirmed`.

Candidates go to `datasets/<name>/synthetic.jsonl` (pairs.jsonl's record format plus `confirmed`, `author: synth`,
split train), merged with the candidates already there, written atomically; `data review` moves them into
pairs.jsonl. Heavy imports (torch, transformers, sentence-transformers) happen only in stages 4-6.
"""

from __future__ import annotations

import calendar
import datetime as dt
import hashlib
import json
import random
import re
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlglot import exp

from text2sql.data.analysis import DIALECT, normalize_sql, parse_sql, sql_template
from text2sql.errors import DataError

if TYPE_CHECKING:
    from text2sql.catalog import SchemaSnapshot
    from text2sql.config import Config
    from text2sql.data.definitions import Definitions
    from text2sql.data.store import Dataset, Pair

SYNTHETIC_FILE = "synthetic.jsonl"
AUTHOR = "synth"
EXTRA_FIELDS = ("confirmed",)
"""Keys a synthetic record has beyond pairs.jsonl's."""
POOL_FACTOR = 3
"""Mutations generated per candidate asked for (about a third fail validation on the demo data)."""
VARIANTS_PER_METHOD = 4
"""At most this many variants of one source pair by one method (the rest of the pool comes from other pairs)."""
MAX_VALUES = 50
"""Distinct values read per column; a column with more is not a dimension to group by."""
LIMITS = (3, 5, 10)
MONTH_SHIFTS = (-12, -3, -1, 1, 3, 12)
ACCEPTED_WARNINGS = frozenset({"large_result"})
"""Validation warnings a synthetic pair may carry; any other problem drops it."""
BACK_TRANSLATION_INSTRUCTIONS = (
    "You write the question a business analyst asks that the user's DuckDB SQL query answers exactly, in plain "
    "English, using the business terms below rather than table or column names. Reply with the question only."
)
QUESTION_MAX_NEW_TOKENS = 64
"""A question is one sentence: a model that rambles on is cut here (the SQL answer keeps generate.max_new_tokens)."""
_TEXT_TYPES = ("VARCHAR", "TEXT", "STRING")
_NUMBER_TYPES = ("INT", "BIGINT", "SMALLINT", "TINYINT", "INTEGER")
_QUESTION_PREFIX = re.compile(r"^\s*(question|q)\s*:\s*", re.IGNORECASE)


@dataclass
class Candidate:
    """A synthetic pair in the making."""

    sql: str
    source_id: str
    method: str
    question: str = ""
    confirmed: bool = False
    reason: str = ""
    """Why the round trip failed (empty when confirmed)."""

    @property
    def id(self) -> str:
        """`s-` + 10 hex of sha1(normalized SQL): the same SQL is the same candidate, whatever made it."""
        return "s-" + hashlib.sha1(normalize_sql(self.sql).encode()).hexdigest()[:10]


@dataclass
class SynthesisReport:
    requested: int
    path: Path | None = None
    sources: int = 0
    """Train pairs mutated."""
    generated: int = 0
    """Distinct mutated queries (after the template guard)."""
    validated: int = 0
    confirmed: int = 0
    kept: int = 0
    written: int = 0
    """Records in the file after the merge with those already there."""
    dropped: Counter = field(default_factory=Counter)
    """Reason -> candidates dropped (template_leak, duplicate_sql, invalid:<kind>, question_leak, no_question,
    unconfirmed)."""
    methods: Counter = field(default_factory=Counter)
    """Method -> candidates kept."""
    seconds: float = 0.0

    @property
    def pairs_per_s(self) -> float:
        return self.kept / self.seconds if self.seconds else 0.0

    def summary(self) -> str:
        dropped = ", ".join(f"{k} {n}" for k, n in sorted(self.dropped.items())) or "none"
        methods = ", ".join(f"{k} {n}" for k, n in sorted(self.methods.items())) or "none"
        return (f"{self.generated} candidates from {self.sources} train pairs; {self.validated} validated, "
                f"{self.confirmed} confirmed by the round trip, {self.kept} kept (asked for {self.requested}); "
                f"dropped: {dropped}; kept by method: {methods}; {self.seconds:.1f}s, "
                f"{self.pairs_per_s:.2f} pairs/s; {self.path} holds {self.written}")

    def to_json(self) -> dict[str, Any]:
        return {"requested": self.requested, "path": str(self.path), "sources": self.sources,
                "generated": self.generated, "validated": self.validated, "confirmed": self.confirmed,
                "kept": self.kept, "written": self.written, "dropped": dict(sorted(self.dropped.items())),
                "methods": dict(sorted(self.methods.items())), "seconds": round(self.seconds, 2),
                "pairs_per_s": round(self.pairs_per_s, 4)}


# ---------------------------------------------------------------- orchestration


def synthesize_pairs(cfg: Config, dataset: str | None = None, n: int = 2000, model: str | None = None,
                     seed: int | None = None, keep_unconfirmed: bool = False, progress: bool = True) -> SynthesisReport:
    """Propose up to `n` new validated pairs from the train split into `datasets/<name>/synthetic.jsonl`.

    Args:
        n: candidates to keep (fewer when the mutations run out).
        model: model dir or name that writes and answers the questions (default model.base).
        seed: seeds the mutations (default data.seed): the same seed, data and model give the same candidates.
        keep_unconfirmed: keep candidates whose round trip failed, with `confirmed: false`.

    Raises:
        DataError: n is not positive, or the dataset has no train pairs over the project lakehouse.
    """
    from text2sql.catalog import load_snapshot
    from text2sql.data.store import load_dataset, read_pairs_file

    if n <= 0:
        raise DataError(f"--n must be a positive number of candidates, got {n}")
    started = time.perf_counter()
    ds = load_dataset(cfg, dataset)
    if not ds.pairs_file.is_file():
        raise DataError(f"{ds.pairs_file} not found: add pairs with `text2sql data add` first")
    pairs = [p for p, _ in read_pairs_file(ds.pairs_file)]
    train = [p for p in pairs if p.split == "train" and p.db is None]
    if not train:
        raise DataError(f"dataset {ds.name!r} has no train pairs over the project lakehouse to synthesize from: "
                        "run `text2sql data split` (synthesis never reads dev or test pairs)")
    held_out = [p for p in pairs if p.split in ("dev", "test")]
    seed = cfg.data.seed if seed is None else seed
    report = SynthesisReport(requested=n, sources=len(train), path=ds.path / SYNTHETIC_FILE)
    snapshot = load_snapshot(cfg)
    with _Progress(progress) as bar:
        pool = _mutation_pool(cfg, ds, snapshot, train, pairs, held_out, seed, n, report, bar)
        valid = _validate(cfg, ds, pool, n, report, bar)
        kept = _questions(cfg, ds, snapshot, valid, held_out, model, keep_unconfirmed, report, bar)
    report.kept = len(kept)
    report.methods = Counter(c.method for c in kept)
    report.written = write_candidates(ds, kept)
    report.seconds = time.perf_counter() - started
    return report


def _mutation_pool(cfg: Config, ds: Dataset, snapshot: SchemaSnapshot, train: list[Pair], pairs: list[Pair],
                   held_out: list[Pair], seed: int, n: int, report: SynthesisReport, bar: _Progress) -> list[Candidate]:
    """Distinct mutations of train pairs (taken in a seeded order, until there are POOL_FACTOR x n) that pass the
    template guard, in a seeded order."""
    from text2sql.warehouse import QueryRunner

    rng = random.Random(seed)
    leaked_templates = {sql_template(p.sql) for p in held_out}
    seen = {normalize_sql(p.sql) for p in pairs}
    pool: list[Candidate] = []
    wanted = POOL_FACTOR * n + 32
    sources = list(train)
    rng.shuffle(sources)
    task = bar.add("mutating train SQL", len(sources))
    with QueryRunner.from_config(cfg, workers=1) as runner:
        context = _Context(snapshot, _load_definitions(cfg, ds), runner)
        for pair in sources:
            if len(pool) >= wanted:
                break
            tree = parse_sql(pair.sql)
            for method, mutate in MUTATIONS.items():
                if tree is None:
                    continue
                try:
                    variants = mutate(tree.copy(), context, random.Random(f"{seed}:{pair.id}:{method}"))
                except Exception:  # an odd query shape a transform does not handle: no variants from it
                    variants = []
                for sql in variants[:VARIANTS_PER_METHOD]:
                    key = normalize_sql(sql)
                    if key in seen:
                        report.dropped["duplicate_sql"] += 1
                        continue
                    seen.add(key)
                    if sql_template(sql) in leaked_templates:
                        report.dropped["template_leak"] += 1
                        continue
                    pool.append(Candidate(sql, pair.id, method))
            bar.advance(task)
    rng.shuffle(pool)
    report.generated = len(pool)
    return pool


def _validate(cfg: Config, ds: Dataset, pool: list[Candidate], n: int, report: SynthesisReport,
              bar: _Progress) -> list[Candidate]:
    """The first `n` candidates of the pool that pass `data validate`, in pool order (checked in chunks)."""
    from text2sql.data.store import Pair
    from text2sql.data.validate import validate_pairs

    valid: list[Candidate] = []
    task = bar.add("validating", n)
    start = 0
    while len(valid) < n and start < len(pool):
        chunk = pool[start:start + max(16, 2 * (n - len(valid)))]
        start += len(chunk)
        checked = validate_pairs(cfg, [Pair("-", c.sql, id=c.id) for c in chunk], ds=ds)
        for candidate, result in zip(chunk, checked.pairs):
            problems = [p.kind for p in result.problems if p.kind not in ACCEPTED_WARNINGS]
            if problems:
                report.dropped[f"invalid:{problems[0]}"] += 1
            elif len(valid) < n:
                valid.append(candidate)
                bar.advance(task)
    report.validated = len(valid)
    return valid


def _questions(cfg: Config, ds: Dataset, snapshot: SchemaSnapshot, valid: list[Candidate], held_out: list[Pair],
               model: str | None, keep_unconfirmed: bool, report: SynthesisReport, bar: _Progress) -> list[Candidate]:
    """Back-translate, guard against dev/test questions, round-trip; returns the candidates to keep."""
    if not valid:
        return []
    from text2sql.generate import extract_sql, load_generator, prompts_for

    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # the "Loading weights" bar would break up ours
    gen = load_generator(model or cfg.model.base, cfg)
    task = bar.add("writing questions", len(valid))
    replies = _generate_in_batches(gen, _back_translation_messages(cfg, ds, gen, valid), bar, task,
                                   min(QUESTION_MAX_NEW_TOKENS, gen.max_new_tokens))
    for candidate, reply in zip(valid, replies):
        candidate.question = _question_from(reply)
    asked = [c for c in valid if c.question]
    report.dropped["no_question"] += len(valid) - len(asked)
    asked = _question_guard(cfg, asked, held_out, report)
    if not asked:
        return []
    from text2sql.data.store import Pair

    task = bar.add("round trip", len(asked))
    pairs = [Pair(c.question, c.sql, id=c.id) for c in asked]
    answers = _generate_in_batches(gen, prompts_for(cfg, gen, pairs, ds.name), bar, task)
    _round_trip(cfg, snapshot, asked, [extract_sql(a) for a in answers])
    report.confirmed = sum(c.confirmed for c in asked)
    if keep_unconfirmed:
        return asked
    report.dropped["unconfirmed"] += len(asked) - report.confirmed
    return [c for c in asked if c.confirmed]


def _generate_in_batches(gen, messages: list, bar: _Progress, task, max_new_tokens: int | None = None) -> list[str]:
    """`generate.generate` a batch at a time, so the progress bar moves."""
    from text2sql.generate import generate

    replies: list[str] = []
    for start in range(0, len(messages), gen.batch_size):
        batch = messages[start:start + gen.batch_size]
        replies += generate(gen, batch, max_new_tokens)
        bar.advance(task, len(batch))
    return replies


def _back_translation_messages(cfg: Config, ds: Dataset, gen, candidates: list[Candidate]) -> list:
    """The model's own text->SQL prompt (schema, business definitions) with the instructions turned around, the SQL
    as the user turn, and no k-shot turns (they show question -> SQL), built by the one prompt builder."""
    from dataclasses import replace

    from text2sql.prompt import PromptBuilder, PromptSettings

    settings = gen.settings or PromptSettings(gen.prompt or cfg.prompt, dataset=gen.dataset)
    settings = replace(settings, instructions=BACK_TRANSLATION_INSTRUCTIONS, prompt=replace(settings.prompt, k_shot=0))
    builder = PromptBuilder.for_model(cfg, settings, gen.tokenizer, ds.name, who="synthesize")
    return [builder.messages(c.sql.strip()) for c in candidates]


def _question_from(reply: str) -> str:
    """The first non-empty line of a reply, without a `Question:` prefix or quotes."""
    for line in reply.splitlines():
        line = _QUESTION_PREFIX.sub("", line).strip().strip('"').strip()
        if line:
            return line
    return ""


def _question_guard(cfg: Config, candidates: list[Candidate], held_out: list[Pair],
                    report: SynthesisReport) -> list[Candidate]:
    """Drop candidates whose question is at least data.dedup_threshold similar to a dev or test question."""
    if not candidates or not held_out:
        return candidates
    from text2sql.data.analysis import normalize_question
    from text2sql.data.dedup import _model_path, embed_questions

    texts = [normalize_question(c.question) for c in candidates] + [normalize_question(p.question) for p in held_out]
    embeddings = embed_questions(texts, _model_path(cfg))
    similarity = (embeddings[:len(candidates)] @ embeddings[len(candidates):].T).max(axis=1)
    kept = [c for c, s in zip(candidates, similarity) if s < cfg.data.dedup_threshold - 1e-6]
    report.dropped["question_leak"] += len(candidates) - len(kept)
    return kept


def _round_trip(cfg: Config, snapshot: SchemaSnapshot, candidates: list[Candidate], answers: list[str | None]) -> None:
    """Set `confirmed` on each candidate: does the model's SQL for its question return the same result?"""
    from text2sql.evaluate import compare_results
    from text2sql.warehouse import QueryRunner

    with QueryRunner.from_config(cfg, workers=0, snapshot=snapshot) as runner:
        golds = runner.run_many([c.sql for c in candidates], checked=True)
        runnable = [i for i, a in enumerate(answers) if a]
        predicted = dict(zip(runnable, runner.run_many([answers[i] for i in runnable])))
    for i, (candidate, gold) in enumerate(zip(candidates, golds)):
        if gold.error_kind:
            candidate.reason = f"the synthetic SQL failed ({gold.error_kind})"
        elif i not in predicted:
            candidate.reason = "the model wrote no SQL for the question"
        else:
            compared = compare_results(gold, predicted[i], gold_sql=candidate.sql, mode=cfg.eval.mode,
                                       rel_tol=cfg.eval.rel_tol)
            candidate.confirmed = compared.equal
            candidate.reason = "" if compared.equal else compared.reason


# ---------------------------------------------------------------- the synthetic file


def write_candidates(ds: Dataset, candidates: list[Candidate]) -> int:
    """Merge candidates into synthetic.jsonl atomically (ids already there or in pairs.jsonl are skipped);
    returns the records the file holds."""
    from text2sql.data.store import _locked, read_pairs_file, write_text_atomic

    today = dt.date.today().isoformat()
    with _locked(ds):
        taken = {p.id for p, _ in read_pairs_file(ds.pairs_file)} if ds.pairs_file.is_file() else set()
        path = ds.path / SYNTHETIC_FILE
        current = read_candidate_lines(path)
        lines = [raw for _, raw in current]
        taken |= {record["id"] for record, _ in current}
        for c in candidates:
            if c.id in taken:
                continue
            taken.add(c.id)
            outcome = "confirmed by the round trip" if c.confirmed else f"UNCONFIRMED: {c.reason}"
            record = candidate_record(c.question, c.sql, id=c.id, tags=["synthetic", c.method], author=AUTHOR,
                                      created=today, notes=f"synthesized from {c.source_id} by {c.method}; {outcome}",
                                      confirmed=c.confirmed)
            lines.append(json.dumps(record, ensure_ascii=False))
        write_text_atomic(path, "".join(line + "\n" for line in lines))
        return len(lines)


def candidate_record(question: str, sql: str, confirmed: bool, **fields: Any) -> dict[str, Any]:
    """A synthetic.jsonl record: pairs.jsonl's keys, split train, plus `confirmed`."""
    from text2sql.data.store import Pair

    pair = Pair(question, sql, split="train", **fields)
    return {**pair.to_record(), "confirmed": confirmed}


def read_candidate_lines(path: Path) -> list[tuple[dict[str, Any], str]]:
    """(record, raw line) of every synthetic record; each record is checked like a pairs.jsonl record.

    Raises:
        DataError: a line is malformed (named file:line).
    """
    from text2sql.data.store import pair_from_record

    if not path.is_file():
        return []
    out, problems = [], []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            if not isinstance(record, dict):
                raise DataError("a record must be a JSON object")
            pair_from_record({k: v for k, v in record.items() if k not in EXTRA_FIELDS})
        except (json.JSONDecodeError, DataError) as exc:
            problems.append(f"{path}:{number}: {exc}")
            continue
        out.append((record, line))
    if problems:
        raise DataError("; ".join(problems[:20]))
    return out


def load_synthetic(cfg: Config, dataset: str, curated: list[Pair]) -> list[Pair]:
    """Unreviewed synthetic pairs to train on (data.synthetic: include): in file order, at most
    data.synthetic_ratio x len(curated) of them, none whose id is a curated pair's, always in the train split."""
    from text2sql.data.store import load_dataset, pair_from_record

    ds = load_dataset(cfg, dataset)
    taken = {p.id for p in curated}
    records = [r for r, _ in read_candidate_lines(ds.path / SYNTHETIC_FILE) if r["id"] not in taken]
    limit = int(cfg.data.synthetic_ratio * len(curated))
    pairs = [pair_from_record({k: v for k, v in r.items() if k not in EXTRA_FIELDS}) for r in records[:limit]]
    for pair in pairs:
        pair.split = "train"  # never dev or test, whatever the file says
    return pairs


# ---------------------------------------------------------------- mutations


@dataclass
class _Context:
    snapshot: SchemaSnapshot
    definitions: Definitions | None
    runner: Any
    _values: dict = field(default_factory=dict)

    def values(self, table: str, column: str) -> list:
        """Up to MAX_VALUES + 1 distinct non-null values of a column of the pinned snapshot, sorted."""
        key = (table, column)
        if key not in self._values:
            result = self.runner.run(f'SELECT DISTINCT "{column}" FROM {table} WHERE "{column}" IS NOT NULL '
                                     f"ORDER BY 1 LIMIT {MAX_VALUES + 1}")
            self._values[key] = [] if result.error_kind else [r[0] for r in result.rows]
        return self._values[key]

    def definitions_of(self, kind: str) -> list:
        if not self.definitions:
            return []
        return [d for d in self.definitions.items if d.kind == kind and d.sql]

    @property
    def aliases(self) -> dict[str, str]:
        return dict(self.definitions.aliases) if self.definitions else {}


def _load_definitions(cfg: Config, ds: Dataset):
    from text2sql.data.definitions import load_definitions

    return load_definitions(cfg, str(ds.path))  # empty when the dataset has no definitions.yaml


def _sql(tree: exp.Expression) -> str:
    """DuckDB SQL of a tree, date literals written `DATE 'YYYY-MM-DD'` as the curated pairs write them (sqlglot
    writes CAST('...' AS DATE))."""
    def date_literal(node: exp.Expression) -> exp.Expression:
        day = _date_literal(node)
        return exp.Var(this=f"DATE '{day.isoformat()}'") if day is not None else node

    return tree.transform(date_literal).sql(dialect=DIALECT)


def _top_select(tree: exp.Expression) -> exp.Select | None:
    return tree if isinstance(tree, exp.Select) else None


def _scope_tables(select: exp.Select, snapshot: SchemaSnapshot) -> dict[str, str]:
    """Alias (lower case) -> qualified table of the FROM and JOIN tables of one SELECT."""
    out = {}
    sources = [select.args.get("from_")] + list(select.args.get("joins") or [])
    for source in sources:
        table = source.this if source is not None else None
        if isinstance(table, exp.Table):
            resolved = snapshot.resolve(".".join(p for p in (table.db, table.name) if p))
            if resolved:
                out[table.alias_or_name.lower()] = resolved
    return out


def _own(select: exp.Select, kind):
    """Nodes of `kind` in a SELECT, not inside a nested query."""
    for node in select.find_all(kind):
        parent = node.parent
        nested = False
        while parent is not None and parent is not select:
            if isinstance(parent, (exp.Select, exp.SetOperation)):
                nested = True
                break
            parent = parent.parent
        if not nested:
            yield node


def _column_of(column: exp.Column, tables: dict[str, str], snapshot: SchemaSnapshot):
    """(qualified table, column snapshot) of a plain column reference, or None."""
    if column.args.get("db") or not isinstance(column.this, exp.Identifier):
        return None  # a struct field (c.address.city) or something odder
    table = tables.get(column.table.lower()) if column.table else (next(iter(tables.values())) if len(tables) == 1 else None)
    if table is None:
        return None
    found = snapshot.tables[table].column(column.name)
    return (table, found) if found else None


def mutate_literals(tree: exp.Expression, ctx: _Context, rng: random.Random) -> list[str]:
    """`col = 'x'` / `col = 3` -> the same filter on another real value of the column."""
    select = _top_select(tree)
    if select is None:
        return []
    tables = _scope_tables(select, ctx.snapshot)
    out = []
    for i, eq in enumerate(list(_own(select, exp.EQ))):
        column, literal = eq.this, eq.expression
        if not (isinstance(column, exp.Column) and isinstance(literal, exp.Literal)):
            continue
        found = _column_of(column, tables, ctx.snapshot)
        if found is None or not found[1].type.upper().startswith(_TEXT_TYPES + _NUMBER_TYPES):
            continue
        values = [v for v in ctx.values(found[0], found[1].name) if str(v) != literal.this]
        for value in rng.sample(values, min(2, len(values))):
            variant = tree.copy()
            target = list(_own(variant, exp.EQ))[i]
            new = exp.Literal.string(value) if literal.is_string else exp.Literal.number(value)
            target.expression.replace(new)
            out.append(_sql(variant))
    rng.shuffle(out)
    return out


def _aliases_in(fragment: exp.Expression) -> set[str]:
    # `c.address.city` parses as column city of table `address` in db `c`: the alias is the first part.
    return {(c.db or c.table).lower() for c in fragment.find_all(exp.Column) if c.table}


def _fits(fragment: exp.Expression, tables: dict[str, str], ctx: _Context) -> bool:
    """Every alias the fragment uses is in the query, naming the table the definitions say."""
    aliases = ctx.aliases
    return all(a in tables and tables[a] == ctx.snapshot.resolve(aliases.get(a, "")) for a in _aliases_in(fragment))


def _snake(term: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", term.lower()).strip("_")


def _replace_output(select: exp.Select, old: exp.Expression, new: exp.Expression, name: str) -> bool:
    """Put `new` where `old` is in the projection (renamed `name`, ORDER BY references follow); False if absent."""
    for projection in select.expressions:
        inner = projection.this if isinstance(projection, exp.Alias) else projection
        if inner is old or inner == old:
            old_name = projection.alias if isinstance(projection, exp.Alias) else ""
            projection.replace(exp.alias_(new.copy(), name))
            if old_name:
                for column in list(_own(select, exp.Column)):
                    if not column.table and column.name == old_name:
                        column.replace(exp.column(name))
            return True
    return False


def mutate_measure(tree: exp.Expression, ctx: _Context, rng: random.Random) -> list[str]:
    """A selected defined measure -> another defined measure over the same tables."""
    select = _top_select(tree)
    measures = [(d, parse_sql_fragment(d.sql)) for d in ctx.definitions_of("measure")]
    measures = [(d, f) for d, f in measures if f is not None]
    if select is None or not measures:
        return []
    tables = _scope_tables(select, ctx.snapshot)
    out = []
    for projection in select.expressions:
        inner = projection.this if isinstance(projection, exp.Alias) else projection
        current = next((d for d, f in measures if f == inner), None)
        if current is None:
            continue
        aggregate = bool(inner.find(exp.AggFunc))
        options = [(d, f) for d, f in measures if f != inner and bool(f.find(exp.AggFunc)) == aggregate
                   and _fits(f, tables, ctx) and _snake(d.term) not in {p.alias_or_name for p in select.expressions}]
        for d, f in rng.sample(options, min(3, len(options))):
            variant = tree.copy()
            index = select.expressions.index(projection)
            target = variant.expressions[index]
            _replace_output(variant, target.this if isinstance(target, exp.Alias) else target, f, _snake(d.term))
            out.append(_sql(variant))
    return out


def parse_sql_fragment(sql: str) -> exp.Expression | None:
    """A definition's SQL fragment as an expression (None when it is not one)."""
    import sqlglot

    try:
        return sqlglot.parse_one(sql, read=DIALECT, into=exp.Condition) if sql else None
    except Exception:
        try:
            return sqlglot.parse_one(f"SELECT {sql}", read=DIALECT).expressions[0]
        except Exception:
            return None


def _dimensions(select: exp.Select, tables: dict[str, str], ctx: _Context) -> list[tuple[str, exp.Expression]]:
    """(name, expression) of the dimensions the query's tables offer: defined dimensions, then text columns with
    at most MAX_VALUES distinct values."""
    out = []
    for d in ctx.definitions_of("dimension"):
        fragment = parse_sql_fragment(d.sql)
        if fragment is not None and not fragment.find(exp.AggFunc) and _fits(fragment, tables, ctx):
            out.append((_snake(d.term), fragment))
    for alias, table in sorted(tables.items()):
        for column in ctx.snapshot.tables[table].columns:
            if column.type.upper().startswith(_TEXT_TYPES) and len(ctx.values(table, column.name)) <= MAX_VALUES:
                out.append((column.name, exp.column(column.name, table=alias)))
    return out


def mutate_group_by(tree: exp.Expression, ctx: _Context, rng: random.Random) -> list[str]:
    """GROUP BY one key (also selected) -> GROUP BY another dimension of the same tables."""
    select = _top_select(tree)
    group = select.args.get("group") if select is not None else None
    if group is None or len(group.expressions) != 1 or select.args.get("having"):
        return []
    key = group.expressions[0]
    tables = _scope_tables(select, ctx.snapshot)
    where = select.args.get("where")
    pinned = [eq.this for eq in where.find_all(exp.EQ)] if where else []  # one value: a single group
    options = [(name, d) for name, d in _dimensions(select, tables, ctx) if d != key and d not in pinned]
    out = []
    for name, dimension in rng.sample(options, min(3, len(options))):
        variant = tree.copy()
        old = variant.args["group"].expressions[0]
        if not _replace_output(variant, old, dimension, name):
            continue
        variant.args["group"].set("expressions", [dimension.copy()])
        for ordered in list(_own(variant, exp.Ordered)):
            if ordered.this == old:
                ordered.set("this", exp.column(name))
        out.append(_sql(variant))
    return out


def _date_literal(node: exp.Expression) -> dt.date | None:
    """The date of `DATE 'YYYY-MM-DD'` (or a cast of such a string), else None."""
    if isinstance(node, exp.Cast) and isinstance(node.this, exp.Literal) and node.this.is_string:
        text = node.this.this
    elif isinstance(node, exp.Literal) and node.is_string:
        return None
    else:
        return None
    try:
        return dt.date.fromisoformat(text[:10]) if len(text) == 10 else None
    except ValueError:
        return None


def _add_months(day: dt.date, months: int) -> dt.date:
    """Month arithmetic that keeps the first and the last day of a month where they are."""
    index = day.year * 12 + day.month - 1 + months
    year, month = divmod(index, 12)
    last = calendar.monthrange(year, month + 1)[1]
    is_last = day.day == calendar.monthrange(day.year, day.month)[1]
    return dt.date(year, month + 1, last if is_last else min(day.day, last))


def _date_node(day: dt.date) -> exp.Expression:
    return exp.cast(exp.Literal.string(day.isoformat()), exp.DataType.build("DATE"))


def mutate_window(tree: exp.Expression, ctx: _Context, rng: random.Random) -> list[str]:
    """Every date literal shifted by the same number of months: another time window of the same shape."""
    if not any(_date_literal(c) for c in tree.find_all(exp.Cast)):
        return []
    out = []
    for months in rng.sample(MONTH_SHIFTS, len(MONTH_SHIFTS)):
        variant = tree.copy()
        for cast in list(variant.find_all(exp.Cast)):
            day = _date_literal(cast)
            if day is not None:
                cast.replace(_date_node(_add_months(day, months)))
        out.append(_sql(variant))
    return out


def _fiscal_join(select: exp.Select, tables: dict[str, str], ctx: _Context):
    """(alias, join node, the date expression it joins on) of the fiscal calendar join, or None."""
    for join in select.args.get("joins") or []:
        table = join.this
        if not isinstance(table, exp.Table) or tables.get(table.alias_or_name.lower()) != "core.fiscal_calendar":
            continue
        on = join.args.get("on")
        if isinstance(on, exp.EQ):
            for a, b in ((on.this, on.expression), (on.expression, on.this)):
                if isinstance(a, exp.Column) and a.name == "calendar_date":
                    return table.alias_or_name, join, b
    return None


def _timestamp_column(select: exp.Select, tables: dict[str, str], ctx: _Context) -> exp.Column | None:
    """The order timestamp when the query reads sales.orders."""
    alias = next((a for a, t in tables.items() if t == "sales.orders"), None)
    return exp.column("ordered_at", table=alias) if alias else None


def mutate_period(tree: exp.Expression, ctx: _Context, rng: random.Random) -> list[str]:
    """Calendar year <-> fiscal year: `ts >= DATE 'Y-01-01' AND ts < DATE 'Y+1-01-01'` <-> `fc.fiscal_year = Y`
    with the fiscal calendar joined on the order date (and the join dropped when nothing else uses it)."""
    select = _top_select(tree)
    if select is None:
        return []
    tables = _scope_tables(select, ctx.snapshot)
    fiscal = _fiscal_join(select, tables, ctx)
    if fiscal is not None:
        return _fiscal_to_calendar(tree, fiscal)
    ts = _timestamp_column(select, tables, ctx)
    where = select.args.get("where")
    if ts is None or where is None:
        return []
    for condition in _conjuncts(where.this):
        if not (isinstance(condition, exp.GTE) and condition.this == ts):
            continue
        start = _date_literal(condition.expression)
        end = next((_date_literal(c.expression) for c in _conjuncts(where.this)
                    if isinstance(c, exp.LT) and c.this == ts and _date_literal(c.expression)), None)
        if start and end and start.month == 1 and start.day == 1 and end == dt.date(start.year + 1, 1, 1):
            variant = tree.copy()
            alias = "fc" if "fc" not in tables else "fcal"
            conditions = [c for c in _conjuncts(variant.args["where"].this)
                          if not ((isinstance(c, exp.GTE) or isinstance(c, exp.LT)) and c.this == ts)]
            fiscal_year = start.year + rng.choice((0, 1))
            conditions.append(exp.EQ(this=exp.column("fiscal_year", table=alias), expression=exp.Literal.number(fiscal_year)))
            variant.set("where", exp.Where(this=exp.and_(*conditions)))
            variant.join(exp.to_table("core.fiscal_calendar").as_(alias), on=exp.EQ(
                this=exp.column("calendar_date", table=alias), expression=exp.cast(ts.copy(), "DATE")), copy=False)
            return [_sql(variant)]
    return []


def _fiscal_to_calendar(tree: exp.Select, fiscal) -> list[str]:
    alias, join, date_expr = fiscal
    where = tree.args.get("where")
    if where is None:
        return []
    conditions = _conjuncts(where.this)
    year = next((c for c in conditions if isinstance(c, exp.EQ) and isinstance(c.this, exp.Column)
                 and c.this.table == alias and c.this.name == "fiscal_year" and isinstance(c.expression, exp.Literal)), None)
    if year is None:
        return []
    ts = date_expr.this if isinstance(date_expr, exp.Cast) else date_expr
    y = int(year.expression.this)
    variant = tree.copy()
    kept = [c for c in _conjuncts(variant.args["where"].this) if c != year]
    kept += [exp.GTE(this=ts.copy(), expression=_date_node(dt.date(y, 1, 1))),
             exp.LT(this=ts.copy(), expression=_date_node(dt.date(y + 1, 1, 1)))]
    variant.set("where", exp.Where(this=exp.and_(*kept)))
    if any(c.table == alias for c in variant.find_all(exp.Column) if c.find_ancestor(exp.Join) is None):
        return []  # the fiscal calendar does more than name the year (fiscal quarter, weekends): leave it
    variant.set("joins", [j for j in variant.args.get("joins") or [] if j != join])
    return [_sql(variant)]


def _conjuncts(node: exp.Expression) -> list[exp.Expression]:
    if isinstance(node, exp.And):
        return _conjuncts(node.this) + _conjuncts(node.expression)
    if isinstance(node, exp.Paren) and isinstance(node.this, exp.And):
        return _conjuncts(node.this)
    return [node]


def _tie_breakers(select: exp.Select, order: exp.Order) -> list[exp.Ordered]:
    """Every output column not yet among the ORDER BY keys (by alias or position): the order becomes total over
    the result rows, so no LIMIT can cut between rows that tie but differ."""
    keys = {o.this.sql() for o in order.expressions}
    out = []
    for position, projection in enumerate(select.expressions, 1):
        if isinstance(projection, exp.Star):
            return []
        ref = exp.column(projection.alias) if isinstance(projection, exp.Alias) else (
            projection.copy() if isinstance(projection, exp.Column) else exp.Literal.number(position))
        inner = projection.this if isinstance(projection, exp.Alias) else projection
        if ref.sql() not in keys and inner.sql() not in keys:
            out.append(exp.Ordered(this=ref, desc=False, nulls_first=False))
    return out


def mutate_order_limit(tree: exp.Expression, ctx: _Context, rng: random.Random) -> list[str]:
    """Top-N from a grouped result, another N, or the LIMIT dropped; ORDER BYs get tie-breakers."""
    select = _top_select(tree)
    if select is None or select.args.get("offset"):
        return []
    order, limit = select.args.get("order"), select.args.get("limit")
    out = []
    if limit is not None and order is not None:
        variant = tree.copy()
        variant.set("limit", None)  # the whole ranking
        out.append(_sql(variant))
        current = limit.expression.this if isinstance(limit.expression, exp.Literal) else None
        for n in rng.sample([k for k in LIMITS if str(k) != current], 2):
            variant = tree.copy()
            variant.args["order"].set("expressions", variant.args["order"].expressions +
                                      _tie_breakers(variant, variant.args["order"]))
            variant.set("limit", exp.Limit(expression=exp.Literal.number(n)))
            out.append(_sql(variant))
    elif limit is None and select.args.get("group") is not None:
        measures = [p for p in select.expressions if isinstance(p, exp.Alias) and p.this.find(exp.AggFunc)]
        if measures:
            measure = rng.choice(measures)
            variant = tree.copy()
            keys = [exp.Ordered(this=exp.column(measure.alias), desc=rng.random() < 0.75, nulls_first=False)]
            order_node = exp.Order(expressions=keys)
            order_node.set("expressions", keys + _tie_breakers(variant, order_node))
            variant.set("order", order_node)
            variant.set("limit", exp.Limit(expression=exp.Literal.number(rng.choice(LIMITS))))
            out.append(_sql(variant))
    return out


def mutate_join(tree: exp.Expression, ctx: _Context, rng: random.Random) -> list[str]:
    """Join a table along a real join path (defined joins, else the manifest's references) and filter on one of
    its low-cardinality text columns with a real value."""
    select = _top_select(tree)
    if select is None or select.args.get("from_") is None:
        return []
    tables = _scope_tables(select, ctx.snapshot)
    present = set(tables.values())
    paths = []  # (alias, table, ON condition)
    for d in ctx.definitions_of("join"):
        fragment = parse_sql_fragment(d.sql)
        if fragment is None:
            continue
        used = _aliases_in(fragment)
        new = [a for a in used if a not in tables]
        known = [a for a in used if a in tables]
        table = ctx.snapshot.resolve(ctx.aliases.get(new[0], "")) if len(new) == 1 else None
        if table and known and table not in present and _references(ctx.snapshot, present, table) and all(
                tables[a] == ctx.snapshot.resolve(ctx.aliases.get(a, "")) for a in known):
            paths.append((new[0], table, fragment))
    if not paths:
        for alias, table in sorted(tables.items()):
            for column, other, other_column in ctx.snapshot.tables[table].references:
                other = ctx.snapshot.resolve(other)
                if other and other not in present:
                    new_alias = _fresh_alias(other, tables)
                    paths.append((new_alias, other, exp.EQ(this=exp.column(other_column, table=new_alias),
                                                           expression=exp.column(column, table=alias))))
    out = []
    for new_alias, table, on in rng.sample(paths, min(2, len(paths))):
        columns = [c for c in ctx.snapshot.tables[table].columns if c.type.upper().startswith(_TEXT_TYPES)
                   and 1 < len(ctx.values(table, c.name)) <= MAX_VALUES]
        if not columns:
            continue
        column = rng.choice(columns)
        value = rng.choice(ctx.values(table, column.name))
        variant = tree.copy()
        variant.join(exp.to_table(table).as_(new_alias), on=on.copy(), copy=False)
        _add_condition(variant, exp.EQ(this=exp.column(column.name, table=new_alias),
                                       expression=exp.Literal.string(value)))
        out.append(_sql(variant))
    return out


def _add_condition(select: exp.Select, condition: exp.Expression) -> None:
    where = select.args.get("where")
    conditions = _conjuncts(where.this) if where is not None else []
    select.set("where", exp.Where(this=exp.and_(*conditions, condition)))


def _references(snapshot: SchemaSnapshot, present: set[str], table: str) -> bool:
    """Does a table of the query reference `table` (a many-to-one join that does not fan rows out)?"""
    return any(snapshot.resolve(other) == table for t in present for _, other, _ in snapshot.tables[t].references)


def _fresh_alias(table: str, taken: dict[str, str]) -> str:
    base = "".join(w[0] for w in table.split(".")[-1].split("_"))
    alias, i = base, 2
    while alias in taken:
        alias, i = f"{base}{i}", i + 1
    return alias


MUTATIONS: dict[str, Callable[[exp.Expression, _Context, random.Random], list[str]]] = {
    "literal": mutate_literals,
    "measure": mutate_measure,
    "group_by": mutate_group_by,
    "period": mutate_period,
    "window": mutate_window,
    "order_limit": mutate_order_limit,
    "join": mutate_join,
}
"""Method name -> transform: a parsed train query (a copy) -> variant SQL strings."""


# ---------------------------------------------------------------- progress


class _Progress:
    """rich progress bars on stderr (nothing when off)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._bar = None

    def __enter__(self) -> _Progress:
        if self.enabled:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._bar = Progress(TextColumn("{task.description:20s}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), console=Console(stderr=True), transient=False)
            self._bar.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)

    def add(self, description: str, total: int):
        return self._bar.add_task(description, total=total) if self._bar else None

    def advance(self, task, steps: int = 1) -> None:
        if self._bar is not None:
            self._bar.advance(task, steps)
