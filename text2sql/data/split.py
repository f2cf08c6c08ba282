"""`data split`: train/dev/test, seeded, leakage-safe, stratified by difficulty.

Pairs are grouped by (db, SQL template): the normalized query with its literals masked (`sql_template`), so
"orders in 2023" and "orders in 2024" form one group, and a group never straddles splits. Within each
difficulty, groups are shuffled with the seed (from their sorted keys, so the result does not depend on file
order) and each goes to the split furthest below its target share of that difficulty's pairs.

By default pairs that already have a split keep it: new pairs join the split of their group if it has one,
and the other groups fill the splits towards their targets, so a published test split stays put as the
dataset grows. `reassign` redoes everything.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from text2sql.data.analysis import sql_template
from text2sql.data.store import Pair, load_dataset, load_pairs, update_pairs
from text2sql.errors import DataError
from text2sql.vocab import DIFFICULTIES, SPLITS

if TYPE_CHECKING:
    from text2sql.config import Config


@dataclass
class SplitReport:
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    """split -> difficulty -> pairs."""
    groups: int = 0
    """Template groups."""
    changed: int = 0
    """Pairs whose split was set or changed."""
    straddling: list[list[str]] = field(default_factory=list)
    """Groups (ids) that already straddled splits and were kept that way (only without reassign)."""
    seed: int = 0
    ratios: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"seed": self.seed, "ratios": self.ratios, "groups": self.groups, "changed": self.changed,
                "counts": self.counts, "straddling": self.straddling}


def split_pairs(cfg: Config, dataset: str | None = None, seed: int | None = None,
                ratios: dict[str, float] | None = None, reassign: bool = False, write: bool = True) -> SplitReport:
    """Assign splits and write them into pairs.jsonl (atomically, under the dataset lock)."""
    seed = cfg.data.seed if seed is None else seed
    ratios = dict(cfg.data.split_ratios if ratios is None else ratios)
    if set(ratios) - set(SPLITS) or any(r < 0 for r in ratios.values()) or abs(sum(ratios.values()) - 1) > 1e-6:
        raise DataError(f"split ratios {ratios} must use {', '.join(SPLITS)}, be non-negative and sum to 1")
    report = SplitReport(seed=seed, ratios=ratios)

    def change(pairs: list[Pair]) -> list[Pair]:
        assigned = assign_splits(pairs, ratios, seed, reassign)
        report.changed = sum(1 for p in pairs if p.split != assigned[p.id])
        for p in pairs:
            p.split = assigned[p.id]
        groups = _groups(pairs)
        report.groups = len(groups)
        report.straddling = [[p.id for p in g] for g in groups.values() if len({p.split for p in g}) > 1]
        report.counts = {s: {d: 0 for d in DIFFICULTIES} for s in SPLITS}
        for p in pairs:
            report.counts[p.split][p.difficulty] += 1
        return pairs

    if write:
        update_pairs(load_dataset(cfg, dataset), change)
    else:
        change(load_pairs(cfg, dataset))
    return report


def assign_splits(pairs: list[Pair], ratios: dict[str, float], seed: int, reassign: bool = False) -> dict[str, str]:
    """id -> split for every pair (see the module docstring for the rule). Pure: same input, same output."""
    groups = _groups(pairs)
    targets = {s: ratios.get(s, 0.0) for s in SPLITS}
    by_difficulty: dict[str, list[tuple[str, list[Pair]]]] = {}
    for key in sorted(groups):
        group = groups[key]
        difficulty = Counter(p.difficulty for p in group).most_common(1)[0][0]
        by_difficulty.setdefault(difficulty, []).append((key, group))
    result: dict[str, str] = {}
    for difficulty in sorted(by_difficulty):
        entries = by_difficulty[difficulty]
        total = sum(len(g) for _, g in entries)
        filled: Counter = Counter()
        pending = []
        for key, group in entries:
            if any(p.author == "synth" for p in group):
                # Synthetic pairs (`data synthesize`) never go to dev or test, nor does their template group.
                for p in group:
                    result[p.id] = "train"
                filled["train"] += len(group)
                continue
            kept = [p.split for p in group if p.split] if not reassign else []
            if kept:
                # The group follows its existing split (its most common one, if it already straddles).
                existing = Counter(kept).most_common(1)[0][0]
                for p in group:
                    result[p.id] = p.split if p.split else existing
                    filled[result[p.id]] += 1
            else:
                pending.append((key, group))
        rng = random.Random(f"{seed}:{difficulty}")
        rng.shuffle(pending)
        for _, group in pending:
            # The split furthest below its target; ties go to the larger target, then SPLITS order.
            split = max(SPLITS, key=lambda s: (targets[s] * total - filled[s], targets[s], -SPLITS.index(s)))
            for p in group:
                result[p.id] = split
            filled[split] += len(group)
    return result


def template_key(pair: Pair) -> str:
    """The group a pair belongs to: its database and SQL template (literals masked)."""
    return f"{pair.db or ''}\x00{sql_template(pair.sql)}"


def _groups(pairs: list[Pair]) -> dict[str, list[Pair]]:
    groups: dict[str, list[Pair]] = {}
    for p in pairs:
        groups.setdefault(template_key(p), []).append(p)
    return groups


def parse_ratios(text: str) -> dict[str, float]:
    """`train=0.6,dev=0.1,test=0.3` -> {"train": 0.6, ...}.

    >>> parse_ratios("train=0.8, test=0.2")
    {'train': 0.8, 'test': 0.2}
    """
    ratios = {}
    for item in filter(None, (p.strip() for p in text.split(","))):
        name, _, value = item.partition("=")
        try:
            ratios[name.strip()] = float(value)  # no "=" leaves value empty: an error too
        except ValueError:
            raise DataError(f"--ratios {text!r}: expected split=fraction, e.g. train=0.6,dev=0.1,test=0.3") from None
    return ratios
