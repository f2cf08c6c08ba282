"""Scoring predictions: run gold and predicted SQL in the sandbox, judge each prediction, cache gold results."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pickle
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from sqlglot import exp

from text2sql.data.compare import _parse, compare_results, exact_match, tie_query
from text2sql.errors import DataError
from text2sql.evaluate.predictions import _to_duckdb, extract_sql
from text2sql.evaluate.records import Example, Judgement
from text2sql.select import open_target
from text2sql.vocab import EVAL_MODES as MODES
from text2sql.warehouse import QueryRunner, SQLCheck, spec_fingerprint

if TYPE_CHECKING:
    from text2sql.config import Config

VERDICTS = (
    "correct", "wrong_result", "no_sql", "parse_error", "unknown_table", "unknown_column",
    "refused", "runtime_error", "timeout",
)
VALID_SQL_VERDICTS = ("correct", "wrong_result")
"""Predictions that ran to a result: what the valid-SQL rate counts."""
GOLD_CACHE_DIR = ".cache/gold"
GOLD_CACHE_FORMAT = 2


@dataclass
class ScoredRun:
    """What `score_pairs` found: one record per scored example, the excluded ones, the targets' fingerprints."""

    examples: list[Example] = field(default_factory=list)
    excluded: list[Example] = field(default_factory=list)
    """Examples whose gold failed, timed out or exceeded the row cap: left out of every metric."""
    schemas: dict[str, str] = field(default_factory=dict)
    """Fingerprint of each database evaluated on ("lakehouse" or the pair's db id)."""
    engines: dict[str, str] = field(default_factory=dict)
    """The warehouse engine each database ran on (materialized, iceberg, duckdb)."""


def score_pairs(
    cfg: Config,
    pairs: list,
    predictions: dict[str, str | None],
    *,
    dataset: str | Path | None = None,
    mode: str | None = None,
    workers: int | None = None,
    use_cache: bool = True,
    cache_dir: Path | None = None,
    dialects: dict[str, str] | None = None,
    progress: Callable[[int], Any] | None = None,
) -> ScoredRun:
    """Run every pair's gold and predicted SQL in the sandbox and judge the prediction.

    Pairs with `db` null run on the project lakehouse; others on the DuckDB file that the dataset's
    dataset.yaml lists for that db (`dataset`: a name under data.datasets_dir or a directory).
    `predictions` maps ids to replies (or plain SQL), each judged whole by `warehouse.judge_reply` inside the
    workers; gold SQL goes through the same judge, and a gold it does not pass is excluded, so golds and
    predictions are treated alike. A pair with no prediction scores `no_sql`. Gold results are cached under
    `.cache/gold/` (by SQL and database fingerprint; `cache_dir` overrides the directory) unless `use_cache` is False.
    `dialects` ({id: dialect}, see `read_prediction_dialects`): predictions written for SQLite are rewritten for
    DuckDB first, and their records keep the SQL as written in `predicted_sqlite`.
    `progress(1)` is called as each pair is judged.
    """
    mode = mode or cfg.eval.mode
    if mode not in MODES:
        raise DataError(f"mode {mode!r} is not one of {', '.join(MODES)}")
    workers = workers or cfg.eval.workers or os.cpu_count() or 1
    scored = ScoredRun()
    by_db: dict[str | None, list] = {}
    for pair in pairs:
        by_db.setdefault(getattr(pair, "db", None), []).append(pair)
    cache_root = Path(cache_dir) if cache_dir else cfg.path(GOLD_CACHE_DIR)

    def open_group(db):
        spec, snapshot = open_target(cfg, dataset, db)
        return spec, snapshot, QueryRunner.from_config(cfg, spec, workers=workers, snapshot=snapshot).start()

    groups = list(by_db.items())
    # Each database is opened (schema read, binder made, workers started: ~0.2 s of CPU) in a thread while the one
    # before is scored, not between the two while every core waits.
    with ThreadPoolExecutor(1) as opener:
        opening = opener.submit(open_group, groups[0][0]) if groups else None
        try:
            for i, (db, group) in enumerate(groups):
                spec, snapshot, runner = opening.result()
                opening = opener.submit(open_group, groups[i + 1][0]) if i + 1 < len(groups) else None
                _score_target(cfg, db, group, predictions, spec, snapshot, runner, cache_root if use_cache else None,
                              mode, scored, dialects, progress)
        finally:
            if opening is not None:  # stopped early: the next database's workers are not needed
                opening.add_done_callback(lambda f: f.exception() or f.result()[2].close())
    order = {p.id: i for i, p in enumerate(pairs)}
    scored.examples.sort(key=lambda e: order[e.id])
    scored.excluded.sort(key=lambda e: order[e.id])
    return scored


