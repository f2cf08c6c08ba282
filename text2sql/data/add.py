"""Adding pairs to a dataset: validate them (`text2sql.data.validate`), then append them under the store's lock.

This sits above both the store and validation, so neither needs the other's module at import time.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from text2sql.data.store import Pair, load_dataset, load_pairs, update_pairs
from text2sql.data.validate import ValidationReport, validate_pairs
from text2sql.errors import DataError
from text2sql.files import read_text

if TYPE_CHECKING:
    from text2sql.config import Config


@dataclass
class AddResult:
    added: list[Pair]
    report: ValidationReport | None = None
    """The validation report of the new pairs (None when not checked)."""


def add_pairs(cfg: Config, pairs: list[Pair], dataset: str | None = None, force: bool = False,
              check: bool = True) -> AddResult:
    """Validate new pairs, then append them to the dataset under its lock.

    Args:
        pairs: new pairs (see `new_pair` for the defaults `data add` fills in).
        force: add pairs that fail validation anyway, with `forced: true` and the failure in `notes`.
        check: validate at all (False only for pairs validated elsewhere).

    Raises:
        DataError: a pair fails validation (without force), or its id is already in the dataset or the batch.
    """
    ds = load_dataset(cfg, dataset)
    ids: dict[str, int] = {}
    for i, pair in enumerate(pairs):
        if pair.id in ids:
            raise DataError(f"pairs {ids[pair.id] + 1} and {i + 1} of this batch have the same id {pair.id!r}")
        ids[pair.id] = i
    report = None
    if check:
        report = validate_pairs(cfg, pairs, dataset=dataset, ds=ds)
        failed = {r.id: r for r in report.pairs if r.status == "error"}
        if failed and not force:
            lines = [f"{pid}: {'; '.join(str(p) for p in r.errors)}" for pid, r in failed.items()]
            raise DataError(f"{len(failed)} pair(s) fail validation (use --force to add anyway): " + " | ".join(lines))
        for pair in pairs:
            if pair.id in failed:
                pair.forced = True
                failure = "; ".join(str(p) for p in failed[pair.id].errors)
                pair.notes = f"{pair.notes} [forced: {failure}]".strip()

    # SQL templates of the pairs there now, parsed before the lock is taken (~3 s for a thousand pairs); under it, only
    # what another writer changed meanwhile is parsed again.
    known = _template_keys(load_pairs(cfg, dataset)) if any(p.split for p in pairs) and ds.pairs_file.exists() else {}

    def append(current: list[Pair]) -> list[Pair]:
        existing = {p.id for p in current}
        clash = [p.id for p in pairs if p.id in existing]
        if clash:
            raise DataError(f"{ds.pairs_file}: id(s) already present: {', '.join(clash)} (the same question and SQL?)")
        leaks = template_leaks(current, pairs, known)
        if leaks and not force:
            twins = " | ".join(f"{new.id} ({new.split}) has the template of {old.id} ({old.split})"
                               for new, old in leaks)
            raise DataError(f"{len(leaks)} pair(s) would put one SQL template (literals masked) in two splits, so a "
                            f"question would be trained on with its held-out twin (give it the other's split, change "
                            f"what it asks, or --force): {twins}")
        for new, old in leaks:
            new.forced = True
            new.notes = f"{new.notes} [forced: the SQL template of {old.id} ({old.split})]".strip()
        return current + pairs

    update_pairs(ds, append, create=True)
    return AddResult(pairs, report)


def template_leaks(current: list[Pair], new: list[Pair], known: dict[tuple, str] | None = None
                   ) -> list[tuple[Pair, Pair]]:
    """(new pair, a pair of another split with the same SQL template): `data split` keeps such twins in one split, and
    `data add --split` must not part them. Pairs without a split are left to `data split`. `known`: template keys
    already computed (`_template_keys`)."""
    from text2sql.data.split import template_key

    if not any(p.split for p in new):
        return []
    known = known or {}
    key = lambda p: known.get((p.id, p.db, p.sql)) or template_key(p)
    by_template: dict[str, list[Pair]] = {}
    for p in current:
        if p.split:
            by_template.setdefault(key(p), []).append(p)
    leaks = []
    for p in new:
        if not p.split:
            continue
        twins = by_template.setdefault(key(p), [])
        other = next((q for q in twins if q.split != p.split), None)
        if other is not None:
            leaks.append((p, other))
        twins.append(p)
    return leaks


def _template_keys(pairs: list[Pair]) -> dict[tuple, str]:
    """(id, db, sql) -> template key of the pairs that have a split."""
    from text2sql.data.split import template_key

    return {(p.id, p.db, p.sql): template_key(p) for p in pairs if p.split}


def read_pair_file(path: Path) -> list[dict[str, Any]]:
    """Records to add from a JSONL file, or a YAML/JSON file holding a list of mappings."""
    import yaml

    if not path.is_file():
        raise DataError(f"{path} not found")
    text = read_text(path)
    if path.suffix == ".jsonl":
        records = []
        for number, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise DataError(f"{path}:{number}: not valid JSON ({exc.msg})") from None
        return records
    try:
        records = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise DataError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(records, list):
        raise DataError(f"{path}: expected a list of pairs, got {type(records).__name__}")
    return records
