"""`data synthesize`: grow the training set with checked pairs, SQL first, question second.

Stages of `synthesize_pairs`, in order:

1. **Mutate** the SQL of train-split pairs (never dev or test) with sqlglot AST transforms (`text2sql.data.mutate`):
   swap a filter literal for another real value of its column in the pinned snapshot, swap a measure for another defined
   measure, group by another dimension, calendar <-> fiscal periods, shift the time window, add or drop ORDER BY /
   LIMIT (with tie-breakers down to every output column), join along a real join path and filter on the joined
   table. Each candidate remembers its source pair and method.
2. **Template guard**: a candidate whose SQL template (`analysis.sql_template`, literals masked) is a dev or test
   template is dropped, as is one that repeats a curated pair's SQL or another candidate's.
3. **Validate** with `data validate`'s own `validate_pairs`: parses, names resolve, executes, non-empty,
   deterministic (any error or warning except large_result drops the candidate).
4. **Back-translate**: the model writes the question for each SQL through `generate.generate`, the system message
   being the text->SQL one (schema, business definitions) with the instructions turned around, after up to
   `BACK_TRANSLATION_SHOTS` train pairs turned around too (SQL -> question): the source pair, then the nearest.
5. **Question guard**: a question at least `data.dedup_threshold` similar (the dedup embedding model) to a dev or
   test question is dropped.
6. **Round trip**: the model (or `answer_model`, say the fine-tuned one, the question writer freed first) answers
   the new question with its own text->SQL prompt (`generate.prompts_for`); the candidate is
   `confirmed` when that SQL's result equals the synthetic SQL's (`evaluate.compare_results`, eval.mode).
   Unconfirmed candidates are kept only with `keep_unconfirmed`.

Candidates go to `datasets/<name>/synthetic.jsonl` (pairs.jsonl's record format plus `confirmed`, `author: synth`,
split train), merged with the candidates already there, written atomically; `data review` moves them into
pairs.jsonl. `text2sql.synthesize.synthesize_pairs` runs the stages (4 and 6 need the model, so they live
there); heavy imports (torch, transformers, sentence-transformers) happen only in stages 4-6.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import random
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from text2sql.data.analysis import normalize_sql, parse_sql, sql_template
from text2sql.data.dedup import nearest_similarity
from text2sql.data.mutate import MUTATIONS, MutationContext, load_dataset_definitions
from text2sql.data.store import (
    Dataset, Pair, _locked, load_dataset, pair_from_record, read_pairs_file, write_text_atomic,
)
from text2sql.data.validate import validate_pairs
from text2sql.errors import DataError
from text2sql.warehouse import QueryRunner

if TYPE_CHECKING:
    from text2sql.catalog import SchemaSnapshot
    from text2sql.config import Config

SYNTHETIC_FILE = "synthetic.jsonl"
AUTHOR = "synth"
EXTRA_FIELDS = ("confirmed",)
"""Keys a synthetic record has beyond pairs.jsonl's."""
POOL_FACTOR = 3
"""Mutations generated per candidate asked for (about a third fail validation on the demo data)."""
VARIANTS_PER_METHOD = 4
"""At most this many variants of one source pair by one method (the rest of the pool comes from other pairs)."""
MUTATION_DEPTH = 3
"""At most this many transforms composed into one candidate (a measure swap of a regrouped query, ...)."""
ACCEPTED_WARNINGS = frozenset({"large_result"})
"""Validation warnings a synthetic pair may carry; any other problem drops it."""
BACK_TRANSLATION_INSTRUCTIONS = (
    "You write the question a business analyst asks that the user's DuckDB SQL query answers exactly, in plain "
    "English, using the business terms below rather than table or column names. Write it as short as the example "
    "questions and in their style, but state every condition the query applies that the business definitions do "
    "not already imply (time period, filters, how many rows). Reply with the question only."
)
BACK_TRANSLATION_SHOTS = 3
"""Curated train pairs shown, SQL -> question, before each candidate's SQL: its source pair, then the nearest ones
(the team's short style; without them the model writes long, mechanical questions)."""
QUESTION_MAX_NEW_TOKENS = 64
"""A question is one sentence: a model that rambles on is cut here (the SQL answer keeps generate.max_new_tokens)."""
_QUESTION_PREFIX = re.compile(r"^\s*(question|q)\s*:\s*", re.IGNORECASE)
_OUTCOME = re.compile(r"(^|; )(confirmed by the round trip|UNCONFIRMED: ).*\Z", re.DOTALL)


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
    """Reason -> candidates dropped (template_leak, duplicate_sql, already_synthesized (in the file from an earlier
    run), invalid:<kind>, question_leak, no_question, unconfirmed)."""
    methods: Counter = field(default_factory=Counter)
    """Method -> candidates kept."""
    seconds: float = 0.0
    model: str = ""
    """The model dir that wrote the questions."""
    answer_model: str = ""
    """The model dir that answered them in the round trip."""

    @property
    def pairs_per_s(self) -> float:
        return self.kept / self.seconds if self.seconds else 0.0

    def summary(self) -> str:
        dropped = ", ".join(f"{k} {n}" for k, n in sorted(self.dropped.items()) if n) or "none"
        methods = ", ".join(f"{k} {n}" for k, n in sorted(self.methods.items())) or "none"
        return (f"{self.generated} candidates from {self.sources} train pairs; {self.validated} validated, "
                f"{self.confirmed} confirmed by the round trip, {self.kept} kept (asked for {self.requested}); "
                f"dropped: {dropped}; kept by method: {methods}; {self.seconds:.1f}s, "
                f"{self.pairs_per_s:.2f} pairs/s; {self.path} holds {self.written}"
                + (f"; round trip answered by {self.answer_model}" if self.answer_model != self.model else ""))

    def to_json(self) -> dict[str, Any]:
        return {"requested": self.requested, "path": str(self.path), "sources": self.sources,
                "generated": self.generated, "validated": self.validated, "confirmed": self.confirmed,
                "kept": self.kept, "written": self.written, "dropped": dict(sorted(self.dropped.items())),
                "methods": dict(sorted(self.methods.items())), "seconds": round(self.seconds, 2),
                "pairs_per_s": round(self.pairs_per_s, 4), "model": self.model, "answer_model": self.answer_model}