def _score_target(cfg, db, group, predictions, spec, snapshot, runner, cache_root, mode, scored, dialects,
                  progress) -> None:
    """Score the pairs of one database with its runner (closed afterwards)."""
    with runner:
        fingerprint = _target_fingerprint(spec, snapshot)
        scored.schemas[db or "lakehouse"] = snapshot.fingerprint
        cache = _GoldCache(cache_root, fingerprint, cfg.warehouse.max_rows) if cache_root else None
        scored.engines[db or "lakehouse"] = spec.engine
        group_predictions, as_written = _to_duckdb(predictions, group, dialects or {}, snapshot)
        _score_group(group, group_predictions, snapshot, runner, cache, mode, cfg.eval.rel_tol, scored, progress)
    for record in scored.examples + scored.excluded:
        if record.id in as_written:
            record.predicted_sqlite = as_written[record.id]


def _score_group(pairs, predictions, snapshot, runner, cache, mode, rel_tol, scored: ScoredRun, progress=None) -> None:
    with ThreadPoolExecutor(runner.size) as pool:
        golds = _GoldRuns(runner, pool, cache)
        golds.request(list(dict.fromkeys(p.sql for p in pairs)))
        # Each reply is judged and, when it passes, run in a worker, in parallel with the gold queries; a reply that
        # is its gold's text (but for spacing) gets the gold's verdict and result, and replies of the same text are
        # judged and run once: same text, same judge, same query.
        by_text: dict[str, Any] = {}
        for pair in pairs:
            reply = predictions.get(pair.id)
            if reply and reply not in by_text and not _same_text(reply, pair.sql):
                # A reply refused on its text alone (`DROP ...; SELECT ...`) needs no worker's round trip.
                here = runner.judge_here(reply)
                by_text[reply] = None if here is None else _done(here)
        by_text.update(_judged_in_batches(runner, pool, [r for r, f in by_text.items() if f is None]))
        pending = {pair.id: None if _same_text(predictions[pair.id], pair.sql) else by_text[predictions[pair.id]]
                   for pair in pairs if predictions.get(pair.id)}
        retry = []
        for pair in pairs:
            if progress:
                progress(1)
            gold_check, gold = golds.result(pair.sql)
            reply = predictions.get(pair.id)
            if pair.id not in pending:
                pred_sql, check, pred = None, None, None
            elif pending[pair.id] is None:
                pred_sql, check, pred = extract_sql(reply), gold_check, gold
            else:
                pred_sql, check, pred = pending[pair.id].result()
            record = Example(
                id=pair.id, question=getattr(pair, "question", ""), gold=pair.sql, predicted=pred_sql,
                # the raw reply, next to the SQL judged in it
                raw=reply if reply and reply.strip() != pred_sql else None,
                db=getattr(pair, "db", None), difficulty=getattr(pair, "difficulty", None) or "unknown",
                tags=list(getattr(pair, "tags", None) or []),
                tables=gold_check.tables if gold_check.ok else _tables(pair.sql, snapshot),
            )
            problem = _gold_problem(gold_check, gold, runner.max_rows)
            if problem:
                record.reason = problem
                scored.excluded.append(record)
                continue
            case = Case(pair.sql, gold, pred_sql, check, pred)
            record.judged(_judge(case, mode=mode, rel_tol=rel_tol, timeout_s=runner.timeout_s))
            record.empty_gold = not gold.rows
            record.exact_match = _exact_match(pair.sql, pred_sql, check, record.verdicts)
            scored.examples.append(record)
            if record.verdicts["strict"] == "wrong_result" and (untied := tie_query(pair.sql)):
                if _same_shape(gold, pred):
                    retry.append((record, case, untied))
                else:  # wrong whatever rows tie: not run again, reported as re-judged ones are (diff last)
                    record.rejudged = True
        # Under ORDER BY ... LIMIT, a prediction may have kept other rows tied with the gold's last ones. Only for
        # predictions that look wrong in strict mode (the only one that reads the tied rows) with the gold's shape,
        # run the gold without its LIMIT (cached too) and judge again.
        golds.request(list(dict.fromkeys(untied for _, _, untied in retry)))
        for record, case, untied in retry:
            _, tie = golds.result(untied)
            if tie is not None and not tie.error_kind:
                record.judged(_judge(case, tie.rows, mode=mode, rel_tol=rel_tol, timeout_s=runner.timeout_s))
                record.rejudged = True


