"""Business definitions of a dataset: `datasets/<name>/definitions.yaml`, the terms the prompt explains.

The file (schema version 1):

    version: 1
    aliases: {o: sales.orders, ol: sales.order_lines}    # table aliases the fragments use
    definitions:
      - term: net sales                                  # unique
        kind: measure                                    # measure | filter | dimension | period | join | rule
        synonyms: [revenue, sales]                       # words a question may use instead
        meaning: gross sales minus discounts, over lines of completed orders
        sql: SUM(ol.quantity * ol.unit_price - ol.discount_amount)   # optional for kind rule

`load_definitions` reads it (empty `Definitions` when the file is absent), `check_definitions` checks it
against the schema snapshot (`data validate` runs it), and `Definitions.render` is the text the prompt
builder puts into the system message: every definition when they fit the token budget, else the ones
whose term or synonyms the question mentions.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from text2sql.data.store import load_dataset
from text2sql.errors import DataError
from text2sql.vocab import DIALECT

if TYPE_CHECKING:
    from text2sql.catalog import SchemaSnapshot
    from text2sql.config import Config

DEFINITIONS_FILE = "definitions.yaml"
HEADER = "Business definitions"
"""How the prompt's definitions block opens (then the table aliases); `text2sql.prompt.shared_system_head` finds it."""
DEFINITIONS_FORMAT = 1
KINDS = ("measure", "filter", "dimension", "period", "join", "rule")
_TOP_KEYS = frozenset({"version", "aliases", "definitions"})
_ITEM_KEYS = frozenset({"term", "kind", "synonyms", "meaning", "sql"})
_WORD = re.compile(r"[a-z]+|[0-9]+")  # "FY2025" -> "fy", "2025"
# Words too common in questions to say which definition is meant ("sales per store" must not pick "store join"
# for "per"); content words carry the match.
_STOPWORDS = frozenset(
    "a an the of in on at by for to from and or with without is are was were be been there their that this "
    "what which who whom how many much list show give find get return all every each per number do does did "
    "have has had our we me my it its as than".split()
)


@dataclass(frozen=True)
class Definition:
    """One business term: what it means and, optionally, the SQL fragment that computes or filters it."""

    term: str
    kind: str
    """measure | filter | dimension | period | join | rule."""
    meaning: str
    sql: str = ""
    """A DuckDB expression, condition or query over the file's aliases; empty for some rules."""
    synonyms: tuple[str, ...] = ()

    def render(self) -> str:
        """One prompt line.

        >>> Definition("net sales", "measure", "gross sales minus discounts", "SUM(ol.x)", ("revenue",)).render()
        '- net sales (also: revenue): gross sales minus discounts. SQL: SUM(ol.x)'
        """
        also = f" (also: {', '.join(self.synonyms)})" if self.synonyms else ""
        sql = f". SQL: {self.sql}" if self.sql else ""
        return f"- {self.term}{also}: {self.meaning}{sql}"