# ---------------------------------------------------------------- mutation pool and validation


def mutation_pool(cfg: Config, ds: Dataset, snapshot: SchemaSnapshot, train: list[Pair], pairs: list[Pair],
                   held_out: list[Pair], seed: int, n: int, report: SynthesisReport, bar: Progress) -> list[Candidate]:
    """Distinct mutations of train pairs (taken in a seeded order, until there are POOL_FACTOR x n) that pass the
    template guard, in a seeded order."""
    rng = random.Random(seed)
    leaked_templates = {sql_template(p.sql) for p in held_out}
    seen = {normalize_sql(p.sql) for p in pairs}
    # What earlier runs wrote: another run adds n new candidates, never spends the model on those again.
    earlier = {normalize_sql(r["sql"]) for r, _ in read_candidate_lines(ds.path / SYNTHETIC_FILE)} - seen
    pool: list[Candidate] = []
    wanted = POOL_FACTOR * n + 32
    sources = list(train)
    rng.shuffle(sources)
    task = bar.add("mutating train SQL", len(sources))
    with QueryRunner.from_config(cfg, workers=1) as runner:
        context = MutationContext(snapshot, load_dataset_definitions(cfg, ds), runner)

        def add_variants(sql: str, source_id: str, method_prefix: str = "") -> None:
            tree = parse_sql(sql)
            if tree is None:
                return
            for method, mutate in MUTATIONS.items():
                if method in method_prefix.split("+"):
                    continue  # the same transform twice only re-picks what the first one picked
                try:
                    variants = mutate(tree.copy(), context, random.Random(f"{seed}:{source_id}:{method_prefix}{method}"))
                except Exception:  # an odd query shape a transform does not handle: no variants from it
                    variants = []
                for variant in variants[:VARIANTS_PER_METHOD]:
                    key = normalize_sql(variant)
                    if key in seen:
                        report.dropped["duplicate_sql"] += 1
                        continue
                    seen.add(key)
                    if key in earlier:
                        report.dropped["already_synthesized"] += 1
                        continue
                    if sql_template(variant) in leaked_templates:
                        report.dropped["template_leak"] += 1
                        continue
                    pool.append(Candidate(variant, source_id, f"{method_prefix}{method}"))

        for pair in sources:
            if len(pool) >= wanted:
                break
            add_variants(pair.sql, pair.id)
            bar.advance(task)
        # Higher orders: when one transform per train pair does not give enough, compose them (a new period of
        # another measure, ...), taking the previous order's variants in a seeded order.
        frontier = list(pool)
        for _ in range(MUTATION_DEPTH - 1):
            rng.shuffle(frontier)
            start = len(pool)
            for candidate in frontier:
                if len(pool) >= wanted:
                    break
                add_variants(candidate.sql, candidate.source_id, f"{candidate.method}+")
            frontier = pool[start:]
    rng.shuffle(pool)
    report.generated = len(pool)
    return pool


