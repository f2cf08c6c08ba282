"""The main job, end to end: lakehouse -> schema -> validate -> model -> train -> merge -> eval -> report.

`run_pipeline(cfg)` is what `text2sql demo` runs on the embedded default (the demo lakehouse and the
default base model). Each step calls the stage function its own command calls, in pipeline order.

On a CUDA GPU it trains with the config as it is (QLoRA, `train.num_train_epochs`) and scores the whole test split.
On a CPU it says so and runs a short, documented budget instead, so the whole job finishes on a laptop within
25 minutes: `CPU_BUDGET` (LoRA, a fixed number of steps, no dev loss), `CPU_MERGE` (float32, a shorter parity
check) and `CPU_EVAL` (a stated subset of the test split); the report then measures that small run honestly.
"""

from __future__ import annotations

import contextlib
import copy
import datetime as dt
import functools
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from text2sql.catalog import diff_schemas, pull_schemas
from text2sql.checkpoints import dev_ex_callbacks
from text2sql.data import load_pairs, validate_pairs
from text2sql.errors import TRAIN_PACKAGES, DataError, ModelError, require_all
from text2sql.evaluate import check_release_free, evaluate, subset_line
from text2sql.generate import predict
from text2sql.lakehouse import create_lakehouse
from text2sql.merge import merge_run
from text2sql.models import pull_model
from text2sql.progress import format_seconds
from text2sql.train import train

if TYPE_CHECKING:
    from text2sql.config import Config

CPU_BUDGET = {"method": "lora", "max_steps": 12, "per_device_train_batch_size": 2, "save_steps": 6, "eval_steps": 0,
              "logging_steps": 2, "select_by": "last", "gradient_checkpointing": True}
"""`train` settings used on a machine without CUDA: 12 LoRA steps of 2 examples, a pipeline check rather than a model.
No dev loss (eval_steps 0: on 2 cores it took 6.4 min for one pass over dev) and no dev EX per checkpoint (that would
add ~2/3 of the test split's generation time for nothing to choose between). Gradient checkpointing: 4 steps of the
135M model peaked at 9.3 GB with it and 16.6 GB without, in 108.8 s against 103.7 s (2 idle cores, 2026-12-01); a
laptop with 16 GB could not run the demo without it."""
CPU_SCHEMA_TOKENS = 1024
"""Schema budget on a CPU: halves the prompt (and so the time) against the full 1,900-token demo schema."""
CPU_MERGE = {"dtype": "float32", "parity_prompts": 4}
"""`merge_run` settings on a CPU: float32, which is what predict runs on a CPU (bfloat16 matmuls are ~5x slower on
a CPU without bf16 instructions: 2 parity replies took 111 s in bf16, 23 s in float32), and a parity check on 4 of
the 8 held prompts (each model, adapter and merged, answers each; up to 64 new tokens)."""
CPU_EVAL = {"max_questions": 16, "max_new_tokens": 160}
"""The eval stage on a CPU: predict and score a SUBSET, 16 of the demo's 132 test questions, evenly spaced in the split
(`eval.max_questions`, `data.question_subset`; the report and the demo's summary say so), with replies of at most
160 tokens (`generate.max_new_tokens`; 81% of the demo's gold queries are shorter; a reply that never reaches its
end-of-turn token holds its whole batch: 5 of 16 did after 12 steps). 16 answers of the 12-step model took 8.9 min
(256 tokens) and 9.8 min (160) on 2 cores shared with other jobs, ~11 CPU-minutes, i.e. ~5 min on 2 idle cores;
all 132 took over 16 min without finishing."""
CPU_DEMO_EXPECTED = {"time_s": 1047, "ex": 0.0}
"""What `text2sql demo` on a CPU is expected to take and reach, as the README states it, with the default base model
(Qwen2.5-Coder-0.5B): 17 min 27 s and 0.0% EX (0 of the 16 subset questions; valid SQL 6 of 16), measured on 2 idle
cores on 2026-12-01 (eval/reports/demo-cpu-qwen05-gc): train 14 min 7 s, merge 1 min 11 s, eval of 16 of the 132
test questions 1 min 59 s, peak memory 10.8 GB (23.0 GB without gradient checkpointing). SmolLM2-135M: 7 min 47 s,
0.0% EX, valid SQL 3 of 16, peak 9.3 GB (eval/reports/demo-20261201-1037). The demo prints both, so a low EX from
the short CPU budget reads as expected, not as a failure."""
STAGES = 7