@dataclass(frozen=True)
class Definitions:
    """A dataset's definitions and table aliases; empty (falsy) when the dataset has none."""

    aliases: dict[str, str] = field(default_factory=dict)
    items: tuple[Definition, ...] = ()
    source: str = ""
    """The file they were read from (for messages); not part of the fingerprint."""

    def __len__(self) -> int:
        return len(self.items)

    def __bool__(self) -> bool:
        return bool(self.items)

    @property
    def fingerprint(self) -> str:
        """sha256 of the content (aliases and definitions, not the file's layout or comments)."""
        return hashlib.sha256(json.dumps(self.to_json(), sort_keys=True).encode()).hexdigest()

    def to_json(self) -> dict[str, Any]:
        """What run dirs save (prompt.json), so a run's prompt does not change when the file does."""
        # Aliases as [alias, table] pairs: a JSON object written with sort_keys would reorder them, and their
        # order is part of the prompt.
        return {"version": DEFINITIONS_FORMAT, "aliases": [[a, t] for a, t in self.aliases.items()],
                "definitions": [{k: v for k, v in asdict(d).items() if v or k in ("term", "kind", "meaning")}
                                for d in self.items]}

    @classmethod
    def from_json(cls, payload: dict[str, Any], source: str = "") -> Definitions:
        """Inverse of `to_json` (also reads a parsed definitions.yaml). Raises DataError naming `source`."""
        return _parse(payload, source)

    def header(self) -> str:
        aliases = ", ".join(f"{a} = {t}" for a, t in self.aliases.items())
        return HEADER + (f" (table aliases: {aliases})" if aliases else "") + ":"

    def select(self, question: str, max_tokens: int,
               count_tokens: Callable[[str], int] = lambda text: math.ceil(len(text) / 4)) -> list[Definition]:
        """The definitions the prompt shows for `question`, in file order. Deterministic.

        All of them when header and lines fit in `max_tokens`. Otherwise each definition is scored against
        the question: 4 when its term appears as a phrase, 3 per synonym phrase that appears, plus 1/df(w) per
        content word w shared with term or synonyms (plural `s` folded; df = how many definitions use w, so
        "order", in a dozen terms, adds little). A definition whose meaning names another's term passes it half
        its score (net sales -> "completed orders", gross margin -> net sales -> ...), so what a relevant term
        is built from comes along. Those with a positive score are taken, highest first (ties in file order),
        while they fit (one too big for what is left is skipped).

        >>> d = Definitions({}, (Definition("net sales", "measure", "m", synonyms=("revenue",)),
        ...                      Definition("units sold", "measure", "m"), Definition("markup", "measure", "m")))
        >>> [x.term for x in d.select("Revenue by month", max_tokens=16)]
        ['net sales']
        """
        if not self.items or max_tokens <= 0:
            return []
        lines = [d.render() for d in self.items]
        if count_tokens("\n".join([self.header(), *lines])) <= max_tokens:
            return list(self.items)
        q_words = set(_words(question))
        q_text = " " + " ".join(_words(question, keep_stopwords=True)) + " "
        own, df, references = self._index
        scores = []
        for i, d in enumerate(self.items):
            score = 4 * _has_phrase(q_text, d.term)
            score += sum(3 * _has_phrase(q_text, s) for s in d.synonyms)
            scores.append(score + sum(1 / df[w] for w in own[i] & q_words))
        for _ in range(3):  # three steps down the chain of "built from" is as deep as definitions go
            passed = list(scores)
            for i, j in references:
                passed[j] = max(passed[j], scores[i] / 2)
            scores = passed
        scored = [(-score, i) for i, score in enumerate(scores) if score > 0]
        used = count_tokens(self.header())
        kept = []
        for _, i in sorted(scored):
            size = count_tokens(lines[i])
            if used + size <= max_tokens:
                kept.append(i)
                used += size
        # Lines counted one by one can come out a little under the text they make together: drop the least
        # relevant until the whole fits.
        while kept and count_tokens("\n".join([self.header(), *(lines[i] for i in sorted(kept))])) > max_tokens:
            kept.pop()
        return [self.items[i] for i in sorted(kept)]

    @functools.cached_property
    def _index(self) -> tuple[list[set[str]], Counter, list[tuple[int, int]]]:
        """What `select` needs of the definitions alone, built once: each one's term and synonym words, the
        number of definitions using each word, and (i, j) for each definition i whose meaning names term j."""
        own = [set(_words(" ".join([d.term, *d.synonyms]))) for d in self.items]
        texts = [" " + " ".join(_words(d.meaning, keep_stopwords=True)) + " " for d in self.items]
        references = [(i, j) for i in range(len(self.items)) for j, other in enumerate(self.items)
                      if i != j and _has_phrase(texts[i], other.term)]
        return own, Counter(w for words in own for w in words), references

    def render(self, question: str = "", max_tokens: int | None = None,
               count_tokens: Callable[[str], int] = lambda text: math.ceil(len(text) / 4)) -> str:
        """The prompt text: a header naming the aliases, then one line per selected definition ('' when none).

        `max_tokens=None` renders every definition.
        """
        chosen = list(self.items) if max_tokens is None else self.select(question, max_tokens, count_tokens)
        if not chosen:
            return ""
        return "\n".join([self.header(), *(d.render() for d in chosen)])


def definitions_path(cfg: Config, dataset: str | None = None) -> Path:
    """Where a dataset's definitions live (the file may not exist)."""
    return load_dataset(cfg, dataset).path / DEFINITIONS_FILE


def load_definitions(cfg: Config, dataset: str | None = None) -> Definitions:
    """The definitions of `dataset` (default data.dataset); empty when it has no definitions.yaml.

    Raises:
        DataError: the file is not YAML or does not follow the schema (the message names the file and term).
    """
    return read_definitions(definitions_path(cfg, dataset))


def read_definitions(path: Path) -> Definitions:
    """Read one definitions file; empty `Definitions` when it does not exist."""
    import yaml

    path = Path(path)
    if not path.is_file():
        return Definitions(source=str(path))
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise DataError(f"{path}: not valid YAML{where}: {getattr(exc, 'problem', exc)}") from None
    return _parse(raw, str(path))


