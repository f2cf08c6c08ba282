"""Comparing query results: one rule for `text2sql eval` and the Spider import (and the ORDER BY keys they share).

Modes (named in every report):

- ``strict`` (default): same row and column counts; column names ignored, a one-to-one column permutation
  allowed; rows as a multiset; order enforced only when the gold's top-level query has ORDER BY, and then only
  across ORDER BY key groups (rows with equal sort keys may come in any order; under ORDER BY ... LIMIT the
  last group may hold any rows tied with it). NULL = NULL, NaN = NaN, numbers compared by value whatever their
  type (DECIMAL, integer, float; 1.0 = 1), with a relative tolerance when a float is involved (integers on
  both sides compare exactly), timestamps with a time zone compared in UTC.
- ``lenient``: set semantics, order ignored, extra predicted columns allowed (whole rows are projected onto
  the predicted columns that match the gold's, never columns sorted one by one), numeric strings equal numbers.
- ``set``: BIRD's rule, ``set(pred_rows) == set(gold_rows)`` on the raw values, for comparability only.

Pure: sqlglot and the standard library only, so the data stage (the Spider import) can use it too.
"""

from __future__ import annotations

import datetime as dt
import functools
import math
import re
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, NamedTuple

import sqlglot
from sqlglot import exp

from text2sql.data.analysis import parse_sql
from text2sql.vocab import ABS_TOL, DIALECT
from text2sql.vocab import EVAL_MODES as MODES
from text2sql.vocab import REL_TOL as DEFAULT_REL_TOL

MAX_MAPPING_STEPS = 20_000
"""Column-permutation search gives up (not equal) after this many partial assignments."""
MAX_FUZZY_MATCH = 64
"""Above this many leftover rows, tolerance matching only pairs rows in sorted order."""
DIFF_ROWS = 3
"""Differing rows shown per side in a wrong_result diff."""
TIE_KEY_PREFIX = "__t2s_tie_key"
"""Names of the ORDER BY key columns `tie_query` adds when a key is not an output column."""


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
    with_diff: bool = True,
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
        with_diff: build the diff of a prediction that differs (False: the verdict and reason only, cheaper).

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
    reason = _difference(gold, pred, gold_sql, mode, rel_tol, tie_rows)
    if not reason:
        return Comparison(True)
    return _differs(reason, gold, pred) if with_diff else Comparison(False, reason)