def run_pipeline(cfg: Config, release: str | None = None, rebuild: bool = False,
                 echo: Callable[[str], Any] = print, force: bool = False) -> dict:
    """Run every stage on the project; returns the eval report. Stops at the first failing stage.

    Args:
        release: report name under eval/reports/ and run name under runs/ (default `demo-<UTC date>`).
        rebuild: rebuild the lakehouse even if its catalog exists.
        force: replace the run dir and report of `release` if they exist (refused otherwise, before any work).
    """
    require_all(TRAIN_PACKAGES, "train")  # before the first stage: the stages up to train would run for nothing
    import torch

    started = time.perf_counter()
    release = release or f"demo-{dt.datetime.now(dt.timezone.utc):%Y%m%d-%H%M}"
    # Both outputs are checked before minutes of work: a second demo in the same minute must not end in an error.
    report_dir = check_release_free(cfg, release, force)
    run_dir = cfg.path(cfg.train.output_dir) / release
    if run_dir.exists() and any(run_dir.iterdir()) and not force:
        raise ModelError(f"run dir {run_dir} exists: --force replaces it, or choose another --release")
    cuda = torch.cuda.is_available()
    stage = functools.partial(_stage, echo)

    catalog_db = cfg.path(cfg.lakehouse.path) / "catalog.db"
    if rebuild or not catalog_db.exists():
        with stage(1, "lakehouse", "building the demo lakehouse"):
            summary = create_lakehouse(cfg)
            echo(f"    {sum(summary['tables'].values()):,} rows in {len(summary['tables'])} tables")
    else:
        echo(f"1/{STAGES} lakehouse: using {catalog_db.parent}")

    with stage(2, "schema", f"snapshot into {cfg.catalog.schemas_dir}/"):
        had_snapshot = (cfg.path(cfg.catalog.schemas_dir) / "manifest.json").is_file()
        changes = diff_schemas(cfg) if had_snapshot else []
        manifest = pull_schemas(cfg)
        echo(f"    {len(manifest['tables'])} tables" + (f" ({len(changes)} changes since the last snapshot)" if changes else ""))

    with stage(3, "validate", f"every pair of {cfg.data.dataset!r} (parse, names, execution)"):
        report = validate_pairs(cfg, dataset=cfg.data.dataset, with_definitions=True)
        echo(f"    {report.summary()}")
    if not report.passed():
        raise DataError(f"dataset {cfg.data.dataset!r} has invalid pairs: run `text2sql data validate` for details")
    if not load_pairs(cfg, cfg.data.dataset, "train"):
        raise DataError(f"dataset {cfg.data.dataset!r} has no train split: run `text2sql data split`")

    train_cfg = copy.deepcopy(cfg)
    if cuda and cfg.model.gpu_base:  # issue 13: the 1.5B coder model on a GPU
        train_cfg.model.base = cfg.model.gpu_base
    with stage(4, "model", train_cfg.model.base):
        base = pull_model(train_cfg)
        echo(f"    {base}")

    train_cfg.train.run_name = release
    if not cuda:
        for key, value in CPU_BUDGET.items():
            setattr(train_cfg.train, key, value)
        # The prompt settings travel with the run (prompt.json), so predict uses the same budget.
        train_cfg.prompt.max_schema_tokens = min(train_cfg.prompt.max_schema_tokens, CPU_SCHEMA_TOKENS)
        what = (f"no CUDA GPU, so a short CPU budget: {', '.join(f'{k}={v}' for k, v in CPU_BUDGET.items())}, "
                f"prompt.max_schema_tokens={train_cfg.prompt.max_schema_tokens} (a GPU trains the full config)")
    else:
        what = f"{torch.cuda.get_device_name(0)}, method {cfg.train.method}"

    with stage(5, "train", what):
        run_dir = train(train_cfg, callbacks=dev_ex_callbacks(train_cfg), force=force)
        echo(f"    run dir {run_dir}")

    merge_settings = {} if cuda else CPU_MERGE
    what = "" if cuda else f" (CPU: {CPU_MERGE['dtype']}, parity check on {CPU_MERGE['parity_prompts']} held prompts)"
    with stage(6, "merge", f"adapter into the base, in {run_dir}/merged{what}"):
        merged = merge_run(run_dir, force=force, **merge_settings)

    eval_cfg, split = copy.deepcopy(cfg), cfg.eval.split
    what = f"predict and score {cfg.data.dataset}/{split}"
    if not cuda:
        eval_cfg.eval.max_questions = CPU_EVAL["max_questions"]
        eval_cfg.generate.max_new_tokens = min(cfg.generate.max_new_tokens, CPU_EVAL["max_new_tokens"])
        total = len(load_pairs(cfg, cfg.data.dataset, split))
        if total > CPU_EVAL["max_questions"]:
            what = (f"predict and score A SUBSET: {CPU_EVAL['max_questions']} of the {total} {cfg.data.dataset}/{split} "
                    "questions, evenly spaced (eval.max_questions; a GPU scores them all)")
        what += f", replies of at most {eval_cfg.generate.max_new_tokens} tokens"
    with stage(7, "eval", what):
        predictions = predict(eval_cfg, merged, split=split, dataset=cfg.data.dataset)
        model = str(Path(merged).relative_to(cfg.root)) if Path(merged).is_relative_to(cfg.root) else str(merged)
        result = evaluate(eval_cfg, predictions, dataset=cfg.data.dataset, split=split, release=release, model=model,
                          force=force)
    for line in summary_lines(result, report_dir, time.perf_counter() - started, cuda, cfg):
        echo(line)
    return result


