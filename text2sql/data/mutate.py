"""SQL mutations for `data synthesize`: sqlglot AST transforms of a train query into new queries.

Each transform (`MUTATIONS`, name -> function) takes a parsed query (a copy it may change), a `MutationContext`
(the pinned snapshot, the dataset's business definitions, a sandboxed runner for column values) and a seeded
`random.Random`, and returns variant SQL strings. Transforms never validate: `data synthesize` runs every variant
through `data validate`'s checks.
"""

from __future__ import annotations

import calendar
import datetime as dt
import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlglot import exp

from text2sql.data.analysis import DIALECT
from text2sql.data.definitions import Definitions, load_definitions

if TYPE_CHECKING:
    from text2sql.catalog import SchemaSnapshot
    from text2sql.config import Config
    from text2sql.data.store import Dataset

MAX_VALUES = 50
"""Distinct values read per column; a column with more is not a dimension to group by."""
LIMITS = (3, 5, 10)
MONTH_SHIFTS = (-12, -3, -1, 1, 3, 12)
_TEXT_TYPES = ("VARCHAR", "TEXT", "STRING")
_NUMBER_TYPES = ("INT", "BIGINT", "SMALLINT", "TINYINT", "INTEGER")


@dataclass
class MutationContext:
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


def load_dataset_definitions(cfg: Config, ds: Dataset):
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


def mutate_literals(tree: exp.Expression, ctx: MutationContext, rng: random.Random) -> list[str]:
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


def _fits(fragment: exp.Expression, tables: dict[str, str], ctx: MutationContext) -> bool:
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


def mutate_measure(tree: exp.Expression, ctx: MutationContext, rng: random.Random) -> list[str]:
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


def _dimensions(select: exp.Select, tables: dict[str, str], ctx: MutationContext) -> list[tuple[str, exp.Expression]]:
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


def mutate_group_by(tree: exp.Expression, ctx: MutationContext, rng: random.Random) -> list[str]:
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


def mutate_window(tree: exp.Expression, ctx: MutationContext, rng: random.Random) -> list[str]:
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


def _fiscal_join(select: exp.Select, tables: dict[str, str], ctx: MutationContext):
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


def _timestamp_column(select: exp.Select, tables: dict[str, str], ctx: MutationContext) -> exp.Column | None:
    """The order timestamp when the query reads sales.orders."""
    alias = next((a for a, t in tables.items() if t == "sales.orders"), None)
    return exp.column("ordered_at", table=alias) if alias else None


def mutate_period(tree: exp.Expression, ctx: MutationContext, rng: random.Random) -> list[str]:
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


def mutate_order_limit(tree: exp.Expression, ctx: MutationContext, rng: random.Random) -> list[str]:
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


def mutate_join(tree: exp.Expression, ctx: MutationContext, rng: random.Random) -> list[str]:
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
        # The ON condition's own tables must reference the new one: `fc.calendar_date = CAST(o.ordered_at AS DATE)`
        # added to a query of returns and the fiscal calendar joins every order of a day to every return of it.
        if table and known and table not in present and _references(ctx.snapshot, {tables[a] for a in known}, table) \
                and all(tables[a] == ctx.snapshot.resolve(ctx.aliases.get(a, "")) for a in known):
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


MUTATIONS: dict[str, Callable[[exp.Expression, MutationContext, random.Random], list[str]]] = {
    "literal": mutate_literals,
    "measure": mutate_measure,
    "group_by": mutate_group_by,
    "period": mutate_period,
    "window": mutate_window,
    "order_limit": mutate_order_limit,
    "join": mutate_join,
}
"""Method name -> transform: a parsed train query (a copy) -> variant SQL strings."""
