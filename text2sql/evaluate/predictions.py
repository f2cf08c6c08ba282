"""Reading predictions files: replies by id, their SQL dialect, and SQLite-written SQL rewritten for DuckDB; and
combining several models' files into one of candidates (an ensemble)."""

from __future__ import annotations

import io
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from text2sql.data.spider_convert import transpile_prediction
from text2sql.errors import DataError
from text2sql.files import read_text, write_atomic
from text2sql.vocab import DIALECT, PREDICTION_DIALECTS
from text2sql.warehouse import extract_sql as extract, locate_sql

if TYPE_CHECKING:
    from text2sql.config import Config


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


def combine_predictions(paths: Sequence[str | Path], out: str | Path) -> int:
    """Write one predictions JSONL whose every record has `candidates`: each file's answer to the question, in file
    order (an ensemble of models: each votes once with its answer; a tie goes to the earlier file, the first
    file's answer is the greedy one). `eval --predictions OUT` selects. Returns the records written.

    Raises:
        DataError: fewer than two files, a file `read_predictions` rejects, or files that answer other questions.
    """
    if len(paths) < 2:
        raise DataError(f"combine needs two or more predictions files, got {len(paths)}")
    answers = [read_predictions(p) for p in paths]
    for path, other in zip(paths[1:], answers[1:]):
        if set(other) != set(answers[0]):
            raise DataError(f"{path} answers other questions than {paths[0]} ({len(set(other) ^ set(answers[0]))} "
                            "ids in one only): combine predictions of the same split")
    records = []
    for pid, first in answers[0].items():
        candidates = [{"sql": extract_sql(a[pid]), "raw": a[pid] or "", "source": str(p)}
                      for p, a in zip(paths, answers)]
        records.append({"id": pid, "sql": candidates[0]["sql"], "raw": first or "", "candidates": candidates})
    write_atomic(Path(out), "".join(json.dumps(r) + "\n" for r in records))
    return len(records)


def predict_ensemble(cfg: Config, model_dirs: list[str | Path], out: str | Path, split: str = "test",
                     dataset: str | None = None, strict: bool = False) -> Path:
    """`predict` with each model in turn (its file beside `out`: `<stem>.m<i>.jsonl`), then their answers combined
    into `out` as candidates, one per model in this order (`combine_predictions`): `eval --predictions out`
    picks the answer most of them agree on by execution. The stats file sums the members' time."""
    from text2sql.generate import predict, stats_path

    out = Path(out)
    members = [predict(cfg, m, split=split, dataset=dataset, strict=strict,
                       out=out.with_name(f"{out.stem}.m{i}{out.suffix}")) for i, m in enumerate(model_dirs, 1)]
    questions = combine_predictions(members, out)
    stats = [json.loads(stats_path(m).read_text()) for m in members]
    seconds = sum(s["seconds"] for s in stats)
    warmup = sum(s.get("warmup_seconds", 0.0) for s in stats)
    write_atomic(stats_path(out), json.dumps({
        "questions": questions, "models": [str(m) for m in model_dirs], "seconds": round(seconds, 3),
        "predictions_per_s": round(questions / seconds, 3) if seconds else None,
        **({"warmup_seconds": round(warmup, 3)} if warmup else {})}, indent=2) + "\n")
    print(f"predict: wrote {out}: {len(members)} models' answers as candidates", file=sys.stderr)
    return out
