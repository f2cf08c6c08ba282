"""`data validate`: is every pair's SQL one read-only query that resolves, runs, and always gives the same answer?

Per pair, in order:
1. `check_sql` against the pair's schema: parse_error, refused (more than one statement, a write, a forbidden
   function), unknown_table, unknown_column (with the closest name) are errors.
2. Execution in the sandbox (`QueryRunner`, timeout): runtime_error and timeout are errors.
3. Warnings: empty_result (no rows, or one row of NULLs), large_result (hit the row cap), volatile_function
   (now(), current_date, random(): the answer changes with time), limit_ties (ORDER BY ... LIMIT cuts through rows
   that tie on the ORDER BY keys but differ), limit_without_order (LIMIT picks arbitrary rows), unstable_result
   (two runs gave different results).

Ties are found by running a probe per LIMIT (top level, subqueries and CTEs alike): the same SELECT with the
ORDER BY key expressions appended as extra output columns and the limit raised by one (and the offset lowered by
one), so the rows on both sides of each cut and their key values are visible. A cut is ambiguous when the two
rows have equal keys but different output. Probes that cannot run alone (correlated subqueries) are skipped.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlglot import exp

from text2sql.catalog import SchemaSnapshot, load_snapshot
from text2sql.data.analysis import parse_sql
from text2sql.data.definitions import DEFINITIONS_FILE, check_definitions, read_definitions
from text2sql.data.store import Dataset, Pair, load_dataset, load_pairs
from text2sql.errors import DataError
from text2sql.vocab import DIALECT
from text2sql.warehouse import QueryResult, QueryRunner, WarehouseSpec, check_sql

if TYPE_CHECKING:
    from text2sql.config import Config

ERROR_KINDS = ("parse_error", "refused", "unknown_table", "unknown_column", "unknown_db", "runtime_error", "timeout")
WARNING_KINDS = ("empty_result", "large_result", "volatile_function", "limit_ties", "limit_without_order",
                 "unstable_result")
_VOLATILE_NODES = (exp.Rand, exp.Uuid, exp.CurrentDate, exp.CurrentTimestamp, exp.CurrentTime, exp.Localtimestamp)
_VOLATILE_NAMES = frozenset({"now", "get_current_timestamp", "get_current_time", "setseed", "current_localtime",
                             "transaction_timestamp", "statement_timestamp"})
_KEY_PREFIX = "__t2s_key"


@dataclass
class Problem:
    kind: str
    message: str

    @property
    def severity(self) -> str:
        return "error" if self.kind in ERROR_KINDS else "warning"

    def __str__(self) -> str:
        return f"{self.kind}: {self.message}"


@dataclass
class PairReport:
    id: str
    db: str | None
    problems: list[Problem] = field(default_factory=list)
    rows: int | None = None
    """Result rows of the first run (None when it did not run)."""
    elapsed_s: float | None = None

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "warning"]

    @property
    def status(self) -> str:
        return "error" if self.errors else "warning" if self.warnings else "ok"

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "db": self.db, "status": self.status, "rows": self.rows,
                "elapsed_s": None if self.elapsed_s is None else round(self.elapsed_s, 4),
                "problems": [{"kind": p.kind, "severity": p.severity, "message": p.message} for p in self.problems]}


@dataclass
class ValidationReport:
    pairs: list[PairReport]
    seconds: float = 0.0
    definitions: list[str] = field(default_factory=list)
    """Problems of the dataset's definitions.yaml (`check_definitions`); each one fails validation."""

    def count(self, status: str) -> int:
        return sum(1 for r in self.pairs if r.status == status)

    def passed(self, strict: bool = False) -> bool:
        """No errors (and, when strict, no warnings either)."""
        return self.count("error") == 0 and not self.definitions and (not strict or self.count("warning") == 0)

    def by_kind(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for r in self.pairs:
            for p in r.problems:
                counts[p.kind] = counts.get(p.kind, 0) + 1
        return dict(sorted(counts.items()))

    def summary(self) -> str:
        kinds = ", ".join(f"{k} {n}" for k, n in self.by_kind().items())
        defs = f"; definitions: {len(self.definitions)} errors" if self.definitions else ""
        return (f"{len(self.pairs)} pairs: {self.count('ok')} ok, {self.count('warning')} with warnings, "
                f"{self.count('error')} with errors" + (f" ({kinds})" if kinds else "") + defs
                + f" in {self.seconds:.1f}s")

    def to_json(self) -> dict[str, Any]:
        return {"summary": {"pairs": len(self.pairs), "ok": self.count("ok"), "warning": self.count("warning"),
                            "error": self.count("error"), "by_kind": self.by_kind(), "seconds": round(self.seconds, 2)},
                "definitions": list(self.definitions), "pairs": [r.to_json() for r in self.pairs]}


def validate_pairs(cfg: Config, pairs: list[Pair] | None = None, dataset: str | None = None,
                   timeout_s: float | None = None, workers: int = 0, ds: Dataset | None = None,
                   with_definitions: bool = False) -> ValidationReport:
    """Check, run and probe every pair (default: all pairs of the dataset). Bad SQL never raises: it is reported.

    Args:
        pairs: the pairs to check; pairs whose `db` is set use that database of the dataset's dataset.yaml.
        timeout_s: per query (default warehouse.timeout_s).
        workers: query worker processes (0 = one per CPU core, at most one per pair).
        with_definitions: also check the dataset's definitions.yaml against schemas/ (`check_definitions`).

    Raises:
        DataError: the dataset cannot be read. SchemaSnapshotError: schemas/ is missing or stale.
    """
    started = time.perf_counter()
    ds = ds or load_dataset(cfg, dataset)
    if pairs is None:
        pairs = load_pairs(cfg, dataset)
    reports = {id(p): PairReport(p.id, p.db) for p in pairs}
    by_db: dict[str | None, list[Pair]] = {}
    for p in pairs:
        by_db.setdefault(p.db, []).append(p)
    for db, group in by_db.items():
        _validate_group(cfg, ds, db, group, [reports[id(p)] for p in group], timeout_s, workers)
    definition_problems = _check_definitions_file(cfg, ds) if with_definitions else []
    return ValidationReport([reports[id(p)] for p in pairs], time.perf_counter() - started, definition_problems)


def _check_definitions_file(cfg: Config, ds: Dataset) -> list[str]:
    """Problems of the dataset's definitions.yaml (none when it has none)."""
    try:
        defs = read_definitions(ds.path / DEFINITIONS_FILE)
    except DataError as exc:
        return [str(exc)]
    return check_definitions(defs, load_snapshot(cfg)) if defs else []


def _validate_group(cfg: Config, ds: Dataset, db: str | None, pairs: list[Pair], reports: list[PairReport],
                    timeout_s: float | None, workers: int) -> None:
    """The steps of the module docstring, for the pairs of one database."""
    target = _open_database(cfg, ds, db, reports)
    if target is None:
        return
    snapshot, spec = target
    runnable = _check_statically(pairs, reports, snapshot)
    if not runnable:
        return
    workers = min(workers or os.cpu_count() or 1, len(runnable))
    limits = {"timeout_s": timeout_s} if timeout_s else {}
    with QueryRunner.from_config(cfg, spec=spec, workers=workers, **limits) as runner:
        ran = _run_once(runner, runnable)
        _run_again(runner, ran)
        _probe_limits(runner, ran)


def _open_database(cfg: Config, ds: Dataset, db: str | None, reports: list[PairReport]):
    """(snapshot, warehouse spec) of the lakehouse or a benchmark database; None (and errors) if it is unknown."""
    if db is None:
        return load_snapshot(cfg), WarehouseSpec.from_config(cfg)
    try:
        path = ds.database(db)
    except DataError as exc:
        for r in reports:
            r.problems.append(Problem("unknown_db", str(exc)))
        return None
    return SchemaSnapshot.from_duckdb(path), WarehouseSpec.from_duckdb_file(path)


def _check_statically(pairs: list[Pair], reports: list[PairReport], snapshot) -> list[tuple[Pair, PairReport]]:
    """check_sql and volatile functions; returns the pairs worth running."""
    runnable = []
    for pair, report in zip(pairs, reports):
        check = check_sql(pair.sql, snapshot)
        if not check.ok:
            report.problems.append(Problem(check.kind, check.message))
            continue
        volatile = _volatile_functions(pair.sql)
        if volatile:
            report.problems.append(Problem("volatile_function", f"{', '.join(volatile)}: the answer changes over "
                                           "time; use fixed dates"))
        runnable.append((pair, report))
    return runnable


def _run_once(runner, runnable: list[tuple[Pair, PairReport]]) -> list[tuple[Pair, PairReport, QueryResult]]:
    """Execution errors, empty and large results; returns the pairs that ran, with their results."""
    results = runner.run_many([pair.sql for pair, _ in runnable], checked=True)  # _check_statically passed them
    ran = []
    for (pair, report), result in zip(runnable, results):
        report.rows = None if result.error_kind else len(result.rows)
        report.elapsed_s = result.elapsed_s
        if result.error_kind:
            kind = result.error_kind if result.error_kind in ERROR_KINDS else "runtime_error"
            report.problems.append(Problem(kind, result.error))
            continue
        if not result.rows:
            report.problems.append(Problem("empty_result", "the query returns no rows"))
        elif len(result.rows) == 1 and all(v is None for v in result.rows[0]):
            report.problems.append(Problem("empty_result", "the query returns one row of NULLs (nothing matched?)"))
        elif result.truncated:
            report.problems.append(Problem("large_result", f"more than {runner.max_rows} rows"))
        ran.append((pair, report, result))
    return ran


def _run_again(runner, ran: list[tuple[Pair, PairReport, QueryResult]]) -> None:
    again = runner.run_many([pair.sql for pair, _, _ in ran], checked=True)
    for (pair, report, result), second in zip(ran, again):
        if second.error_kind or not _same_rows(result.rows, second.rows, ordered=_orders_result(pair.sql)):
            detail = second.error or f"{len(result.rows)} vs {len(second.rows)} rows, or different values"
            report.problems.append(Problem("unstable_result", f"two runs differ ({detail})"))


def _probe_limits(runner, ran: list[tuple[Pair, PairReport, QueryResult]]) -> None:
    probes = [(report, probe) for pair, report, _ in ran for probe in limit_probes(pair.sql)]
    results = runner.run_many([probe.sql for _, probe in probes])
    for (report, probe), result in zip(probes, results):
        problem = probe.judge(result)
        if problem and not any(p.kind == problem.kind for p in report.problems):
            report.problems.append(problem)


def _volatile_functions(sql: str) -> list[str]:
    tree = parse_sql(sql)
    if tree is None:
        return []
    found = []
    for node in tree.walk():
        named = isinstance(node, exp.Anonymous) and node.name.lower() in _VOLATILE_NAMES
        if named or isinstance(node, _VOLATILE_NODES):
            found.append(node.sql(dialect=DIALECT))
    return sorted(set(found))


def _orders_result(sql: str) -> bool:
    tree = parse_sql(sql)
    while isinstance(tree, exp.Subquery):
        tree = tree.this
    return tree is not None and tree.args.get("order") is not None


def _same_rows(a: list[tuple], b: list[tuple], ordered: bool) -> bool:
    if len(a) != len(b):
        return False
    if ordered:
        return a == b
    return sorted(map(repr, a)) == sorted(map(repr, b))


# ---------------------------------------------------------------- LIMIT probes


@dataclass
class LimitProbe:
    """A query that shows the rows on both sides of a LIMIT's cut, with their ORDER BY key values."""

    sql: str
    limit: int
    offset: int
    ordered: bool
    key_columns: list[int]
    """Result columns holding the ORDER BY key values (negative: appended at the end)."""
    appended: int
    """Trailing columns the probe added; the others are the original output."""
    where: str
    """'the query' or 'a subquery' (for messages)."""

    def judge(self, result: QueryResult) -> Problem | None:
        if result.error_kind:
            return None  # e.g. a correlated subquery cannot run on its own: nothing to say
        rows = result.rows
        width = len(result.columns) - self.appended
        cuts = []
        if self.offset > 0:
            cuts.append((0, 1))  # the probe starts one row before the window
        after = (1 if self.offset > 0 else 0) + self.limit
        if len(rows) > after:
            cuts.append((after - 1, after))
        for before, beyond in cuts:
            a, b = rows[before], rows[beyond]
            if a[:width] == b[:width]:
                continue  # swapping equal rows changes nothing
            if not self.ordered:
                return Problem("limit_without_order", f"{self.where}: LIMIT {self.limit} without ORDER BY keeps "
                               "arbitrary rows; add an ORDER BY")
            keys_a = tuple(a[i] for i in self.key_columns)
            if keys_a == tuple(b[i] for i in self.key_columns):
                shown = ", ".join(repr(v) for v in keys_a)
                return Problem("limit_ties", f"{self.where}: ORDER BY ... LIMIT {self.limit} cuts between rows that "
                               f"tie on the ORDER BY keys ({shown}) but differ; add a tie-breaker to the ORDER BY")
        return None


def limit_probes(sql: str) -> list[LimitProbe]:
    """A probe for every SELECT (or set operation) with a literal LIMIT, at any depth.

    >>> [p.sql for p in limit_probes("SELECT name FROM t ORDER BY score DESC LIMIT 3")]
    ['SELECT name, score AS __t2s_key0 FROM t ORDER BY score DESC LIMIT 4']
    """
    tree = parse_sql(sql)
    if tree is None:
        return []
    with_ = tree.args.get("with_")
    probes = []
    for node in tree.find_all(exp.Select, exp.SetOperation):
        probe = _probe(node, with_ if node is not tree else None, node is tree)
        if probe is not None:
            probes.append(probe)
    return probes


def _probe(node: exp.Expression, with_: exp.Expression | None, top: bool) -> LimitProbe | None:
    limit_node, offset_node = node.args.get("limit"), node.args.get("offset")
    if not isinstance(limit_node, exp.Limit) or limit_node.args.get("offset"):
        return None
    limit = _int(limit_node.expression)
    offset = _int(offset_node.expression) if offset_node else 0
    if limit is None or offset is None:
        return None
    query = node.copy()
    order = query.args.get("order")
    key_columns: list[int] = []
    appended = 0
    if order is not None:
        keys = _order_keys(query, order)
        if keys is None:
            return None
        if isinstance(query, exp.Select):
            query.select(*(exp.alias_(k, f"{_KEY_PREFIX}{i}") for i, k in enumerate(keys)), copy=False)
            appended = len(keys)
            key_columns = [i - appended for i in range(appended)]
        else:
            key_columns = keys
    start = max(offset - 1, 0)
    query.set("limit", exp.Limit(expression=exp.Literal.number(limit + 1 + (offset - start))))
    query.set("offset", exp.Offset(expression=exp.Literal.number(start)) if start else None)
    if with_ is not None and query.args.get("with_") is None:
        query.set("with_", with_.copy())
    return LimitProbe(query.sql(dialect=DIALECT), limit, offset, order is not None, key_columns, appended,
                      "the query" if top else "a subquery")


def _order_keys(query: exp.Expression, order: exp.Order) -> list | None:
    """For a SELECT: the key expressions (aliases and positions resolved). For a set operation: output positions."""
    if isinstance(query, exp.SetOperation):
        names = [n.lower() for n in query.named_selects]
        positions = []
        for ordered in order.expressions:
            key = ordered.this
            if isinstance(key, exp.Literal) and key.is_int:
                positions.append(int(key.this) - 1)
            elif isinstance(key, exp.Column) and key.name.lower() in names:
                positions.append(names.index(key.name.lower()))
            else:
                return None
        return positions
    aliases = {s.alias.lower(): s.this for s in query.selects if isinstance(s, exp.Alias)}
    keys = []
    for ordered in order.expressions:
        key = ordered.this
        if isinstance(key, exp.Var):  # ORDER BY ALL: every output column is a key, so no cut is ambiguous
            return None
        if isinstance(key, exp.Literal) and key.is_int:
            index = int(key.this) - 1
            if not 0 <= index < len(query.selects) or isinstance(query.selects[index], exp.Star):
                return None
            keys.append(query.selects[index].unalias().copy())
        elif isinstance(key, exp.Column) and not key.table and key.name.lower() in aliases:
            keys.append(aliases[key.name.lower()].copy())
        else:
            keys.append(key.copy())
    return keys


def _int(node: Any) -> int | None:
    if isinstance(node, exp.Literal) and node.is_int:
        return int(node.this)
    return None
