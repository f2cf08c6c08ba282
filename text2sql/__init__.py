"""text2sql: fine-tune an open LLM to write SQL for your own Iceberg lakehouse.

Stages, one module (or package) each, read in order; a module imports only from stages before it:

    catalog    catalog.py, lakehouse.py   Iceberg catalogs -> DDL snapshots in schemas/; the demo lakehouse
    warehouse  warehouse/                 DuckDB over the pinned snapshots: the SQL check and the sandbox
    data       data/                      curated NL/SQL pairs: store, add, validate, dedup, stats, split, Spider
    prompt     prompt.py                  the one builder of model inputs
    train      models.py, train.py, merge.py   base models; SFT with TRL; adapter merge + parity check
    generate   generate.py                batched greedy generation; `predict` to JSONL
    evaluate   evaluate/                  execution accuracy on DuckDB (results compared by data/compare.py);
                                          release reports
    serve      serve/                     the HTTP server a BI chatbot calls: app, pipeline, backends, guard

`pipeline.py` (`text2sql demo`) and `cli.py` sit on top; `config.py`, `errors.py`, `files.py` and `vocab.py`
are shared by all. The verbs below are importable from the package root; each loads its stage module on first
use, so `import text2sql` stays light (no pyiceberg, DuckDB or torch). `train`, `evaluate` and `serve` are
also module names, so their verbs are reached through the module: `text2sql.train.train(cfg)`,
`text2sql.evaluate.evaluate(cfg, predictions)`, `text2sql.serve.run(cfg, model_dir)`.

>>> import text2sql
>>> text2sql.load_config.__module__
'text2sql.config'
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_VERBS = {
    "load_config": "text2sql.config",
    "create_lakehouse": "text2sql.lakehouse",
    "pull_schemas": "text2sql.catalog",
    "diff_schemas": "text2sql.catalog",
    "load_snapshot": "text2sql.catalog",
    "run_query": "text2sql.warehouse",
    "load_pairs": "text2sql.data",
    "add_pairs": "text2sql.data",
    "validate_pairs": "text2sql.data",
    "dedup_pairs": "text2sql.data",
    "split_pairs": "text2sql.data",
    "dataset_stats": "text2sql.data",
    "import_spider": "text2sql.data",
    "build_messages": "text2sql.prompt",
    "pull_model": "text2sql.models",
    "merge_run": "text2sql.merge",
    "load_generator": "text2sql.generate",
    "predict": "text2sql.generate",
    "run_pipeline": "text2sql.pipeline",
}
"""Verb -> the module that defines it, imported on first access (PEP 562)."""

__all__ = ["__version__", *_VERBS]


def __getattr__(name: str) -> Any:
    module = _VERBS.get(name)
    if module is None:
        raise AttributeError(f"module 'text2sql' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later accesses skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_VERBS})
