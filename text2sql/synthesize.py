"""`text2sql data synthesize`: new training pairs, SQL first (`text2sql.data.synthesize`), question second.

`text2sql.data.synthesize`'s docstring lists the stages; this module runs them and holds the model steps
(back-translation, round trip), which need the prompt builder, generation and the evaluator's result comparison:
later stages of the pipeline than data. `reconfirm_pairs` runs the round trip alone again over an existing
synthetic.jsonl (with another answering model, say the fine-tuned one).
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from text2sql.catalog import SchemaSnapshot, load_snapshot
from text2sql.data.store import Dataset, Pair, _locked, load_dataset, read_pairs_file, write_text_atomic
from text2sql.data.synthesize import (
    _QUESTION_PREFIX, BACK_TRANSLATION_INSTRUCTIONS, BACK_TRANSLATION_SHOTS, QUESTION_MAX_NEW_TOKENS, SYNTHETIC_FILE,
    Candidate, Progress, SynthesisReport, mutation_pool, question_guard, read_candidate_lines, validate_candidates,
    with_outcome, write_candidates,
)
from text2sql.errors import DataError
from text2sql.evaluate import compare_results
from text2sql.generate import extract_sql, generate, load_generator, prompts_for
from text2sql.models import resolve_model_dir
from text2sql.prompt import ExampleIndex, PromptBuilder, PromptSettings
from text2sql.warehouse import QueryRunner

if TYPE_CHECKING:
    from text2sql.config import Config


def synthesize_pairs(cfg: Config, dataset: str | None = None, n: int = 2000, model: str | None = None,
                     seed: int | None = None, keep_unconfirmed: bool = False, progress: bool = True,
                     answer_model: str | None = None) -> SynthesisReport:
    """Propose up to `n` new validated pairs from the train split into `datasets/<name>/synthetic.jsonl`.

    Args:
        n: candidates to keep (fewer when the mutations run out).
        model: model dir or name that writes the questions (default model.base).
        answer_model: model dir or name that answers them in the round trip, with the prompt it was trained with
            (default `model`): the fine-tuned text->SQL model answers as the trained model will.
        seed: seeds the mutations (default data.seed): the same seed, data and model give the same candidates.
        keep_unconfirmed: keep candidates whose round trip failed, with `confirmed: false`.

    Raises:
        DataError: n is not positive, or the dataset has no train pairs over the project lakehouse.
    """
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
    with Progress(progress) as bar:
        pool = mutation_pool(cfg, ds, snapshot, train, pairs, held_out, seed, n, report, bar)
        valid = validate_candidates(cfg, ds, pool, n, report, bar)
        kept = _questions(cfg, ds, snapshot, valid, train, held_out, model, answer_model, keep_unconfirmed, report,
                          bar)
    report.kept = len(kept)
    report.methods = Counter(c.method for c in kept)
    report.written = write_candidates(ds, kept)
    report.seconds = time.perf_counter() - started
    return report


@dataclass
class ReconfirmReport:
    path: Path
    answer_model: str = ""
    judged: int = 0
    before: int = 0
    """Candidates confirmed before the new round trip."""
    after: int = 0
    gained: int = 0
    """Unconfirmed before, confirmed now."""
    lost: int = 0
    seconds: float = 0.0

    @property
    def pairs_per_s(self) -> float:
        return self.judged / self.seconds if self.seconds else 0.0

    def summary(self) -> str:
        return (f"re-judged {self.judged} candidates of {self.path} with {self.answer_model}: {self.before} confirmed "
                f"before, {self.after} after (+{self.gained}, -{self.lost}); {self.seconds:.1f}s, "
                f"{self.pairs_per_s:.2f} pairs/s")


def reconfirm_pairs(cfg: Config, dataset: str | None = None, answer_model: str | None = None,
                    progress: bool = True) -> ReconfirmReport:
    """Run the round trip again for every candidate of `datasets/<name>/synthetic.jsonl`, confirmed or not, with
    `answer_model` (default model.base), and rewrite the file atomically with the new `confirmed` flags and the
    outcome in `notes`; every other field stays as it was. Nothing is mutated or back-translated.

    Raises:
        DataError: the file is missing, empty or malformed.
    """
    started = time.perf_counter()
    ds = load_dataset(cfg, dataset)
    report = ReconfirmReport(ds.path / SYNTHETIC_FILE)
    records = [record for record, _ in read_candidate_lines(report.path)]
    if not records:
        raise DataError(f"{report.path} is missing or empty: run `text2sql data synthesize` first")
    candidates = [Candidate(r["sql"], "", "", question=r["question"]) for r in records]
    with Progress(progress) as bar:
        gen = _load(cfg, answer_model or cfg.model.base)
        report.answer_model = str(gen.model_dir)
        _round_trip(cfg, ds, load_snapshot(cfg), gen, candidates, bar)
    judged = {(r["id"], r["question"], r["sql"]): c for r, c in zip(records, candidates)}
    with _locked(ds):  # re-read under the lock: a review may have moved records out meanwhile
        lines = []
        for record, raw in read_candidate_lines(report.path):
            candidate = judged.get((record["id"], record["question"], record["sql"]))
            if candidate is not None:
                report.judged += 1
                report.before += record["confirmed"] is True
                report.after += candidate.confirmed
                report.gained += candidate.confirmed and record["confirmed"] is not True
                report.lost += record["confirmed"] is True and not candidate.confirmed
                record.update(confirmed=candidate.confirmed,
                              notes=with_outcome(record.get("notes") or "", candidate.confirmed, candidate.reason))
                raw = json.dumps(record, ensure_ascii=False)
            lines.append(raw)
        write_text_atomic(report.path, "".join(line + "\n" for line in lines))
    report.seconds = time.perf_counter() - started
    return report


def _questions(cfg: Config, ds: Dataset, snapshot: SchemaSnapshot, valid: list[Candidate], train: list[Pair],
               held_out: list[Pair], model: str | None, answer_model: str | None, keep_unconfirmed: bool,
               report: SynthesisReport, bar: Progress) -> list[Candidate]:
    """Back-translate (`train` pairs as the examples), guard against dev/test questions, round-trip; returns the
    candidates to keep."""
    if not valid:
        return []

    gen = _load(cfg, model or cfg.model.base)
    report.model = report.answer_model = str(gen.model_dir)
    task = bar.add("writing questions", len(valid))
    replies = _generate_in_batches(gen, _back_translation_messages(cfg, ds, gen, valid, train), bar, task,
                                   min(QUESTION_MAX_NEW_TOKENS, gen.max_new_tokens))
    for candidate, reply in zip(valid, replies):
        candidate.question = _question_from(reply)
    asked = [c for c in valid if c.question]
    report.dropped["no_question"] += len(valid) - len(asked)
    if answer_model and resolve_model_dir(cfg, answer_model) != gen.model_dir:
        gen.unload()  # before the embedding model of the guard and the answering model load
        gen = None
    asked = question_guard(cfg, asked, held_out, report)
    if not asked:
        return []

    gen = gen or _load(cfg, answer_model)
    report.answer_model = str(gen.model_dir)
    _round_trip(cfg, ds, snapshot, gen, asked, bar)
    report.confirmed = sum(c.confirmed for c in asked)
    if keep_unconfirmed:
        return asked
    report.dropped["unconfirmed"] += len(asked) - report.confirmed
    return [c for c in asked if c.confirmed]


def _generate_in_batches(gen, messages: list, bar: Progress, task, max_new_tokens: int | None = None) -> list[str]:
    """`generate.generate` a batch at a time, so the progress bar moves."""
    replies: list[str] = []
    for start in range(0, len(messages), gen.batch_size):
        batch = messages[start:start + gen.batch_size]
        replies += generate(gen, batch, max_new_tokens)
        bar.advance(task, len(batch))
    return replies


def _back_translation_messages(cfg: Config, ds: Dataset, gen, candidates: list[Candidate], pairs: list[Pair]) -> list:
    """The model's own text->SQL prompt (schema, business definitions) with the instructions turned around and the
    SQL as the user turn, built by the one prompt builder without its k-shot turns (they show question -> SQL). In
    their place, train pairs turned around (user: SQL, assistant: question; `_style_examples`), so the questions
    come out in the team's style. Only `pairs` of the train split are ever shown (never dev or test)."""
    from dataclasses import replace

    settings = gen.settings or PromptSettings(gen.prompt or cfg.prompt, dataset=gen.dataset)
    settings = replace(settings, instructions=BACK_TRANSLATION_INSTRUCTIONS, prompt=replace(settings.prompt, k_shot=0))
    builder = PromptBuilder.for_model(cfg, settings, gen.tokenizer, ds.name, who="synthesize")
    train = [p for p in pairs if p.split == "train"]
    index, by_id = ExampleIndex(train), {p.id: p for p in train}
    out = []
    for candidate in candidates:
        *head, asked = builder.messages(candidate.sql.strip())  # the system message (if the model takes one), the SQL
        shots = [turn for p in _style_examples(candidate, by_id, index)
                 for turn in ({"role": "user", "content": p.sql.strip()},
                              {"role": "assistant", "content": p.question.strip()})]
        out.append([*head, *shots, asked])
    return out


