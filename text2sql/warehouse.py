"""DuckDB over Iceberg, and the sandbox every untrusted query runs in.

`WarehouseSpec.from_config(cfg)` describes how to open a DuckDB connection in which every catalog
table is queryable as `namespace.table`, pinned to the snapshot recorded in `schemas/`, by one of the
engines of `warehouse.engine`:

- `materialized`: pyiceberg scans each table at its pinned snapshot into Arrow, once, into a
  DuckDB file under `warehouse.cache_dir` keyed by the snapshot fingerprint; queries then open that
  file read-only. Fastest per query, and the sandbox needs no file access at all; but a full copy.
- `iceberg`: DuckDB's iceberg extension (loaded from the pip package's file) reads the Iceberg
  metadata and parquet files on every query through views pinned with `snapshot_from_id`: no copy.
- `auto` (default): `materialized` while the pinned snapshots hold at most `warehouse.materialize_max_bytes`
  (their `total-files-size` summaries, read through pyiceberg), else `iceberg` (`choose_engine`).
- `duckdb`: the DuckDB database file `warehouse.duckdb_path` is the warehouse (no Iceberg catalog, no
  snapshots: queries see what the file holds), opened read-only like a materialized file.

Which engine ran, and why, is logged on the `text2sql.warehouse` logger (the CLI prints it on stderr).
`bench/warehouse_engines.py` measures materialized against iceberg.

Every query goes through `check_sql` (sqlglot: exactly one read-only SELECT/WITH query whose tables and
columns exist) and then `QueryRunner`: worker processes
holding a read-only, locked-down connection (no external access, memory limit, thread count, row cap),
with a timeout that interrupts the query and kills the worker if it does not stop.

Model replies are judged whole by `judge_reply` (eval and serve alike): the SQL located in the reply, never
a write cut down to a read, checked by `check_reply_sql` with DuckDB's own parser and binder. Behind every
check, a worker runs one statement per call on a fresh cursor (no temp object outlives its query) under
an address-space cap (`MEMORY_SLACK_BYTES`).
"""

from __future__ import annotations

import difflib
import hashlib
import logging
import multiprocessing as mp
import os
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from text2sql.errors import SchemaSnapshotError, UnsafeSQLError
from text2sql.vocab import DIALECT

if TYPE_CHECKING:
    from text2sql.catalog import SchemaSnapshot
    from text2sql.config import Config

log = logging.getLogger("text2sql.warehouse")

# Table functions and scalar functions that reach outside the warehouse or inspect the host.
FORBIDDEN_FUNCTIONS = frozenset("""
read_csv read_csv_auto read_parquet parquet_scan read_json read_json_auto read_json_objects read_ndjson
read_ndjson_auto read_ndjson_objects read_text read_blob glob iceberg_scan iceberg_metadata iceberg_snapshots
delta_scan sqlite_scan sqlite_attach postgres_scan postgres_attach mysql_scan query query_table getenv
current_setting duckdb_settings duckdb_extensions duckdb_secrets which_secret read_xlsx st_read
""".split())

# Statement kinds other than a query, named for the refusal message.
_QUERY_TYPES = ("Select", "Union", "Intersect", "Except", "Subquery", "Pivot")
_WRITE_NODES = ("Insert", "Update", "Delete", "Merge", "Create", "Drop", "Alter", "Copy", "Command",
                "Attach", "Detach", "Pragma", "Set", "Use", "Transaction", "Commit", "Rollback", "Install",
                "Load", "Export", "Refresh", "Summarize", "Describe", "TruncateTable")


@dataclass
class SQLCheck:
    ok: bool
    kind: str | None = None
    """None when ok; else parse_error | refused | unknown_table | unknown_column."""
    message: str = ""
    tables: list[str] = field(default_factory=list)
    """Qualified names of the tables the query reads."""


def check_sql(sql: str, snapshot: SchemaSnapshot | None = None) -> SQLCheck:
    """Is `sql` exactly one read-only query whose tables and columns exist in the snapshot?

    A trailing `;` and comments after it are fine. Top-level PIVOT/UNPIVOT is a query. DESCRIBE and SUMMARIZE
    are refused: they read only, but they answer no question about the data (DESCRIBE returns the schema the
    prompt already holds; SUMMARIZE's approximate statistics differ between DuckDB versions), so as an answer
    they could only score by accident. (`judge_reply` checks with `check_reply_sql`: the same rules, DuckDB's
    parser and binder.)

    >>> check_sql("DELETE FROM t").kind
    'refused'
    >>> check_sql("PIVOT t ON a USING sum(b); -- by a").ok
    True
    """
    import sqlglot
    from sqlglot import exp
    from sqlglot.errors import ParseError

    try:
        statements = [s for s in sqlglot.parse(sql, read=DIALECT) if s is not None and not isinstance(s, exp.Semicolon)]
    except ParseError as exc:
        return SQLCheck(False, "parse_error", _first_line(str(exc)))
    except Exception as exc:  # sqlglot's tokenizer raises a few other kinds on garbage input
        return SQLCheck(False, "parse_error", _first_line(f"{type(exc).__name__}: {exc}"))
    if not statements:
        return SQLCheck(False, "parse_error", "no SQL statement")
    if len(statements) > 1:
        return SQLCheck(False, "refused", f"{len(statements)} statements: only one query is allowed")
    tree = statements[0]
    kind = type(tree).__name__
    if kind in ("Describe", "Summarize"):
        return SQLCheck(False, "refused", f"{kind.upper()} is not allowed: it answers no question about the data "
                                          "(ask with SELECT)")
    if kind not in _QUERY_TYPES:
        return SQLCheck(False, "refused", f"not a read-only query ({kind.upper()} statement)")
    for node in tree.walk():
        name = type(node).__name__
        if name in _WRITE_NODES:
            return SQLCheck(False, "refused", f"{name.upper()} is not allowed inside a query")
        if isinstance(node, exp.Func):
            fname = (node.name if isinstance(node, exp.Anonymous) else node.sql_name()).lower()
            if fname in FORBIDDEN_FUNCTIONS or fname.startswith(("read_", "duckdb_", "pragma_")):
                return SQLCheck(False, "refused", f"function {fname}() is not allowed")
    if isinstance(tree, exp.Select) and tree.args.get("into"):
        return SQLCheck(False, "refused", "SELECT ... INTO is not allowed")
    if snapshot is None:
        return SQLCheck(True)
    return _check_names(tree, snapshot)