class _GoldRuns:
    """Gold (check, result) by SQL: from the disk cache, or judged and run once in the pool (and then cached)."""

    def __init__(self, runner, pool, cache) -> None:
        self.runner, self.pool, self.cache = runner, pool, cache
        self.results: dict[str, Any] = {}

    def request(self, sqls: list[str]) -> None:
        todo = []
        for sql in sqls:
            if sql not in self.results:
                cached = self.cache.get(sql) if self.cache else None
                self.results[sql] = cached
                if cached is None:
                    todo.append(sql)
        self.results.update(_judged_in_batches(self.runner, self.pool, todo, self._ran))

    def _ran(self, sql: str, answer):
        _, check, result = answer
        if self.cache:
            self.cache.put(sql, check, result)
        return check, result

    def result(self, sql: str):
        value = self.results[sql]
        return value.result() if hasattr(value, "result") and callable(value.result) else value


class Case(NamedTuple):
    """One prediction to judge: the gold query and result, the predicted SQL, its SQL check and result."""

    gold_sql: str
    gold: Any
    pred_sql: str | None
    check: Any
    pred: Any


def _judge(case: Case, tie_rows: list[tuple] | None = None, *, mode: str, rel_tol: float,
           timeout_s: float) -> Judgement:
    """Verdict, reason (and diff) of one prediction, under the chosen mode and every other mode."""
    pred_sql, check, pred = case.pred_sql, case.check, case.pred
    if not pred_sql:
        verdict, reason = "no_sql", "no SQL in the prediction"
    elif not check.ok:
        verdict, reason = check.kind, check.message
    elif pred.error_kind == "timeout":
        verdict, reason = "timeout", f"stopped at the {timeout_s:g} s timeout (warehouse.timeout_s)"
    elif pred.error_kind:
        verdict, reason = pred.error_kind, pred.error
    elif pred.truncated:
        verdict, reason = "wrong_result", f"the prediction returned more than {len(pred.rows)} rows (the row cap)"
    else:
        # Only the chosen mode's diff is reported: the other modes give their verdicts only.
        comparisons = {
            m: compare_results(case.gold, pred, gold_sql=case.gold_sql, mode=m, rel_tol=rel_tol, tie_rows=tie_rows,
                               with_diff=m == mode)
            for m in MODES
        }
        chosen = comparisons[mode]
        return Judgement("correct" if chosen.equal else "wrong_result", chosen.reason,
                         {m: "correct" if c.equal else "wrong_result" for m, c in comparisons.items()},
                         chosen.diff or None)
    return Judgement(verdict, reason, {m: verdict for m in MODES})


WORKER_BATCH = 16
"""Replies sent to a worker in one message (its answers still come back one by one, as each is ready)."""


