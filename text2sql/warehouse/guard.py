"""The SQL check: is a query, or a model reply taken whole, exactly one read-only query on the warehouse?

`check_sql` (sqlglot: exactly one read-only SELECT/WITH query whose tables and columns exist) runs before every
query; model replies are judged whole by `judge_reply` (eval and serve alike): the SQL located in the reply, never
a write cut down to a read, checked by `check_reply_sql` with DuckDB's own parser and binder.
"""

from __future__ import annotations

import difflib
import functools
import re
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from text2sql.vocab import DIALECT
from text2sql.warehouse.engines import _qualified

if TYPE_CHECKING:
    from text2sql.catalog import SchemaSnapshot

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


def judge_reply(raw: str | None, snapshot: SchemaSnapshot | None = None, *,
                bind: bool = True) -> tuple[str | None, SQLCheck]:
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
    
    `bind=False`: names are left unchecked (see `check_reply_sql`).
    """
    located = locate_sql(raw)
    if located is None:
        return None, SQLCheck(False, "no_sql", "no SQL in the reply")
    statements, whole = located
    if len(statements) > 1:
        words = ", ".join(_first_word(s) for s in statements)
        return whole, SQLCheck(False, "refused", f"{len(statements)} statements ({words}): only one query is allowed")
    return statements[0], check_reply_sql(statements[0], snapshot, bind=bind)


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


# A quoted string ('...', "...", doubled quotes inside; $$...$$), a comment (-- or /* */) or a `;`, each as far as
# it goes (an unclosed one runs to the end): everything else is plain code, copied in runs between matches.
_SPECIAL = re.compile(r"""'(?:[^']|'')*'?|"(?:[^"]|"")*"?|\$\$.*?(?:\$\$|\Z)|--[^\n]*|/\*.*?(?:\*/|\Z)|;""", re.DOTALL)


def _split_statements(text: str) -> list[tuple[str, str, int]]:
    """(segment, its code without comments, end offset) for each part of `text` between top-level `;`s.

    Quotes ('...', "...", $$...$$) and comments (--, /* */) are honoured, so a `;` inside them splits nothing.
    """
    segments, start, code, pos = [], 0, [], 0
    for match in _SPECIAL.finditer(text):
        token = match.group()
        code.append(text[pos:match.start()])
        pos = match.end()
        if token == ";":
            segments.append((text[start:match.start()], "".join(code).strip(), match.start()))
            start, code = pos, []
        else:
            code.append(" " if token.startswith(("--", "/*")) else token)
    code.append(text[pos:])
    segments.append((text[start:], "".join(code).strip(), len(text)))
    return segments


def _first_word(statement: str) -> str:
    segment = _split_statements(statement)[0][1]
    return (segment.split() or ["?"])[0].upper()


# ---------------------------------------------------------------- judging with DuckDB's own parser and binder

_LOCAL = threading.local()
_SHOW_WORDS = ("describe", "summarize", "show")
_WORD = re.compile(r'"(?:[^"]|"")*"|[A-Za-z_][\w$]*')


