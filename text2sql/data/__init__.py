"""Curated NL/SQL pairs: the store, validation, dedup, coverage stats, splits and benchmark import.

A dataset is a directory `datasets/<name>/` (under `data.datasets_dir`) holding `pairs.jsonl`, one JSON record
per line, and optionally `dataset.yaml` (`description`, `source`, and `databases: {db_id: path.duckdb}`,
relative to the dataset directory, for benchmarks that bring their own databases).

Record schema (keys in this order; only `question` and `sql` are required when adding):

    id          str   stable id: "p-" + 10 hex of sha1(normalized question + normalized SQL), unless given
    question    str   the natural-language question
    sql         str   one read-only DuckDB query that answers it
    db          str | null   null = the project lakehouse (schemas/); else a db id of dataset.yaml's databases
    tags        [str] free labels, e.g. ["revenue", "window"]
    difficulty  str   easy | medium | hard | extra (`difficulty_of`, Spider's rule; computed when missing)
    author      str   who wrote or reviewed the pair
    created     str   ISO date, YYYY-MM-DD
    notes       str   anything a reviewer should know; `data add --force` appends the validation failure here
    split       str | null   train | dev | test (`data split`), null = not assigned
    forced      bool  true when added despite failing validation

Stages (each a `text2sql data ...` command): `add_pairs`, `validate_pairs`, `dedup_pairs`, `dataset_stats`,
`split_pairs`, `import_spider`; `load_pairs` is what training and evaluation read
(`question_subset` when `eval.max_questions` limits them).
"""

from text2sql.data.analysis import FEATURES, difficulty_of, normalize_sql, sql_features, sql_template
from text2sql.data.dedup import dedup_pairs
from text2sql.data.spider import import_spider
from text2sql.data.split import split_pairs
from text2sql.data.stats import dataset_stats
from text2sql.data.add import add_pairs
from text2sql.data.store import Dataset, Pair, by_database, load_dataset, load_pairs, question_subset
from text2sql.data.validate import validate_pairs
from text2sql.vocab import DIFFICULTIES, SPLITS

__all__ = [
    "DIFFICULTIES", "FEATURES", "SPLITS", "Dataset", "Pair", "add_pairs", "by_database", "dataset_stats", "dedup_pairs",
    "difficulty_of", "import_spider", "load_dataset", "load_pairs", "normalize_sql", "question_subset", "split_pairs",
    "sql_features", "sql_template", "validate_pairs",
]