def _parse(raw: Any, source: str) -> Definitions:
    """Build Definitions from a parsed mapping, collecting every schema problem before raising once."""
    where = source or "definitions"
    if not isinstance(raw, dict):
        raise DataError(f"{where}: top level must be a mapping with version, aliases and definitions")
    problems = [f"unknown key {k!r}" for k in sorted(set(raw) - _TOP_KEYS)]
    if raw.get("version", DEFINITIONS_FORMAT) != DEFINITIONS_FORMAT:
        problems.append(f"version {raw.get('version')!r} is not supported (expected {DEFINITIONS_FORMAT})")
    aliases = raw.get("aliases") or {}
    if isinstance(aliases, list) and all(isinstance(a, list) and len(a) == 2 for a in aliases):
        aliases = dict(aliases)  # `to_json`'s ordered pairs
    if not isinstance(aliases, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in aliases.items()):
        problems.append("aliases must map alias names to qualified table names")
        aliases = {}
    items: list[Definition] = []
    seen: set[str] = set()
    entries = raw.get("definitions") or []
    if not isinstance(entries, list):
        problems.append("definitions must be a list")
        entries = []
    for n, entry in enumerate(entries, 1):
        if not isinstance(entry, dict):
            problems.append(f"definition #{n}: must be a mapping")
            continue
        term = entry.get("term")
        label = f"term {term!r}" if isinstance(term, str) and term.strip() else f"definition #{n}"
        bad = sorted(set(entry) - _ITEM_KEYS)
        if bad:
            problems.append(f"{label}: unknown keys {bad}; allowed: {', '.join(sorted(_ITEM_KEYS))}")
        if not isinstance(term, str) or not term.strip():
            problems.append(f"{label}: term is missing")
            continue
        if term.strip().lower() in seen:
            problems.append(f"{label}: defined twice")
        seen.add(term.strip().lower())
        kind, meaning, sql = entry.get("kind"), entry.get("meaning"), entry.get("sql") or ""
        synonyms = entry.get("synonyms") or []
        if kind not in KINDS:
            problems.append(f"{label}: kind {kind!r} is not one of {', '.join(KINDS)}")
        if not isinstance(meaning, str) or not meaning.strip():
            problems.append(f"{label}: meaning is missing")
        if not isinstance(sql, str):
            problems.append(f"{label}: sql must be a string")
        elif not sql.strip() and kind not in ("rule", None) and kind in KINDS:
            problems.append(f"{label}: sql is missing (only kind rule may leave it out)")
        if not isinstance(synonyms, list) or not all(isinstance(s, (str, int)) for s in synonyms):
            problems.append(f"{label}: synonyms must be a list of strings")
            synonyms = []
        items.append(Definition(term.strip(), str(kind), " ".join(str(meaning or "").split()),
                                " ".join(str(sql).split()), tuple(str(s) for s in synonyms)))
    if problems:
        raise DataError(f"{where}: " + "; ".join(problems))
    return Definitions(dict(aliases), tuple(items), source)


def check_definitions(defs: Definitions, snapshot: SchemaSnapshot) -> list[str]:
    """Problems of the definitions against the schema: each alias names a table, each `sql` fragment parses
    (as an expression, condition or query) and each of its alias-qualified columns exists.

    Returns one message per problem, naming the file and the term ([] when all is well).
    """
    import difflib

    import sqlglot
    from sqlglot import exp

    where = defs.source or "definitions"
    problems = []
    tables: dict[str, str] = {}
    for alias, name in defs.aliases.items():
        resolved = snapshot.resolve(name)
        if resolved is None:
            problems.append(f"{where}: alias {alias!r}: no table {name!r} in the schema snapshot")
        else:
            tables[alias.lower()] = resolved
    for d in defs.items:
        if not d.sql:
            continue
        label = f"{where}: term {d.term!r}"
        try:
            tree = sqlglot.parse_one(d.sql, read=DIALECT)
        except sqlglot.errors.ParseError as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else "cannot parse"
            problems.append(f"{label}: sql does not parse: {first}")
            continue
        if tree is None:
            problems.append(f"{label}: sql is empty")
            continue
        local = dict(tables)
        derived = {a.name.lower() for a in tree.find_all(exp.TableAlias) if not isinstance(a.parent, exp.Table)}
        for table in tree.find_all(exp.Table):
            name = ".".join(p.name for p in table.parts)
            resolved = snapshot.resolve(name)
            if resolved is None:
                if name.lower() not in {c.alias_or_name.lower() for c in tree.find_all(exp.CTE)}:
                    problems.append(f"{label}: unknown table {name}")
                continue
            if table.alias:
                local[table.alias.lower()] = resolved
        for column in tree.find_all(exp.Column):
            parts = [p.name for p in column.parts]
            if len(parts) < 2:
                continue  # unqualified: an output alias (ORDER BY customer_count) or a name only a query defines
            qualifier, name = parts[0].lower(), parts[1]
            if qualifier in derived:
                continue
            if qualifier not in local:
                problems.append(f"{label}: column {'.'.join(parts)} uses alias {parts[0]!r}, "
                                f"which is neither in aliases nor defined in the fragment")
                continue
            table = snapshot.tables[local[qualifier]]
            if table.column(name) is None:
                close = difflib.get_close_matches(name, [c.name for c in table.columns], n=1)
                hint = f"; did you mean {close[0]}?" if close else ""
                problems.append(f"{label}: unknown column {parts[0]}.{name} "
                                f"({table.name} has no column {name!r}{hint})")
    return problems


def _words(text: str, keep_stopwords: bool = False) -> list[str]:
    out = []
    for w in _WORD.findall(text.lower()):
        if not keep_stopwords and (w in _STOPWORDS or w.isdigit()):  # numbers are values, not terms
            continue
        out.append(w[:-1] if len(w) > 3 and w.endswith("s") and not w.endswith("ss") else w)
    return out


def _has_phrase(q_text: str, phrase: str) -> bool:
    """Does the question (words joined by single spaces, padded) contain the phrase as whole words?"""
    words = _words(phrase, keep_stopwords=True)
    return bool(words) and f" {' '.join(words)} " in q_text