def summary_lines(result: dict, report_dir: Path, seconds: float, cuda: bool, cfg: Config) -> list[str]:
    """The demo's closing summary: EX, where the report is, and what the run's budget means for that EX."""
    m = result["metrics"]
    where = report_dir.relative_to(cfg.root) if report_dir.is_relative_to(cfg.root) else report_dir
    lines = [f"demo: done in {format_seconds(seconds)}",
             f"  EX {m['ex']:.1%} ({m['correct']}/{m['n']}) on {result['dataset']}/{result['split']}, "
             f"mode {result['mode']}; valid SQL {m['valid_sql_rate']:.1%}",
             *((f"  {subset_line(result)}",) if result.get("subset") else ()),
             f"  report: {where}/report.md (and report.html, report.json)"]
    if cuda:
        lines.append("  this run trained the full config on the GPU; compare it with the README's table of results "
                     "(`text2sql eval compare` against a release)")
        return lines
    expected_ex = CPU_DEMO_EXPECTED["ex"]
    lines += [f"  on a CPU the demo trains only {CPU_BUDGET['max_steps']} LoRA steps of "
              f"{CPU_BUDGET['per_device_train_batch_size']} examples and scores a subset of "
              f"{CPU_EVAL['max_questions']} test questions:",
              "  a check that every stage runs, not a useful model,",
              "  so an EX near 0 is what to expect here; a CUDA GPU trains the full config on "
              f"{cfg.model.gpu_base or cfg.model.base} (README, Evaluating).",
              f"  expected on a 2-core CPU: about {format_seconds(CPU_DEMO_EXPECTED['time_s'])}, EX "
              + ("not measured yet" if expected_ex is None else f"{expected_ex:.1%}")]
    return lines


@contextlib.contextmanager
def _stage(echo: Callable[[str], Any], number: int, name: str, what: str) -> Iterator[None]:
    """`n/7 name: what`, the stage, then its elapsed time (long stages show their own progress in between)."""
    echo(f"{number}/{STAGES} {name}: {what}")
    started = time.perf_counter()
    yield
    echo(f"    {name}: {format_seconds(time.perf_counter() - started)}")


def main_echo(text: str) -> None:
    print(text, file=sys.stderr, flush=True)
