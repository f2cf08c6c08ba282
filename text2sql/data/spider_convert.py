"""The Spider import's conversion: a SQLite database copied into DuckDB, and SQLite SQL rewritten for DuckDB.

The rules are the ones `text2sql.data.spider`'s docstring describes (types by affinity and values, keys where the
data allows; string literals, ILIKE, `//`, bare columns next to aggregates).
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import Any

import sqlglot
from sqlglot import exp

from text2sql.vocab import DIALECT


# ---------------------------------------------------------------- SQLite -> DuckDB database


def copy_sqlite_to_duckdb(sqlite_path: Path, duck_path: Path, spider_schema: dict | None = None) -> dict[str, Any]:
    """Copy every table (typed as the module docstring says, with the keys the data allows) into a new DuckDB file."""
    import duckdb

    src = _connect_sqlite(sqlite_path)
    tmp = duck_path.with_name(f".{duck_path.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    con = duckdb.connect(str(tmp))
    info: dict[str, Any] = {"tables": 0, "rows": 0, "notes": []}
    try:
        tables = [r[0] for r in src.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name")]
        layout = {t: _table_layout(src, t) for t in tables}
        _add_spider_keys(layout, spider_schema)
        for table in _dependency_order(layout):
            columns, pk, fks = layout[table]
            rows = src.execute(f"SELECT * FROM {_q(table)}").fetchall()
            types = [_column_type(decl, [r[i] for r in rows]) for i, (_, decl) in enumerate(columns)]
            data = _arrow_table([c for c, _ in columns], types, rows)  # noqa: F841 (read by DuckDB's replacement scan)
            fks = [fk for fk in fks if fk[1].lower() in {t.lower() for t in layout}]
            attempts = [(pk, fks)] + ([(pk, [])] if fks else []) + ([([], [])] if pk else [])
            for use_pk, use_fks in attempts:
                try:
                    con.execute(_create_table(table, columns, types, use_pk, use_fks))
                    con.execute(f"INSERT INTO {_q(table)} SELECT * FROM data")
                    break
                except duckdb.Error as exc:
                    con.execute(f"DROP TABLE IF EXISTS {_q(table)}")
                    dropped = "foreign keys" if use_fks else "primary key"
                    info["notes"].append(f"{table}: {dropped} not declared ({str(exc).splitlines()[0][:120]})")
            info["tables"] += 1
            info["rows"] += len(rows)
        con.execute("CHECKPOINT")
    finally:
        con.close()
        src.close()
    os.replace(tmp, duck_path)
    return info


def _connect_sqlite(path: Path) -> sqlite3.Connection:
    con = sqlite3.connect(f"{Path(path).resolve().as_uri()}?mode=ro", uri=True)
    con.text_factory = lambda b: b.decode("utf-8", "replace")  # a few Spider databases hold invalid UTF-8
    return con


def _table_layout(src: sqlite3.Connection, table: str) -> tuple[list[tuple[str, str]], list[str], list[tuple]]:
    """(columns with declared types, primary key columns, foreign keys (columns, table, ref columns))."""
    info = src.execute(f"PRAGMA table_info({_q(table)})").fetchall()
    columns = [(r[1], r[2] or "") for r in info]
    pk = [r[1] for r in sorted((r for r in info if r[5]), key=lambda r: r[5])]
    fks: dict[int, tuple[list[str], str, list[str]]] = {}
    for row in src.execute(f"PRAGMA foreign_key_list({_q(table)})").fetchall():
        fk_id, _, other, col, other_col = row[:5]
        entry = fks.setdefault(fk_id, ([], other, []))
        entry[0].append(col)
        entry[2].append(other_col)
    return columns, pk, [(tuple(c), o, tuple(oc)) for c, o, oc in fks.values() if all(oc)]


def _add_spider_keys(layout: dict[str, tuple], schema: dict | None) -> None:
    """Add the foreign keys tables.json declares and SQLite does not."""
    if not schema:
        return
    names = schema.get("table_names_original", [])
    columns = schema.get("column_names_original", [])
    lookup = {t.lower(): t for t in layout}
    for a, b in schema.get("foreign_keys", []):
        try:
            (ta, ca), (tb, cb) = columns[a], columns[b]
            table, other = lookup.get(names[ta].lower()), lookup.get(names[tb].lower())
        except (IndexError, TypeError):
            continue
        if table is None or other is None:
            continue
        fks = layout[table][2]
        fk = ((ca,), other, (cb,))
        if not any(tuple(c.lower() for c in f[0]) == (ca.lower(),) for f in fks):
            fks.append(fk)


def _dependency_order(layout: dict[str, tuple]) -> list[str]:
    """Referenced tables first (a cycle is broken in name order; its foreign keys are then dropped)."""
    lookup = {t.lower(): t for t in layout}
    order: list[str] = []
    visiting: set[str] = set()

    def visit(t: str) -> None:
        if t in order or t in visiting:
            return
        visiting.add(t)
        for _, other, _ in layout[t][2]:
            target = lookup.get(other.lower())
            if target and target != t:
                visit(target)
        visiting.discard(t)
        order.append(t)

    for t in sorted(layout):
        visit(t)
    return order


def _affinity(declared: str) -> str:
    """SQLite's type affinity rules (https://www.sqlite.org/datatype3.html#determination_of_column_affinity)."""
    d = declared.upper()
    if "INT" in d:
        return "INTEGER"
    if any(s in d for s in ("CHAR", "CLOB", "TEXT")):
        return "TEXT"
    if "BLOB" in d or not d:
        return "BLOB"
    if any(s in d for s in ("REAL", "FLOA", "DOUB")):
        return "REAL"
    return "NUMERIC"


