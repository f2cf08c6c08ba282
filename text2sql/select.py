"""Candidate selection: of several SQL candidates for one question, the answer most of them agree on.

Self-consistency (Wang et al. 2022, https://arxiv.org/abs/2203.11171) applied to SQL by execution: each
candidate goes through the same SQL check as every generated query (`warehouse.check_sql`) and then the
sandboxed `QueryRunner`. Candidates with no SQL, that fail the check, or that fail or time out in the sandbox
are dropped. The others vote with their result sets (rows as a multiset, numbers by value, column names
ignored): the largest group wins, a tie goes to the group holding the likeliest candidate (the highest sum of
token log-probabilities), and within the winning group the likeliest candidate is the answer. When no
candidate is valid, the first one (the greedy reply) is kept, so a caller still sees what failed.

This module needs DuckDB only through the runner it is given: `predict` on a GPU machine writes the
candidates into the predictions JSONL, and `eval --predictions` selects on a machine with the warehouse.
"""

from __future__ import annotations

import datetime as dt
import decimal
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from text2sql.catalog import SchemaSnapshot, load_snapshot
from text2sql.data import by_database, load_dataset
from text2sql.warehouse import QueryResult, QueryRunner, WarehouseSpec, check_sql

if TYPE_CHECKING:
    from text2sql.config import Config

SIGNIFICANT_DIGITS = 10
"""Floats are compared at this many significant digits when grouping results (sums in another order differ
in the last bits)."""


class CandidateLike(Protocol):
    sql: str | None
    logprob: float


@dataclass
class Selection:
    """Which candidate answers a question, and why."""

    index: int
    """Position of the chosen candidate (0, the greedy reply, when none is valid)."""
    sql: str | None
    votes: int = 0
    """Valid candidates whose result equals the chosen one's."""
    valid: int = 0
    """Candidates that passed the check and ran."""
    candidates: int = 0
    reason: str = ""
    """majority | likelihood (a tie between groups) | single | no valid candidate."""
    errors: list[str] = field(default_factory=list)
    """Why each dropped candidate was dropped (error kind), in candidate order."""
    result: QueryResult | None = field(default=None, compare=False, repr=False)
    """The chosen candidate's result from its run here (None when none is valid), so that serve need not run
    the same SQL again; not part of `to_json`, so eval's output is unchanged."""

    def to_json(self) -> dict[str, Any]:
        return {"index": self.index, "votes": self.votes, "valid": self.valid, "candidates": self.candidates,
                "reason": self.reason}


def select_candidates(items: Sequence[Sequence[CandidateLike]], runner: QueryRunner,
                      snapshot: SchemaSnapshot | None) -> list[Selection]:
    """Pick an answer for each question from its candidates (one list per question), running every valid
    candidate once in the sandbox (in parallel across the runner's workers; identical SQL runs once)."""
    checked: dict[str, str | None] = {}  # sql -> error kind of the check (None = passed)
    for candidates in items:
        for c in candidates:
            if c.sql and c.sql not in checked:
                checked[c.sql] = _check(c.sql, snapshot)
    runnable = [sql for sql, problem in checked.items() if problem is None]
    results = dict(zip(runnable, runner.run_many(runnable, checked=True)))  # checked just above
    return [_select(candidates, checked, results) for candidates in items]


def select_candidate(candidates: Sequence[CandidateLike], runner: QueryRunner,
                     snapshot: SchemaSnapshot | None) -> Selection:
    """`select_candidates` for one question."""
    return select_candidates([candidates], runner, snapshot)[0]


def result_key(result: QueryResult) -> tuple:
    """What two results share when they give the same answer: column count and rows as a sorted multiset,
    numbers by value (1 = 1.0 = Decimal('1.00')), floats to SIGNIFICANT_DIGITS.

    >>> from text2sql.warehouse import QueryResult
    >>> result_key(QueryResult(["n"], [(1,), (2.0,)])) == result_key(QueryResult(["m"], [(2,), (1.0,)]))
    True
    """
    rows = sorted(json.dumps([_value(v) for v in row], default=str) for row in result.rows)
    return len(result.columns), tuple(rows)


def _check(sql: str, snapshot: SchemaSnapshot | None) -> str | None:
    """The error kind that keeps `sql` from running, or None. The one place a candidate is judged before it runs."""
    check = check_sql(sql, snapshot)
    return None if check.ok else check.kind


def _select(candidates: Sequence[CandidateLike], checked: dict[str, str | None],
            results: dict[str, QueryResult]) -> Selection:
    groups: dict[tuple, list[int]] = {}
    errors = []
    for i, c in enumerate(candidates):
        if not c.sql:
            errors.append("no_sql")
            continue
        problem = checked.get(c.sql)
        result = results.get(c.sql)
        if problem is None and result is not None and result.error_kind:
            problem = result.error_kind
        errors.append(problem or "")
        if problem is None:
            groups.setdefault(result_key(result), []).append(i)
    valid = sum(len(g) for g in groups.values())
    if not groups:
        first = candidates[0].sql if candidates else None
        return Selection(0, first, 0, 0, len(candidates), "no valid candidate", errors)

    def likeliest(group: list[int]) -> int:
        return max(group, key=lambda i: (_logprob(candidates[i]), -i))

    ranked = sorted(groups.values(), key=lambda g: (len(g), _logprob(candidates[likeliest(g)])), reverse=True)
    best = ranked[0]
    tied = len(ranked) > 1 and len(ranked[1]) == len(best)
    reason = "single" if len(ranked) == 1 and valid == 1 else "likelihood" if tied else "majority"
    index = likeliest(best)
    return Selection(index, candidates[index].sql, len(best), valid, len(candidates), reason, errors,
                     results[candidates[index].sql])