def _difference(gold, pred, gold_sql: str | None, mode: str, rel_tol: float, tie_rows) -> str:
    """Why the prediction's result differs from the gold's under `mode`, or '' when they are equal."""
    k, m = len(gold.columns), len(pred.columns)
    if k == m and tie_rows is None and gold.rows == pred.rows:
        # The same values in the same order (Python's ==: 1 == 1.0 == Decimal(1), so normalizing would equal them
        # too) are equal in every mode, whatever the ORDER BY: no need to parse the gold query.
        return ""
    if mode == "set":
        equal = {_hashable(r) for r in gold.rows} == {_hashable(r) for r in pred.rows}
        return "" if equal else "the sets of rows differ"
    lenient = mode == "lenient"
    g_rows = [_normalize_row(r, lenient) for r in gold.rows]
    p_rows = [_normalize_row(r, lenient) for r in pred.rows]
    if lenient:
        if m < k:
            return f"column count {m} is less than the gold {k}"
        return _search_mapping(_LenientCheck(g_rows, p_rows, rel_tol), k, m, gold)
    if m != k:
        return f"column count {m} differs from the gold {k}"
    if len(p_rows) != len(g_rows):
        return f"row count {len(p_rows)} differs from the gold {len(g_rows)}"

    def keys():
        return order_key_columns(gold_sql, gold.columns) if gold_sql else None

    return _search_mapping(_StrictCheck(g_rows, p_rows, rel_tol, keys, tie_rows), k, m, gold)


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
    When an ORDER BY key is not an output column (ORDER BY count(*)), the keys come as extra columns after the
    output ones (named TIE_KEY_PREFIX<i>), so that the rows tied with the gold's last one can still be told.

    >>> tie_query("SELECT a, b FROM t ORDER BY b DESC LIMIT 3")
    'SELECT a, b FROM t ORDER BY b DESC'
    >>> tie_query("SELECT a FROM t GROUP BY a ORDER BY COUNT(*) DESC LIMIT 1")
    'SELECT a, COUNT(*) AS __t2s_tie_key0 FROM t GROUP BY a ORDER BY COUNT(*) DESC'
    >>> tie_query("SELECT a FROM t LIMIT 3") is None
    True
    """
    text = gold_sql.lower()
    if "order" not in text or "limit" not in text and "fetch" not in text:  # no ORDER BY or LIMIT: no need to parse
        return None
    tree = parse_sql(gold_sql)  # a fresh tree to change (a copy of _parse's cached one costs a third of a parse)
    top = _top_query(gold_sql, tree)
    if top is None or top.args.get("order") is None or top.args.get("limit") is None or top.args.get("offset"):
        return None
    top.set("limit", None)
    keys = [ordered.this for ordered in top.args["order"].expressions]
    # DISTINCT would count rows differently with more columns; a star's names are not known before it runs.
    if isinstance(top, exp.Select) and not top.args.get("distinct") and \
            not any(isinstance(e, exp.Star) for e in top.selects) and \
            any(_output_index(k, top.selects, [""] * len(top.selects)) is None for k in keys):
        top.select(*(exp.alias_(k.copy(), f"{TIE_KEY_PREFIX}{i}") for i, k in enumerate(keys)), copy=False)
    return tree.sql(dialect=DIALECT, copy=False)


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

    return normalize_identifiers(tree, dialect=DIALECT).sql(dialect=DIALECT, comments=False, copy=False)


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


def rows_close(a: tuple, b: tuple, rel_tol: float = DEFAULT_REL_TOL) -> bool:
    """Whether two rows hold the same values position by position, by `compare_results`' rules (numbers by value
    within `rel_tol`, NaN = NaN, NULL = NULL): the one row comparison the Spider import shares.

    >>> rows_close((1, 2.0000000001, float("nan"), None), (1.0, 2, float("nan"), None))
    True
    """
    return _close(_normalize_row(a, False), _normalize_row(b, False), rel_tol)


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
    if len(only_a) + len(only_b) > MAX_FUZZY_MATCH or not (_has_float(only_a) or _has_float(only_b)):
        return False
    return all(any(_close(x, y, rel_tol) for y in sb) for x in only_a) and all(
        any(_close(y, x, rel_tol) for x in sa) for y in only_b
    )


def _match_all(left: list[tuple], right: list[tuple], rel_tol: float) -> bool:
    """Whether each row of `left` pairs with a distinct row of `right` within the tolerance (two multisets' rows
    left once their common ones are taken out: without a float, none can pair)."""
    if len(left) > len(right) or left and not (_has_float(left) or _has_float(right)):
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


def _has_float(rows) -> bool:
    """Whether any value in the (normalized) rows is a float: without one, `_close` is plain equality."""
    return any(isinstance(v, float) or isinstance(v, tuple) and _has_float([v]) for row in rows for v in row)


def _project(rows: list[tuple], indexes: list[int]) -> list[tuple]:
    return [tuple(r[i] for i in indexes) for r in rows]


class _StrictCheck:
    """Strict mode: a bijection of columns under which the rows are the same multiset, in the gold's key order.

    Under ORDER BY ... LIMIT with a tie pool, the last key group is checked against the pool instead of the
    gold's own last rows, in the column pruning as in the final check.
    """

    def __init__(self, gold, pred, rel_tol, keys: Callable[[], tuple[int, ...] | None], tie_rows) -> None:
        self.gold, self.pred, self.rel_tol = gold, pred, rel_tol
        self.order_differs = False
        self.tie_pool, self.groups, self._keys = None, None, keys
        if tie_rows is None:  # the keys are needed only once the rows match as a multiset: parse the gold then
            self.cut = len(gold)
            return
        keys, self._keys = keys(), None
        self.groups = self._key_groups(gold, keys) if keys else None
        if self.groups:
            width = len(gold[0])
            normalized = [_normalize_row(r, False) for r in tie_rows]
            if normalized and len(normalized[0]) > width and keys == tuple(range(width)) and \
                    len(normalized) >= len(gold):
                self._pool_by_added_keys(normalized, width, keys)
            else:  # the keys are output columns: any added ones are not needed
                last_key = tuple(gold[-1][i] for i in keys)
                self.tie_pool = [r[:width] for r in normalized if _close(tuple(r[i] for i in keys), last_key, rel_tol)]
        self.cut = len(gold) - self.groups[-1] if self.tie_pool else len(gold)
        """Rows before the cut must match the gold's; rows after it come from the tie pool."""

    def _order_groups(self) -> list[int] | None:
        """`groups`: sizes of the gold's runs of rows with equal ORDER BY keys (None: no top-level ORDER BY)."""
        if self._keys is not None:
            keys, self._keys = self._keys(), None
            self.groups = self._key_groups(self.gold, keys) if keys else None
        return self.groups

    def _pool_by_added_keys(self, tie_rows: list[tuple], width: int, keys) -> None:
        """The tie pool when a key is no output column and the tie rows end with the keys' values (`tie_query`).
        The gold's rows are the first len(gold) rows of the same ordering, so the last one's key, and how many of
        them share it, are known although the gold's own rows do not hold the keys."""
        n = len(self.gold)
        last_key = tie_rows[n - 1][width:]
        tied = sum(1 for r in tie_rows[:n] if _close(r[width:], last_key, self.rel_tol))
        self.tie_pool = [r[:width] for r in tie_rows if _close(r[width:], last_key, self.rel_tol)]
        self.groups = self._key_groups(self.gold[: n - tied], keys) + [tied]

    def _key_groups(self, rows: list[tuple], keys) -> list[int]:
        """Sizes of the runs of consecutive rows with equal sort keys."""
        sizes: list[int] = []
        previous = None
        for row in rows:
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
        if len(self.gold) < 2 and self.tie_pool is None or self._order_groups() is None:  # one row has no order
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