def _column_type(declared: str, values: list) -> str:
    present = [v for v in values if v is not None]
    kinds = {type(v) for v in present}
    affinity = _affinity(declared)
    if not present:
        return {"INTEGER": "BIGINT", "REAL": "DOUBLE", "TEXT": "VARCHAR", "BLOB": "VARCHAR"}.get(affinity, "DOUBLE")
    if kinds <= {int}:
        return "DOUBLE" if affinity == "REAL" else "BIGINT"
    if kinds <= {int, float}:
        return "DOUBLE"
    if kinds <= {bytes}:
        return "BLOB"
    if kinds <= {str} and affinity == "TEXT" and all(_canonical_int(v) for v in present):
        return "BIGINT"
    return "VARCHAR"


def _canonical_int(text: str) -> bool:
    try:
        return str(int(text)) == text and abs(int(text)) < 2**63
    except ValueError:
        return False


def _arrow_table(names: list[str], types: list[str], rows: list[tuple]):
    import pyarrow as pa

    arrow_types = {"BIGINT": pa.int64(), "DOUBLE": pa.float64(), "VARCHAR": pa.string(), "BLOB": pa.binary()}
    convert = {"BIGINT": int, "DOUBLE": float, "BLOB": bytes,
               "VARCHAR": lambda v: v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)}
    arrays = []
    for i, t in enumerate(types):
        values = [None if r[i] is None else convert[t](r[i]) for r in rows]
        arrays.append(pa.array(values, type=arrow_types[t]))
    return pa.table(arrays, names=[f"c{i}" for i in range(len(names))])


def _create_table(table: str, columns: list[tuple[str, str]], types: list[str], pk: list[str], fks: list[tuple]) -> str:
    parts = [f"{_q(name)} {t}" for (name, _), t in zip(columns, types)]
    if pk:
        parts.append(f"PRIMARY KEY ({', '.join(map(_q, pk))})")
    for cols, other, other_cols in fks:
        keys, references = ", ".join(map(_q, cols)), ", ".join(map(_q, other_cols))
        parts.append(f"FOREIGN KEY ({keys}) REFERENCES {_q(other)} ({references})")
    return f"CREATE TABLE {_q(table)} ({', '.join(parts)})"


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


# ---------------------------------------------------------------- gold SQL


def transpile_gold(sql: str, columns: dict[str, dict[str, str]], faithful_nulls: bool = False) -> str:
    """SQLite gold SQL -> DuckDB (see the module docstring). `columns`: table -> column -> DuckDB type.

    >>> singer = {"singer": {"name": "VARCHAR", "country": "VARCHAR", "age": "BIGINT"}}
    >>> transpile_gold('SELECT name FROM singer WHERE country = "France" AND name LIKE "%a%"', singer)
    "SELECT name FROM singer WHERE country = 'France' AND name ILIKE '%a%'"
    >>> transpile_gold("SELECT name, max(age) FROM singer", singer)
    'SELECT ARG_MAX(name, age), MAX(age) FROM singer'
    """
    tree = sqlglot.parse_one(sql, read="sqlite")
    known = {c.lower() for cols in columns.values() for c in cols}
    aliases = {a.alias.lower() for a in tree.find_all(exp.Alias)}
    for column in list(tree.find_all(exp.Column)):
        ident = column.this
        if (isinstance(ident, exp.Identifier) and ident.quoted and not column.table
                and ident.name.lower() not in known and ident.name.lower() not in aliases):
            column.replace(exp.Literal.string(ident.name))
    for like in list(tree.find_all(exp.Like)):
        like.replace(exp.ILike(this=like.this, expression=like.expression))
    _integer_division(tree, columns)
    for select in list(tree.find_all(exp.Select)):
        _fix_bare_columns(select)
    if not faithful_nulls:
        # SQLite sorts NULLs first under ASC, DuckDB last; sqlglot keeps SQLite's order with NULLS FIRST, which only
        # matters when a key is NULL. Without it the SQL reads as a person would write it; the result check tells.
        for ordered in tree.find_all(exp.Ordered):
            ordered.set("nulls_first", False)
    return tree.sql(dialect=DIALECT)