def _check_names(tree, snapshot: SchemaSnapshot) -> SQLCheck:
    from sqlglot import exp
    from sqlglot.errors import OptimizeError
    from sqlglot.optimizer.qualify import qualify

    cte_names = {cte.alias_or_name.lower() for cte in tree.find_all(exp.CTE)}
    tables = []
    tree = tree.copy()
    for table in tree.find_all(exp.Table):
        if not table.name:  # a table function; forbidden ones were refused above
            continue
        if not table.db and table.name.lower() in cte_names:
            continue
        written = ".".join(p for p in (table.catalog, table.db, table.name) if p)
        resolved = snapshot.resolve(written) or _resolve_in_catalog(written, snapshot)
        if resolved is None:
            choices = list(snapshot.tables) + [n.split(".", 1)[-1] for n in snapshot.tables]
            close = difflib.get_close_matches(written, choices, n=1, cutoff=0.5)
            hint = f"; did you mean {snapshot.resolve(close[0]) or close[0]}?" if close else ""
            return SQLCheck(False, "unknown_table", f"unknown table {written!r}{hint}")
        ns, _, name = resolved.rpartition(".")
        # Qualify bare names so sqlglot resolves columns against the right table.
        table.set("db", exp.to_identifier(ns) if ns else None)
        table.set("catalog", None)
        tables.append(resolved)
    schema: dict[str, Any] = {}
    for qualified in set(tables):
        ns, _, name = qualified.rpartition(".")
        cols = {c.name: c.type for c in snapshot.tables[qualified].columns}
        (schema.setdefault(ns, {}) if ns else schema)[name] = cols
    try:
        qualify(tree, schema=schema, dialect=DIALECT, validate_qualify_columns=True)
    except OptimizeError as exc:
        message = _first_line(str(exc))
        col = message.split("'")[1] if message.count("'") >= 2 else ""
        known = sorted({c.name for t in set(tables) for c in snapshot.tables[t].columns})
        if col in known:  # ambiguous to sqlglot rather than unknown: DuckDB's binder is the judge of that
            return SQLCheck(True, None, f"names not checked: {message}", sorted(set(tables)))
        close = difflib.get_close_matches(col, known, n=1, cutoff=0.5) if col else []
        hint = f"; did you mean {close[0]}?" if close else ""
        return SQLCheck(False, "unknown_column", f"unknown column {col!r}{hint}" if col else message, sorted(set(tables)))
    except Exception as exc:  # qualify can trip on unusual but valid SQL: let DuckDB be the judge then
        return SQLCheck(True, None, f"names not checked: {_first_line(str(exc))}", sorted(set(tables)))
    return SQLCheck(True, tables=sorted(set(tables)))


def _resolve_in_catalog(written: str, snapshot: SchemaSnapshot) -> str | None:
    """A name qualified as DuckDB resolves it in a database file whose catalog is the snapshot's:
    `nyc.taxi` and `nyc.main.taxi` are the table `taxi` of the main schema of `nyc.duckdb`."""
    parts = written.split(".")
    if len(parts) > 1 and parts[0].lower() == snapshot.catalog.lower():
        parts = parts[1:]
        if snapshot.resolve(".".join(parts)):
            return snapshot.resolve(".".join(parts))
    if len(parts) == 2 and parts[0].lower() == "main":
        return snapshot.resolve(parts[1])
    return None


def _first_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return (lines[0] if lines else text)[:300]


# ---------------------------------------------------------------- judging a reply whole

# Words that open a SQL statement. A reply's SQL starts at the first of them; a "strong" one (a write or a
# command) is never skipped as prose, so a write is judged as the write it is and never cut down to a read.
_READ_WORDS = ("SELECT", "WITH", "FROM", "VALUES", "TABLE", "PIVOT", "UNPIVOT", "DESCRIBE", "SUMMARIZE", "SHOW",
               "EXPLAIN", "SET", "RESET", "USE", "CALL", "BEGIN", "COMMIT", "ROLLBACK", "REPLACE", "ANALYZE",
               "EXECUTE", "PREPARE")
_STRONG_WORDS = ("INSERT", "UPDATE", "DELETE", "MERGE", "UPSERT", "CREATE", "DROP", "ALTER", "TRUNCATE", "ATTACH",
                 "DETACH", "COPY", "EXPORT", "IMPORT", "PRAGMA", "INSTALL", "LOAD", "VACUUM", "CHECKPOINT", "GRANT",
                 "REVOKE", "DEALLOCATE")
_STATEMENT_WORD = re.compile(r"\b(" + "|".join(_READ_WORDS + _STRONG_WORDS) + r")\b", re.IGNORECASE)
_FENCE = re.compile(r"```(?:sql|duckdb)?[ \t]*\n?(.*?)(?:```|$)", re.DOTALL | re.IGNORECASE)


def judge_reply(raw: str | None, snapshot: SchemaSnapshot | None = None) -> tuple[str | None, SQLCheck]:
    """The SQL of a model reply (or a predictions file's `sql`) and the verdict on the reply taken whole.

    Eval and serve both judge with this one function. A code fence, a trailing `;`, comments, whitespace and
    prose around the SQL are fine; any other statement before or after the query makes it `refused`, and so
    does a query inside a write (INSERT ... SELECT, CREATE TABLE ... AS, CREATE VIEW ... AS): the SQL returned
    is then the whole reply's SQL, never a read cut out of a write. A reply with no SQL gives `no_sql`.

    >>> judge_reply("```sql\\nSELECT 1;\\n```\\nThis returns 1.")
    ('SELECT 1', SQLCheck(ok=True, kind=None, message='', tables=[]))
    >>> judge_reply("DROP TABLE t; SELECT 1")[1].kind
    'refused'
    >>> judge_reply("DELETE FROM t")
    ('DELETE FROM t', SQLCheck(ok=False, kind='refused', message='not a read-only query (DELETE statement)', tables=[]))
    """
    located = locate_sql(raw)
    if located is None:
        return None, SQLCheck(False, "no_sql", "no SQL in the reply")
    statements, whole = located
    if len(statements) > 1:
        words = ", ".join(_first_word(s) for s in statements)
        return whole, SQLCheck(False, "refused", f"{len(statements)} statements ({words}): only one query is allowed")
    return statements[0], check_reply_sql(statements[0], snapshot)


