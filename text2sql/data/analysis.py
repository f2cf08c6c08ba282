"""What a query is made of, read from its sqlglot AST (DuckDB dialect): normal form, template, features, difficulty.

Used by dedup (normal form), split (template), stats (features, tables, joins) and everyone who needs a
pair's difficulty (`difficulty_of`).
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import sqlglot
from sqlglot import exp

from text2sql.vocab import DIALECT

if TYPE_CHECKING:
    from text2sql.catalog import SchemaSnapshot

FEATURES = (
    "join", "outer_join", "aggregation", "group_by", "having", "window", "cte", "subquery", "set_operation",
    "date_filter", "order_by", "limit", "case", "distinct",
)
"""SQL features `sql_features` detects, in the order stats reports them."""

_DATE_TYPES = ("DATE", "TIMESTAMP", "TIMESTAMPTZ", "TIMESTAMP WITH TIME ZONE", "TIME")
_DATE_NODES = (
    exp.CurrentDate, exp.CurrentTimestamp, exp.CurrentTime, exp.DateTrunc, exp.TimestampTrunc, exp.Extract,
    exp.Year, exp.Month, exp.Quarter, exp.Interval, exp.DateAdd, exp.DateSub, exp.DateDiff, exp.StrToDate,
    exp.TsOrDsToDate, exp.Date,
)
_ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}")


def parse_sql(sql: str) -> exp.Expression | None:
    """The AST of `sql` when it is exactly one statement in DuckDB's dialect, else None."""
    try:
        trees = [t for t in sqlglot.parse(sql, read=DIALECT) if t is not None]
    except Exception:  # sqlglot raises ParseError, TokenError and, on odd input, others
        return None
    return trees[0] if len(trees) == 1 else None


def normalize_question(question: str) -> str:
    """Lower-cased, NFKC, single-spaced, without trailing punctuation.

    >>> normalize_question("  How many   Orders?? ")
    'how many orders'
    """
    text = unicodedata.normalize("NFKC", question).lower()
    return " ".join(text.split()).rstrip("?.!; ")


def normalize_sql(sql: str) -> str:
    """Canonical text of a query (keyword case, spacing, identifier case, quoting), literals kept.

    Unparseable SQL falls back to its whitespace-collapsed text.

    >>> normalize_sql("select  A from T where x='Y'")
    "SELECT a FROM t WHERE x = 'Y'"
    """
    tree = parse_sql(sql)
    if tree is None:
        return " ".join(sql.split())
    return tree.sql(dialect=DIALECT, normalize=True, pretty=False, comments=False)


def sql_template(sql: str) -> str:
    """The normalized query with every literal masked as `?` (an IN list of literals becomes one `?`).

    Two pairs with the same template ask the same question about different values; split keeps them together.

    >>> sql_template("SELECT * FROM t WHERE a = 5 AND b IN ('x', 'y') LIMIT 3")
    'SELECT * FROM t WHERE a = ? AND b IN (?) LIMIT ?'
    """
    tree = parse_sql(sql)
    if tree is None:
        return re.sub(r"'[^']*'|\b\d+(\.\d+)?\b", "?", " ".join(sql.lower().split()))
    tree = tree.copy()
    for node in list(tree.find_all(exp.In)):
        values = node.expressions
        if values and all(isinstance(v, exp.Literal) for v in values):
            node.set("expressions", [exp.Placeholder()])
    for literal in list(tree.find_all(exp.Literal)):
        literal.replace(exp.Placeholder())
    return tree.sql(dialect=DIALECT, normalize=True, pretty=False, comments=False)


# ---------------------------------------------------------------- features


def sql_features(sql: str, snapshot: SchemaSnapshot | None = None) -> set[str]:
    """The FEATURES a query uses. `date_filter` also looks at column types when a snapshot is given.

    >>> sorted(sql_features("SELECT a, COUNT(*) FROM t JOIN u ON t.id = u.id GROUP BY a HAVING COUNT(*) > 1"))
    ['aggregation', 'group_by', 'having', 'join']
    """
    tree = parse_sql(sql)
    if tree is None:
        return set()
    found = set()
    for join in tree.find_all(exp.Join):
        found.add("join")
        if join.side:
            found.add("outer_join")
    for agg in tree.find_all(exp.AggFunc):
        if not isinstance(agg.parent, exp.Window):
            found.add("aggregation")
    simple = {"group_by": exp.Group, "having": exp.Having, "window": exp.Window, "cte": exp.CTE,
              "set_operation": exp.SetOperation, "order_by": exp.Order, "limit": exp.Limit, "case": exp.Case}
    found |= {name for name, node in simple.items() if tree.find(node)}
    if any(s.args.get("distinct") for s in tree.find_all(exp.Select)) or any(
        f.args.get("distinct") or isinstance(f.this, exp.Distinct) for f in tree.find_all(exp.AggFunc)
    ) or tree.find(exp.Distinct):
        found.add("distinct")
    # A derived table, scalar, IN or EXISTS subquery; CTE bodies and set-operation branches are not subqueries.
    if any(s is not tree and isinstance(s.parent, (exp.Subquery, exp.Exists)) for s in tree.find_all(exp.Select)):
        found.add("subquery")
    if _has_date_filter(tree, snapshot):
        found.add("date_filter")
    return found