def _style_examples(candidate: Candidate, by_id: dict[str, Pair], index: ExampleIndex) -> list[Pair]:
    """Up to BACK_TRANSLATION_SHOTS pairs to show before a candidate's SQL: its source pair (the mutation changed
    little of it, so its question is the closest model), then the pairs `index` ranks nearest to the source's
    question and the candidate's SQL (BM25 over their questions, ties by id: deterministic)."""
    source = by_id.get(candidate.source_id)
    if source is None:
        return index.search(candidate.sql, BACK_TRANSLATION_SHOTS)
    query = f"{source.question} {candidate.sql}"
    return [source, *index.search(query, BACK_TRANSLATION_SHOTS - 1, db=source.db, exclude_id=source.id)]


def _question_from(reply: str) -> str:
    """The first non-empty line of a reply, without a `Question:` prefix or quotes."""
    for line in reply.splitlines():
        line = _QUESTION_PREFIX.sub("", line).strip().strip('"').strip()
        if line:
            return line
    return ""


def _load(cfg: Config, model: str):
    """`load_generator`, quietly (the "Loading weights" bar would break up ours)."""
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
    return load_generator(model, cfg)


def _round_trip(cfg: Config, ds: Dataset, snapshot: SchemaSnapshot, gen, candidates: list[Candidate],
                bar: Progress) -> None:
    """Set `confirmed` and `reason` on each candidate: does the SQL `gen` writes for its question, prompted as
    that model was trained (`prompts_for`, as predict), return the synthetic SQL's result?"""
    task = bar.add("round trip", len(candidates))
    pairs = [Pair(c.question, c.sql, id=c.id) for c in candidates]
    replies = _generate_in_batches(gen, prompts_for(cfg, gen, pairs, ds.name), bar, task)
    answers = [extract_sql(r) for r in replies]
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