def extract_sql(raw: str | None) -> str | None:
    """The SQL `judge_reply` judges in a reply: the one query, or the whole SQL when there is more (never repaired).

    >>> extract_sql("Sure:\\n```sql\\nSELECT a FROM t;\\n```")
    'SELECT a FROM t'
    >>> extract_sql("SELECT a FROM t; DROP TABLE t;")
    'SELECT a FROM t; DROP TABLE t'
    """
    located = locate_sql(raw)
    if located is None:
        return None
    statements, whole = located
    return statements[0] if len(statements) == 1 else whole


def locate_sql(raw: str | None) -> tuple[list[str], str] | None:
    """(statements, the SQL text they span) in a reply; None when it holds no SQL.

    The SQL is the fenced blocks when there are any, else the reply itself when it parses, else the reply from
    its first statement word on (a read word inside a sentence that does not parse from there is skipped as
    prose; a write word never is). Segments after a `;` that hold only comments are dropped, and so is prose
    after a `;` that does not open with a statement word ("SELECT 1; This returns 1.").
    """
    if not raw or not raw.strip():
        return None
    fenced = _FENCE.findall(raw)
    if fenced:
        text = ";\n".join(block for block in fenced if block.strip())
    else:
        text = raw.strip()
        first = next((code for _, code, _ in _split_statements(text) if code), "")
        if not _opens_statement(first):
            text = _from_first_statement(text) or (text if _looks_like_code(text) else None)
            if text is None:
                return None
    segments = [s for s in _split_statements(text) if s[1]]
    if not segments:
        return None
    kept = segments[:1] + [s for s in segments[1:] if _opens_statement(s[1])]
    statements = [segment.strip() for segment, _, _ in kept]
    return statements, text[:kept[-1][2]].strip()


_CODE_SIGN = re.compile(r"[(*=<>]|\w\.\w")


def _looks_like_code(text: str) -> bool:
    """One line, not a sentence, with code in it (`SELEC count(*) FRM t`): judged as SQL (a parse_error), not
    as prose without SQL (no_sql)."""
    return "\n" not in text and text[-1] not in ".!?:" and bool(_CODE_SIGN.search(text))


def _opens_statement(code: str) -> bool:
    return bool(_STATEMENT_WORD.match(code)) or code.startswith("(")


def _parses(text: str) -> bool:
    """Whether DuckDB's parser reads `text` as SQL statements."""
    try:
        return bool(_parser_connection().extract_statements(text))
    except Exception:
        return False


def _from_first_statement(text: str) -> str | None:
    """`text` from its first statement word on: a write word wherever it is; a read word at the start of a line,
    or after prose that ends a clause (`Here you go: SELECT ...`) when the rest parses."""
    for match in _STATEMENT_WORD.finditer(text):
        rest, before = text[match.start():], text[:match.start()].rstrip(" \t")
        if match.group(1).upper() in _STRONG_WORDS or not before or before.endswith("\n"):
            return rest
        if before.endswith((":", ".", "!", "?", ",")) and _parses(rest):
            return rest
    return None


def _split_statements(text: str) -> list[tuple[str, str, int]]:
    """(segment, its code without comments, end offset) for each part of `text` between top-level `;`s.

    Quotes ('...', "...", $$...$$) and comments (--, /* */) are honoured, so a `;` inside them splits nothing.
    """
    segments, start, code, i, n = [], 0, [], 0, len(text)
    while i < n:
        c = text[i]
        if c in "'\"":
            j = i + 1
            while j < n:
                if text[j] == c:
                    if j + 1 < n and text[j + 1] == c:
                        j += 2
                        continue
                    break
                j += 1
            code.append(text[i:j + 1])
            i = j + 1
        elif text.startswith("$$", i):
            j = text.find("$$", i + 2)
            j = n if j < 0 else j + 2
            code.append(text[i:j])
            i = j
        elif text.startswith("--", i):
            j = text.find("\n", i)
            i = n if j < 0 else j
            code.append(" ")
        elif text.startswith("/*", i):
            j = text.find("*/", i + 2)
            i = n if j < 0 else j + 2
            code.append(" ")
        elif c == ";":
            segments.append((text[start:i], "".join(code).strip(), i))
            start, code, i = i + 1, [], i + 1
        else:
            code.append(c)
            i += 1
    segments.append((text[start:], "".join(code).strip(), n))
    return segments


def _first_word(statement: str) -> str:
    segment = _split_statements(statement)[0][1]
    return (segment.split() or ["?"])[0].upper()


# ---------------------------------------------------------------- judging with DuckDB's own parser and binder

_LOCAL = threading.local()
_SHOW_WORDS = ("describe", "summarize", "show")
_WORD = re.compile(r'"(?:[^"]|"")*"|[A-Za-z_][\w$]*')


def check_reply_sql(sql: str, snapshot: SchemaSnapshot | None = None) -> SQLCheck:
    """`check_sql`'s verdict with DuckDB's own parser and binder (what `judge_reply` uses): about 0.4 ms a query
    where sqlglot's parse and qualification take ~2.6 ms, and no false blocks, since the binder is DuckDB's.

    One statement (a top-level PIVOT, which DuckDB expands to a temp ENUM type + a query, counts as one), of kind
    SELECT; no forbidden function call (a name among FORBIDDEN_FUNCTIONS or read_*/duckdb_*/pragma_* followed by
    `(`); no DESCRIBE/SUMMARIZE/SHOW (see `check_sql`). Names: the query is bound (not run) against empty tables
    made from the snapshot's DDL, in a catalog named like the snapshot's (so `nyc.taxi` binds in `nyc.duckdb`);
    a missing table or column is unknown_table/unknown_column with DuckDB's hint; other binder errors are left
    to the run (runtime_error), as before.

    >>> check_reply_sql("DELETE FROM t").message
    'not a read-only query (DELETE statement)'
    >>> check_reply_sql("SELECT getenv('HOME')").message
    'function getenv() is not allowed'
    """
    import duckdb

    con = _parser_connection()
    try:
        statements = con.extract_statements(sql)
    except Exception as exc:
        return SQLCheck(False, "parse_error", _first_line(str(exc).removeprefix("Parser Error: ")))
    kinds = [s.type.name for s in statements]
    if not kinds:
        return SQLCheck(False, "parse_error", "no SQL statement")
    if not (kinds == ["SELECT"] or kinds == ["CREATE", "SELECT"] and _is_pivot(sql)):
        if len(kinds) > 1:
            return SQLCheck(False, "refused", f"{len(kinds)} statements: only one query is allowed")
        return SQLCheck(False, "refused", f"not a read-only query ({kinds[0].replace('_', ' ')} statement)")
    refusal = _scan_tokens(sql)
    if refusal:
        return SQLCheck(False, "refused", refusal)
    if snapshot is None:
        return SQLCheck(True)
    binder, session = _binder(snapshot)
    cursor = binder
    try:
        if len(kinds) > 1:  # a PIVOT's temp ENUM type dies with its own cursor (which needs the session settings)
            cursor = binder.cursor()
            for statement in session:
                cursor.execute(statement)
        cursor.sql(sql)
    except duckdb.PermissionException as exc:  # a file named as a table: the binder, too, has no file access
        return SQLCheck(False, "refused", f"reads outside the warehouse: {_first_line(str(exc))}")
    except (duckdb.CatalogException, duckdb.BinderException) as exc:
        text = str(exc)
        missing_catalog = "does not exist!" in text and ("Catalog \"" in text or "Schema" in text)
        if "Table with name" in text or missing_catalog or "Referenced table" in text:
            return SQLCheck(False, "unknown_table", _unknown_table(text, snapshot))
        if "Referenced column" in text or "does not have a column named" in text:
            return SQLCheck(False, "unknown_column", _unknown_column(text))
    except Exception:  # other errors are the run's to report
        pass
    finally:
        if cursor is not binder:
            cursor.close()
    return SQLCheck(True, tables=_tables_read(sql, snapshot))


