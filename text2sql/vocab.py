"""The words the pipeline shares: one definition each, imported everywhere else.

The config checks its values against these, the CLI offers them as choices, and each stage uses them, so
adding a method, a mode or a split is a change here (and in the code that handles it), nowhere else.
"""

from __future__ import annotations

METHODS = ("auto", "qlora", "lora", "full")
"""`train.method`: auto = qlora on a CUDA GPU, lora elsewhere."""
EVAL_MODES = ("strict", "lenient", "set")
"""`eval.mode`: how a predicted result is compared with the gold result."""
SPLITS = ("train", "dev", "test")
"""Dataset splits, in the order they are reported."""
DIFFICULTIES = ("easy", "medium", "hard", "extra")
"""Spider's difficulty levels (`text2sql.data.analysis.difficulty_of`), easiest first."""
DIALECT = "duckdb"
"""sqlglot dialect of every query the pipeline parses, writes and runs."""
PREDICTION_DIALECTS = (DIALECT, "sqlite")
"""SQL dialects a prediction may be written in (`eval --dialect`); sqlite goes through the Spider import's gold rewrite."""
WAREHOUSE_ENGINES = ("auto", "materialized", "iceberg", "duckdb")
"""`warehouse.engine`: what queries run on (see `text2sql.config.WarehouseConfig.engine`)."""
REL_TOL = 1e-6
"""Default relative tolerance when two numbers in query results are compared (`eval.rel_tol`, Spider import)."""
ABS_TOL = 1e-9
"""Numbers this close to each other (near zero, where a relative tolerance means nothing) are equal."""
