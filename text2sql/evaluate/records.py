"""The records an evaluation writes: one `Example` per scored or excluded question, and the release `Report`.

Both serialize with `to_json` to exactly the objects report.json has always held (same keys, same order), so
reports stay byte-identical; renderers and `eval compare` read that JSON form, as they also read reports from disk.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple


@dataclass
class Example:
    """One question of the split: what was asked, the gold, the prediction and (unless excluded) its verdict."""

    id: str
    question: str
    gold: str
    predicted: str | None
    """The SQL judged (the one query found in the reply), or None."""
    db: str | None
    difficulty: str
    tags: list[str]
    tables: list[str]
    raw: str | None = None
    """The raw reply, when it is more than the SQL judged in it."""
    verdict: str | None = None
    """One of VERDICTS; None for an excluded example (its gold could not be scored against)."""
    reason: str = ""
    verdicts: dict[str, str] | None = None
    """The verdict under every comparison mode."""
    diff: dict | None = None
    empty_gold: bool | None = None
    exact_match: bool | None = None
    predicted_sqlite: str | None = None
    """The prediction as written for SQLite, before its rewrite for DuckDB."""
    rejudged: bool = field(default=False, repr=False)
    """Judged again against the gold's tied rows: its diff is written last (where the re-judging put it)."""

    def judged(self, judgement: Judgement) -> None:
        """Take a judgement's verdict, reason, verdicts and diff."""
        self.verdict, self.reason, self.verdicts, self.diff = judgement

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "question": self.question, "gold": self.gold, "predicted": self.predicted}
        if self.raw is not None:
            out["raw"] = self.raw
        out.update(db=self.db, difficulty=self.difficulty, tags=self.tags, tables=self.tables)
        if self.verdict is None:  # excluded
            out["reason"] = self.reason
        else:
            out.update(verdict=self.verdict, reason=self.reason, verdicts=self.verdicts)
            if self.diff and not self.rejudged:
                out["diff"] = self.diff
            out.update(empty_gold=self.empty_gold, exact_match=self.exact_match)
            if self.diff and self.rejudged:
                out["diff"] = self.diff
        if self.predicted_sqlite is not None:
            out["predicted_sqlite"] = self.predicted_sqlite
        return out

    # Read like the report.json object (e["verdict"], e.get("diff")), so code and tests that read either form agree.
    def __getitem__(self, key: str) -> Any:
        return self.to_json()[key]

    def __contains__(self, key: str) -> bool:
        return key in self.to_json()

    def get(self, key: str, default: Any = None) -> Any:
        return self.to_json().get(key, default)


class Judgement(NamedTuple):
    """What judging one prediction found."""

    verdict: str
    reason: str
    verdicts: dict[str, str]
    """The verdict under every comparison mode."""
    diff: dict | None = None


@dataclass
class Report:
    """A release report: what was scored, how, the metrics, every example and the inputs it depended on."""

    release: str
    mode: str
    model: str | None
    dataset: str
    split: str
    created: str
    metrics: dict
    examples: list[Example]
    excluded: list[Example]
    inputs: dict
    selection: dict | None = None
    """Candidate selection's gain and cost, when the predictions carried candidates."""
    subset: dict | None = None
    """{questions, of, max_questions, how} when `eval.max_questions` scored a subset of the split, else None."""

    def to_json(self) -> dict[str, Any]:
        out = {"release": self.release, "mode": self.mode, "model": self.model, "dataset": self.dataset,
               "split": self.split, "created": self.created, "metrics": self.metrics,
               "examples": [e.to_json() for e in self.examples], "excluded": [e.to_json() for e in self.excluded],
               "inputs": self.inputs}
        if self.selection is not None:
            out["selection"] = self.selection
        if self.subset is not None:
            out["subset"] = self.subset
        return out
