"""The pair store: `datasets/<name>/pairs.jsonl` (+ optional `dataset.yaml`), read strictly, written atomically.

Every write takes an exclusive `fcntl.flock` on `pairs.jsonl.lock`, re-reads the file, applies its change,
writes a temp file in the same directory, fsyncs it and `os.replace`s it over pairs.jsonl: concurrent
writers (several `data add` processes) serialize and lose nothing, and a crash mid-write leaves the old
file whole. Lines of records a write does not change are kept byte for byte, so reviews see small diffs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import fcntl
import getpass
import hashlib
import io
import json
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from text2sql.data.analysis import difficulty_of, normalize_question, normalize_sql
from text2sql.errors import DataError
from text2sql.files import read_text, write_atomic
from text2sql.vocab import DIFFICULTIES, SPLITS

if TYPE_CHECKING:
    from text2sql.config import Config

PAIRS_FILE = "pairs.jsonl"
DATASET_FILE = "dataset.yaml"
LOCK_SUFFIX = ".lock"
FIELDS = ("id", "question", "sql", "db", "tags", "difficulty", "author", "created", "notes", "split", "forced")
"""Record keys, in the order they are written."""
_DATASET_KEYS = {"description", "databases", "source"}
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,99}$")
MAX_REPORTED_PROBLEMS = 20


@dataclass
class Pair:
    """One NL/SQL pair: a record of pairs.jsonl (see the package docstring for the schema)."""

    question: str
    sql: str
    db: str | None = None
    tags: list[str] = field(default_factory=list)
    difficulty: str = ""
    author: str = ""
    created: str = ""
    notes: str = ""
    split: str | None = None
    forced: bool = False
    id: str = ""

    def __post_init__(self) -> None:
        if not self.id:
            self.id = pair_id(self.question, self.sql)
        if not self.difficulty:
            self.difficulty = difficulty_of(self.sql)

    def to_record(self) -> dict[str, Any]:
        """The JSON record, keys in FIELDS order."""
        return {name: getattr(self, name) for name in FIELDS}


def pair_id(question: str, sql: str) -> str:
    """`p-` + 10 hex of sha1(normalized question + normalized SQL): equal pairs get equal ids.

    >>> pair_id("How many stores?", "select count(*) from core.stores")
    'p-10b5dd564d'
    """
    key = normalize_question(question) + "\n" + normalize_sql(sql)
    return "p-" + hashlib.sha1(key.encode()).hexdigest()[:10]


@dataclass
class Dataset:
    name: str
    path: Path
    """The dataset directory."""
    description: str = ""
    databases: dict[str, Path] = field(default_factory=dict)
    """db id -> DuckDB file (absolute), for pairs whose `db` is not null."""
    source: str = ""

    @property
    def pairs_file(self) -> Path:
        return self.path / PAIRS_FILE

    def database(self, db: str) -> Path:
        """The DuckDB file of a benchmark database."""
        if db not in self.databases:
            known = ", ".join(sorted(self.databases)) or "none"
            raise DataError(f"dataset {self.name!r}: db {db!r} is not among the databases of "
                            f"{self.path / DATASET_FILE} ({known})")
        path = self.databases[db]
        if not path.is_file():
            raise DataError(f"dataset {self.name!r}: database file {path} is missing (an import rebuilds it)")
        return path


def load_dataset(cfg: Config, name: str | None = None) -> Dataset:
    """The dataset `name` (default data.dataset): a name under data.datasets_dir, or a directory path.

    Raises:
        DataError: dataset.yaml is malformed.
    """
    import yaml

    name = name or cfg.data.dataset
    path = Path(name) if ("/" in name or name.startswith(".")) else cfg.path(cfg.data.datasets_dir) / name
    path = cfg.path(path)
    info_file = path / DATASET_FILE
    info: dict[str, Any] = {}
    if info_file.is_file():
        try:
            info = yaml.safe_load(read_text(info_file)) or {}
        except yaml.YAMLError as exc:
            raise DataError(f"{info_file}: not valid YAML: {exc}") from None
        if not isinstance(info, dict) or set(info) - _DATASET_KEYS:
            unknown = sorted(set(info) - _DATASET_KEYS) if isinstance(info, dict) else "not a mapping"
            raise DataError(f"{info_file}: unknown keys {unknown}; allowed: {', '.join(sorted(_DATASET_KEYS))}")
        if not isinstance(info.get("databases") or {}, dict):
            raise DataError(f"{info_file}: databases must map db ids to DuckDB file paths")
    databases = {str(db): (path / p).resolve() for db, p in (info.get("databases") or {}).items()}
    return Dataset(path.name, path, str(info.get("description") or ""), databases, str(info.get("source") or ""))


def load_pairs(cfg: Config, dataset: str | None = None, split: str | None = None) -> list[Pair]:
    """The pairs of a dataset (default data.dataset), optionally only one split, in file order.

    Raises:
        DataError: the file is missing, a line is malformed (named file:line), ids repeat, or the split is empty.
    """
    ds = load_dataset(cfg, dataset)
    if not ds.pairs_file.is_file():
        raise DataError(f"{ds.pairs_file} not found: add pairs with `text2sql data add` or import a benchmark")
    pairs = [p for p, _ in read_pairs_file(ds.pairs_file)]
    if split is None:
        return pairs
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
    chosen = [p for p in pairs if p.split == split]
    if not chosen:
        raise DataError(f"dataset {ds.name!r} has no pairs in split {split!r}: run `text2sql data split`")
    return chosen


def by_database(pairs: list) -> dict[str | None, list[int]]:
    """Positions of `pairs` by the database each asks about (None: the project lakehouse), in order: predict and
    candidate selection open one warehouse per database.

    >>> by_database([Pair("q1", "s", db="x"), Pair("q2", "s"), Pair("q3", "s", db="x")])
    {'x': [0, 2], None: [1]}
    """
    groups: dict[str | None, list[int]] = {}
    for i, pair in enumerate(pairs):
        groups.setdefault(getattr(pair, "db", None), []).append(i)
    return groups


def question_subset(pairs: list[Pair], max_questions: int) -> list[Pair]:
    """`max_questions` pairs spread evenly over `pairs` in their order (pair i * len // max_questions), so a subset of a
    split still spans its topics (the file groups them); all of them when `max_questions` is 0 or not smaller.

    >>> [p.id for p in question_subset([Pair(id=str(i), question="q", sql="SELECT 1") for i in range(10)], 4)]
    ['0', '2', '5', '7']
    """
    if not 0 < max_questions < len(pairs):
        return pairs
    return [pairs[i * len(pairs) // max_questions] for i in range(max_questions)]


def read_pairs_file(path: Path, convert: Callable[[Any], Pair] | None = None) -> list[tuple[Pair, str]]:
    """Every record with its raw line. Collects all problems, then raises one DataError naming file:line.

    `convert` turns a parsed record into a Pair (default `pair_from_record`; review passes its feedback reader).
    """
    convert = convert or pair_from_record
    problems: list[str] = []
    out: list[tuple[Pair, str]] = []
    seen: dict[str, int] = {}
    with io.StringIO(read_text(path)) as fh:  # one helper reads every input file (non-UTF-8: one-line error)
        for number, line in enumerate(fh, 1):
            raw = line.rstrip("\n")
            if not raw.strip():
                continue
            try:
                pair = convert(json.loads(raw))
            except json.JSONDecodeError as exc:
                problems.append(f"{path}:{number}: not valid JSON ({exc.msg} at column {exc.colno})")
                continue
            except DataError as exc:
                problems.append(f"{path}:{number}: {exc}")
                continue
            if pair.id in seen:
                problems.append(f"{path}:{number}: duplicate id {pair.id!r} (first on line {seen[pair.id]})")
                continue
            seen[pair.id] = number
            out.append((pair, raw))
    if problems:
        more = f" (+{len(problems) - MAX_REPORTED_PROBLEMS} more)" if len(problems) > MAX_REPORTED_PROBLEMS else ""
        raise DataError("; ".join(problems[:MAX_REPORTED_PROBLEMS]) + more)
    return out


def pair_from_record(record: Any) -> Pair:
    """A Pair from a parsed record, checking keys and types (`question` and `sql` are required)."""
    if not isinstance(record, dict):
        raise DataError(f"a record must be a JSON object, got {type(record).__name__}")
    problems = []
    unknown = sorted(set(record) - set(FIELDS))
    if unknown:
        problems.append(f"unknown keys {unknown} (allowed: {', '.join(FIELDS)})")
    for key in ("question", "sql"):
        if not isinstance(record.get(key), str) or not record.get(key, "").strip():
            problems.append(f"{key!r} must be a non-empty string")
    for key in ("id", "difficulty", "author", "created", "notes"):
        if record.get(key) is not None and not isinstance(record[key], str):
            problems.append(f"{key!r} must be a string, got {record[key]!r}")
    if record.get("db") is not None and not isinstance(record["db"], str):
        problems.append(f"'db' must be a string or null, got {record['db']!r}")
    tags = record.get("tags", [])
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        problems.append(f"'tags' must be a list of strings, got {tags!r}")
    if isinstance(record.get("id"), str) and record["id"] and not _ID.match(record["id"]):
        problems.append(f"'id' {record['id']!r} must be letters, digits and ._:- (at most 100)")
    if record.get("difficulty") not in (None, "", *DIFFICULTIES):
        problems.append(f"'difficulty' {record['difficulty']!r} is not one of {', '.join(DIFFICULTIES)}")
    if record.get("split") not in (None, *SPLITS):
        problems.append(f"'split' {record['split']!r} is not null or one of {', '.join(SPLITS)}")
    if not isinstance(record.get("forced", False), bool):
        problems.append(f"'forced' must be true or false, got {record['forced']!r}")
    if isinstance(record.get("created"), str) and record["created"]:
        try:
            dt.date.fromisoformat(record["created"][:10])
        except ValueError:
            problems.append(f"'created' {record['created']!r} is not an ISO date (YYYY-MM-DD)")
    if problems:
        raise DataError("; ".join(problems))
    return Pair(**{k: v for k, v in record.items() if v is not None or k in ("db", "split")})


def new_pair(record: dict[str, Any], author: str | None = None) -> Pair:
    """A Pair for `data add`: defaults for author (the OS user) and created (today)."""
    pair = pair_from_record(record)
    if not pair.author:
        pair.author = author or _user()
    if not pair.created:
        pair.created = dt.date.today().isoformat()
    pair.tags = sorted(dict.fromkeys(t.strip() for t in pair.tags if t.strip()))
    return pair


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no user name in containers without /etc/passwd entries
        return ""


# ---------------------------------------------------------------- locked, atomic writes


@contextlib.contextmanager
def _locked(ds: Dataset) -> Iterator[None]:
    ds.path.mkdir(parents=True, exist_ok=True)
    with open(ds.pairs_file.with_name(PAIRS_FILE + LOCK_SUFFIX), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def update_pairs(ds: Dataset, change: Callable[[list[Pair]], list[Pair]], create: bool = False) -> list[Pair]:
    """Apply `change` to the current pairs under the dataset lock and write the result atomically.

    `change` gets fresh copies and returns the pairs to write (it may raise to abort: nothing is written).
    Returns what was written.
    """
    with _locked(ds):
        if ds.pairs_file.is_file():
            current = read_pairs_file(ds.pairs_file)
        elif create:
            current = []
        else:
            raise DataError(f"{ds.pairs_file} not found")
        raw_by_id = {p.id: (p.to_record(), raw) for p, raw in current}
        new = change([dataclasses.replace(p, tags=list(p.tags)) for p, _ in current])
        lines = []
        for pair in new:
            old = raw_by_id.get(pair.id)
            record = pair.to_record()
            lines.append(old[1] if old and old[0] == record else json.dumps(record, ensure_ascii=False))
        write_text_atomic(ds.pairs_file, "".join(line + "\n" for line in lines))
        return new


def write_text_atomic(path: Path, text: str) -> None:
    """Replace `path` with `text` durably, keeping its mode (call under the lock for pairs)."""
    for stale in path.parent.glob(f".{path.name}.*.tmp"):  # left by a writer that crashed; we hold the lock
        stale.unlink(missing_ok=True)
    write_atomic(path, text, mode=_file_mode(path), durable=True)


def _file_mode(path: Path) -> int:
    if path.exists():
        return path.stat().st_mode & 0o777
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def write_dataset_info(ds: Dataset, info: dict[str, Any]) -> None:
    """Write dataset.yaml atomically."""
    import yaml

    ds.path.mkdir(parents=True, exist_ok=True)
    write_text_atomic(ds.path / DATASET_FILE, yaml.safe_dump(info, sort_keys=False, allow_unicode=True))
