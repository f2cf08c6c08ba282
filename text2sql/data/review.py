"""`data review`: people accept or reject proposed pairs, and accepted ones move into pairs.jsonl (train split).

Two sources, each a JSONL file in the dataset directory:

- `synthetic`: `synthetic.jsonl` from `data synthesize` (pairs.jsonl records plus `confirmed`).
- `feedback`: `feedback.jsonl` from `serve` (`{id: fb-..., question, sql, model_sql, verdict: right|wrong, run,
  created, author, db}`; `sql` is the corrected SQL, or the model's when it was marked right).

A move is two atomic writes in this order: pairs.jsonl gains the accepted pairs (validated like `data add`, under
the dataset lock, keeping their ids), then the source file loses them. A crash between the two leaves both files
valid with the pairs in both; the next review finishes the move: a source entry whose id is already in pairs.jsonl
is removed without being added twice.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from text2sql.data.store import (
    Dataset, Pair, _locked, load_dataset, pair_from_record, read_pairs_file, update_pairs, write_text_atomic,
)
from text2sql.data.synthesize import EXTRA_FIELDS, read_candidate_lines
from text2sql.data.validate import ERROR_KINDS, validate_pairs
from text2sql.errors import DataError

if TYPE_CHECKING:
    from text2sql.config import Config

SOURCES = {"synthetic": "synthetic.jsonl", "feedback": "feedback.jsonl"}
"""Source name -> file in the dataset directory."""
FEEDBACK_KEYS = ("id", "question", "sql", "model_sql", "verdict", "run", "created", "author", "db")
REFUSED_WARNINGS = frozenset({"empty_result", "volatile_function", "limit_ties", "limit_without_order",
                              "unstable_result"})
"""Validation warnings that keep a pair out of the training set (errors always do)."""


@dataclass
class Entry:
    """One proposed pair of a source file."""

    pair: Pair
    confirmed: bool
    """Synthetic: passed the round trip. Feedback: always (a person wrote or approved the SQL)."""
    raw: str
    """The line in the source file."""


@dataclass
class ReviewReport:
    source: str
    path: Path
    accepted: list[str] = field(default_factory=list)
    """Ids now in pairs.jsonl (including ones an interrupted review had already added)."""
    rejected: list[str] = field(default_factory=list)
    refused: dict[str, str] = field(default_factory=dict)
    """Id -> why validation kept it out of pairs.jsonl (it stays in the source file)."""
    remaining: int = 0
    """Entries left in the source file."""

    def summary(self) -> str:
        refused = "".join(f"refused {pid}: {why}\n" for pid, why in self.refused.items())
        return (f"{refused}{len(self.accepted)} accepted into pairs.jsonl (train), {len(self.rejected)} rejected, "
                f"{len(self.refused)} refused by validation; {self.remaining} left in {self.path}")

    def to_json(self) -> dict[str, Any]:
        return {"source": self.source, "path": str(self.path), "accepted": self.accepted, "rejected": self.rejected,
                "refused": self.refused, "remaining": self.remaining}


def source_path(ds: Dataset, source: str) -> Path:
    if source not in SOURCES:
        raise DataError(f"unknown review source {source!r}; use one of {', '.join(SOURCES)}")
    return ds.path / SOURCES[source]


def list_entries(cfg: Config, dataset: str | None = None, source: str = "synthetic") -> list[Entry]:
    """The proposed pairs of a source file, in file order (empty when the file does not exist)."""
    return read_entries(source_path(load_dataset(cfg, dataset), source), source)


def render_entries(entries: list[Entry]) -> str:
    """`data review --list`: id, confirmed flag, question, SQL and notes of each entry, then a count."""
    lines = [f"{e.pair.id}  {'confirmed' if e.confirmed else 'UNCONFIRMED'}  {e.pair.question}\n    {e.pair.sql}\n"
             f"    {e.pair.notes}" for e in entries]
    return "\n".join([*lines, f"{len(entries)} proposed pair(s), {sum(e.confirmed for e in entries)} confirmed"])


def read_entries(path: Path, source: str) -> list[Entry]:
    """Parse a source file into entries; collects every malformed line, then raises one DataError."""
    if source == "synthetic":
        return [Entry(pair_from_record({k: v for k, v in r.items() if k not in EXTRA_FIELDS}),
                      bool(r.get("confirmed")), raw) for r, raw in read_candidate_lines(path)]
    if not path.is_file():
        return []
    return [Entry(pair, True, raw) for pair, raw in read_pairs_file(path, feedback_pair)]


def feedback_pair(record: Any) -> Pair:
    """The train pair a serve feedback record proposes: its (corrected) SQL, provenance in notes.

    >>> feedback_pair({"id": "fb-0123456789ab", "question": "How many stores?", "sql": "SELECT 1",
    ...                "verdict": "wrong", "run": "runs/a", "created": "2026-11-30T03:00:00Z"}).notes
    "from serve feedback fb-0123456789ab: the model's SQL was marked wrong and corrected (model runs/a)"
    """
    if not isinstance(record, dict):
        raise DataError("a feedback record must be a JSON object")
    unknown = sorted(set(record) - set(FEEDBACK_KEYS))
    if unknown:
        raise DataError(f"unknown keys {unknown} (allowed: {', '.join(FEEDBACK_KEYS)})")
    verdict = record.get("verdict")
    if verdict not in ("right", "wrong"):
        raise DataError(f"'verdict' {verdict!r} is not right or wrong")
    what = "marked right" if verdict == "right" else "marked wrong and corrected"
    return pair_from_record({
        "id": record.get("id"), "question": record.get("question"), "sql": record.get("sql"), "db": record.get("db"),
        "tags": ["feedback"], "author": record.get("author") or "feedback",
        "created": str(record.get("created") or "")[:10], "split": "train",
        "notes": f"from serve feedback {record.get('id')}: the model's SQL was {what} (model {record.get('run')})",
    })


def review_pairs(cfg: Config, dataset: str | None = None, source: str = "synthetic", accept: list[str] = (),
                 reject: list[str] = (), accept_all: bool = False, confirmed_only: bool = False) -> ReviewReport:
    """Move accepted entries of a source file into pairs.jsonl (train split) and drop rejected ones.

    Args:
        accept, reject: entry ids.
        accept_all: accept every entry (with `confirmed_only`, only those the round trip confirmed).

    Raises:
        DataError: an id is unknown or both accepted and rejected; a file is malformed.
    """
    if confirmed_only and not accept_all:
        raise DataError("--confirmed-only goes with --accept-all")
    ds = load_dataset(cfg, dataset)
    path = source_path(ds, source)
    entries = {e.pair.id: e for e in read_entries(path, source)}
    in_pairs = {p.id for p, _ in read_pairs_file(ds.pairs_file)} if ds.pairs_file.is_file() else set()
    accept, reject = list(dict.fromkeys(accept)), list(dict.fromkeys(reject))
    unknown = [i for i in accept + reject if i not in entries and i not in in_pairs]
    if unknown:
        raise DataError(f"no entry {', '.join(map(repr, unknown))} in {path} (see `text2sql data review --list`)")
    both = sorted(set(accept) & set(reject))
    if both:
        raise DataError(f"{', '.join(both)}: both accepted and rejected")
    if accept_all:
        accept += [i for i, e in entries.items() if (e.confirmed or not confirmed_only) and i not in reject
                   and i not in accept]
    report = ReviewReport(source, path)
    # Entries already in pairs.jsonl were moved by a review that stopped before rewriting the source: finish it.
    moved = [i for i in entries if i in in_pairs]
    new = [entries[i].pair for i in accept if i in entries and i not in in_pairs]
    for pair in new:
        pair.split = "train"
    if new:
        checked = validate_pairs(cfg, new, dataset=dataset, ds=ds)
        for pair, result in zip(new, checked.pairs):
            problems = [p for p in result.problems if p.kind in ERROR_KINDS or p.kind in REFUSED_WARNINGS]
            if problems:
                report.refused[pair.id] = "; ".join(str(p) for p in problems)
        new = [p for p in new if p.id not in report.refused]

    def append(current: list[Pair]) -> list[Pair]:
        present = {p.id for p in current}
        return current + [p for p in new if p.id not in present]

    if new:
        update_pairs(ds, append, create=True)  # first write: the pairs land in pairs.jsonl ...
    done = set(moved) | {p.id for p in new} | set(reject)
    report.remaining = _write_source(ds, path, source, done)  # ... second write: they leave the source file
    report.accepted = [i for i in accept if i not in report.refused] + [i for i in moved if i not in accept]
    report.rejected = reject
    return report


def _write_source(ds: Dataset, path: Path, source: str, drop: set[str]) -> int:
    """Rewrite the source file without the `drop` ids, re-read under the dataset lock (lines kept byte for
    byte); returns the entries left."""
    with _locked(ds):
        current = read_entries(path, source)
        kept = [e.raw for e in current if e.pair.id not in drop]
        if path.is_file() and len(kept) != len(current):
            write_text_atomic(path, "".join(line + "\n" for line in kept))
        return len(kept)