def _logprob(candidate: CandidateLike) -> float:
    value = getattr(candidate, "logprob", None)
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else -math.inf


def _value(v: Any) -> Any:
    if isinstance(v, bool) or v is None or isinstance(v, str):
        return v
    if isinstance(v, (int, float, decimal.Decimal)):
        x = float(v)
        if not math.isfinite(x):
            return str(x)
        return float(f"{x:.{SIGNIFICANT_DIGITS}g}")
    if isinstance(v, (dt.datetime, dt.date, dt.time)):
        return v.isoformat()
    if isinstance(v, (list, tuple)):
        return [_value(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _value(x) for k, x in v.items()}
    return str(v)


@dataclass(frozen=True)
class StoredCandidate:
    """A candidate as the predictions JSONL stores it (`candidates: [{sql, raw, logprob}]`)."""

    sql: str | None
    raw: str = ""
    logprob: float = -math.inf

    @classmethod
    def from_json(cls, record: dict[str, Any]) -> StoredCandidate:
        sql = record.get("sql")
        logprob = record.get("logprob")
        return cls(sql.strip() or None if isinstance(sql, str) else None, str(record.get("raw") or ""),
                   float(logprob) if isinstance(logprob, (int, float)) else -math.inf)


def read_candidates(path) -> dict[str, dict[str, Any]]:
    """{id: {"candidates": [StoredCandidate], "selection": ... (when predict selected already), "greedy_sql": ...}}
    for the records of a predictions JSONL that carry candidates (`evaluate.read_predictions` has checked the file)."""
    out: dict[str, dict[str, Any]] = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            record = json.loads(line)
            stored = record.get("candidates") if isinstance(record, dict) else None
            if isinstance(stored, list) and stored:
                out[str(record["id"])] = {
                    "candidates": [StoredCandidate.from_json(c) for c in stored if isinstance(c, dict)],
                    "selection": record.get("selection"),
                    "greedy_sql": record.get("greedy_sql", record.get("sql")),
                }
    return out


def open_target(cfg: Config, dataset: str | None, db: str | None) -> tuple[WarehouseSpec, SchemaSnapshot]:
    """WarehouseSpec and SchemaSnapshot of the project lakehouse (db None) or of a benchmark database file
    (as `evaluate` opens them)."""
    if db is None:
        snapshot = load_snapshot(cfg)
        return WarehouseSpec.from_config(cfg, snapshot), snapshot
    path = load_dataset(cfg, str(dataset) if dataset else None).database(db)
    return WarehouseSpec.from_duckdb_file(path), SchemaSnapshot.from_duckdb(path)


@dataclass
class SelectedPredictions:
    """The outcome of `select_predictions`: the SQL to score, and what the greedy replies alone would have been."""

    predictions: dict[str, str | None]
    greedy: dict[str, str | None]
    selections: dict[str, dict[str, Any]]
    """Per id with candidates: `Selection.to_json()`."""
    num_candidates: int
    seconds: float


def select_predictions(cfg: Config, pairs: list, predictions: dict[str, str | None], path,
                       dataset: str | None) -> SelectedPredictions | None:
    """Pick the answer of every pair whose predictions record carries candidates (None when none does).

    Records that `predict --select` has already chosen for keep their `sql`; the others are selected here, on
    the warehouse each pair's db names.
    """
    import time

    stored = read_candidates(path)
    if not stored:
        return None
    started = time.perf_counter()
    chosen, greedy, selections = dict(predictions), dict(predictions), {}
    todo = []  # pairs still to select for
    for pair in pairs:
        record = stored.get(pair.id)
        if record is None:
            continue
        greedy[pair.id] = record["greedy_sql"]
        if isinstance(record["selection"], dict):
            selections[pair.id] = record["selection"]
        else:
            todo.append(pair)
    for db, positions in by_database(todo).items():
        ids = [todo[k].id for k in positions]
        spec, snapshot = open_target(cfg, dataset, db)
        with QueryRunner.from_config(cfg, spec, workers=cfg.eval.workers or 0) as runner:
            picked = select_candidates([stored[i]["candidates"] for i in ids], runner, snapshot)
        for i, selection in zip(ids, picked):
            chosen[i] = selection.sql
            selections[i] = selection.to_json()
    n = max(len(r["candidates"]) for r in stored.values())
    return SelectedPredictions(chosen, greedy, selections, n, time.perf_counter() - started)