def _unknown_table(text: str, snapshot: SchemaSnapshot) -> str:
    """`unknown table 'x'; did you mean ns.y?` from DuckDB's binder error (its own hint may name a system table)."""
    found = re.search(r"Table with name (\S+) does not exist", text)
    if not found:
        return _first_line(text)
    written = found.group(1).strip('"')
    choices = list(snapshot.tables) + [n.split(".", 1)[-1] for n in snapshot.tables]
    close = difflib.get_close_matches(written, choices, n=1, cutoff=0.5)
    hint = f"; did you mean {snapshot.resolve(close[0]) or close[0]}?" if close else ""
    return f"unknown table {written!r}{hint}"


def _unknown_column(text: str) -> str:
    """`unknown column 'x'; did you mean y?` from DuckDB's binder error and its candidate bindings."""
    found = re.search(r'column (?:named )?"([^"]+)"', text)
    if not found:
        return _first_line(text)
    column = found.group(1)
    candidates = re.findall(r'"([^"]+)"', text.partition("Candidate bindings:")[2])
    names = list(dict.fromkeys(c.rpartition(".")[2] for c in candidates))
    close = difflib.get_close_matches(column, names, n=1, cutoff=0.5)
    return f"unknown column {column!r}" + (f"; did you mean {close[0]}?" if close else "")


def _is_pivot(sql: str) -> bool:
    first = next((w for w in _WORD.findall(_split_statements(sql)[0][1])), "")
    return first.lower() in ("pivot", "pivot_wider")


def _tokens(sql: str) -> list[tuple[str, str]]:
    """(kind, text) of DuckDB's tokens of `sql` (comments are not tokens)."""
    import duckdb

    tokens = duckdb.tokenize(sql)
    out = []
    for pos, kind in tokens:
        word = _WORD.match(sql, pos)
        out.append((kind.name, word.group(0) if word else sql[pos]))
    return out


_OPENING_WORDS = ("select", "with", "from", "values", "table", "pivot", "unpivot", "pivot_wider", "pivot_longer", "(")


def _scan_tokens(sql: str) -> str:
    """Why the tokens hold something other than a query: an opening word that is not a query's (DuckDB parses
    PRAGMA, SHOW, DESCRIBE, SUMMARIZE and CALL as SELECTs), a forbidden call or a nested DESCRIBE/SUMMARIZE/SHOW,
    or ''."""
    tokens = _tokens(sql)
    first = tokens[0][1].lower() if tokens else ""
    if first in _SHOW_WORDS:
        return f"{first.upper()} is not allowed: it answers no question about the data (ask with SELECT)"
    if first not in _OPENING_WORDS:
        return f"not a read-only query ({first.upper()} statement)"
    for i, (kind, text) in enumerate(tokens):
        name = text.strip('"').lower()
        if kind in ("identifier", "keyword") and i + 1 < len(tokens) and tokens[i + 1][1] == "(":
            if name in FORBIDDEN_FUNCTIONS or name.startswith(("read_", "duckdb_", "pragma_")):
                return f"function {name}() is not allowed"
        if kind == "keyword" and name in _SHOW_WORDS and (i == 0 or tokens[i - 1][1] == "("):
            return f"{name.upper()} is not allowed: it answers no question about the data (ask with SELECT)"
    return ""


def _tables_read(sql: str, snapshot: SchemaSnapshot) -> list[str]:
    """Snapshot tables named after FROM or JOIN (or a comma in a FROM list), qualified."""
    tokens = _tokens(sql)
    found, clause, i = set(), "", 0
    while i < len(tokens):
        kind, text = tokens[i]
        if kind == "keyword":
            clause = text.lower() if text.lower() in ("from", "join", "select", "where", "group", "having", "order",
                                                      "on", "using", "limit", "pivot", "unpivot") else clause
        starts_ref = i > 0 and (tokens[i - 1][1].lower() in ("from", "join", "pivot", "unpivot")
                                or (tokens[i - 1][1] == "," and clause == "from"))
        if starts_ref and kind in ("identifier", "keyword"):
            parts = [text.strip('"')]
            while i + 2 < len(tokens) and tokens[i + 1][1] == "." and tokens[i + 2][0] in ("identifier", "keyword"):
                parts.append(tokens[i + 2][1].strip('"'))
                i += 2
            if not (i + 1 < len(tokens) and tokens[i + 1][1] == "("):
                written = ".".join(parts)
                resolved = snapshot.resolve(written) or _resolve_in_catalog(written, snapshot)
                if resolved:
                    found.add(resolved)
        i += 1
    return sorted(found)


def _parser_connection():
    con = getattr(_LOCAL, "parser", None)
    if con is None:
        import duckdb

        con = _LOCAL.parser = duckdb.connect(":memory:")
        _lock(con)
    return con


def _lock(con) -> None:
    """No file or network access, no extension loads, and no way to undo that (as the sandbox's connection)."""
    con.execute("SET autoinstall_known_extensions = false")
    con.execute("SET autoload_known_extensions = false")
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")


