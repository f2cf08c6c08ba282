"""Reading predictions files: replies by id, their SQL dialect, and SQLite-written SQL rewritten for DuckDB."""

from __future__ import annotations

import io
import json
from pathlib import Path

from text2sql.data.spider_convert import transpile_prediction
from text2sql.errors import DataError
from text2sql.files import read_text
from text2sql.vocab import DIALECT, PREDICTION_DIALECTS
from text2sql.warehouse import extract_sql as extract, locate_sql


def extract_sql(text: str | None) -> str | None:
    """The SQL in a model's raw reply (None when there is none): the same rule `predict` applies.

    >>> extract_sql("```sql\\nSELECT a FROM t;\\n```\\nThis returns a.")
    'SELECT a FROM t'
    """
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