def _search_mapping(check, k: int, m: int, gold) -> str:
    """Find gold column -> predicted column assignments that make `check` pass, pruning by column values:
    '' when one does, else why not."""
    if k == m and check.full_matches(list(range(k))):
        return ""
    if not check.gold and not check.pred:
        return ""
    candidates = [[p for p in range(m) if check.partial_matches([g], [p])] for g in range(k)]
    unmatched = [g for g in range(k) if not candidates[g]]
    if unmatched:
        names = ", ".join(str(gold.columns[g]) for g in unmatched[:3])
        return f"the rows differ: no predicted column holds the values of gold column(s) {names}"
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
            return ""
    except _GaveUp:
        return "gave up searching column permutations (too many similar columns)"
    if check.order_differs:
        return "same rows in a different order than the gold's ORDER BY"
    return "the rows differ"


def _differs(reason: str, gold, pred) -> Comparison:
    """A not-equal Comparison with a short diff: shapes and a few rows found on one side only."""
    # Rows are compared as bags of values here, so that a column permutation does not flood the diff.
    def bag(row):
        return tuple(sorted((_normalize(v, False) for v in row), key=_sort_key))

    g_keys, p_keys = list(map(bag, gold.rows)), list(map(bag, pred.rows))
    g_bags, p_bags = Counter(g_keys), Counter(p_keys)
    missing = [r for r, b in zip(gold.rows, g_keys) if g_bags[b] > p_bags[b]][:DIFF_ROWS]
    extra = [r for r, b in zip(pred.rows, p_keys) if p_bags[b] > g_bags[b]][:DIFF_ROWS]
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
