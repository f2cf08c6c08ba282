"""What a schema change breaks, before it breaks in production: for `text2sql schema diff`.

Given the changes between schemas/ and the live catalog (`catalog.diff_schemas`), `schema_impact` lists the
pairs whose gold SQL reads a removed or retyped table or column (`analysis.query_refs` against schemas/) and
the training runs (under `train.output_dir`, by the schema fingerprint in their manifest) trained on the
snapshot in schemas/, which the catalog no longer matches.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from text2sql.data.analysis import query_refs
from text2sql.data.store import load_pairs

if TYPE_CHECKING:
    from text2sql.catalog import SchemaChange, SchemaSnapshot
    from text2sql.config import Config

RUN_MANIFESTS = ("manifest.json", "run_manifest.json")
"""Where a run dir (manifest.json) or a merged dir (run_manifest.json, `merge`'s copy) records the schema
fingerprints it was trained on."""


@dataclass
class SchemaImpact:
    pairs: dict[str, list[str]] = field(default_factory=dict)
    """Pair id -> the removed or retyped tables and `table.column`s its SQL reads (sorted)."""
    runs: list[Path] = field(default_factory=list)
    """Run (and merged) dirs whose manifest records the schemas/ fingerprint, sorted."""

    def lines(self) -> list[str]:
        """What `schema diff` prints below the changes."""
        out = []
        if self.pairs:
            out.append(f"pairs whose SQL reads a removed or retyped table or column ({len(self.pairs)}):")
            out += [f"  {pid}: {', '.join(refs)}" for pid, refs in self.pairs.items()]
        if self.runs:
            out.append(f"runs trained on the schemas/ snapshot the catalog no longer matches ({len(self.runs)}):")
            out += [f"  {run}" for run in self.runs]
        return out


def schema_impact(cfg: Config, changes: list[SchemaChange], snapshot: SchemaSnapshot,
                  dataset: str | None = None) -> SchemaImpact:
    """Pairs of `dataset` (default data.dataset; lakehouse pairs only) that read what `changes` remove or
    retype, and the runs trained on `snapshot` (schemas/, the old side of the diff). Nothing when no change.
    """
    impact = SchemaImpact()
    if not changes:
        return impact
    broken_tables = {c.table for c in changes if c.kind == "removed_table"}
    broken_columns = {f"{c.table}.{c.column}" for c in changes if c.kind in ("removed_column", "retyped_column")}
    if broken_tables or broken_columns:
        for pair in load_pairs(cfg, dataset):
            if pair.db is not None:
                continue
            refs = query_refs(pair.sql, snapshot)
            hits = sorted((refs.tables & broken_tables) | (refs.columns & broken_columns))
            if hits:
                impact.pairs[str(pair.id)] = hits
    impact.runs = runs_trained_on(cfg, snapshot.fingerprint)
    return impact


def runs_trained_on(cfg: Config, fingerprint: str) -> list[Path]:
    """Run dirs under `train.output_dir` (and the merged dirs inside them) whose manifest says they were trained
    on the schemas/ snapshot with this fingerprint."""
    root = cfg.path(cfg.train.output_dir)
    if not root.is_dir():
        return []
    found = set()
    for name in RUN_MANIFESTS:
        for manifest in list(root.glob(f"*/{name}")) + list(root.glob(f"*/*/{name}")):
            try:
                recorded = (json.loads(manifest.read_text()).get("schema_fingerprints") or {}).get("None")
            except (OSError, json.JSONDecodeError, AttributeError):
                continue
            if recorded == fingerprint:
                found.add(manifest.parent)
    return sorted(found)