def _binder(snapshot: SchemaSnapshot):
    """This thread's DuckDB holding the snapshot's tables, empty, for binding (one per snapshot, kept), and the
    statements that set up a session on it (a new cursor needs them)."""
    import duckdb

    binders = _LOCAL.__dict__.setdefault("binders", {})
    key = (snapshot.catalog, snapshot.fingerprint)
    if key in binders:
        return binders[key]
    con, session = duckdb.connect(":memory:"), []
    catalog = snapshot.catalog
    if catalog and catalog.lower() not in ("memory", "system", "temp", "main"):
        con.execute(f'ATTACH \':memory:\' AS "{catalog}"')
        session.append(f'USE "{catalog}"')
        con.execute(session[-1])
    for name in snapshot.tables:
        ns = name.rpartition(".")[0]
        if ns:
            con.execute(f'CREATE SCHEMA IF NOT EXISTS "{ns}"')
    for name, table in snapshot.tables.items():
        try:
            con.execute(table.ddl)
        except Exception:  # DDL DuckDB cannot read: the columns with their types, else as VARCHAR
            cols = ", ".join(f'"{c.name}" {c.type or "VARCHAR"}' for c in table.columns)
            try:
                con.execute(f"CREATE TABLE {_qualified(name)} ({cols})")
            except Exception:
                cols = ", ".join(f'"{c.name}" VARCHAR' for c in table.columns)
                con.execute(f"CREATE TABLE {_qualified(name)} ({cols})")
    namespaces = sorted({n.rpartition(".")[0] for n in snapshot.tables if "." in n})
    if namespaces:
        session.append(f"SET search_path = '{','.join(namespaces + ['main'])}'")
        con.execute(session[-1])
    _lock(con)
    binders[key] = con, session
    return con, session


# ---------------------------------------------------------------- opening DuckDB over Iceberg


@dataclass(frozen=True)
class WarehouseSpec:
    """How a worker opens its connection. Picklable, so it crosses to worker processes."""

    database: str = ":memory:"
    """A DuckDB file opened read-only, or :memory: with `setup_sql` views."""
    setup_sql: tuple[str, ...] = ()
    """Statements run before the connection is locked (extension loads, views)."""
    allowed_directories: tuple[str, ...] = ()
    """Directories the locked connection may still read (the iceberg engine's warehouse)."""
    search_path: str = ""
    """Schemas searched for bare table names."""
    engine: str = "duckdb"
    """What reads the data: materialized | iceberg | duckdb (a DuckDB database file as it is)."""

    @classmethod
    def from_duckdb_file(cls, path: str | Path, search_path: str = "") -> WarehouseSpec:
        path = Path(path)
        if not path.is_file():
            raise SchemaSnapshotError(f"database file not found: {path}")
        return cls(database=str(path.resolve()), search_path=search_path, engine="duckdb")

    @classmethod
    def from_config(cls, cfg: Config, snapshot: SchemaSnapshot | None = None) -> WarehouseSpec:
        """The project warehouse at the snapshot pinned in schemas/, opened by the engine `choose_engine` picks
        (logged); `snapshot` when the caller has loaded it already."""
        from text2sql.catalog import load_snapshot

        snapshot = snapshot or load_snapshot(cfg)
        engine, reason = choose_engine(cfg, snapshot)
        log.info("warehouse engine: %s (%s)", engine, reason)
        if engine == "duckdb":
            path = cfg.path(cfg.warehouse.duckdb_path)
            if not path.is_file():
                raise SchemaSnapshotError(f"warehouse.duckdb_path: {path} not found (the DuckDB file to query)")
            # Tables of schema main are listed by bare name: main stays on the path after the named schemas.
            schemas = sorted({n.rpartition(".")[0] for n in snapshot.tables} - {""})
            return cls.from_duckdb_file(path, ",".join([*schemas, "main"]))
        search_path = ",".join(snapshot.namespaces())
        if engine == "materialized":
            return cls(database=str(materialize(cfg, snapshot)), search_path=search_path, engine="materialized")
        return _iceberg_spec(cfg, snapshot, search_path)


def choose_engine(cfg: Config, snapshot: SchemaSnapshot) -> tuple[str, str]:
    """(engine, why): `warehouse.engine` itself, or for `auto` materialized or iceberg by the size of the pinned
    snapshots (the sum of their `total-files-size` summaries, through pyiceberg) against
    `warehouse.materialize_max_bytes`. A table whose size the summary does not give is never copied."""
    w = cfg.warehouse
    if w.engine != "auto":
        return w.engine, f"warehouse.engine: {w.engine}"
    limit = f"warehouse.materialize_max_bytes {_size(w.materialize_max_bytes)}"
    total, unknown = pinned_data_bytes(cfg, snapshot)
    if unknown:
        return "iceberg", f"auto: the pinned snapshot of {unknown[0]} gives no total-files-size; not copied"
    if total > w.materialize_max_bytes:
        return "iceberg", f"auto: the pinned snapshots hold {_size(total)} > {limit}; read in place"
    return "materialized", f"auto: the pinned snapshots hold {_size(total)} <= {limit}; copied into a local DuckDB file"


def pinned_data_bytes(cfg: Config, snapshot: SchemaSnapshot) -> tuple[int, list[str]]:
    """(bytes of data files in the snapshots pinned in schemas/, tables whose snapshot summary gives no size)."""
    from text2sql.catalog import load_catalog

    catalog = load_catalog(cfg, snapshot.catalog)
    total, unknown = 0, []
    for name, t in snapshot.tables.items():
        if t.snapshot_id is None:  # a table with no snapshot holds no data
            continue
        pinned = _load_pinned_table(catalog, name, t.snapshot_id).snapshot_by_id(t.snapshot_id)
        size = pinned.summary.additional_properties.get("total-files-size") if pinned.summary else None
        try:
            total += int(size)
        except (TypeError, ValueError):
            unknown.append(name)
    return total, unknown


