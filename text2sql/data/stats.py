"""`data stats`: what a dataset covers, and what it misses.

Counts pairs per split and difficulty, per table and column of the schema, per join key (declared join keys
from schemas/ that no pair uses are listed), per SQL feature (`analysis.FEATURES`) and question length.
Tables and features with fewer than `FEW` pairs are highlighted. `held_out_distance` (`data stats --distance`)
says how far dev and test are from train.
"""

from __future__ import annotations

import statistics
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from text2sql.catalog import SchemaSnapshot, load_snapshot
from text2sql.data.analysis import FEATURES, query_refs, sql_features, sql_template
from text2sql.data.store import Pair, load_dataset, load_pairs
from text2sql.errors import DataError, Text2SQLError
from text2sql.vocab import DIFFICULTIES, SPLITS

if TYPE_CHECKING:
    from text2sql.config import Config

FEW = 5
"""Fewer pairs than this using a table or feature is 'few'."""


@dataclass
class DatasetStats:
    dataset: str
    pairs: int
    splits: dict[str, dict[str, int]]
    """split ('none' when unassigned) -> difficulty -> pairs."""
    tables: dict[str, int]
    """Every schema table (`db:table` for benchmark databases) -> pairs using it."""
    columns: dict[str, int]
    """Every schema column -> pairs referencing it."""
    joins: dict[str, int]
    """`a.col = b.col` -> pairs joining on it."""
    unused_join_keys: list[str]
    """Join keys declared in the schema that no pair uses."""
    features: dict[str, int]
    question_words: dict[str, float]
    """min, median, mean, max words per question."""
    tags: dict[str, int] = field(default_factory=dict)
    forced: int = 0

    @property
    def sparse_tables(self) -> dict[str, int]:
        return {t: n for t, n in self.tables.items() if n < FEW}

    @property
    def sparse_features(self) -> dict[str, int]:
        return {f: n for f, n in self.features.items() if n < FEW}

    @property
    def unused_columns(self) -> list[str]:
        return [c for c, n in self.columns.items() if n == 0]

    def to_json(self) -> dict[str, Any]:
        return {"dataset": self.dataset, "pairs": self.pairs, "forced": self.forced, "splits": self.splits,
                "tables": self.tables, "columns": self.columns, "joins": self.joins,
                "unused_join_keys": self.unused_join_keys, "features": self.features,
                "question_words": self.question_words, "tags": self.tags,
                "highlights": {"sparse_tables": self.sparse_tables, "sparse_features": self.sparse_features,
                               "unused_columns": self.unused_columns}}


def dataset_stats(cfg: Config, dataset: str | None = None, pairs: list[Pair] | None = None) -> DatasetStats:
    """Coverage statistics of a dataset (default data.dataset)."""
    ds = load_dataset(cfg, dataset)
    pairs = load_pairs(cfg, dataset) if pairs is None else pairs
    snapshots = {db: _snapshot(cfg, ds, db) for db in sorted({p.db for p in pairs}, key=lambda d: d or "")}
    if not pairs:
        snapshots[None] = load_snapshot(cfg)
    tables: Counter = Counter()
    columns: Counter = Counter()
    joins: Counter = Counter()
    declared: set[str] = set()
    for db, snapshot in snapshots.items():
        if snapshot is None:
            continue
        for name, t in snapshot.tables.items():
            tables[_key(db, name)] += 0
            columns.update({_key(db, f"{name}.{c.name}"): 0 for c in t.columns})
            for col, other, other_col in t.references:
                other = snapshot.resolve(other) or other
                declared.add(_join_key(_key(db, f"{name}.{col}"), _key(db, f"{other}.{other_col}")))
    features: Counter = Counter({f: 0 for f in FEATURES})
    splits = {s: {d: 0 for d in DIFFICULTIES} for s in (*SPLITS, "none")}
    tags: Counter = Counter()
    for p in pairs:
        snapshot = snapshots.get(p.db)
        splits[p.split or "none"][p.difficulty] += 1
        features.update(sql_features(p.sql, snapshot))
        tags.update(p.tags)
        if snapshot is None:
            continue
        refs = query_refs(p.sql, snapshot)
        tables.update(_key(p.db, t) for t in refs.tables)
        columns.update(_key(p.db, c) for c in refs.columns)
        joins.update(_join_key(_key(p.db, a), _key(p.db, b)) for a, b in refs.joins)
    words = [len(p.question.split()) for p in pairs] or [0]
    return DatasetStats(
        dataset=ds.name, pairs=len(pairs),
        splits={s: c for s, c in splits.items() if s != "none" or sum(c.values())},
        tables=dict(sorted(tables.items())), columns=dict(sorted(columns.items())),
        joins=dict(joins.most_common()), unused_join_keys=sorted(declared - set(joins)),
        features={f: features[f] for f in FEATURES},
        question_words={"min": min(words), "median": statistics.median(words),
                        "mean": round(statistics.fmean(words), 1), "max": max(words)},
        tags=dict(tags.most_common()), forced=sum(p.forced for p in pairs),
    )