def validate_candidates(cfg: Config, ds: Dataset, pool: list[Candidate], n: int, report: SynthesisReport,
              bar: Progress) -> list[Candidate]:
    """The first `n` candidates of the pool that pass `data validate`, in pool order (checked in chunks)."""
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


def question_guard(cfg: Config, candidates: list[Candidate], held_out: list[Pair],
                    report: SynthesisReport) -> list[Candidate]:
    """Drop candidates whose question is at least data.dedup_threshold similar to a dev or test question."""
    if not candidates or not held_out:
        return candidates

    similarity = nearest_similarity([c.question for c in candidates], [p.question for p in held_out], cfg)
    kept = [c for c, s in zip(candidates, similarity) if s < cfg.data.dedup_threshold - 1e-6]
    report.dropped["question_leak"] += len(candidates) - len(kept)
    return kept


# ---------------------------------------------------------------- the synthetic file


def write_candidates(ds: Dataset, candidates: list[Candidate]) -> int:
    """Merge candidates into synthetic.jsonl atomically (ids already there or in pairs.jsonl are skipped);
    returns the records the file holds."""
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
            record = candidate_record(c.question, c.sql, id=c.id, tags=["synthetic", c.method], author=AUTHOR,
                                      created=today, notes=with_outcome(f"synthesized from {c.source_id} by {c.method}",
                                                                        c.confirmed, c.reason),
                                      confirmed=c.confirmed)
            lines.append(json.dumps(record, ensure_ascii=False))
        write_text_atomic(path, "".join(line + "\n" for line in lines))
        return len(lines)


def with_outcome(notes: str, confirmed: bool, reason: str) -> str:
    """`notes` with its round-trip outcome (`; confirmed by ...` or `; UNCONFIRMED: why`) replaced by this one.

    >>> with_outcome("synthesized from p-1 by literal; UNCONFIRMED: row count 2 vs 3", True, "")
    'synthesized from p-1 by literal; confirmed by the round trip'
    """
    kept = _OUTCOME.sub("", notes)
    outcome = "confirmed by the round trip" if confirmed else f"UNCONFIRMED: {reason}"
    return f"{kept}; {outcome}" if kept else outcome


def candidate_record(question: str, sql: str, confirmed: bool, **fields: Any) -> dict[str, Any]:
    """A synthetic.jsonl record: pairs.jsonl's keys, split train, plus `confirmed`."""
    pair = Pair(question, sql, split="train", **fields)
    return {**pair.to_record(), "confirmed": confirmed}


def read_candidate_lines(path: Path) -> list[tuple[dict[str, Any], str]]:
    """(record, raw line) of every synthetic record; each record is checked like a pairs.jsonl record.

    Raises:
        DataError: a line is malformed (named file:line).
    """
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
    """Unreviewed synthetic pairs to train on (data.synthetic: include, or confirmed for the round trip's confirmed
    ones only): in file order, at most data.synthetic_ratio x len(curated) of them, none whose id is a curated
    pair's, always in the train split."""
    ds = load_dataset(cfg, dataset)
    taken = {p.id for p in curated}
    confirmed_only = cfg.data.synthetic == "confirmed"
    records = [r for r, _ in read_candidate_lines(ds.path / SYNTHETIC_FILE)
               if r["id"] not in taken and (r.get("confirmed") or not confirmed_only)]
    limit = int(cfg.data.synthetic_ratio * len(curated))
    pairs = [pair_from_record({k: v for k, v in r.items() if k not in EXTRA_FIELDS}) for r in records[:limit]]
    for pair in pairs:
        pair.split = "train"  # never dev or test, whatever the file says
    return pairs


# ---------------------------------------------------------------- progress


class Progress:
    """rich progress bars on stderr (nothing when off)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._bar = None

    def __enter__(self) -> Progress:
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
