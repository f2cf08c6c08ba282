"""Execution accuracy (EX): run gold and predicted SQL on the warehouse and compare the results.

Published evaluators get EX wrong in known ways (BIRD scores timeout-vs-timeout as correct, Spider counts
empty == empty and strips DISTINCT, sql-eval lets a 1x1 gold "equal" an n x m result). This one says exactly
what it counts, and every report names its comparison mode:

- ``strict`` (default): same row and column counts; column names ignored, a one-to-one column permutation
  allowed; rows as a multiset; order enforced only when the gold's top-level query has ORDER BY, and then only
  across ORDER BY key groups (rows with equal sort keys may come in any order; under ORDER BY ... LIMIT the
  last group may hold any rows tied with it). NULL = NULL, NaN = NaN, numbers compared by value whatever their
  type (DECIMAL, integer, float; 1.0 = 1), with a relative tolerance when a float is involved (integers on
  both sides compare exactly), timestamps with a time zone compared in UTC.
- ``lenient``: set semantics, order ignored, extra predicted columns allowed (whole rows are projected onto
  the predicted columns that match the gold's, never columns sorted one by one), numeric strings equal numbers.
- ``set``: BIRD's rule, ``set(pred_rows) == set(gold_rows)`` on the raw values, for comparability only.

A gold query that fails is excluded from the score and counted; a prediction that fails or times out scores 0
(error results are never compared). Empty gold results are flagged, and EX without them is reported too.

Pipeline of `evaluate`: load pairs -> read predictions -> for each database: check predicted SQL, run gold
(cached on disk) and predictions in parallel through `text2sql.warehouse.QueryRunner` -> judge each example
-> metrics -> report.json, report.md, report.html under ``eval/reports/<release>/``.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import html
import io
import json
import math
import os
import pickle
import re
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import sqlglot
from sqlglot import exp

from text2sql.data.analysis import parse_sql
from text2sql.errors import DataError
from text2sql.files import read_text, sha256_file, write_atomic
from text2sql.vocab import ABS_TOL, DIALECT, DIFFICULTIES, PREDICTION_DIALECTS
from text2sql.vocab import EVAL_MODES as MODES
from text2sql.vocab import REL_TOL as DEFAULT_REL_TOL

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
MAX_MAPPING_STEPS = 20_000
"""Column-permutation search gives up (not equal) after this many partial assignments."""
MAX_FUZZY_MATCH = 64
"""Above this many leftover rows, tolerance matching only pairs rows in sorted order."""
DIFF_ROWS = 3
"""Differing rows shown per side in a wrong_result diff."""
RELEASE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
DIFFICULTY_ORDER = {d: i for i, d in enumerate(DIFFICULTIES)}
"""Slices are listed in this order (then by name)."""


# ---------------------------------------------------------------- comparing results (pure)


class ResultSet(NamedTuple):
    """Columns and rows of a query result (QueryResult has the same two attributes)."""

    columns: list[str]
    rows: list[tuple]


@dataclass(frozen=True)
class Comparison:
    """The outcome of comparing one predicted result with its gold result."""

    equal: bool
    reason: str = ""
    """Why they differ (empty when equal)."""
    diff: dict | None = None
    """Row/column counts and a few rows only in gold or only in the prediction (when they differ)."""


class _Sentinel:
    """A value that equals only itself, for NaN (which Python's NaN never does)."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


_NAN = _Sentinel("NaN")
_NUMBER = re.compile(r"^\s*[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?\s*$")


def compare_results(
    gold,
    pred,
    *,
    gold_sql: str | None = None,
    mode: str = "strict",
    rel_tol: float = DEFAULT_REL_TOL,
    tie_rows: list[tuple] | None = None,
) -> Comparison:
    """Compare a predicted result with the gold result under one of MODES.

    Args:
        gold: the gold result: anything with `columns` and `rows` (a ResultSet, a warehouse QueryResult).
            A gold that failed must be excluded before comparing: passing one raises ValueError.
        pred: the predicted result; one with an `error_kind` (refused, runtime_error, timeout) is never equal.
        gold_sql: the gold query, parsed for a top-level ORDER BY (strict mode enforces order only then).
        mode: strict | lenient | set (see the module docstring).
        rel_tol: relative tolerance between numbers (strict and lenient).
        tie_rows: the gold query's rows without its LIMIT (see `tie_query`): under ORDER BY ... LIMIT, the
            last key group of the prediction may hold any of these rows that tie with the gold's last group.

    >>> gold = ResultSet(["n", "total"], [(1, Decimal("2.50")), (2, None)])
    >>> compare_results(gold, ResultSet(["total", "n"], [(None, 2), (2.5, 1)])).equal
    True
    >>> compare_results(gold, ResultSet(["n"], [(1,), (2,)])).reason
    'column count 1 differs from the gold 2'
    """
    if mode not in MODES:
        raise ValueError(f"mode {mode!r} is not one of {', '.join(MODES)}")
    if getattr(gold, "error_kind", None):
        raise ValueError("the gold query failed: exclude the example instead of comparing")
    if getattr(pred, "error_kind", None):
        return Comparison(False, f"prediction failed ({pred.error_kind})")
    if mode == "set":
        equal = {_hashable(r) for r in gold.rows} == {_hashable(r) for r in pred.rows}
        return Comparison(True) if equal else _differs("the sets of rows differ", gold, pred)
    lenient = mode == "lenient"
    g_rows = [_normalize_row(r, lenient) for r in gold.rows]
    p_rows = [_normalize_row(r, lenient) for r in pred.rows]
    k, m = len(gold.columns), len(pred.columns)
    if lenient:
        if m < k:
            return _differs(f"column count {m} is less than the gold {k}", gold, pred)
        return _search_mapping(_LenientCheck(g_rows, p_rows, rel_tol), k, m, gold, pred)
    if m != k:
        return _differs(f"column count {m} differs from the gold {k}", gold, pred)
    if len(p_rows) != len(g_rows):
        return _differs(f"row count {len(p_rows)} differs from the gold {len(g_rows)}", gold, pred)
    keys = order_key_columns(gold_sql, gold.columns) if gold_sql else None
    check = _StrictCheck(g_rows, p_rows, rel_tol, keys, tie_rows)
    return _search_mapping(check, k, m, gold, pred)


def order_key_columns(gold_sql: str, columns: list[str]) -> tuple[int, ...] | None:
    """Output columns holding the gold's top-level ORDER BY keys, or None when its top-level query has no ORDER BY.

    An ORDER BY only inside a subquery or CTE does not order the result, so it gives None. A key that is not
    an output column (or cannot be matched to one) makes every column a key: rows must then come in the gold's
    exact order, except identical rows.

    >>> order_key_columns("SELECT name, n AS total FROM t ORDER BY total DESC, 1", ["name", "total"])
    (1, 0)
    >>> order_key_columns("SELECT name FROM (SELECT * FROM t ORDER BY n)", ["name"]) is None
    True
    >>> order_key_columns("SELECT name FROM t ORDER BY n", ["name"])
    (0,)
    """
    return _order_key_columns(gold_sql, tuple(columns))


@functools.lru_cache(maxsize=4096)
def _order_key_columns(gold_sql: str, columns: tuple[str, ...]) -> tuple[int, ...] | None:
    """`order_key_columns`, once per gold query and result columns (each mode of each prediction asks)."""
    top = _top_query(gold_sql)
    order = top.args.get("order") if top is not None else None
    if order is None or not order.expressions:
        return None
    everything = tuple(range(len(columns)))
    selects = [] if any(isinstance(e, exp.Star) for e in top.selects) else top.selects
    if len(selects) != len(columns):
        selects = []
    keys = []
    for ordered in order.expressions:
        index = _output_index(ordered.this, selects, columns)
        if index is None:
            return everything
        keys.append(index)
    return tuple(dict.fromkeys(keys))


@functools.lru_cache(maxsize=4096)
def tie_query(gold_sql: str) -> str | None:
    """The gold query without its top-level LIMIT when it orders and limits (and has no OFFSET), else None.

    Its rows tell which rows tie with the last ones the LIMIT kept, which a correct prediction may return instead.

    >>> tie_query("SELECT a FROM t ORDER BY b DESC LIMIT 3")
    'SELECT a FROM t ORDER BY b DESC'
    >>> tie_query("SELECT a FROM t LIMIT 3") is None
    True
    """
    tree = _parse(gold_sql)
    tree = tree.copy() if tree is not None else None
    top = _top_query(gold_sql, tree)
    if top is None or top.args.get("order") is None or top.args.get("limit") is None or top.args.get("offset"):
        return None
    top.set("limit", None)
    return tree.sql(dialect=DIALECT)


def exact_match(gold_sql: str, pred_sql: str | None) -> bool:
    """Whether two queries are the same after sqlglot normalization (case, spacing, quoting).

    >>> exact_match("select A from T  where x=1", "SELECT a FROM t WHERE x = 1")
    True
    """
    if not pred_sql:
        return False
    a, b = _normalized_sql(gold_sql), _normalized_sql(pred_sql)
    return a is not None and a == b


@functools.lru_cache(maxsize=4096)
def _normalized_sql(sql: str) -> str | None:
    try:  # a fresh tree, not _parse's cached one: normalize_identifiers changes it in place
        tree = sqlglot.parse_one(sql, read=DIALECT)
    except Exception:
        return None
    from sqlglot.optimizer.normalize_identifiers import normalize_identifiers

    return normalize_identifiers(tree, dialect=DIALECT).sql(dialect=DIALECT, comments=False)


# The one statement in `sql` as a sqlglot tree, or None. Cached: callers copy before changing it.
_parse = functools.lru_cache(maxsize=4096)(parse_sql)


def _top_query(sql: str, tree=None):
    """The query node whose ORDER BY orders the result (parentheses around the whole query unwrapped)."""
    node = tree if tree is not None else _parse(sql)
    while isinstance(node, (exp.Subquery, exp.Paren)):
        node = node.this
    return node if isinstance(node, exp.Query) else None


def _output_index(key, selects: list, columns: list[str]) -> int | None:
    """Which output column an ORDER BY key is: a position, an alias, a select expression or a result name."""
    if isinstance(key, exp.Literal) and key.is_int:
        index = int(key.this) - 1
        return index if 0 <= index < len(columns) else None
    if isinstance(key, exp.Column) and not key.table:
        name = key.name.lower()
        aliases = [i for i, e in enumerate(selects) if isinstance(e, exp.Alias) and e.alias.lower() == name]
        if aliases:
            return aliases[0]
    text = key.sql(dialect=DIALECT).lower()
    for i, e in enumerate(selects):
        if e.unalias().sql(dialect=DIALECT).lower() == text:
            return i
    if isinstance(key, exp.Column):
        names = [c.lower() for c in columns]
        if names.count(key.name.lower()) == 1:
            return names.index(key.name.lower())
    return None


def _normalize(value: Any, lenient: bool) -> Any:
    """A hashable value that equals another exactly when the two mean the same under the mode."""
    if value is None or isinstance(value, (bool, int, str)) and not (lenient and isinstance(value, str)):
        return value
    if isinstance(value, float):
        return _NAN if math.isnan(value) else _round(value)
    if isinstance(value, Decimal):
        if value.is_nan():
            return _NAN
        # Whole numbers stay exact integers; huge exponents (a hostile "1e999999999" string) go through float.
        if value.is_finite() and value.adjusted() < 40 and value == value.to_integral_value():
            return int(value)
        return _round(float(value))
    if isinstance(value, str):  # lenient only
        return _normalize(Decimal(value.strip()), True) if _NUMBER.match(value) else value
    if isinstance(value, dt.datetime) and value.tzinfo is not None:
        return value.astimezone(dt.timezone.utc).replace(tzinfo=None)
    if isinstance(value, (list, tuple)):
        return tuple(_normalize(v, lenient) for v in value)
    if isinstance(value, dict):
        return tuple((k, _normalize(v, lenient)) for k, v in value.items())
    if isinstance(value, uuid.UUID):
        return str(value)
    return value


def _round(x: float) -> float:
    # 12 significant digits make float noise (sums in another order) hash alike; the tolerance does the rest.
    return float(f"{x:.12g}") if math.isfinite(x) else x


def _normalize_row(row, lenient: bool) -> tuple:
    return tuple(_normalize(v, lenient) for v in row)


def _hashable(value: Any) -> Any:
    """BIRD's comparison works on raw Python values; lists and dicts become tuples so they can be hashed."""
    if isinstance(value, (list, tuple)):
        return tuple(_hashable(v) for v in value)
    if isinstance(value, dict):
        return tuple((k, _hashable(v)) for k, v in value.items())
    return value


def _close(a: Any, b: Any, rel_tol: float) -> bool:
    if a is b or a == b:
        return True
    if isinstance(a, tuple) and isinstance(b, tuple):
        return len(a) == len(b) and all(_close(x, y, rel_tol) for x, y in zip(a, b))
    if isinstance(a, float) and isinstance(b, (int, float)) or isinstance(a, int) and isinstance(b, float):
        # Integers on both sides (counts, exact sums) are compared exactly: only floats carry rounding noise.
        return math.isclose(a, b, rel_tol=rel_tol, abs_tol=ABS_TOL)
    return False


_TYPE_RANK = {type(None): 0, bool: 1, int: 1, float: 1, _Sentinel: 2, str: 3, dt.date: 4, dt.datetime: 5}


def _sort_key(value: Any) -> tuple:
    """A total order over normalized values of mixed types."""
    rank = _TYPE_RANK.get(type(value))
    if rank is None:
        if isinstance(value, tuple):
            return (6, tuple(_sort_key(v) for v in value))
        return (7, type(value).__name__, repr(value))
    return (rank, value) if rank not in (0, 2) else (rank,)


def _same_multiset(a: list[tuple], b: list[tuple], rel_tol: float) -> bool:
    if len(a) != len(b):
        return False
    ca, cb = Counter(a), Counter(b)
    if ca == cb:
        return True
    return _match_all(list((ca - cb).elements()), list((cb - ca).elements()), rel_tol)


def _sub_multiset(a: list[tuple], pool: list[tuple], rel_tol: float) -> bool:
    """Whether every row of `a` can take a distinct row of `pool` that equals it."""
    ca, cp = Counter(a), Counter(pool)
    left = list((ca - cp).elements())
    return not left or _match_all(left, list((cp - ca).elements()), rel_tol)


def _same_set(a: list[tuple], b: list[tuple], rel_tol: float) -> bool:
    sa, sb = set(a), set(b)
    if sa == sb:
        return True
    only_a, only_b = sa - sb, sb - sa
    if len(only_a) + len(only_b) > MAX_FUZZY_MATCH:
        return False
    return all(any(_close(x, y, rel_tol) for y in sb) for x in only_a) and all(
        any(_close(y, x, rel_tol) for x in sa) for y in only_b
    )


def _match_all(left: list[tuple], right: list[tuple], rel_tol: float) -> bool:
    """Whether each row of `left` pairs with a distinct row of `right` within the tolerance."""
    if len(left) > len(right):
        return False
    if len(left) == len(right):
        # Rows that differ only by float noise sort alike: try pairing them in order first.
        ls, rs = sorted(left, key=_sort_key), sorted(right, key=_sort_key)
        if all(_close(x, y, rel_tol) for x, y in zip(ls, rs)):
            return True
    if len(left) > MAX_FUZZY_MATCH or len(right) > 4 * MAX_FUZZY_MATCH:
        return False
    # Bipartite matching (Kuhn): tolerance is not transitive, so greedy pairing could miss a match.
    adjacent = [[j for j, r in enumerate(right) if _close(l, r, rel_tol)] for l in left]
    owner = [-1] * len(right)

    def assign(i: int, seen: set[int]) -> bool:
        for j in adjacent[i]:
            if j not in seen:
                seen.add(j)
                if owner[j] == -1 or assign(owner[j], seen):
                    owner[j] = i
                    return True
        return False

    return all(assign(i, set()) for i in range(len(left)))


def _project(rows: list[tuple], indexes: list[int]) -> list[tuple]:
    return [tuple(r[i] for i in indexes) for r in rows]


class _StrictCheck:
    """Strict mode: a bijection of columns under which the rows are the same multiset, in the gold's key order.

    Under ORDER BY ... LIMIT with a tie pool, the last key group is checked against the pool instead of the
    gold's own last rows, in the column pruning as in the final check.
    """

    def __init__(self, gold, pred, rel_tol, keys, tie_rows) -> None:
        self.gold, self.pred, self.rel_tol = gold, pred, rel_tol
        self.order_differs = False
        self.groups = self._key_groups(keys) if keys else None
        self.tie_pool = None
        if self.groups and tie_rows is not None:
            last_key = tuple(gold[-1][i] for i in keys)
            normalized = (_normalize_row(r, False) for r in tie_rows)
            self.tie_pool = [r for r in normalized if _close(tuple(r[i] for i in keys), last_key, rel_tol)]
        self.cut = len(gold) - self.groups[-1] if self.tie_pool else len(gold)
        """Rows before the cut must match the gold's; rows after it come from the tie pool."""

    def _key_groups(self, keys) -> list[int]:
        """Sizes of the runs of consecutive gold rows with equal sort keys."""
        sizes: list[int] = []
        previous = None
        for row in self.gold:
            key = tuple(row[i] for i in keys)
            if sizes and _close(key, previous, self.rel_tol):
                sizes[-1] += 1
            else:
                sizes.append(1)
            previous = key
        return sizes

    def _rows_match(self, g_cols: list[int], p_cols: list[int]) -> bool:
        gold, pred, cut = _project(self.gold, g_cols), _project(self.pred, p_cols), self.cut
        if not _same_multiset(gold[:cut], pred[:cut], self.rel_tol):
            return False
        return self.tie_pool is None or _sub_multiset(pred[cut:], _project(self.tie_pool, g_cols), self.rel_tol)

    def partial_matches(self, g_cols: list[int], p_cols: list[int]) -> bool:
        return self._rows_match(g_cols, p_cols)

    def full_matches(self, p_cols: list[int]) -> bool:
        if not self._rows_match(list(range(len(p_cols))), p_cols):
            return False
        if self.groups is None:
            return True
        pred = _project(self.pred, p_cols)
        start = 0
        for size in self.groups[: -1 if self.tie_pool else None]:
            if not _same_multiset(self.gold[start:start + size], pred[start:start + size], self.rel_tol):
                self.order_differs = True
                return False
            start += size
        return True


class _LenientCheck:
    """Lenient mode: gold columns map to distinct predicted columns; projected rows equal as sets."""

    order_differs = False

    def __init__(self, gold, pred, rel_tol) -> None:
        self.gold, self.pred, self.rel_tol = gold, pred, rel_tol

    def partial_matches(self, g_cols: list[int], p_cols: list[int]) -> bool:
        return _same_set(_project(self.gold, g_cols), _project(self.pred, p_cols), self.rel_tol)

    def full_matches(self, p_cols: list[int]) -> bool:
        return _same_set(self.gold, _project(self.pred, p_cols), self.rel_tol)


class _GaveUp(Exception):
    pass


def _search_mapping(check, k: int, m: int, gold, pred) -> Comparison:
    """Find gold column -> predicted column assignments that make `check` pass, pruning by column values."""
    if k == m and check.full_matches(list(range(k))):
        return Comparison(True)
    if not check.gold and not check.pred:
        return Comparison(True)
    candidates = [[p for p in range(m) if check.partial_matches([g], [p])] for g in range(k)]
    unmatched = [g for g in range(k) if not candidates[g]]
    if unmatched:
        names = ", ".join(str(gold.columns[g]) for g in unmatched[:3])
        return _differs(f"the rows differ: no predicted column holds the values of gold column(s) {names}", gold, pred)
    order = sorted(range(k), key=lambda g: len(candidates[g]))
    assigned: dict[int, int] = {}
    steps = 0

    def extend(depth: int) -> bool:
        nonlocal steps
        if depth == k:
            return check.full_matches([assigned[g] for g in range(k)])
        g = order[depth]
        for p in candidates[g]:
            if p in assigned.values():
                continue
            steps += 1
            if steps > MAX_MAPPING_STEPS:
                raise _GaveUp
            assigned[g] = p
            g_cols = order[: depth + 1]
            if (depth == 0 or depth + 1 == k or check.partial_matches(g_cols, [assigned[c] for c in g_cols])) and (
                extend(depth + 1)
            ):
                return True
            del assigned[g]
        return False

    try:
        if extend(0):
            return Comparison(True)
    except _GaveUp:
        return _differs("gave up searching column permutations (too many similar columns)", gold, pred)
    if check.order_differs:
        return _differs("same rows in a different order than the gold's ORDER BY", gold, pred)
    return _differs("the rows differ", gold, pred)


def _differs(reason: str, gold, pred) -> Comparison:
    """A not-equal Comparison with a short diff: shapes and a few rows found on one side only."""
    # Rows are compared as bags of values here, so that a column permutation does not flood the diff.
    def bag(row):
        return tuple(sorted((_normalize(v, False) for v in row), key=_sort_key))

    g_bags, p_bags = Counter(map(bag, gold.rows)), Counter(map(bag, pred.rows))
    missing = [r for r in gold.rows if g_bags[bag(r)] > p_bags[bag(r)]][:DIFF_ROWS]
    extra = [r for r in pred.rows if p_bags[bag(r)] > g_bags[bag(r)]][:DIFF_ROWS]
    diff = {
        "gold_shape": [len(gold.rows), len(gold.columns)],
        "pred_shape": [len(pred.rows), len(pred.columns)],
        "only_in_gold": [[_jsonable(v) for v in r] for r in missing],
        "only_in_pred": [[_jsonable(v) for v in r] for r in extra],
    }
    return Comparison(False, reason, diff)


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, str):
        return value if len(value) <= 200 else value[:200] + "..."
    if isinstance(value, Decimal):
        return float(value) if value.is_finite() else str(value)
    if isinstance(value, (dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return str(value)


# ---------------------------------------------------------------- predictions

def extract_sql(text: str | None) -> str | None:
    """The SQL in a model's raw reply (None when there is none): the same rule `predict` applies.

    >>> extract_sql("```sql\\nSELECT a FROM t;\\n```\\nThis returns a.")
    'SELECT a FROM t'
    """
    from text2sql.warehouse import extract_sql as extract

    return extract(text)


def read_predictions(path: str | Path, known_ids: set[str] | None = None) -> dict[str, str | None]:
    """Read a predictions JSONL file into {id: reply or None}: the text that is judged whole (`judge_reply`).

    Each line is `{"id": ..., "sql": ...}`; `"prediction"` or `"completion"` (a model's raw reply) may stand
    instead of `"sql"`. When a line also has `"raw"` (as `predict` writes), the raw reply is what is judged, so a
    reply is never judged by a cut-down copy of it. A null or empty SQL means no SQL.

    Raises:
        DataError: the file is missing, or has malformed lines, duplicate ids or ids not in `known_ids`
            (every problem named by file:line).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"predictions file not found: {path}")
    predictions: dict[str, str | None] = {}
    first_line: dict[str, int] = {}
    problems: list[str] = []
    with io.StringIO(read_text(path)) as f:  # one helper reads every input file (non-UTF-8: one-line error)
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                problems.append(f"{where}: not valid JSON ({exc.msg})")
                continue
            if not isinstance(record, dict):
                problems.append(f"{where}: expected an object with id and sql, got {type(record).__name__}")
                continue
            pid = record.get("id")
            if isinstance(pid, int) and not isinstance(pid, bool):
                pid = str(pid)
            if not isinstance(pid, str) or not pid:
                problems.append(f"{where}: missing or non-string 'id'")
                continue
            field_name = next((k for k in ("sql", "prediction", "completion") if k in record), None)
            if field_name is None:
                problems.append(f"{where}: no 'sql' (or 'prediction', 'completion') field for id {pid!r}")
                continue
            text = record[field_name]
            if text is not None and not isinstance(text, str):
                problems.append(f"{where}: '{field_name}' must be a string or null, got {type(text).__name__}")
                continue
            if pid in first_line:
                problems.append(f"{where}: duplicate id {pid!r} (first on line {first_line[pid]})")
                continue
            if known_ids is not None and pid not in known_ids:
                problems.append(f"{where}: unknown id {pid!r} (not in the dataset)")
                continue
            first_line[pid] = lineno
            if field_name == "sql" and isinstance(record.get("raw"), str):
                text = record["raw"]
            predictions[pid] = (text.strip() or None) if text else None
    if problems:
        more = f" (and {len(problems) - 10} more)" if len(problems) > 10 else ""
        raise DataError(f"{len(problems)} problem(s) in predictions: " + "; ".join(problems[:10]) + more)
    return predictions


def read_prediction_dialects(path: str | Path, default: str = DIALECT) -> dict[str, str]:
    """{id: dialect} of a predictions file (already read by `read_predictions`): a line's `"dialect"`, else `default`.

    Raises:
        DataError: a dialect other than those in PREDICTION_DIALECTS (each named by file:line).
    """
    if default not in PREDICTION_DIALECTS:
        raise DataError(f"--dialect {default!r} is not one of {', '.join(PREDICTION_DIALECTS)}")
    dialects: dict[str, str] = {}
    problems = []
    with Path(path).open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            try:
                record = json.loads(line) if line.strip() else None
            except json.JSONDecodeError:
                continue
            if not isinstance(record, dict) or record.get("id") is None:
                continue
            dialect = record.get("dialect") or default
            if dialect not in PREDICTION_DIALECTS:
                problems.append(f"{path}:{lineno}: dialect {dialect!r} is not one of {', '.join(PREDICTION_DIALECTS)}")
            dialects[str(record["id"])] = dialect
    if problems:
        raise DataError(f"{len(problems)} problem(s) in predictions: " + "; ".join(problems[:10]))
    return dialects


def _to_duckdb(predictions: dict[str, str | None], pairs: list, dialects: dict[str, str], snapshot):
    """The predictions of `pairs` written for SQLite, rewritten for DuckDB; and {id: SQL as written} of those."""
    from text2sql.data.spider import transpile_prediction
    from text2sql.warehouse import locate_sql

    columns = {name: {c.name: c.type for c in t.columns} for name, t in snapshot.tables.items()}
    rewritten, as_written = dict(predictions), {}
    for pair in pairs:
        reply = predictions.get(pair.id)
        located = locate_sql(reply) if reply and dialects.get(pair.id) == "sqlite" else None
        # Only the one query of a reply is rewritten: a reply of several statements stays as it is (refused).
        if located and len(located[0]) == 1:
            sql = located[0][0]
            rewritten[pair.id], as_written[pair.id] = transpile_prediction(sql, columns), sql
    return rewritten, as_written


# ---------------------------------------------------------------- running and judging


@dataclass
class ScoredRun:
    """What `score_pairs` found: one record per scored example, the excluded ones, the targets' fingerprints."""

    examples: list[dict] = field(default_factory=list)
    excluded: list[dict] = field(default_factory=list)
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
    from text2sql.warehouse import QueryRunner

    mode = mode or cfg.eval.mode
    if mode not in MODES:
        raise DataError(f"mode {mode!r} is not one of {', '.join(MODES)}")
    workers = workers or cfg.eval.workers or os.cpu_count() or 1
    scored = ScoredRun()
    by_db: dict[str | None, list] = {}
    for pair in pairs:
        by_db.setdefault(getattr(pair, "db", None), []).append(pair)
    cache_root = Path(cache_dir) if cache_dir else cfg.path(GOLD_CACHE_DIR)
    for db, group in by_db.items():
        spec, snapshot = _open_target(cfg, dataset, db)
        fingerprint = _target_fingerprint(spec, snapshot)
        scored.schemas[db or "lakehouse"] = snapshot.fingerprint
        cache = _GoldCache(cache_root, fingerprint, cfg.warehouse.max_rows) if use_cache else None
        scored.engines[db or "lakehouse"] = spec.engine
        group_predictions, as_written = _to_duckdb(predictions, group, dialects or {}, snapshot)
        with QueryRunner.from_config(cfg, spec, workers=workers, snapshot=snapshot) as runner:
            _score_group(group, group_predictions, snapshot, runner, cache, mode, cfg.eval.rel_tol, scored, progress)
        for record in scored.examples + scored.excluded:
            if record["id"] in as_written:
                record["predicted_sqlite"] = as_written[record["id"]]
    order = {p.id: i for i, p in enumerate(pairs)}
    scored.examples.sort(key=lambda e: order[e["id"]])
    scored.excluded.sort(key=lambda e: order[e["id"]])
    return scored


def _score_group(pairs, predictions, snapshot, runner, cache, mode, rel_tol, scored: ScoredRun, progress=None) -> None:
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(runner.size) as pool:
        golds = _GoldRuns(runner, pool, cache)
        for sql in dict.fromkeys(p.sql for p in pairs):
            golds.request(sql)
        # Each reply is judged and, when it passes, run in a worker, in parallel with the gold queries; a reply that
        # is its gold's text (but for spacing) gets the gold's verdict and result: same text, same judge, same query.
        pending = {pair.id: None if _same_text(predictions[pair.id], pair.sql)
                   else pool.submit(runner.judge_and_run, predictions[pair.id])
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
            record = {"id": pair.id, "question": getattr(pair, "question", ""), "gold": pair.sql, "predicted": pred_sql}
            if reply and reply.strip() != pred_sql:  # the raw reply, next to the SQL judged in it
                record["raw"] = reply
            record.update({
                "db": getattr(pair, "db", None),
                "difficulty": getattr(pair, "difficulty", None) or "unknown",
                "tags": list(getattr(pair, "tags", None) or []),
                "tables": gold_check.tables if gold_check.ok else _tables(pair.sql, snapshot),
            })
            problem = _gold_problem(gold_check, gold, runner.max_rows)
            if problem:
                scored.excluded.append({**record, "reason": problem})
                continue
            judged = (pair.sql, gold, pred_sql, check, pred)
            record.update(_judge(*judged, None, mode, rel_tol, runner.timeout_s))
            record["empty_gold"] = not gold.rows
            record["exact_match"] = _exact_match(pair.sql, pred_sql, check, record["verdicts"])
            scored.examples.append(record)
            if record["verdicts"]["strict"] == "wrong_result" and (untied := tie_query(pair.sql)):
                retry.append((record, judged, untied))
        # Under ORDER BY ... LIMIT, a prediction may have kept other rows tied with the gold's last ones. Only for
        # predictions that look wrong, run the gold without its LIMIT (cached too) and judge again.
        for _, _, untied in retry:
            golds.request(untied)
        for record, judged, untied in retry:
            _, tie = golds.result(untied)
            if tie is not None and not tie.error_kind:
                record.pop("diff", None)
                record.update(_judge(*judged, tie.rows, mode, rel_tol, runner.timeout_s))


class _GoldRuns:
    """Gold (check, result) by SQL: from the disk cache, or judged and run once in the pool (and then cached)."""

    def __init__(self, runner, pool, cache) -> None:
        self.runner, self.pool, self.cache = runner, pool, cache
        self.results: dict[str, Any] = {}

    def request(self, sql: str) -> None:
        if sql not in self.results:
            cached = self.cache.get(sql) if self.cache else None
            self.results[sql] = cached if cached is not None else self.pool.submit(self._run, sql)

    def _run(self, sql: str):
        _, check, result = self.runner.judge_and_run(sql)
        if self.cache:
            self.cache.put(sql, check, result)
        return check, result

    def result(self, sql: str):
        value = self.results[sql]
        return value.result() if hasattr(value, "result") and callable(value.result) else value


def _judge(gold_sql, gold, pred_sql, check, pred, tie_rows, mode: str, rel_tol: float, timeout_s: float) -> dict:
    """Verdict, reason (and diff) of one prediction, under the chosen mode and every other mode."""
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
        comparisons = {
            m: compare_results(gold, pred, gold_sql=gold_sql, mode=m, rel_tol=rel_tol, tie_rows=tie_rows)
            for m in MODES
        }
        chosen = comparisons[mode]
        out = {
            "verdict": "correct" if chosen.equal else "wrong_result",
            "reason": chosen.reason,
            "verdicts": {m: "correct" if c.equal else "wrong_result" for m, c in comparisons.items()},
        }
        if chosen.diff:
            out["diff"] = chosen.diff
        return out
    return {"verdict": verdict, "reason": reason, "verdicts": {m: verdict for m in MODES}}


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


def _open_target(cfg: Config, dataset: str | Path | None, db: str | None):
    """WarehouseSpec and SchemaSnapshot of the project lakehouse (db None) or of a benchmark database file."""
    from text2sql.catalog import SchemaSnapshot, load_snapshot
    from text2sql.data import load_dataset
    from text2sql.warehouse import WarehouseSpec

    if db is None:
        snapshot = load_snapshot(cfg)
        return WarehouseSpec.from_config(cfg, snapshot), snapshot
    path = load_dataset(cfg, str(dataset) if dataset else None).database(db)
    return WarehouseSpec.from_duckdb_file(path), SchemaSnapshot.from_duckdb(path)


def _target_fingerprint(spec, snapshot) -> str:
    """Identifies the data a query sees: schema snapshot, how it is opened and, for a file, its version on disk."""
    from text2sql.warehouse import spec_fingerprint

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

    def _path(self, sql: str) -> Path:
        key = hashlib.sha256(json.dumps([*self.salt, sql]).encode()).hexdigest()
        return self.root / key[:2] / f"{key}.pkl"

    def get(self, sql: str):
        """(SQLCheck, _CachedResult or None), or None when not cached."""
        from text2sql.warehouse import SQLCheck

        path = self._path(sql)
        try:
            with path.open("rb") as f:
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
        write_atomic(path, pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL))


# ---------------------------------------------------------------- evaluate: pairs + predictions -> report


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
        split: the split scored (default eval.split when None); "all" scores every pair.
        mode: strict | lenient | set (default eval.mode).
        release: report directory name under eval.reports_dir (default: a timestamp).
        model: what produced the predictions, recorded in the report.
        dialect: the SQL dialect of predictions without a "dialect" field: duckdb (default) or sqlite (rewritten
            for DuckDB as the Spider import rewrites golds).
        force: replace an existing report of the same release (refused otherwise).

    Returns:
        The report (also written as report.json, report.md and report.html); its "path" key is the directory.

    Raises:
        DataError: bad predictions file, unknown mode, bad release name, a report of that release exists
            (without `force`), or dataset problems from `load_pairs`.
    """
    from text2sql.data import load_pairs
    from text2sql.progress import format_seconds, progress_bar

    mode = mode or cfg.eval.mode
    if mode not in MODES:
        raise DataError(f"--mode {mode!r} is not one of {', '.join(MODES)}")
    release = release or time.strftime("%Y%m%d-%H%M%S")
    check_release_free(cfg, release, force)
    split = split or cfg.eval.split
    dataset = dataset or cfg.data.dataset
    pairs = load_pairs(cfg, dataset, None if split == "all" else split)
    predictions = read_predictions(predictions_path, {p.id for p in load_pairs(cfg, dataset)})
    dialects = read_prediction_dialects(predictions_path, dialect or DIALECT)
    started = time.perf_counter()
    from text2sql.select import select_predictions  # records with candidates: pick each answer first

    selected = select_predictions(cfg, pairs, predictions, predictions_path, dataset)
    print(f"eval: scoring {len(pairs)} {dataset}/{split} predictions ({mode})", file=sys.stderr, flush=True)
    with progress_bar("eval", len(pairs), "q") as advance:
        scored = score_pairs(cfg, pairs, selected.predictions if selected else predictions, dataset=dataset, mode=mode,
                             dialects=dialects, progress=advance)
    print(f"eval: scored in {format_seconds(time.perf_counter() - started)}", file=sys.stderr, flush=True)
    report = {
        "release": release,
        "mode": mode,
        "model": model,
        "dataset": dataset,
        "split": split,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "metrics": compute_metrics(scored.examples, scored.excluded, mode),
        "examples": scored.examples,
        "excluded": scored.excluded,
        "inputs": _inputs(cfg, pairs, predictions_path, scored.schemas, scored.engines),
    }
    report["inputs"]["predictions"]["dialects"] = dict(Counter(dialects.get(p.id, DIALECT) for p in pairs))
    if selected is not None:
        report["selection"] = _selection_metrics(cfg, pairs, scored, selected, predictions_path, dataset, mode,
                                                 dialects)
    report["metrics"]["elapsed_s"] = round(time.perf_counter() - started, 3)
    out = cfg.path(cfg.eval.reports_dir) / release
    write_report(report, out)
    report["path"] = str(out)
    return report


def _selection_metrics(cfg: Config, pairs: list, scored: ScoredRun, selected, predictions_path, dataset, mode,
                       dialects) -> dict:
    """Candidate selection's gain (EX of the selected answers against the greedy replies alone, scored the same
    way) next to its cost (predictions/s of the run that made the candidates, from predict's stats file)."""
    from text2sql.generate import stats_path  # no heavy imports at module level there

    changed = [p for p in pairs if selected.greedy.get(p.id) != selected.predictions.get(p.id)]
    rescored = score_pairs(cfg, changed, selected.greedy, dataset=dataset, mode=mode,
                           dialects=dialects).examples if changed else []
    greedy_correct = {e["id"]: e["verdict"] == "correct" for e in scored.examples}
    greedy_correct.update({e["id"]: e["verdict"] == "correct" for e in rescored if e["id"] in greedy_correct})
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


def compute_metrics(examples: list[dict], excluded: list[dict], mode: str) -> dict:
    """EX overall and by slice, valid-SQL rate, exact match, EX per mode, verdict counts, gold problems."""
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

    from text2sql import __version__

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


def write_report(report: dict, out: Path) -> None:
    """Write report.json, report.md and report.html into `out` (each atomically)."""
    out = Path(out)
    body = {k: v for k, v in report.items() if k != "path"}
    write_atomic(out / "report.json", json.dumps(body, indent=2, default=str) + "\n")
    write_atomic(out / "report.md", render_markdown(body))
    write_atomic(out / "report.html", render_html(body))


def format_summary(report: dict) -> str:
    """A few lines for the terminal: EX, slices, verdicts, where the report is."""
    m = report["metrics"]
    lines = [
        f"release {report['release']}  dataset {report['dataset']}/{report.get('split')}  mode {report['mode']}",
        f"EX {m['ex']:.1%} ({m['correct']}/{m['n']})   valid SQL {m['valid_sql_rate']:.1%}   "
        f"exact match {m['exact_match']:.1%}   "
        + "  ".join(f"{k} {v:.1%}" for k, v in m["ex_by_mode"].items() if k != report["mode"]),
    ]
    if report.get("selection"):
        lines.append(f"candidate selection: {_selection_row(report['selection'])}")
    if m["gold_errors"] or m["empty_gold"]:
        lines.append(f"excluded (gold failed) {m['gold_errors']}   empty gold {m['empty_gold']} "
                     f"(EX without them {m['ex_nonempty_gold']:.1%})")
    for name, s in m["ex_by_difficulty"].items():
        lines.append(f"  {name:<12} EX {s['ex']:>6.1%}  n={s['n']}")
    lines.append("  " + "  ".join(f"{v} {c}" for v, c in m["verdicts"].items()))
    if report.get("path"):
        lines.append(f"report: {report['path']}/report.html")
    return "\n".join(lines)


def _summary_rows(report: dict) -> list[tuple[str, str]]:
    """The headline metrics as (label, value) rows, for the markdown and the HTML report alike."""
    m = report["metrics"]
    return [
        (f"EX ({report['mode']})", f"{m['ex']:.1%} ({m['correct']}/{m['n']})"),
        *((f"EX {k}", f"{v:.1%}") for k, v in m["ex_by_mode"].items() if k != report["mode"]),
        ("valid SQL", f"{m['valid_sql_rate']:.1%}"),
        ("exact match", f"{m['exact_match']:.1%}"),
        *((("candidate selection", _selection_row(report["selection"])),) if report.get("selection") else ()),
        ("gold failed (excluded)", str(m["gold_errors"])),
        ("empty gold (flagged)", f"{m['empty_gold']} (EX without them {m['ex_nonempty_gold']:.1%})"),
    ]


def _selection_row(sel: dict) -> str:
    speed = f", {sel['predictions_per_s']:.2f} predictions/s" if sel.get("predictions_per_s") else ""
    if sel.get("greedy_predictions_per_s"):
        speed += f" (greedy alone {sel['greedy_predictions_per_s']:.2f})"
    return (f"{sel['num_candidates']} candidates: EX {sel['ex_selected']:.1%} vs greedy {sel['ex_greedy']:.1%} "
            f"({sel['gain']:+.1%}){speed}")


def render_markdown(report: dict) -> str:
    m = report["metrics"]
    out = [
        f"# Evaluation report: {report['release']}",
        "",
        f"Dataset **{report['dataset']}** split **{report.get('split')}**, model **{report.get('model') or '-'}**, "
        f"comparison mode **{report['mode']}**, created {report.get('created', '')}.",
        "",
        "| metric | value |",
        "|---|---|",
        *(f"| {k} | {v} |" for k, v in _summary_rows(report)),
        "",
    ]
    for title, key in (("difficulty", "ex_by_difficulty"), ("tag", "ex_by_tag"), ("table", "ex_by_table")):
        out += [f"## EX by {title}", "", f"| {title} | EX | n |", "|---|---|---|"]
        out += [f"| {k} | {s['ex']:.1%} | {s['n']} |" for k, s in m[key].items()]
        out.append("")
    out += ["## Verdicts", "", "| verdict | count |", "|---|---|"]
    out += [f"| {v} | {c} |" for v, c in m["verdicts"].items()]
    failing = [e for e in report["examples"] if e["verdict"] != "correct"]
    if failing:
        out += ["", f"## Failing examples ({len(failing)})", ""]
        for e in failing[:100]:
            out.append(f"- `{e['id']}` **{e['verdict']}**: {_md(e['reason'])} — {_md(e['question'])}")
        if len(failing) > 100:
            out.append(f"- ... {len(failing) - 100} more in report.json")
    if report.get("excluded"):
        out += ["", f"## Excluded: gold failed ({len(report['excluded'])})", ""]
        out += [f"- `{e['id']}`: {_md(e['reason'])}" for e in report["excluded"][:50]]
    inputs = report.get("inputs", {})
    out += ["", "## Inputs", "", "```json", json.dumps(inputs, indent=2, default=str), "```", ""]
    return "\n".join(out)


def _md(text: str | None) -> str:
    return (text or "").replace("\n", " ").replace("|", "\\|")[:300]


_HTML_STYLE = """
body{font-family:system-ui,sans-serif;margin:2rem;max-width:72rem;color:#222}
table{border-collapse:collapse;margin:1rem 0}td,th{border:1px solid #ccc;padding:.25rem .5rem;text-align:left;
vertical-align:top}th{background:#f4f4f4}code,pre{font-size:.85em}pre{white-space:pre-wrap;margin:0}
.charts{display:flex;flex-wrap:wrap;gap:2rem}svg text{font-size:12px;font-family:system-ui,sans-serif}
"""


def render_html(report: dict) -> str:
    """A self-contained page: summary, inline SVG bar charts, failing examples. No scripts, no external files."""
    e = html.escape
    m = report["metrics"]
    slices = lambda key: [(k, s["ex"], f"{s['ex']:.0%} of {s['n']}") for k, s in m[key].items()]  # noqa: E731
    total = max(sum(m["verdicts"].values()), 1)
    verdicts = [(v, c / total, str(c)) for v, c in m["verdicts"].items()]
    charts = "".join([
        _bar_chart("EX by difficulty", slices("ex_by_difficulty"), "#3b7dd8"),
        _bar_chart("EX by tag", slices("ex_by_tag"), "#3b7dd8"),
        _bar_chart("Verdicts (share of examples)", verdicts, "#d8823b"),
    ])
    summary = "".join(f"<tr><th>{e(k)}</th><td>{e(v)}</td></tr>" for k, v in _summary_rows(report))
    failing = [x for x in report["examples"] if x["verdict"] != "correct"]
    rows = "".join(
        f"<tr><td><code>{e(x['id'])}</code></td><td>{e(x['verdict'])}</td><td>{e(x['question'] or '')}</td>"
        f"<td><pre>{e(x['gold'])}</pre></td><td><pre>{e(x['predicted'] or '')}</pre></td>"
        f"<td>{e(x['reason'] or '')}{_html_diff(x.get('diff'))}</td></tr>"
        for x in failing[:300]
    )
    title = f"Evaluation report: {report['release']}"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{e(title)}</title><style>{_HTML_STYLE}</style></head>
<body><h1>{e(title)}</h1>
<p>Dataset <b>{e(str(report['dataset']))}</b> split <b>{e(str(report.get('split')))}</b>,
model <b>{e(str(report.get('model') or '-'))}</b>, comparison mode <b>{e(report['mode'])}</b>,
created {e(str(report.get('created', '')))}.</p>
<table>{summary}</table>
<div class="charts">{charts}</div>
<h2>Failing examples ({len(failing)})</h2>
<table><tr><th>id</th><th>verdict</th><th>question</th><th>gold</th><th>predicted</th><th>reason</th></tr>{rows}</table>
<h2>Inputs</h2><pre>{e(json.dumps(report.get('inputs', {}), indent=2, default=str))}</pre>
</body></html>
"""


def _html_diff(diff: dict | None) -> str:
    if not diff:
        return ""
    parts = [f"gold {diff['gold_shape'][0]}x{diff['gold_shape'][1]}, predicted {diff['pred_shape'][0]}x"
             f"{diff['pred_shape'][1]}"]
    for key, label in (("only_in_gold", "only in gold"), ("only_in_pred", "only in prediction")):
        if diff.get(key):
            parts.append(f"{label}: " + "; ".join(json.dumps(r, default=str) for r in diff[key]))
    return "<br><small>" + "<br>".join(html.escape(p) for p in parts) + "</small>"


def _bar_chart(title: str, items: list[tuple[str, float, str]], color: str) -> str:
    """A horizontal bar chart as inline SVG: one bar per (label, fraction 0-1, text)."""
    label_w, bar_w, row_h, top = 150, 300, 22, 28
    height = top + row_h * max(len(items), 1) + 6
    width = label_w + bar_w + 90
    e = html.escape
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
             f'aria-label="{e(title)}"><text x="0" y="16" font-weight="bold">{e(title)}</text>']
    if not items:
        parts.append(f'<text x="0" y="{top + 14}">no data</text>')
    for i, (label, value, text) in enumerate(items):
        y = top + i * row_h
        w = bar_w * min(max(value, 0.0), 1.0)
        parts.append(
            f'<text x="{label_w - 6}" y="{y + 13}" text-anchor="end">{e(label[:22])}</text>'
            f'<rect x="{label_w}" y="{y}" width="{bar_w}" height="16" fill="#eee"/>'
            f'<rect x="{label_w}" y="{y}" width="{w:.1f}" height="16" fill="{color}"/>'
            f'<text x="{label_w + bar_w + 6}" y="{y + 13}">{e(text)}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


# ---------------------------------------------------------------- comparing two reports


def find_report(reports_dir: Path, name: str | Path) -> Path:
    """The report directory for a path (a dir or its report.json) or a release name under `reports_dir`."""
    for candidate in (Path(name), Path(reports_dir) / str(name)):
        if candidate.is_file() and candidate.name == "report.json":
            candidate = candidate.parent
        if (candidate / "report.json").is_file():
            return candidate
    raise DataError(f"no report.json for {str(name)!r} (looked in {name} and {Path(reports_dir) / str(name)})")


def compare_reports(a_dir: str | Path, b_dir: str | Path, threshold: float = 0.0) -> dict:
    """Compare release B with release A example by example, and EX per slice.

    Returns:
        {"a", "b", "ex_a", "ex_b", "delta", "threshold", "failed" (EX dropped by more than threshold),
        "regressions" and "fixes" (examples correct in one release only), "slices" {difficulty, tag: {name:
        {"a", "b", "delta"}}}, "warnings" (different mode, dataset or schema)}.
    """
    a, b = _load_report(Path(a_dir)), _load_report(Path(b_dir))
    warnings = []
    if a["mode"] != b["mode"]:
        warnings.append(f"modes differ: {a['mode']} vs {b['mode']}")
    for key in ("dataset_hash", "schema_fingerprint"):
        if a.get("inputs", {}).get(key) != b.get("inputs", {}).get(key):
            warnings.append(f"{key} differs: the releases were not scored on the same {key.split('_')[0]}")
    a_ex, b_ex = ({x["id"]: x for x in r["examples"]} for r in (a, b))
    common = [i for i in a_ex if i in b_ex]
    if len(common) != len(a_ex) or len(common) != len(b_ex):
        warnings.append(f"example ids differ: {len(common)} in common, {len(a_ex)} in A, {len(b_ex)} in B")

    def change(i):
        return {"id": i, "question": b_ex[i].get("question"), "a": a_ex[i]["verdict"], "b": b_ex[i]["verdict"],
                "reason": b_ex[i].get("reason", "")}

    regressions = [change(i) for i in common if a_ex[i]["verdict"] == "correct" != b_ex[i]["verdict"]]
    fixes = [change(i) for i in common if a_ex[i]["verdict"] != "correct" == b_ex[i]["verdict"]]
    slices = {}
    for name, key in (("difficulty", "ex_by_difficulty"), ("tag", "ex_by_tag")):
        sa, sb = a["metrics"].get(key, {}), b["metrics"].get(key, {})
        slices[name] = {
            k: {"a": sa.get(k, {}).get("ex"), "b": sb.get(k, {}).get("ex"),
                "delta": round(sb[k]["ex"] - sa[k]["ex"], 4) if k in sa and k in sb else None}
            for k in sorted(set(sa) | set(sb))
        }
    delta = round(b["metrics"]["ex"] - a["metrics"]["ex"], 4)
    return {
        "a": a["release"], "b": b["release"], "ex_a": a["metrics"]["ex"], "ex_b": b["metrics"]["ex"],
        "delta": delta, "threshold": threshold, "failed": -delta > threshold + 1e-12,
        "regressions": regressions, "fixes": fixes, "slices": slices, "warnings": warnings,
    }


def _load_report(path: Path) -> dict:
    file = path / "report.json" if path.is_dir() else path
    try:
        report = json.loads(file.read_text())
    except FileNotFoundError:
        raise DataError(f"{file} not found") from None
    except json.JSONDecodeError as exc:
        raise DataError(f"{file}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    missing = [k for k in ("release", "mode", "metrics", "examples") if k not in report]
    if missing:
        raise DataError(f"{file}: not a text2sql report (missing {', '.join(missing)})")
    return report


def format_comparison(cmp: dict) -> str:
    lines = [f"EX {cmp['a']} {cmp['ex_a']:.1%} -> {cmp['b']} {cmp['ex_b']:.1%} ({cmp['delta']:+.1%})"]
    lines += [f"warning: {w}" for w in cmp["warnings"]]
    for title in ("regressions", "fixes"):
        lines.append(f"{title}: {len(cmp[title])}")
        for c in cmp[title][:50]:
            lines.append(f"  {c['id']}  {c['a']} -> {c['b']}  {(c['question'] or '')[:70]}")
    for name, rows in cmp["slices"].items():
        changed = {k: s for k, s in rows.items() if s["delta"] != 0}
        if changed:
            lines.append(f"EX by {name}:")
            for k, s in changed.items():
                fmt = lambda v: "-" if v is None else f"{v:.1%}"  # noqa: E731
                delta = "" if s["delta"] is None else f" ({s['delta']:+.1%})"
                lines.append(f"  {k:<20} {fmt(s['a'])} -> {fmt(s['b'])}{delta}")
    if cmp["failed"]:
        lines.append(f"FAIL: EX dropped by {-cmp['delta']:.1%}, more than the threshold {cmp['threshold']:.1%}")
    return "\n".join(lines)