def _size(n: int) -> str:
    """A byte count for people.

    >>> _size(2_000_000_000)
    '2.0 GB'
    """
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def materialize(cfg: Config, snapshot: SchemaSnapshot | None = None) -> Path:
    """The DuckDB file holding every table at its pinned snapshot, built on first use (atomically)."""
    from text2sql.catalog import load_catalog, load_snapshot

    snapshot = snapshot or load_snapshot(cfg)
    cache = cfg.path(cfg.warehouse.cache_dir)
    target = cache / f"{snapshot.catalog}-{snapshot.fingerprint[:16]}.duckdb"
    if target.is_file():
        return target
    import duckdb

    cache.mkdir(parents=True, exist_ok=True)
    catalog = load_catalog(cfg, snapshot.catalog)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    con = duckdb.connect(str(tmp))
    try:
        for name, t in snapshot.tables.items():
            table = _load_pinned_table(catalog, name, t.snapshot_id)
            data = table.scan(snapshot_id=t.snapshot_id).to_arrow()  # noqa: F841 (read by DuckDB's replacement scan)
            ns = name.rpartition(".")[0]
            if ns:
                con.execute(f'CREATE SCHEMA IF NOT EXISTS "{ns}"')
            con.execute(f"CREATE TABLE {_qualified(name)} AS SELECT * FROM data")
        con.execute("CHECKPOINT")
    finally:
        con.close()
    os.replace(tmp, target)
    return target


def _load_pinned_table(catalog, name: str, snapshot_id: int | None):
    from pyiceberg.exceptions import NoSuchTableError as IcebergNoSuchTable

    from text2sql.errors import NoSuchTableError

    try:
        table = catalog.load_table(name)
    except IcebergNoSuchTable:
        raise NoSuchTableError(f"table {name} from schemas/ is not in the catalog: run `text2sql schema diff`") from None
    if snapshot_id is not None and table.snapshot_by_id(snapshot_id) is None:
        raise SchemaSnapshotError(
            f"{name}: snapshot {snapshot_id} pinned in schemas/ is not in the catalog (expired, or the lakehouse was "
            "rebuilt with another seed): run `text2sql schema pull`"
        )
    return table


def _iceberg_spec(cfg: Config, snapshot: SchemaSnapshot, search_path: str) -> WarehouseSpec:
    import duckdb_extension_avro
    import duckdb_extension_iceberg

    from text2sql.catalog import load_catalog

    catalog = load_catalog(cfg, snapshot.catalog)
    setup = [f"LOAD '{_extension_file(duckdb_extension_avro)}'", f"LOAD '{_extension_file(duckdb_extension_iceberg)}'"]
    dirs = set()
    for name, t in snapshot.tables.items():
        table = _load_pinned_table(catalog, name, t.snapshot_id)
        location = table.metadata_location.removeprefix("file://")
        dirs.add(table.location().removeprefix("file://"))
        ns = name.rpartition(".")[0]
        if ns:
            setup.append(f'CREATE SCHEMA IF NOT EXISTS "{ns}"')
        pin = f", snapshot_from_id={int(t.snapshot_id)}" if t.snapshot_id is not None else ""
        setup.append(f"CREATE VIEW {_qualified(name)} AS SELECT * FROM iceberg_scan('{location}'{pin})")
    return WarehouseSpec(setup_sql=tuple(setup), allowed_directories=tuple(sorted(dirs)), search_path=search_path,
                         engine="iceberg")


def _extension_file(module) -> str:
    base = Path(module.__file__).parent / "extensions"
    found = sorted(base.rglob("*.duckdb_extension"))
    if not found:
        raise SchemaSnapshotError(f"no DuckDB extension file under {base}")
    return str(found[0])


def _qualified(name: str) -> str:
    return ".".join(f'"{p}"' for p in name.split("."))


def open_connection(spec: WarehouseSpec, memory_limit: str = "2GB", threads: int = 1):
    """A DuckDB connection over the warehouse: read-only data, no external access, configuration locked."""
    import duckdb

    config = {"autoinstall_known_extensions": False, "autoload_known_extensions": False,
              "allow_community_extensions": False, "memory_limit": memory_limit, "threads": threads}
    if spec.database != ":memory:":
        con = duckdb.connect(spec.database, read_only=True, config=config)
        # DuckDB shares one instance per file within a process: a second connection finds it locked already.
        if con.execute("SELECT current_setting('lock_configuration')").fetchone()[0]:
            return con
    else:
        con = duckdb.connect(":memory:", config={**config, "allow_unsigned_extensions": False})
    for statement in spec.setup_sql:
        con.execute(statement)
    if spec.search_path:
        con.execute(f"SET search_path = '{spec.search_path}'")
    if spec.allowed_directories:
        dirs = ", ".join(f"'{d}'" for d in spec.allowed_directories)
        con.execute(f"SET allowed_directories = [{dirs}]")
    # Timestamps are stored in UTC and gold answers assume it: never inherit the host's time zone. GLOBAL, so that
    # every cursor (the per-query connections of a worker) has it too.
    con.execute("SET GLOBAL TimeZone = 'UTC'")
    # After this nothing can read or write files outside allowed_directories, load extensions, or undo it.
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")
    return con


# ---------------------------------------------------------------- sandboxed execution


@dataclass
class QueryResult:
    columns: list[str] = field(default_factory=list)
    rows: list[tuple] = field(default_factory=list)
    error_kind: str | None = None
    """None on success; else refused | runtime_error | timeout."""
    error: str = ""
    truncated: bool = False
    elapsed_s: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {"columns": self.columns, "rows": [[_jsonable(v) for v in r] for r in self.rows],
                "error_kind": self.error_kind, "error": self.error, "truncated": self.truncated,
                "elapsed_s": round(self.elapsed_s, 4)}