def _judged_in_batches(runner, pool, replies: list[str], then: Callable | None = None) -> dict[str, Future]:
    """A future per reply of `runner.judge_and_run(reply)` (or `then(reply, answer)`), the replies sent to the
    workers WORKER_BATCH to a message (fewer when there are few, so that every worker gets some)."""
    futures = {reply: Future() for reply in replies}
    size = max(1, min(WORKER_BATCH, len(replies) // (4 * runner.size)))

    def run(batch: list[str]) -> None:
        try:
            for i, answer in runner.judge_and_run_each(batch):
                futures[batch[i]].set_result(then(batch[i], answer) if then else answer)
        except BaseException as exc:
            for reply in batch:
                if not futures[reply].done():
                    futures[reply].set_exception(exc)

    for start in range(0, len(replies), size):
        pool.submit(run, replies[start:start + size])
    return futures


def _done(value) -> Future:
    future: Future = Future()
    future.set_result(value)
    return future


def _same_shape(gold, pred) -> bool:
    """Whether a predicted result has the gold's row and column counts (and was not cut at the row cap): else its
    strict verdict is wrong_result whatever rows tie with the gold's last ones."""
    return not pred.truncated and len(pred.columns) == len(gold.columns) and len(pred.rows) == len(gold.rows)


def _same_text(a: str, b: str) -> bool:
    return " ".join(a.split()) == " ".join(b.split())


def _exact_match(gold_sql: str, pred_sql: str | None, check, verdicts: dict) -> bool:
    """`exact_match`, parsed only for a prediction whose result matched the gold's in some mode: the same query
    gives the same result, so a prediction that matched in no mode is no exact match (sqlglot's normalization
    costs more than judging and running the query)."""
    if not (check and check.ok):
        return False
    if _same_text(gold_sql, pred_sql):
        return True
    return "correct" in verdicts.values() and exact_match(gold_sql, pred_sql)


def _gold_problem(check, gold, max_rows: int) -> str:
    """Why a gold result cannot be scored against, or '' when it can."""
    if not check.ok:  # judged as a prediction would be: a gold that would score 0 as a prediction is no gold
        return f"gold query not accepted by the SQL check ({check.kind}): {check.message}"
    if gold.error_kind:
        return f"gold query failed ({gold.error_kind}): {gold.error}"
    if gold.truncated:
        return f"gold result has more than {max_rows} rows (warehouse.max_rows): it cannot be compared exactly"
    return ""


def _tables(sql: str, snapshot) -> list[str]:
    """Qualified names of the snapshot tables a gold query reads (names it cannot resolve kept as written)."""
    tree = _parse(sql)
    if tree is None:
        return []
    ctes = {cte.alias_or_name.lower() for cte in tree.find_all(exp.CTE)}
    names = set()
    for table in tree.find_all(exp.Table):
        if table.name and not (not table.db and table.name.lower() in ctes):
            written = ".".join(p for p in (table.db, table.name) if p)
            names.add(snapshot.resolve(written) or written)
    return sorted(names)


def _target_fingerprint(spec, snapshot) -> str:
    """Identifies the data a query sees: schema snapshot, how it is opened and, for a file, its version on disk."""
    parts = [snapshot.fingerprint, spec_fingerprint(spec)]
    if spec.database != ":memory:" and Path(spec.database).is_file():
        st = Path(spec.database).stat()
        parts += [str(st.st_size), str(st.st_mtime_ns)]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


class _CachedResult(NamedTuple):
    columns: list[str]
    rows: list[tuple]
    error_kind: str | None
    error: str
    truncated: bool


class _GoldCache:
    """Gold (check, result) on disk, one pickle per (gold SQL, database fingerprint, row cap, DuckDB version)."""

    def __init__(self, root: Path, fingerprint: str, max_rows: int) -> None:
        import duckdb

        self.root, self.salt = root, [GOLD_CACHE_FORMAT, fingerprint, max_rows, duckdb.__version__]
        self._made: set[str] = set()
        """Directories this cache has made or found (a put tries each once, not once per file)."""

    def _path(self, sql: str) -> str:
        key = hashlib.sha256(json.dumps([*self.salt, sql]).encode()).hexdigest()
        return os.path.join(self.root, key[:2], f"{key}.pkl")

    def get(self, sql: str):
        """(SQLCheck, _CachedResult or None), or None when not cached."""
        path = self._path(sql)
        try:
            with open(path, "rb") as f:
                check, result = pickle.load(f)
            return SQLCheck(*check), (_CachedResult(*result) if result is not None else None)
        except (OSError, pickle.UnpicklingError, EOFError, TypeError, ValueError, AttributeError):
            return None  # missing or unreadable: run the query again

    def put(self, sql: str, check, result) -> None:
        if result is not None and result.error_kind == "timeout":  # may pass on a less busy machine: don't remember it
            return
        path = self._path(sql)
        value = ((check.ok, check.kind, check.message, list(check.tables)),
                 None if result is None else
                 (list(result.columns), list(result.rows), result.error_kind, result.error, result.truncated))
        _write_new(path, pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL), self._made)


def _write_new(path: str, data: bytes, made: set[str]) -> None:
    """`text2sql.files.write_atomic` for a cache file, at half its cost (a cold run writes one per distinct gold): the directory
    made once per cache, and a temp name unique to this process and thread instead of mkstemp's."""
    parent = os.path.dirname(path)
    if parent not in made:
        os.makedirs(parent, exist_ok=True)
        made.add(parent)
    tmp = f"{path}.{os.getpid()}-{threading.get_ident()}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
