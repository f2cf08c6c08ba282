"""EX-based checkpoint selection: at each save, score the checkpoint on the dev split by execution; keep the best.

Eval loss is a poor guide to SQL that runs right (a model can lower its loss on dev while its queries get no
better), so `train.select_by: dev_ex` scores the checkpoints from `train.select_from` of the run on the way `eval`
scores a release: greedy predictions for the dev split with the model in training (switched to eval mode and back),
each checked and run in the warehouse sandbox, compared by result (`eval.mode`). Each checkpoint gets `dev_ex.json`;
the run dir gets `dev_ex.jsonl` (the curve, one line per save) and its manifest `dev_ex_curve` and `best_checkpoint`;
the Trainer's `best_model_checkpoint` is set so that `save_total_limit` never deletes the best one. `merge` reads
those JSON files only (`train.choose_checkpoint`).

This module sits above train, generate and evaluate: the CLI and the pipeline pass its callback into
`train(cfg, callbacks=...)`, so that train itself needs neither generation nor DuckDB.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from text2sql.catalog import load_catalog
from text2sql.data import load_pairs
from text2sql.errors import TRAIN_PACKAGES, ConfigError, Text2SQLError, require_all
from text2sql.evaluate import compute_metrics, score_pairs
from text2sql.files import read_json_or_empty, write_atomic
from text2sql.generate import Generator, extract_sql, generate, prompts_for

if TYPE_CHECKING:
    from text2sql.config import Config

DEV_EX_FILE = "dev_ex.json"
"""In each checkpoint dir: its dev EX and how it was measured."""
CURVE_FILE = "dev_ex.jsonl"
"""In the run dir: one line per scored checkpoint, in step order (survives checkpoint rotation and resume)."""


def dev_ex_callbacks(cfg: Config) -> list:
    """The callbacks `train` needs for `train.select_by` (none for `last`, or for `auto` where dev EX cannot run).

    Raises:
        ConfigError: `select_by: dev_ex` but the dataset has no dev split or the sandbox cannot run here.
    """
    if cfg.train.select_by == "last":
        return []
    require_all(TRAIN_PACKAGES, "train")  # a missing package is the first thing to say, before any notice
    missing = _why_not(cfg)
    if missing:
        if cfg.train.select_by == "dev_ex":
            raise ConfigError(f"train.select_by: dev_ex needs {missing}; set train.select_by: last")
        print(f"train: checkpoints are not scored on dev ({missing}); merge takes the last weights", file=sys.stderr)
        return []

    return [_dev_ex_callback(cfg, load_pairs(cfg, cfg.data.dataset, "dev"))]


def best_of(curve: list[dict]) -> dict | None:
    """The best entry of a dev-EX curve: the highest EX; between equals, the later step (trained longer).

    >>> best_of([{"step": 3, "dev_ex": 0.5}, {"step": 6, "dev_ex": 0.7}, {"step": 9, "dev_ex": 0.7}])["step"]
    9
    """
    return max(curve, key=lambda e: (e["dev_ex"], e["step"]), default=None)


def score_dev(cfg: Config, model: Any, tokenizer: Any, pairs: list, dataset: str) -> dict[str, Any]:
    """Dev EX of a model in memory: greedy predictions with `cfg.prompt` (as in training), scored in the sandbox."""
    g = cfg.generate
    gen = Generator(model, tokenizer, prompt=cfg.prompt, dataset=dataset, batch_size=g.batch_size,
                    max_new_tokens=g.max_new_tokens, prefix_cache=g.prefix_cache)
    training = model.training
    started = time.perf_counter()
    try:
        replies = generate(gen, prompts_for(cfg, gen, pairs, dataset))  # generate switches to eval mode
    finally:
        model.train(training)
    generated = time.perf_counter() - started
    entry = score_predictions(cfg, pairs, {p.id: extract_sql(r) for p, r in zip(pairs, replies)}, dataset)
    return {**entry, "generate_s": round(generated, 2), "seconds": round(time.perf_counter() - started, 2)}


def score_predictions(cfg: Config, pairs: list, predictions: dict[str, str | None], dataset: str) -> dict[str, Any]:
    """EX of predictions on `pairs`, judged as `eval` judges them (sandbox, `eval.mode`)."""
    scored = score_pairs(cfg, pairs, predictions, dataset=dataset)
    m = compute_metrics(scored.examples, scored.excluded, cfg.eval.mode)
    return {"dev_ex": m["ex"], "n": m["n"], "correct": m["correct"], "valid_sql_rate": m["valid_sql_rate"],
            "mode": cfg.eval.mode}


def record_dev_ex(run_dir: Path, checkpoint: str, entry: dict[str, Any]) -> dict[str, Any]:
    """Write a checkpoint's dev EX into it, the run's curve and its manifest; returns the best entry so far
    (among checkpoints still on disk)."""
    run_dir = Path(run_dir)
    entry = {**entry, "checkpoint": checkpoint}
    entry.setdefault("step", int(checkpoint.rpartition("-")[2]))
    write_atomic(run_dir / checkpoint / DEV_EX_FILE, json.dumps(entry, indent=2) + "\n")
    curve = sorted([e for e in _read_curve(run_dir) if e["step"] != entry["step"]] + [entry], key=lambda e: e["step"])
    write_atomic(run_dir / CURVE_FILE, "".join(json.dumps(e) + "\n" for e in curve))
    best = best_of([e for e in curve if (run_dir / e["checkpoint"]).is_dir()]) or entry
    manifest = read_json_or_empty(run_dir / "manifest.json")
    manifest.update(select_by="dev_ex", dev_ex_curve=curve, best_checkpoint=best["checkpoint"], best_dev_ex=best["dev_ex"])
    write_atomic(run_dir / "manifest.json", json.dumps(manifest, indent=2, default=str) + "\n")
    return best


def _why_not(cfg: Config) -> str:
    """What dev EX needs and lacks here ('' when it can run): a dev split, DuckDB, the schema snapshot, the warehouse."""
    if cfg.train.splits == "train+dev":
        return "a dev split the model does not train on, and train.splits is train+dev"
    try:
        if not load_pairs(cfg, cfg.data.dataset, "dev"):
            return f"a dev split in dataset {cfg.data.dataset!r} (`text2sql data split`)"
    except Text2SQLError:
        return f"a dev split in dataset {cfg.data.dataset!r} (`text2sql data split`)"
    try:
        import duckdb  # noqa: F401
    except ImportError:
        return "DuckDB for the sandbox (not installed here)"
    if not (cfg.path(cfg.catalog.schemas_dir) / "manifest.json").is_file():
        return f"the schema snapshot {cfg.catalog.schemas_dir}/ (`text2sql schema pull`)"
    if cfg.warehouse.engine == "duckdb":
        if not cfg.path(cfg.warehouse.duckdb_path).is_file():
            return f"the warehouse file {cfg.warehouse.duckdb_path}"
        return ""

    try:  # found now, not at the first save: a run without its lakehouse trains on and merges the last weights
        load_catalog(cfg)
    except Text2SQLError as exc:
        return f"a warehouse to run the dev queries on: {exc}"
    return ""


def _dev_ex_callback(cfg: Config, pairs: list):
    from transformers import TrainerCallback

    dataset = cfg.data.dataset

    class DevExSelector(TrainerCallback):
        """Scores each checkpoint right after it is saved, on the main process (the others wait at the next step)."""

        def on_save(self, args, state, control, model=None, processing_class=None, **kwargs):
            if not state.is_world_process_zero or model is None:
                return
            run_dir = Path(args.output_dir)
            checkpoint = run_dir / f"checkpoint-{state.global_step}"
            # Early saves are kept for --resume, not scored: the best came before train.select_from in 2 of 21 runs
            # (v0.5-v0.12, by 1-3 dev questions), and each score costs a dev pass (~80 s on the H200).
            early = state.global_step < cfg.train.select_from * state.max_steps  # never the last step: select_from < 1
            if not checkpoint.is_dir() or early:
                return
            entry = {"step": state.global_step, "epoch": state.epoch,
                     **score_dev(cfg, model, processing_class, pairs, dataset)}
            best = record_dev_ex(run_dir, checkpoint.name, entry)
            # The Trainer's checkpoint rotation keeps its best_model_checkpoint: never delete the best one.
            state.best_model_checkpoint, state.best_metric = str(run_dir / best["checkpoint"]), best["dev_ex"]
            print(f"train: {checkpoint.name} dev EX {entry['dev_ex']:.1%} ({entry['correct']}/{entry['n']}, "
                  f"{entry['seconds']:.0f}s); best {best['checkpoint']} {best['dev_ex']:.1%}", file=sys.stderr)

    return DevExSelector()


def _read_curve(run_dir: Path) -> list[dict]:
    path = run_dir / CURVE_FILE
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