def _has_date_filter(tree: exp.Expression, snapshot: SchemaSnapshot | None) -> bool:
    date_columns = set()
    if snapshot is not None:
        for t in snapshot.tables.values():
            date_columns |= {c.name.lower() for c in t.columns if c.type.upper().startswith(_DATE_TYPES)}
    conditions = [w.this for w in tree.find_all(exp.Where, exp.Having)]
    conditions += [j.args["on"] for j in tree.find_all(exp.Join) if j.args.get("on")]
    for condition in conditions:
        for node in condition.walk():
            if isinstance(node, _DATE_NODES):
                return True
            if isinstance(node, exp.Cast) and node.to.is_type(*exp.DataType.TEMPORAL_TYPES):
                return True
            if isinstance(node, exp.Column) and node.name.lower() in date_columns:
                return True
            if isinstance(node, exp.Literal) and node.is_string and _ISO_DATE.match(node.this):
                return True
    return False


# ---------------------------------------------------------------- difficulty


def difficulty_of(sql: str) -> str:
    """Spider-style hardness (easy | medium | hard | extra) from the AST.

    The rule of Spider's evaluation.py (`eval_hardness`, Yu et al. 2018), on the outermost SELECT:

    - component1 = one each for WHERE, GROUP BY, ORDER BY, LIMIT; + the number of JOINs; + the number of
      ORs and LIKEs (ILIKE too) in the conditions.
    - component2 = nested queries: set-operation branches beyond the first, subqueries, and CTEs.
    - others = one each for: more than one aggregate, more than one selected column, more than one WHERE
      condition, more than one GROUP BY key, and (beyond Spider) any window function.

    easy: c1 <= 1, others = 0, c2 = 0. medium: (others <= 2, c1 <= 1, c2 = 0) or (c1 <= 2, others < 2, c2 = 0).
    hard: (others > 2, c1 <= 2, c2 = 0) or (2 < c1 <= 3, others <= 2, c2 = 0) or (c1 <= 1, others = 0, c2 <= 1).
    extra: everything else. Unparseable SQL counts as extra.

    >>> difficulty_of("SELECT COUNT(*) FROM singer")
    'easy'
    >>> difficulty_of("SELECT name, age FROM singer WHERE country = 'France' ORDER BY age")
    'medium'
    >>> difficulty_of("SELECT name FROM singer WHERE age > (SELECT AVG(age) FROM singer)")
    'hard'
    >>> difficulty_of("SELECT a FROM t JOIN u ON t.id = u.id WHERE x = 1 OR y = 2 GROUP BY a ORDER BY a LIMIT 1")
    'extra'
    """
    tree = parse_sql(sql)
    if tree is None:
        return "extra"
    c1, c2, others = _components(tree)
    if c1 <= 1 and others == 0 and c2 == 0:
        return "easy"
    if (others <= 2 and c1 <= 1 and c2 == 0) or (c1 <= 2 and others < 2 and c2 == 0):
        return "medium"
    if (others > 2 and c1 <= 2 and c2 == 0) or (2 < c1 <= 3 and others <= 2 and c2 == 0) or (
        c1 <= 1 and others == 0 and c2 <= 1
    ):
        return "hard"
    return "extra"


def _components(tree: exp.Expression) -> tuple[int, int, int]:
    top = _outer_select(tree)
    if top is None:
        return 0, 1, 0
    own = list(_own_nodes(top))
    c1 = sum(1 for key in ("where", "group", "order", "limit") if top.args.get(key))
    c1 += len(top.args.get("joins") or [])
    c1 += sum(1 for n in own if isinstance(n, (exp.Or, exp.Like, exp.ILike)))
    # Every other SELECT is nested: set-operation branches, subqueries, CTE bodies.
    c2 = sum(1 for n in tree.walk() if isinstance(n, exp.Select) and n is not top)
    others = 0
    aggregates = [n for n in own if isinstance(n, exp.AggFunc) and not isinstance(n.parent, exp.Window)]
    others += len(aggregates) > 1
    others += len(top.expressions) > 1
    where = top.args.get("where")
    others += bool(where) and _condition_count(where.this) > 1
    group = top.args.get("group")
    others += bool(group) and len(group.expressions) > 1
    others += any(isinstance(n, exp.Window) for n in own)
    return c1, c2, int(others)


