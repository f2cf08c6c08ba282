"""The main job, end to end: lakehouse -> schema -> validate -> model -> train -> merge -> eval -> report.

`run_pipeline(cfg)` is what `text2sql demo` runs on the embedded default (the demo lakehouse and the
default base model). Each step calls the stage function its own command calls, in pipeline order.

On a CUDA GPU it trains with the config as it is (QLoRA, `train.num_train_epochs`). On a CPU it says
so and trains a short, documented budget instead (`CPU_BUDGET`: LoRA, a fixed number of steps), so
the whole job finishes on a laptop in minutes; the report then measures that small run honestly.
"""

from __future__ import annotations

import copy
import datetime as dt
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from text2sql.errors import TRAIN_PACKAGES, DataError, require_all

if TYPE_CHECKING:
    from text2sql.config import Config

CPU_BUDGET = {"method": "lora", "max_steps": 12, "per_device_train_batch_size": 2, "save_steps": 6, "eval_steps": 12,
              "logging_steps": 2, "select_by": "last"}
"""`train` settings used on a machine without CUDA: 12 LoRA steps of 2 examples, a pipeline check rather than a model
(scoring each checkpoint on dev would add ~2/3 of the test split's generation time for nothing to choose between)."""
CPU_SCHEMA_TOKENS = 1024
"""Schema budget on a CPU: halves the prompt (and so the time) against the full 1,900-token demo schema."""


def run_pipeline(cfg: Config, release: str | None = None, rebuild: bool = False,
                 echo: Callable[[str], Any] = print) -> dict:
    """Run every stage on the project; returns the eval report. Stops at the first failing stage.

    Args:
        release: report name under eval/reports/ (default `demo-<UTC date>`).
        rebuild: rebuild the lakehouse even if its catalog exists.
    """
    from text2sql.catalog import diff_schemas, pull_schemas
    from text2sql.data import load_pairs, validate_pairs
    from text2sql.evaluate import evaluate
    from text2sql.generate import predict
    from text2sql.lakehouse import create_lakehouse
    from text2sql.models import pull_model
    from text2sql.merge import merge_run
    from text2sql.train import train

    require_all(TRAIN_PACKAGES, "train")  # before the first stage: the stages up to train would run for nothing
    import torch

    release = release or f"demo-{dt.datetime.now(dt.timezone.utc):%Y%m%d-%H%M}"
    catalog_db = cfg.path(cfg.lakehouse.path) / "catalog.db"
    if rebuild or not catalog_db.exists():
        echo("1/7 lakehouse: building the demo lakehouse")
        summary = create_lakehouse(cfg)
        echo(f"    {sum(summary['tables'].values()):,} rows in {len(summary['tables'])} tables, {summary['seconds']:.1f}s")
    else:
        echo(f"1/7 lakehouse: using {catalog_db.parent}")

    had_snapshot = (cfg.path(cfg.catalog.schemas_dir) / "manifest.json").is_file()
    changes = diff_schemas(cfg) if had_snapshot else []
    manifest = pull_schemas(cfg)
    echo(f"2/7 schema: {len(manifest['tables'])} tables in {cfg.catalog.schemas_dir}/"
         + (f" ({len(changes)} changes since the last snapshot)" if changes else ""))

    report = validate_pairs(cfg, dataset=cfg.data.dataset, with_definitions=True)
    echo(f"3/7 validate: {report.summary()}")
    if not report.passed():
        raise DataError(f"dataset {cfg.data.dataset!r} has invalid pairs: run `text2sql data validate` for details")
    if not load_pairs(cfg, cfg.data.dataset, "train"):
        raise DataError(f"dataset {cfg.data.dataset!r} has no train split: run `text2sql data split`")

    train_cfg = copy.deepcopy(cfg)
    if torch.cuda.is_available() and cfg.model.gpu_base:  # issue 13: the 1.5B coder model on a GPU
        train_cfg.model.base = cfg.model.gpu_base
    base = pull_model(train_cfg)
    echo(f"4/7 model: {base}")

    train_cfg.train.run_name = release
    if not torch.cuda.is_available():
        for key, value in CPU_BUDGET.items():
            setattr(train_cfg.train, key, value)
        # The prompt settings travel with the run (prompt.json), so predict uses the same budget.
        train_cfg.prompt.max_schema_tokens = min(train_cfg.prompt.max_schema_tokens, CPU_SCHEMA_TOKENS)
        echo(f"5/7 train: no CUDA GPU, so a short CPU budget: {', '.join(f'{k}={v}' for k, v in CPU_BUDGET.items())}, "
             f"prompt.max_schema_tokens={train_cfg.prompt.max_schema_tokens} (a GPU trains the full config)")
    else:
        echo(f"5/7 train: {torch.cuda.get_device_name(0)}, method {cfg.train.method}")
    from text2sql.checkpoints import dev_ex_callbacks

    run_dir = train(train_cfg, callbacks=dev_ex_callbacks(train_cfg))
    echo(f"    run dir {run_dir}")

    merged = merge_run(run_dir)
    echo(f"6/7 merge: {merged}")

    split = cfg.eval.split
    predictions = predict(cfg, merged, split=split, dataset=cfg.data.dataset)
    result = evaluate(cfg, predictions, dataset=cfg.data.dataset, split=split, release=release,
                      model=str(Path(merged).relative_to(cfg.root)) if Path(merged).is_relative_to(cfg.root) else str(merged))
    m = result["metrics"]
    echo(f"7/7 eval: EX {m['ex']:.1%} ({m['correct']}/{m['n']}) on {cfg.data.dataset}/{split}, mode {result['mode']}; "
         f"report in {cfg.eval.reports_dir}/{release}/")
    return result


def main_echo(text: str) -> None:
    print(text, file=sys.stderr, flush=True)