def _jsonable(v: Any) -> Any:
    import datetime as dt
    import decimal

    if isinstance(v, decimal.Decimal):
        return float(v)
    if isinstance(v, (dt.date, dt.datetime, dt.time)):
        return v.isoformat()
    if isinstance(v, (bytes, bytearray)):
        return v.hex()
    if isinstance(v, dict):
        return {k: _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    return v


MEMORY_SLACK_BYTES = 512 * 2**20
"""Address space a worker may use above its size when ready plus `memory_limit` (DuckDB's own limit covers
its buffer pool, not every allocation: a `repeat('x', 4e9)` string is outside it). Past it allocations fail."""
KILL_GRACE_S = 0.5
"""How long past the timeout a worker that ignores the interrupt is given before it is killed."""

# Statement kinds a worker runs (DuckDB's own parse): queries, and CREATE only on a read-only database file,
# where all it can make is a temp object (a top-level PIVOT makes an ENUM type) that dies with the query's cursor.
_WORKER_STATEMENTS = ("SELECT", "CREATE")


def _worker_main(conn, spec: WarehouseSpec, memory_limit: str, threads: int,
                 snapshot: SchemaSnapshot | None = None) -> None:
    """Worker process: one locked-down database, each query on its own cursor (so nothing it creates outlives
    it), exactly one statement per call, an address-space cap, an interrupt at the deadline.

    Messages: `("run", sql, max_rows, timeout_s)` -> QueryResult; `("judge", reply, max_rows, timeout_s)` ->
    (sql, SQLCheck, QueryResult or None): the reply judged by `judge_reply` against `snapshot`, run when it passes.
    """
    try:
        con = open_connection(spec, memory_limit, threads)
        _cap_address_space(memory_limit)
        conn.send(("ready", None))
    except Exception as exc:
        conn.send(("failed", _first_line(f"{type(exc).__name__}: {exc}")))
        return
    watchdog = _Watchdog()
    while True:
        try:
            message = conn.recv()
        except EOFError:
            return
        if message is None:
            return
        op, text, max_rows, timeout_s = message
        if op == "judge":
            sql, check = judge_reply(text, snapshot)
            reply = (sql, check, _run_one(con, spec, sql, max_rows, timeout_s, watchdog) if check.ok else None)
        else:
            reply = _run_one(con, spec, text, max_rows, timeout_s, watchdog)
        try:
            conn.send(reply)
        except Exception as exc:  # a value that does not pickle
            failed = QueryResult(error_kind="runtime_error", error=f"result not transferable: {exc}")
            conn.send((reply[0], reply[1], failed) if op == "judge" else failed)


def _run_one(con, spec: WarehouseSpec, sql: str, max_rows: int, timeout_s: float, watchdog: _Watchdog) -> QueryResult:
    """One statement on a fresh cursor of `con`, closed afterwards (its temp views, tables, macros go with it)."""
    started = time.perf_counter()
    cursor = con.cursor()
    try:
        if spec.search_path:  # a per-connection setting: each cursor needs it
            cursor.execute(f"SET search_path = '{spec.search_path}'")
        written = sum(1 for _, code, _ in _split_statements(sql) if code)
        if written != 1:
            return QueryResult(error_kind="refused", error=f"{written} statements in one call: a worker runs exactly "
                                                           "one", elapsed_s=time.perf_counter() - started)
        # DuckDB's own parse: a top-level PIVOT expands to CREATE TYPE (temp) + SELECT, all else to one statement.
        statements = cursor.extract_statements(sql)
        for kind in (s.type.name for s in statements):
            if kind not in _WORKER_STATEMENTS or (kind == "CREATE" and spec.database == ":memory:"):
                return QueryResult(error_kind="refused", error=f"{kind} statement: a worker runs only queries",
                                   elapsed_s=time.perf_counter() - started)
        watchdog.arm(cursor, timeout_s)
        try:
            cursor.execute(statements[0] if len(statements) == 1 else sql)
            columns = [d[0] for d in cursor.description or []]
            rows = cursor.fetchmany(max_rows + 1)
        finally:
            watchdog.disarm()
        result = QueryResult(columns, rows[:max_rows], truncated=len(rows) > max_rows)
    except Exception as exc:
        kind = "timeout" if "INTERRUPT" in str(exc).upper() else "runtime_error"
        result = QueryResult(error_kind=kind, error=_first_line(f"{type(exc).__name__}: {exc}"))
    finally:
        cursor.close()
    result.elapsed_s = time.perf_counter() - started
    return result


class _Watchdog:
    """One thread per worker that interrupts the running cursor at its deadline (no thread started per query)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._cursor, self._deadline = None, 0.0
        threading.Thread(target=self._loop, daemon=True, name="text2sql-watchdog").start()

    def arm(self, cursor, timeout_s: float) -> None:
        with self._cond:
            self._cursor, self._deadline = cursor, time.monotonic() + timeout_s
            self._cond.notify()

    def disarm(self) -> None:
        with self._cond:
            self._cursor = None

    def _loop(self) -> None:
        with self._cond:
            while True:
                if self._cursor is None:
                    self._cond.wait()
                    continue
                left = self._deadline - time.monotonic()
                if left > 0:
                    self._cond.wait(left)
                    continue
                self._cursor.interrupt()
                self._cursor = None


def _cap_address_space(memory_limit: str) -> None:
    """RLIMIT_AS: the worker's size now + `memory_limit` + MEMORY_SLACK_BYTES; past it allocations fail (DuckDB
    reports an out-of-memory error, or the process dies and is replaced) instead of the machine swapping."""
    import resource

    limit = _parse_bytes(memory_limit)
    if limit is None:
        return
    with open("/proc/self/statm") as f:
        size = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    cap = size + limit + MEMORY_SLACK_BYTES
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))


_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def _parse_bytes(text: str) -> int | None:
    """Bytes in a DuckDB size setting ('2GB' = 2e9, '512MiB'); None when it is not one (e.g. a percentage).

    >>> _parse_bytes("2GB"), _parse_bytes("1.5 GiB"), _parse_bytes("80%")
    (2000000000, 1610612736, None)
    """
    match = re.fullmatch(r"\s*([0-9.]+)\s*([a-zA-Z]*)\s*", text or "")
    if not match or match.group(2).lower() not in _UNITS:
        return None
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


def _worker_context():
    """Workers fork from a server process that has imported this module and DuckDB once (a fresh interpreter per
    worker costs ~0.5 s of CPU, and eval starts workers for every database); "spawn" where there is no fork."""
    global _CONTEXT
    if _CONTEXT is None:
        if "forkserver" in mp.get_all_start_methods():
            _CONTEXT = mp.get_context("forkserver")
            _CONTEXT.set_forkserver_preload(["duckdb", "text2sql.warehouse"])
        else:
            _CONTEXT = mp.get_context("spawn")
    return _CONTEXT


_CONTEXT = None


class _Worker:
    def __init__(self, spec: WarehouseSpec, memory_limit: str, threads: int, snapshot: SchemaSnapshot | None = None):
        ctx = _worker_context()
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_worker_main, args=(child, spec, memory_limit, threads, snapshot),
                                   daemon=True)
        self.process.start()
        child.close()
        status, detail = self.conn.recv() if self.conn.poll(60) else ("failed", "worker did not start in 60 s")
        if status != "ready":
            self.kill()
            raise SchemaSnapshotError(f"cannot open the warehouse: {detail}")

    def run(self, sql: str, max_rows: int, timeout_s: float, op: str = "run"):
        """The worker's answer to one message, or None when it had to be killed (it ignored the interrupt,
        or died: out of memory)."""
        self.conn.send((op, sql, max_rows, timeout_s))
        if self.conn.poll(timeout_s + KILL_GRACE_S):
            try:
                return self.conn.recv()
            except EOFError:
                return None
        return None

    def kill(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join(5)

    def close(self) -> None:
        try:
            self.conn.send(None)
        except (BrokenPipeError, OSError):
            pass
        self.process.join(2)
        self.kill()


class QueryRunner:
    """A pool of sandboxed DuckDB worker processes.

    Args:
        spec: what each worker opens.
        workers: processes (0 = one per CPU core).
        timeout_s: hard limit per query; past it the query is interrupted, and its worker killed and replaced
            if it does not stop within KILL_GRACE_S.
        max_rows: row cap; longer results are truncated and flagged.
        memory_limit, threads: DuckDB settings per worker; the worker's address space is capped at its size
            when ready + memory_limit + MEMORY_SLACK_BYTES.
        snapshot: when given, every query is first checked with `check_sql` against it (else only for safety),
            and `judge_and_run` judges replies against it inside the workers.
    """

    def __init__(self, spec: WarehouseSpec, workers: int = 1, timeout_s: float = 10.0, max_rows: int = 10000,
                 memory_limit: str = "2GB", threads: int = 1, snapshot: SchemaSnapshot | None = None):
        self.spec, self.timeout_s, self.max_rows = spec, timeout_s, max_rows
        self.memory_limit, self.threads, self.snapshot = memory_limit, threads, snapshot
        self.size = workers or os.cpu_count() or 1
        self._idle: list[_Worker] = []
        self._lock = threading.Lock()
        self._available = threading.Semaphore(self.size)

    @classmethod
    def from_config(cls, cfg: Config, spec: WarehouseSpec | None = None, workers: int = 1, **kwargs) -> QueryRunner:
        w = cfg.warehouse
        options = dict(timeout_s=w.timeout_s, max_rows=w.max_rows, memory_limit=w.memory_limit, threads=w.threads)
        options.update(kwargs)
        return cls(spec or WarehouseSpec.from_config(cfg, options.get("snapshot")), workers=workers, **options)

    def run(self, sql: str, max_rows: int | None = None, checked: bool = False) -> QueryResult:
        """Run one query in the sandbox. Never raises for bad SQL: the result says what went wrong.

        `checked=True` skips `check_sql` for SQL the caller has just checked (parsing is most of the cost
        of a small query); the locked-down connection still refuses anything but reading.
        """
        check = SQLCheck(True) if checked else check_sql(sql, self.snapshot)
        if not check.ok and check.kind in ("parse_error", "refused"):
            return QueryResult(error_kind="refused" if check.kind == "refused" else "runtime_error", error=check.message)
        return self._send("run", sql, max_rows)

    def judge_and_run(self, reply: str | None, max_rows: int | None = None) -> tuple[str | None, SQLCheck,
                                                                                         QueryResult | None]:
        """`judge_reply(reply, snapshot)` and, when the SQL passes, its result: both inside a worker, so that the
        (sqlglot) judging of many replies runs in parallel. The result is None when the SQL did not pass."""
        if not reply or not reply.strip():
            return judge_reply(reply, self.snapshot) + (None,)
        answer = self._send("judge", reply, max_rows)
        if isinstance(answer, QueryResult):  # the worker was killed: judge here, report what stopped it
            sql, check = judge_reply(reply, self.snapshot)
            return sql, check, answer if check.ok else None
        return answer

    def _send(self, op: str, text: str, max_rows: int | None):
        with self._available:
            worker = self._take()
            started = time.perf_counter()
            answer = worker.run(text, max_rows or self.max_rows, self.timeout_s, op)
            if answer is None:
                worker.kill()
                died = worker.process.exitcode not in (None, -9)  # -9: killed here, at the deadline
                error = (f"the worker died (exit code {worker.process.exitcode}, out of memory?)" if died
                         else f"stopped after {self.timeout_s:g} s (worker killed)")
                return QueryResult(error_kind="runtime_error" if died else "timeout", error=error,
                                   elapsed_s=time.perf_counter() - started)
            with self._lock:
                self._idle.append(worker)
            return answer

    def run_many(self, sqls: list[str], max_rows: int | None = None, checked: bool = False) -> list[QueryResult]:
        """Run queries in parallel across the workers; results in input order (`checked` as in `run`)."""
        from concurrent.futures import ThreadPoolExecutor

        if self.size == 1 or len(sqls) <= 1:
            return [self.run(s, max_rows, checked) for s in sqls]
        with ThreadPoolExecutor(self.size) as pool:
            return list(pool.map(lambda s: self.run(s, max_rows, checked), sqls))

    def _take(self) -> _Worker:
        with self._lock:
            while self._idle:
                worker = self._idle.pop()
                if worker.process.is_alive():
                    return worker
        return _Worker(self.spec, self.memory_limit, self.threads, self.snapshot)

    def close(self) -> None:
        with self._lock:
            workers, self._idle = self._idle, []
        for worker in workers:
            worker.close()

    def __enter__(self) -> QueryRunner:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def run_query(cfg: Config, sql: str, max_rows: int | None = None) -> QueryResult:
    """Check and run one read-only query on the project warehouse (the `text2sql query` command)."""
    from text2sql.catalog import load_snapshot

    snapshot = load_snapshot(cfg)
    check = check_sql(sql, snapshot)
    if not check.ok:
        raise UnsafeSQLError(f"{check.kind}: {check.message}")
    with QueryRunner.from_config(cfg, snapshot=snapshot) as runner:
        return runner.run(sql, max_rows, checked=True)  # just checked above


def render_table(result: QueryResult) -> str:
    """A terminal table of a result (or its error)."""
    if result.error_kind:
        return f"{result.error_kind}: {result.error}"
    from rich.console import Console
    from rich.table import Table

    table = Table(*result.columns)
    for row in result.rows:
        table.add_row(*("NULL" if v is None else str(v) for v in row))
    console = Console(record=True, width=160)
    with console.capture() as capture:
        console.print(table)
    footer = f"{len(result.rows)} row(s){' (truncated)' if result.truncated else ''} in {result.elapsed_s * 1000:.0f} ms"
    return capture.get() + footer


def spec_fingerprint(spec: WarehouseSpec) -> str:
    """A short stable id of what a spec opens (for result caches)."""
    return hashlib.sha256(repr(spec).encode()).hexdigest()[:16]