def _condition_count(node: exp.Expression) -> int:
    """Predicates joined by AND/OR (Spider counts `a AND b OR c` as three conditions)."""
    if isinstance(node, exp.Paren):
        return _condition_count(node.this)
    if isinstance(node, exp.Connector):
        return _condition_count(node.this) + _condition_count(node.expression)
    return 1


def _outer_select(tree: exp.Expression) -> exp.Select | None:
    node = tree
    while not isinstance(node, exp.Select):
        if isinstance(node, (exp.Subquery, exp.Paren)):
            node = node.this
        elif isinstance(node, exp.SetOperation):
            node = node.this
        else:
            return None
    return node


def _own_nodes(select: exp.Select):
    """Nodes of a SELECT that are not inside a nested query."""
    for node in select.walk(prune=lambda n: n is not select and isinstance(n, (exp.Select, exp.SetOperation))):
        if node is select or not isinstance(node, (exp.Select, exp.SetOperation)):
            yield node


# ---------------------------------------------------------------- tables, columns and joins


@dataclass
class QueryRefs:
    tables: set[str] = field(default_factory=set)
    """Qualified names of the base tables read."""
    columns: set[str] = field(default_factory=set)
    """`table.column` of every base-table column referenced."""
    joins: set[tuple[str, str]] = field(default_factory=set)
    """Equi-join keys `(table.column, table.column)`, each pair sorted."""


def query_refs(sql: str, snapshot: SchemaSnapshot) -> QueryRefs:
    """Base tables, columns and equi-join keys a query uses, resolved against the snapshot (best effort)."""
    from sqlglot.optimizer.qualify import qualify
    from sqlglot.optimizer.scope import traverse_scope

    refs = QueryRefs()
    tree = parse_sql(sql)
    if tree is None:
        return refs
    tree = tree.copy()
    cte_names = {cte.alias_or_name.lower() for cte in tree.find_all(exp.CTE)}
    schema: dict = {}
    for table in tree.find_all(exp.Table):
        if not table.name or (not table.db and table.name.lower() in cte_names):
            continue
        resolved = snapshot.resolve(".".join(p for p in (table.db, table.name) if p))
        if resolved is None:
            continue
        refs.tables.add(resolved)
        ns, _, name = resolved.rpartition(".")
        table.set("db", exp.to_identifier(ns) if ns else None)
        table.set("catalog", None)
        cols = {c.name: c.type for c in snapshot.tables[resolved].columns}
        (schema.setdefault(ns, {}) if ns else schema)[name] = cols
    try:
        qualify(tree, schema=schema, dialect=DIALECT, validate_qualify_columns=False, quote_identifiers=False,
                identify=False, expand_stars=False)
        scopes = traverse_scope(tree)
    except Exception:  # unusual SQL: tables are still known
        return refs

    def base_column(column: exp.Column, scope) -> str | None:
        source = scope.sources.get(column.table)
        if isinstance(source, exp.Table):
            name = ".".join(p for p in (source.db, source.name) if p)
            resolved = snapshot.resolve(name)
            if resolved and snapshot.tables[resolved].column(column.name):
                return f"{resolved}.{snapshot.tables[resolved].column(column.name).name}"
        return None

    for scope in scopes:
        for column in scope.columns:
            found = base_column(column, scope)
            if found:
                refs.columns.add(found)
        conditions = [j.args["on"] for j in scope.expression.args.get("joins") or [] if j.args.get("on")]
        if scope.expression.args.get("where"):
            conditions.append(scope.expression.args["where"].this)
        for condition in conditions:
            for eq in condition.find_all(exp.EQ):
                left, right = _unwrap_cast(eq.this), _unwrap_cast(eq.expression)
                if isinstance(left, exp.Column) and isinstance(right, exp.Column):
                    left, right = base_column(left, scope), base_column(right, scope)
                    if left and right and left.rsplit(".", 1)[0] != right.rsplit(".", 1)[0]:
                        refs.joins.add(tuple(sorted((left, right))))
    return refs


def _unwrap_cast(node: exp.Expression) -> exp.Expression:
    """`CAST(o.ordered_at AS DATE) = c.calendar_date` still joins on the two columns."""
    while isinstance(node, (exp.Cast, exp.TryCast, exp.Paren)):
        node = node.this
    return node
