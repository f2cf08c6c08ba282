"""`evaluate`: a predictions file scored on a dataset split becomes a release report (metrics and inputs)."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
import sys
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

import sqlglot

from text2sql import __version__
from text2sql.data import load_pairs, question_subset
from text2sql.errors import DataError
from text2sql.evaluate.predictions import read_prediction_dialects, read_predictions
from text2sql.evaluate.records import Example, Report
from text2sql.evaluate.report import write_report
from text2sql.evaluate.scoring import VALID_SQL_VERDICTS, VERDICTS, ScoredRun, score_pairs
from text2sql.files import sha256_file
from text2sql.generate import stats_path
from text2sql.progress import format_seconds, progress_bar
from text2sql.select import select_predictions
from text2sql.vocab import DIALECT, DIFFICULTIES
from text2sql.vocab import EVAL_MODES as MODES

if TYPE_CHECKING:
    from text2sql.config import Config

RELEASE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
DIFFICULTY_ORDER = {d: i for i, d in enumerate(DIFFICULTIES)}
"""Slices are listed in this order (then by name)."""


def evaluate(
    cfg: Config,
    predictions_path: str | Path,
    dataset: str | None = None,
    split: str | None = "test",
    mode: str | None = None,
    release: str | None = None,
    model: str | None = None,
    dialect: str | None = None,
    force: bool = False,
) -> dict:
    """Score a predictions file against a dataset split and write the release report.

    Args:
        cfg: the project config (warehouse sandbox settings, eval.mode, eval.reports_dir, eval.workers).
        predictions_path: JSONL of {"id", "sql"} (see `read_predictions`).
        dataset: dataset name under data.datasets_dir (default data.dataset).
        split: the split scored (default eval.split when None); "all" scores every pair. `eval.max_questions`
            limits it to a subset (`data.question_subset`), which the report's "subset" states.
        mode: strict | lenient | set (default eval.mode).
        release: report directory name under eval.reports_dir (default: a timestamp).
        model: what produced the predictions, recorded in the report.
        dialect: the SQL dialect of predictions without a "dialect" field: duckdb (default) or sqlite (rewritten
            for DuckDB as the Spider import rewrites golds).
        force: replace an existing report of the same release (refused otherwise).

    Returns:
        The report's JSON form (`Report.to_json`, also written as report.json, report.md and report.html) and
        its "path", the directory.

    Raises:
        DataError: bad predictions file, unknown mode, bad release name, a report of that release exists
            (without `force`), or dataset problems from `load_pairs`.
    """
    mode = mode or cfg.eval.mode
    if mode not in MODES:
        raise DataError(f"--mode {mode!r} is not one of {', '.join(MODES)}")
    release = release or time.strftime("%Y%m%d-%H%M%S")
    check_release_free(cfg, release, force)
    split = split or cfg.eval.split
    dataset = dataset or cfg.data.dataset
    every = load_pairs(cfg, dataset, None if split == "all" else split)
    pairs = question_subset(every, cfg.eval.max_questions)
    predictions = read_predictions(predictions_path, {p.id for p in load_pairs(cfg, dataset)})
    dialects = read_prediction_dialects(predictions_path, dialect or DIALECT)
    started = time.perf_counter()
    # records with candidates: pick each answer first
    selected = select_predictions(cfg, pairs, predictions, predictions_path, dataset)
    print(f"eval: scoring {len(pairs)} {dataset}/{split} predictions ({mode})", file=sys.stderr, flush=True)
    with progress_bar("eval", len(pairs), "q") as advance:
        scored = score_pairs(cfg, pairs, selected.predictions if selected else predictions, dataset=dataset, mode=mode,
                             dialects=dialects, progress=advance)
    print(f"eval: scored in {format_seconds(time.perf_counter() - started)}", file=sys.stderr, flush=True)
    report = Report(
        release=release, mode=mode, model=model, dataset=dataset, split=split,
        created=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        metrics=compute_metrics(scored.examples, scored.excluded, mode),
        examples=scored.examples, excluded=scored.excluded,
        inputs=_inputs(cfg, pairs, predictions_path, scored.schemas, scored.engines),
    )
    report.inputs["predictions"]["dialects"] = dict(Counter(dialects.get(p.id, DIALECT) for p in pairs))
    if len(pairs) < len(every):  # said wherever the EX is shown: it is not the split's EX
        report.subset = {"questions": len(pairs), "of": len(every), "max_questions": cfg.eval.max_questions,
                         "how": f"evenly spaced in the split's file order (pair i * {len(every)} // {len(pairs)})"}
    if selected is not None:
        report.selection = _selection_metrics(cfg, pairs, scored, selected, predictions_path, dataset, mode, dialects)
    report.metrics["elapsed_s"] = round(time.perf_counter() - started, 3)
    out = cfg.path(cfg.eval.reports_dir) / release
    body = report.to_json()
    write_report(body, out)
    return {**body, "path": str(out)}


def _selection_metrics(cfg: Config, pairs: list, scored: ScoredRun, selected, predictions_path, dataset, mode,
                       dialects) -> dict:
    """Candidate selection's gain (EX of the selected answers against the greedy replies alone, scored the same
    way) next to its cost (predictions/s of the run that made the candidates, from predict's stats file)."""
    changed = [p for p in pairs if selected.greedy.get(p.id) != selected.predictions.get(p.id)]
    rescored = score_pairs(cfg, changed, selected.greedy, dataset=dataset, mode=mode,
                           dialects=dialects).examples if changed else []
    greedy_correct = {e.id: e.verdict == "correct" for e in scored.examples}
    greedy_correct.update({e.id: e.verdict == "correct" for e in rescored if e.id in greedy_correct})
    n = len(scored.examples)
    ex_greedy = round(sum(greedy_correct.values()) / n, 4) if n else 0.0
    ex_selected = compute_metrics(scored.examples, scored.excluded, mode)["ex"]
    reasons = Counter(s.get("reason", "") for s in selected.selections.values())
    stats_file = stats_path(predictions_path)
    stats = json.loads(stats_file.read_text()) if stats_file.is_file() else {}
    return {
        "num_candidates": selected.num_candidates, "questions": len(selected.selections), "changed": len(changed),
        "ex_greedy": ex_greedy, "ex_selected": ex_selected, "gain": round(ex_selected - ex_greedy, 4),
        "reasons": dict(reasons), "predictions_per_s": stats.get("predictions_per_s"),
        "greedy_predictions_per_s": stats.get("greedy_predictions_per_s"),
        "selection_s": round(selected.seconds, 3),
    }


def check_release_free(cfg: Config, release: str, force: bool = False) -> Path:
    """The report dir of `release`; refuses a bad name, or a report already there unless `force` (releases are kept)."""
    if not RELEASE_NAME.match(release):
        raise DataError(f"release name {release!r}: use letters, digits, '.', '_' or '-' (it names a directory)")
    out = cfg.path(cfg.eval.reports_dir) / release
    if (out / "report.json").exists() and not force:
        raise DataError(f"release report {out} exists: --force replaces it, or choose another --release")
    return out


def compute_metrics(examples: list[Example] | list[dict], excluded: list, mode: str) -> dict:
    """EX overall and by slice, valid-SQL rate, exact match, EX per mode, verdict counts, gold problems.

    `examples`: `Example` records or their report.json objects (read alike)."""
    n = len(examples)

    def rate(items, ok=lambda e: e["verdict"] == "correct") -> float:
        return round(sum(1 for e in items if ok(e)) / len(items), 4) if items else 0.0

    def sliced(key) -> dict:
        groups: dict[str, list] = {}
        for e in examples:
            values = e[key] if isinstance(e[key], list) else [e[key]]
            for value in values:
                groups.setdefault(str(value), []).append(e)
        ordered = sorted(groups.items(), key=lambda kv: (DIFFICULTY_ORDER.get(kv[0], len(DIFFICULTY_ORDER)), kv[0]))
        return {k: {"ex": rate(v), "n": len(v), "correct": sum(e["verdict"] == "correct" for e in v)}
                for k, v in ordered}

    nonempty = [e for e in examples if not e.get("empty_gold")]
    return {
        "ex": rate(examples),
        "n": n,
        "correct": sum(e["verdict"] == "correct" for e in examples),
        "ex_by_difficulty": sliced("difficulty"),
        "ex_by_tag": sliced("tags"),
        "ex_by_table": sliced("tables"),
        "valid_sql_rate": rate(examples, lambda e: e["verdict"] in VALID_SQL_VERDICTS),
        "exact_match": rate(examples, lambda e: e.get("exact_match", False)),
        "ex_by_mode": {m: rate(examples, lambda e, m=m: e["verdicts"][m] == "correct") for m in MODES},
        "verdicts": {v: c for v in VERDICTS if (c := sum(e["verdict"] == v for e in examples))},
        "gold_errors": len(excluded),
        "empty_gold": sum(1 for e in examples if e.get("empty_gold")),
        "ex_nonempty_gold": rate(nonempty),
    }


def _inputs(cfg: Config, pairs: list, predictions_path, schemas: dict[str, str],
            engines: dict[str, str] | None = None) -> dict:
    """What the run depended on, so two reports can be told apart (or shown to be comparable)."""
    from importlib.metadata import PackageNotFoundError, version

    import duckdb

    def installed(name: str) -> str | None:
        try:
            return version(name)
        except PackageNotFoundError:
            return None

    canonical = json.dumps(
        [[p.id, p.question, p.sql, getattr(p, "db", None), getattr(p, "difficulty", None), list(p.tags or [])]
         for p in pairs],
        sort_keys=True,
    )
    combined = schemas.get("lakehouse") if list(schemas) == ["lakehouse"] else hashlib.sha256(
        json.dumps(schemas, sort_keys=True).encode()).hexdigest()
    return {
        "dataset_hash": hashlib.sha256(canonical.encode()).hexdigest(),
        "schema_fingerprint": combined,
        "schemas": schemas,
        "predictions": {"path": str(predictions_path), "sha256": sha256_file(Path(predictions_path))},
        "versions": {"text2sql": __version__, "duckdb": duckdb.__version__, "sqlglot": sqlglot.__version__,
                     "pyiceberg": installed("pyiceberg")},
        "settings": {"mode_rel_tol": cfg.eval.rel_tol, "timeout_s": cfg.warehouse.timeout_s,
                     "max_rows": cfg.warehouse.max_rows, "memory_limit": cfg.warehouse.memory_limit,
                     # the engine that ran (auto resolved): one name when all databases ran on the same one
                     "engine": (next(iter(set(engines.values()))) if len(set(engines.values())) == 1 else engines)
                     if engines else cfg.warehouse.engine},
    }
