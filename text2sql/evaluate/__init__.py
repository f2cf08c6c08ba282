"""Execution accuracy (EX): run gold and predicted SQL on the warehouse and compare the results.

Published evaluators get EX wrong in known ways (BIRD scores timeout-vs-timeout as correct, Spider counts
empty == empty and strips DISTINCT, sql-eval lets a 1x1 gold "equal" an n x m result). This one says exactly
what it counts, and every report names its comparison mode:

- ``strict`` (default): same row and column counts; column names ignored, a one-to-one column permutation
  allowed; rows as a multiset; order enforced only when the gold's top-level query has ORDER BY, and then only
  across ORDER BY key groups (rows with equal sort keys may come in any order; under ORDER BY ... LIMIT the
  last group may hold any rows tied with it). NULL = NULL, NaN = NaN, numbers compared by value whatever their
  type (DECIMAL, integer, float; 1.0 = 1), with a relative tolerance when a float is involved (integers on
  both sides compare exactly), timestamps with a time zone compared in UTC.
- ``lenient``: set semantics, order ignored, extra predicted columns allowed (whole rows are projected onto
  the predicted columns that match the gold's, never columns sorted one by one), numeric strings equal numbers.
- ``set``: BIRD's rule, ``set(pred_rows) == set(gold_rows)`` on the raw values, for comparability only.

A gold query that fails is excluded from the score and counted; a prediction that fails or times out scores 0
(error results are never compared). Empty gold results are flagged, and EX without them is reported too.

Pipeline of `evaluate`: load pairs -> read predictions -> for each database: check predicted SQL, run gold
(cached on disk) and predictions in parallel through `text2sql.warehouse.QueryRunner` -> judge each example
-> metrics -> report.json, report.md, report.html under ``eval/reports/<release>/``.

The code: `text2sql.data.compare` (comparing two results, shared with the Spider import), `predictions` (reading
predictions files), `scoring` (running and judging), `records` (the `Example` and `Report` written),
`release` (`evaluate`, metrics, inputs) and `report` (rendering and comparing reports). This package re-exports their public names.
"""

from text2sql.data.compare import (
    DIFF_ROWS,
    MAX_FUZZY_MATCH,
    MAX_MAPPING_STEPS,
    Comparison,
    ResultSet,
    compare_results,
    exact_match,
    order_key_columns,
    tie_query,
)
from text2sql.evaluate.predictions import extract_sql, read_prediction_dialects, read_predictions
from text2sql.evaluate.records import Example, Judgement, Report
from text2sql.evaluate.release import DIFFICULTY_ORDER, RELEASE_NAME, check_release_free, compute_metrics, evaluate
from text2sql.evaluate.report import (
    compare_reports,
    find_report,
    format_comparison,
    format_summary,
    render_html,
    render_markdown,
    subset_line,
    write_report,
)
from text2sql.evaluate.scoring import (
    GOLD_CACHE_DIR,
    GOLD_CACHE_FORMAT,
    VALID_SQL_VERDICTS,
    VERDICTS,
    ScoredRun,
    _GoldCache,  # noqa: F401 (tests check the cache key)
    _target_fingerprint,  # noqa: F401
    score_pairs,
)
from text2sql.vocab import EVAL_MODES as MODES

__all__ = [
    "DIFFICULTY_ORDER", "DIFF_ROWS", "GOLD_CACHE_DIR", "GOLD_CACHE_FORMAT", "MAX_FUZZY_MATCH", "MAX_MAPPING_STEPS",
    "MODES", "RELEASE_NAME", "VALID_SQL_VERDICTS", "VERDICTS", "Comparison", "Example", "Judgement", "Report",
    "ResultSet", "ScoredRun",
    "check_release_free", "compare_reports", "compare_results", "compute_metrics", "evaluate", "exact_match", "extract_sql",
    "find_report", "format_comparison", "format_summary", "order_key_columns", "read_prediction_dialects",
    "read_predictions", "render_html", "render_markdown", "score_pairs", "subset_line", "tie_query", "write_report",
]