def held_out_distance(cfg: Config, dataset: str | None = None, pairs: list[Pair] | None = None
                      ) -> dict[str, dict[str, Any]]:
    """For dev and test: how many pairs have a train pair's SQL template (literals masked), and how similar each
    question is to its nearest train question (the `data dedup` embedding model): quartiles, 90th percentile, max,
    and how many reach `data.dedup_threshold`.

    EX on a split that sits closer to train than the other held-out split overstates what the model does for new
    questions: v0.11's dev drifted toward train as train pairs were written for its misses, and ranked
    configurations unlike test.

    Raises:
        DataError: the dataset has no train pairs to measure against.
    """
    import numpy as np

    from text2sql.data.dedup import nearest_similarity

    pairs = load_pairs(cfg, dataset) if pairs is None else pairs
    train = [p for p in pairs if p.split == "train"]
    if not train:
        raise DataError("--distance measures dev and test against the train split, and it has no pairs")
    held = {s: [p for p in pairs if p.split == s] for s in SPLITS if s != "train"}
    held = {s: ps for s, ps in held.items() if ps}
    if not held:
        return {}
    templates = {sql_template(p.sql) for p in train}
    questions = [p for ps in held.values() for p in ps]
    nearest = nearest_similarity([p.question for p in questions], [p.question for p in train], cfg)
    out, start = {}, 0
    for split, ps in held.items():
        sims = nearest[start:start + len(ps)]
        start += len(ps)
        p25, median, p75, p90 = (round(float(q), 3) for q in np.quantile(sims, [0.25, 0.5, 0.75, 0.9]))
        out[split] = {"pairs": len(ps), "template_in_train": sum(sql_template(p.sql) in templates for p in ps),
                      "nearest_train_similarity": {"p25": p25, "median": median, "p75": p75, "p90": p90,
                                                   "max": round(float(sims.max()), 3)},
                      "at_or_above_threshold": int((sims >= cfg.data.dedup_threshold - 1e-6).sum())}
    return out


def render_distance(distance: dict[str, dict[str, Any]], threshold: float) -> str:
    """One terminal table: a row per held-out split."""
    from rich.console import Console
    from rich.table import Table

    console = Console(record=True, width=120)
    with console.capture() as capture:
        t = Table("split", "pairs", "train template", "p25", "median", "p75", "p90", "max", f">= {threshold:g}",
                  title="held-out splits against train (question similarity to the nearest train question)")
        for split, d in distance.items():
            sim = d["nearest_train_similarity"]
            t.add_row(split, str(d["pairs"]), str(d["template_in_train"]),
                      *(f"{sim[k]:.3f}" for k in ("p25", "median", "p75", "p90", "max")), str(d["at_or_above_threshold"]))
        console.print(t)
    return capture.get().rstrip()


def _snapshot(cfg: Config, ds, db: str | None) -> SchemaSnapshot | None:
    try:
        return load_snapshot(cfg) if db is None else SchemaSnapshot.from_duckdb(ds.database(db))
    except Text2SQLError:
        return None  # stats still count features; `data validate` reports the missing schema


def _key(db: str | None, name: str) -> str:
    return name if db is None else f"{db}:{name}"


def _join_key(a: str, b: str) -> str:
    return " = ".join(sorted((a, b)))


def render_stats(stats: DatasetStats) -> str:
    """Terminal tables: splits x difficulty, features, tables, joins, highlights."""
    from rich.console import Console
    from rich.table import Table

    console = Console(record=True, width=120)
    with console.capture() as capture:
        console.print(f"[bold]{stats.dataset}[/]: {stats.pairs} pairs"
                      + (f", {stats.forced} forced" if stats.forced else "")
                      + f"; question words min {stats.question_words['min']}, median {stats.question_words['median']}, "
                        f"mean {stats.question_words['mean']}, max {stats.question_words['max']}")
        t = Table("split", *DIFFICULTIES, "total", title="pairs per split and difficulty")
        for split, counts in stats.splits.items():
            t.add_row(split, *(str(counts[d]) for d in DIFFICULTIES), str(sum(counts.values())))
        console.print(t)
        t = Table("feature", "pairs", "share", title="SQL features")
        for name, n in stats.features.items():
            t.add_row(_flag(name, n), str(n), f"{n / stats.pairs:.0%}" if stats.pairs else "-")
        console.print(t)
        t = Table("table", "pairs", "columns used", title="tables")
        for name, n in stats.tables.items():
            cols = [c for c in stats.columns if c.startswith(name + ".")]
            used = sum(1 for c in cols if stats.columns[c])
            t.add_row(_flag(name, n), str(n), f"{used}/{len(cols)}")
        console.print(t)
        if stats.joins or stats.unused_join_keys:
            t = Table("join", "pairs", title="join paths")
            for name, n in stats.joins.items():
                t.add_row(name, str(n))
            for name in stats.unused_join_keys:
                t.add_row(f"[red]{name}[/]", "0")
            console.print(t)
        sparse = [*stats.sparse_tables, *stats.sparse_features]
        if sparse:
            console.print(f"[yellow]fewer than {FEW} pairs:[/] {', '.join(sparse)}")
    return capture.get().rstrip()


def _flag(name: str, n: int) -> str:
    return f"[red]{name}[/]" if n == 0 else f"[yellow]{name}[/]" if n < FEW else name