def transpile_prediction(sql: str, columns: dict[str, dict[str, str]]) -> str:
    """A prediction written for SQLite -> DuckDB, by the rewrite golds get, keeping SQLite's NULL order (what the
    prediction means there). SQL that sqlglot cannot read comes back as written, for the SQL check to report.

    >>> transpile_prediction('SELECT count(*) FROM singer WHERE country = "France"', {"singer": {"country": "VARCHAR"}})
    "SELECT COUNT(*) FROM singer WHERE country = 'France'"
    """
    try:
        return transpile_gold(sql, columns, faithful_nulls=True)
    except Exception:  # sqlglot raises several kinds on SQL it cannot read
        return sql


def _integer_division(tree: exp.Expression, columns: dict[str, dict[str, str]]) -> None:
    from sqlglot.optimizer.annotate_types import annotate_types
    from sqlglot.optimizer.qualify import qualify

    divisions = list(tree.find_all(exp.Div))
    if not divisions:
        return
    for i, div in enumerate(divisions):
        div.set("safe", None)  # SQLite's x/0 is NULL; DuckDB's is inf or NULL; the result check will tell
        div.set("typed", None)
        div.meta["t2s_div"] = i
    schema = {t.lower(): {c.lower(): typ for c, typ in cols.items()} for t, cols in columns.items()}
    try:
        typed = annotate_types(qualify(tree.copy(), schema=schema, dialect="sqlite", validate_qualify_columns=False),
                               schema=schema, dialect="sqlite")
    except Exception:  # cannot type it: leave `/` (the result check will tell)
        return
    integer = {d.meta.get("t2s_div") for d in typed.find_all(exp.Div)
               if d.left.is_type(*exp.DataType.INTEGER_TYPES) and d.right.is_type(*exp.DataType.INTEGER_TYPES)}
    for i, div in enumerate(divisions):
        if i in integer:
            div.replace(exp.IntDiv(this=div.this, expression=div.expression))


def _fix_bare_columns(select: exp.Select) -> None:
    """Columns next to aggregates that are neither aggregated nor grouped (SQLite allows them, DuckDB does not)."""
    own = list(select.expressions)
    aggregates = [a for e in own for a in e.find_all(exp.AggFunc) if not a.find_ancestor(exp.Window)]
    group = select.args.get("group")
    if not aggregates and not group:
        return
    aliases = {e.alias.lower() for e in own if isinstance(e, exp.Alias)}
    group_keys = list(group.expressions) if group else []

    def grouped(col: exp.Column) -> bool:
        return any(isinstance(g, exp.Column) and g.name.lower() == col.name.lower()
                   and (not g.table or not col.table or g.table.lower() == col.table.lower()) for g in group_keys)

    places = own + (list(select.args["order"].expressions) if select.args.get("order") else [])
    bare = []
    for place in places:
        for col in place.find_all(exp.Column):
            if any(isinstance(a, (exp.AggFunc, exp.Window, exp.Select)) for a in _ancestors(col, select)):
                continue  # aggregated, windowed, or inside a subquery
            if not col.table and col.name.lower() in aliases:
                continue  # an output alias
            if not grouped(col):
                bare.append(col)
    if not bare:
        return
    extremes = [a for a in aggregates if isinstance(a, (exp.Max, exp.Min))]
    if len(aggregates) == 1 and len(extremes) == 1 and not isinstance(extremes[0].this, exp.Star):
        agg = extremes[0]
        wrapper = exp.ArgMax if isinstance(agg, exp.Max) else exp.ArgMin
        for col in bare:
            col.replace(wrapper(this=col.copy(), expression=agg.this.copy()))
    else:
        # Not extra GROUP BY keys: a column that varies within a group would split it, changing the row count
        # (and what HAVING counts). SQLite takes the value from some row of the group; so does ANY_VALUE.
        for col in bare:
            col.replace(exp.AnyValue(this=col.copy()))


def _ancestors(node: exp.Expression, stop: exp.Expression):
    parent = node.parent
    while parent is not None and parent is not stop:
        yield parent
        parent = parent.parent