def check_reply_sql(sql: str, snapshot: SchemaSnapshot | None = None, *, bind: bool = True) -> SQLCheck:
    """`check_sql`'s verdict with DuckDB's own parser and binder (what `judge_reply` uses): about 0.4 ms a query
    where sqlglot's parse and qualification take ~2.6 ms, and no false blocks, since the binder is DuckDB's.

    One statement (a top-level PIVOT, which DuckDB expands to a temp ENUM type + a query, counts as one), of kind
    SELECT; no forbidden function call (a name among FORBIDDEN_FUNCTIONS or read_*/duckdb_*/pragma_* followed by
    `(`); no DESCRIBE/SUMMARIZE/SHOW (see `check_sql`). Names: the query is bound (not run) against empty tables
    made from the snapshot's DDL, in a catalog named like the snapshot's (so `nyc.taxi` binds in `nyc.duckdb`);
    a missing table or column is unknown_table/unknown_column with DuckDB's hint; other binder errors are left
    to the run (runtime_error), as before.

    `bind=False` (a plain query only; a PIVOT is always bound): names are left to the caller, who runs the query
    on a connection whose catalog is the binder's (`catalog_signature`) and, when its binder fails, asks again
    with `bind=True`, so the verdict is the same and the query is bound once instead of twice.

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
    if not bind and len(kinds) == 1:
        return SQLCheck(True, tables=_tables_read(sql, snapshot))
    binder, session = _binder(snapshot)
    cursor = binder
    try:
        if len(kinds) > 1:  # a PIVOT's temp ENUM type dies with its own cursor (which needs the session settings)
            cursor = binder.cursor()
            for statement in session:
                cursor.execute(statement)
        cursor.sql(sql)
    except Exception as exc:
        verdict = binder_verdict(exc, snapshot)
        if verdict is not None:
            return verdict
    finally:
        if cursor is not binder:
            cursor.close()
    return SQLCheck(True, tables=_tables_read(sql, snapshot))


def binder_verdict(exc: Exception, snapshot: SchemaSnapshot) -> SQLCheck | None:
    """`check_reply_sql`'s verdict on an error of DuckDB's binder: refused (a file named as a table: the binder,
    too, has no file access), unknown_table or unknown_column; None for other errors, which are the run's to
    report."""
    import duckdb

    if isinstance(exc, duckdb.PermissionException):
        return SQLCheck(False, "refused", f"reads outside the warehouse: {_first_line(str(exc))}")
    if isinstance(exc, (duckdb.CatalogException, duckdb.BinderException)):
        text = str(exc)
        missing_catalog = "does not exist!" in text and ("Catalog \"" in text or "Schema" in text)
        if "Table with name" in text or missing_catalog or "Referenced table" in text:
            return SQLCheck(False, "unknown_table", _unknown_table(text, snapshot))
        if "Referenced column" in text or "does not have a column named" in text:
            return SQLCheck(False, "unknown_column", _unknown_column(text))
    return None


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


@functools.lru_cache(maxsize=16)
def _tokens(sql: str) -> tuple[tuple[str, str], ...]:
    """(kind, text) of DuckDB's tokens of `sql` (comments are not tokens); cached, since the token scan and
    `_tables_read` both read them."""
    import duckdb

    out = []
    for pos, kind in duckdb.tokenize(sql):
        name = _TOKEN_KINDS.get(kind)
        if name is None:  # reading an enum's name costs more than the rest of the loop: once per kind
            name = _TOKEN_KINDS[kind] = kind.name
        word = _WORD.match(sql, pos)
        out.append((name, word.group(0) if word else sql[pos]))
    return tuple(out)


_TOKEN_KINDS: dict[Any, str] = {}


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
    texts = [text for _, text in tokens] + [""]
    for i, (kind, text) in enumerate(tokens):
        if kind != "identifier" and kind != "keyword":
            continue
        called, opens = texts[i + 1] == "(", kind == "keyword" and (i == 0 or texts[i - 1] == "(")
        if not (called or opens):
            continue
        name = text.strip('"').lower()
        if called and (name in FORBIDDEN_FUNCTIONS or name.startswith(("read_", "duckdb_", "pragma_"))):
            return f"function {name}() is not allowed"
        if opens and name in _SHOW_WORDS:
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


def use_parser_connection(con) -> None:
    """Parse this thread's replies with `con` (a sandbox worker's own locked-down connection: parsing needs no
    data, and a worker then opens no second DuckDB for it)."""
    _LOCAL.parser = con


_SIGNATURE_QUERIES = (
    "SELECT current_database(), current_schema()",
    "SELECT database_name FROM duckdb_databases() WHERE NOT internal "
    "AND database_name NOT IN (current_database(), 'memory') ORDER BY ALL",
    "SELECT database_name, schema_name FROM duckdb_schemas() WHERE NOT internal ORDER BY ALL",
)
_RELATIONS = ("SELECT schema_name, table_name FROM duckdb_tables() WHERE database_name = current_database() UNION ALL "
              "SELECT schema_name, view_name FROM duckdb_views() WHERE NOT internal AND database_name = current_database() "
              "ORDER BY ALL")


def catalog_signature(con) -> tuple:
    """The names DuckDB's binder resolves on `con`: the current database and schema, other databases (but an empty
    `memory`, which the binder's own connection always has), schemas, and the tables and views of the current
    database with their columns' names and types. Two connections with the same signature give the same
    unknown_table/unknown_column verdicts. (Macros, types and sequences are left out: a missing one is never such a
    verdict. Columns are read from each relation's result description: duckdb_columns() costs ~20 ms the first
    time, for the system views it binds.)"""
    signature = [tuple(con.execute(query).fetchall()) for query in _SIGNATURE_QUERIES]
    for schema, name in con.execute(_RELATIONS).fetchall():
        quoted = ".".join('"' + part.replace('"', '""') + '"' for part in (schema, name))
        cursor = con.execute(f"SELECT * FROM {quoted} LIMIT 0")
        signature.append((schema, name, tuple((d[0], str(d[1])) for d in cursor.description)))
    return tuple(signature)


def binder_signature(snapshot: SchemaSnapshot) -> tuple | None:
    """`catalog_signature` of the binder `check_reply_sql` uses for `snapshot`, or None when it needs session
    statements other than its USE (a search path): then queries are always bound there. Kept per snapshot (eval
    makes its runners in a passing thread, whose binders go with it)."""
    key = (snapshot.catalog, snapshot.fingerprint)
    if key not in _SIGNATURES:
        con, session = _binder(snapshot)
        try:
            _SIGNATURES[key] = None if any(not s.startswith("USE ") for s in session) else catalog_signature(con)
        except Exception:  # a relation the binder cannot describe: bind there, as always
            _SIGNATURES[key] = None
    return _SIGNATURES[key]


_SIGNATURES: dict[tuple, tuple | None] = {}


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
