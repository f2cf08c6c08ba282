"""The `text2sql` command: parse, call one stage function, print.

No logic and no heavy imports here: each command imports its stage module when it runs, so
`text2sql data ...` and `text2sql eval --predictions` start fast and need no GPU libraries. This is the one place
where text2sql imports sit inside functions by design rather than to break a cycle: even the stdlib-only stages
(config, catalog, warehouse, models) would take `import text2sql.cli` from ~40 ms to ~115 ms, and data, generate,
evaluate or serve pull in sqlglot and pydantic (~0.4 s) (tests/test_cli.py::test_cli_import_is_light).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from text2sql import __version__
from text2sql.cli_common import (Group, catch_errors, config_option, echo_json, load, set_option,
                                 show_warehouse_engine)
from text2sql.cli_data import data
from text2sql.errors import Text2SQLError
from text2sql.vocab import EVAL_MODES, PREDICTION_DIALECTS


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="text2sql")
def main() -> None:
    """Fine-tune an open LLM to write SQL for your own Iceberg lakehouse.

    Pipeline: lakehouse/schema -> data -> train -> merge -> predict/eval -> serve.
    """
    from text2sql.quiet import quiet_third_party

    quiet_third_party()


main.add_command(data)


@main.command("init")
@click.option("--force", is_flag=True, help="Replace an existing text2sql.yaml.")
def init(force):
    """Write a commented starter text2sql.yaml in the current directory (refuses to overwrite one)."""
    from text2sql.config import write_starter_config

    path = write_starter_config(Path.cwd(), force)
    click.echo(f"wrote {path}; next: text2sql lakehouse create && text2sql schema pull")


# ---------------------------------------------------------------- config


@main.group()
def config() -> None:
    """Check and show the project config."""


@config.command("validate")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path), required=False)
@set_option
def config_validate(file, overrides):
    """Check a config file without loading any model."""
    load(file, overrides)
    click.echo(f"ok: {file or 'text2sql.yaml'}")


@config.command("show")
@config_option
@set_option
def config_show(config_path, overrides):
    """Print the resolved config as YAML."""
    import yaml

    from text2sql.config import dump_config

    click.echo(yaml.safe_dump(dump_config(load(config_path, overrides)), sort_keys=False))


# ---------------------------------------------------------------- lakehouse + schema + query


@main.group()
def lakehouse() -> None:
    """The embedded demo lakehouse (pyiceberg SqlCatalog on sqlite)."""


@lakehouse.command("create")
@config_option
@set_option
@click.option("--scale", type=float, default=None, help="Size multiplier (default lakehouse.scale).")
@click.option("--seed", type=int, default=None, help="Random seed (default lakehouse.seed).")
def lakehouse_create(config_path, overrides, scale, seed):
    """Build the demo retail lakehouse, deterministically, replacing any previous one."""
    from text2sql.lakehouse import create_lakehouse

    cfg = load(config_path, overrides)
    summary = create_lakehouse(cfg, scale=scale, seed=seed)
    for name, rows in summary["tables"].items():
        click.echo(f"{name:32s} {rows:>9,d} rows")
    click.echo(f"built {summary['path']} in {summary['seconds']:.1f}s")


@main.group()
def schema() -> None:
    """Snapshot catalog schemas as DDL into schemas/, diff them, show them."""


@schema.command("pull")
@config_option
@set_option
@click.option("--catalog", "catalog_name", default=None, help="Catalog name (default catalog.name).")
@click.option("--namespace", "namespaces", multiple=True, help="Only this namespace (repeatable).")
def schema_pull(config_path, overrides, catalog_name, namespaces):
    """Write CREATE TABLE DDL and manifest.json for every table into schemas/."""
    from text2sql.catalog import pull_schemas

    cfg = load(config_path, overrides)
    manifest = pull_schemas(cfg, catalog_name=catalog_name, namespaces=list(namespaces) or None)
    click.echo(f"wrote {len(manifest['tables'])} tables to {cfg.path(cfg.catalog.schemas_dir)}")


@schema.command("diff")
@config_option
@set_option
@click.option("--catalog", "catalog_name", default=None, help="Catalog name (default: the one in schemas/).")
@click.option("--dataset", default=None,
              help="Dataset whose pairs are checked against the changes (default data.dataset).")
def schema_diff(config_path, overrides, catalog_name, dataset):
    """List tables and columns added, removed or retyped since the snapshot, the pairs that read what was removed
    or retyped, and the runs trained on the snapshot (exit 1 if anything changed)."""
    from text2sql.catalog import diff_schemas, load_snapshot
    from text2sql.data.impact import schema_impact

    cfg = load(config_path, overrides)
    changes = diff_schemas(cfg, catalog_name=catalog_name)
    for change in changes:
        click.echo(str(change))
    for line in schema_impact(cfg, changes, load_snapshot(cfg), dataset).lines():
        click.echo(line)
    if changes:
        sys.exit(1)
    click.echo("schemas/ matches the catalog")


@schema.command("show")
@click.argument("table")
@config_option
@set_option
def schema_show(table, config_path, overrides):
    """Print one table's DDL from schemas/."""
    from text2sql.catalog import load_snapshot

    click.echo(load_snapshot(load(config_path, overrides)).table(table).ddl)


@main.command("query")
@click.argument("sql")
@config_option
@set_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option("--max-rows", type=int, default=None, help="Row cap (default warehouse.max_rows).")
def query(sql, config_path, overrides, as_json, max_rows):
    """Run one read-only query on DuckDB over the pinned snapshot."""
    from text2sql.warehouse import run_query

    cfg = load(config_path, overrides)
    result = run_query(cfg, sql, max_rows=max_rows)
    if as_json:
        echo_json(result.to_json())
    if result.error_kind:  # one line on stderr like every error; a timeout names its limit and the setting
        why = (f"stopped after {cfg.warehouse.timeout_s:g} s, the limit warehouse.timeout_s sets (raise it with "
               "--set warehouse.timeout_s=SECONDS)") if result.error_kind == "timeout" else result.error
        raise Text2SQLError(f"{result.error_kind}: {why}")
    if not as_json:
        from text2sql.warehouse import render_table

        click.echo(render_table(result))


@main.command("demo")
@config_option
@set_option
@click.option("--release", default=None, help="Report name under eval/reports/ (default demo-<date>).")
@click.option("--rebuild", is_flag=True, help="Rebuild the lakehouse even if it exists.")
@click.option("--force", is_flag=True, help="Replace the run dir and report of --release if they exist.")
def demo(config_path, overrides, release, rebuild, force):
    """The whole job on this project: lakehouse, schema, validate, train, merge, eval, report."""
    from text2sql.pipeline import main_echo, run_pipeline

    run_pipeline(load(config_path, overrides), release=release, rebuild=rebuild, echo=main_echo, force=force)


# ---------------------------------------------------------------- model/train/merge/predict


@main.group("model")
def model_group() -> None:
    """Base models as local Hugging Face model dirs."""


@model_group.command("pull")
@click.argument("name", required=False)
@config_option
@set_option
def model_pull(name, config_path, overrides):
    """Make the local model dir of NAME (default model.base): a known name, a .gguf file or a hub id."""
    from text2sql.models import pull_model

    click.echo(pull_model(load(config_path, overrides), name))


@main.command("train")
@config_option
@set_option
@click.option("--resume", is_flag=True, help="Continue the latest run (or train.run_name) from its last complete checkpoint.")
@click.option("--force", is_flag=True, help="Replace the run dir train.run_name if it exists (its checkpoints are lost).")
def train_cmd(config_path, overrides, resume, force):
    """Fine-tune model.base on the dataset's train split (qlora on a GPU, lora on CPU); prints the run dir."""
    from text2sql.checkpoints import dev_ex_callbacks
    from text2sql.train import train

    if resume and force:
        raise click.UsageError("--resume continues a run dir and --force replaces it: give one")
    cfg = load(config_path, overrides)
    click.echo(train(cfg, resume=resume, callbacks=dev_ex_callbacks(cfg), force=force))


@main.command("merge")
@click.argument("run", type=click.Path(exists=True, file_okay=False, path_type=Path), required=False)
@config_option
@set_option
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Merged model dir (default RUN/merged).")
@click.option("--checkpoint", default="best", show_default=True, metavar="last|best|PATH",
              help="Which adapter: the final weights, the checkpoint with the best dev EX, or a checkpoint dir.")
@click.option("--onto", type=click.Choice(["bf16", "nf4"]), default="bf16", show_default=True,
              help="The base's own weights, or the base as QLoRA training saw it (each linear weight through NF4 "
                   "and back): the model the dev-EX checkpoint choice measured.")
@click.option("--force", is_flag=True, help="Replace the merged dir if it exists.")
def merge_cmd(run, config_path, overrides, out, checkpoint, onto, force):
    """Merge a run's LoRA adapter into its bf16 base and check greedy parity; prints the merged dir.
    RUN defaults to train.run_name, else the newest run under train.output_dir."""
    from text2sql.merge import PARITY_FILE, latest_run, merge_run

    if run is None:
        run = latest_run(load(config_path, overrides))
    elif config_path or overrides:
        raise click.UsageError("--config/--set pick the run (train.run_name, output_dir) only when RUN is not given")
    merged = merge_run(run, out, checkpoint=checkpoint, force=force, onto=onto)
    parity = json.loads((merged / PARITY_FILE).read_text())
    if parity["prompts"]:
        same = sum(item["same"] for item in parity["items"])
        click.echo(f"parity: adapter and merged model agree on {same}/{parity['prompts']} held prompts", err=True)
    click.echo(merged)


@main.command("predict")
@config_option
@set_option
@click.option("--model", "model_dirs", required=True, multiple=True,
              help="A base model dir or name, an adapter run (or checkpoint) dir, or a merged dir. Repeated: an "
                   "ensemble, each model's answer one candidate of --out (eval selects).")
@click.option("--split", default="test", show_default=True, help="Split to predict.")
@click.option("--dataset", default=None, help="Dataset name (default data.dataset).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="JSONL output (default MODEL/predictions/<dataset>-<split>.jsonl; needed for an ensemble).")
@click.option("--strict", is_flag=True, help="Refuse when schemas/ changed since the model was trained.")
@click.option("--select", "select_", is_flag=True,
              help="With generate.num_candidates > 1: pick each answer here on the warehouse (default: eval does).")
def predict_cmd(config_path, overrides, model_dirs, split, dataset, out, strict, select_):
    """Generate SQL for every question of a split (batched greedy); writes JSONL {id, sql, raw}, prints its path."""
    from text2sql.evaluate.predictions import predict_ensemble
    from text2sql.generate import predict

    cfg = load(config_path, overrides)
    if len(model_dirs) == 1:
        click.echo(predict(cfg, model_dirs[0], split=split, out=out, dataset=dataset, strict=strict, select=select_))
        return
    if out is None or select_:
        raise click.UsageError("an ensemble (--model given more than once) needs --out, and eval selects (no --select)")
    click.echo(predict_ensemble(cfg, list(model_dirs), out, split=split, dataset=dataset, strict=strict))


# ---------------------------------------------------------------- eval


@main.group("eval", invoke_without_command=True)
@config_option
@set_option
@click.option("--predictions", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help='JSONL file, one {"id": ..., "sql": ...} per line.')
@click.option("--dataset", default=None, help="Dataset name (default data.dataset).")
@click.option("--split", default=None, help="Split to score, or 'all' (default eval.split).")
@click.option("--mode", type=click.Choice(EVAL_MODES), default=None,
              help="How results are compared (default eval.mode).")
@click.option("--release", default=None, help="Report directory under eval.reports_dir (default: a timestamp).")
@click.option("--model", "model_name", default=None,
              help="Model dir to generate with first (predict + eval); with --predictions, only a name for the report.")
@click.option("--dialect", type=click.Choice(PREDICTION_DIALECTS), default=None,
              help='SQL dialect of predictions without a "dialect" field (default duckdb); sqlite ones are rewritten '
                   "for DuckDB as `data import spider` rewrites golds.")
@click.option("--force", is_flag=True, help="Replace the report of --release if it exists.")
@click.pass_context
@catch_errors
def eval_(ctx, config_path, overrides, predictions, dataset, split, mode, release, model_name, dialect, force):
    """Score predictions by execution accuracy and write eval/reports/<release>/ (or: eval compare A B)."""
    if ctx.invoked_subcommand is not None:
        return
    if predictions is None and model_name is None:
        raise click.UsageError("give --predictions FILE or --model DIR (or a subcommand: eval compare A B)")
    from text2sql.evaluate import check_release_free, evaluate, format_summary

    cfg = load(config_path, overrides)
    if release:
        check_release_free(cfg, release, force)  # before minutes of generation, not after
    if predictions is None:
        from text2sql.generate import predict

        predictions = predict(cfg, model_name, split=split or cfg.eval.split, dataset=dataset)
    show_warehouse_engine()
    report = evaluate(cfg, predictions, dataset=dataset, split=split, mode=mode, release=release, model=model_name,
                      dialect=dialect, force=force)
    click.echo(format_summary(report))


@eval_.command("compare")
@click.argument("a")
@click.argument("b")
@config_option
@set_option
@click.option("--threshold", type=float, default=None,
              help="Exit 1 when EX drops by more than this fraction (default eval.regression_threshold).")
@click.option("--json", "as_json", is_flag=True, help="Print the comparison as JSON.")
def eval_compare(a, b, config_path, overrides, threshold, as_json):
    """List regressions and fixes from release A to release B (names under eval.reports_dir, or paths)."""
    from text2sql.evaluate import compare_reports, find_report, format_comparison

    cfg = load(config_path, overrides)
    reports_dir = cfg.path(cfg.eval.reports_dir)
    threshold = cfg.eval.regression_threshold if threshold is None else threshold
    result = compare_reports(find_report(reports_dir, a), find_report(reports_dir, b), threshold)
    click.echo(json.dumps(result, indent=2) if as_json else format_comparison(result))
    if result["failed"]:
        sys.exit(1)


@eval_.command("combine")
@click.argument("files", nargs=-1, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The combined predictions JSONL (score it with eval --predictions).")
def eval_combine(files, out):
    """Combine predictions files of several models into one whose candidates are their answers (an ensemble:
    eval --predictions OUT picks the answer most of them agree on by execution; a tie goes to the first file)."""
    from text2sql.evaluate.predictions import combine_predictions

    n = combine_predictions(list(files), out)
    click.echo(f"wrote {out}: {n} questions, {len(files)} candidates each (one per file, in that order)")


# ---------------------------------------------------------------- serve


@main.command("serve")
@config_option
@set_option
@click.option("--model", "model_dirs", multiple=True,
              help="Model dir (merged, adapter run or base) to generate with; with --upstream only its tokenizer "
                   "and prompt.json are used. Repeated: an ensemble, every model answers and the answer most "
                   "of them agree on by execution wins (a tie goes to the first).")
@click.option("--host", default=None, help="Bind address (default serve.host).")
@click.option("--port", type=int, default=None, help="Bind port (default serve.port).")
@click.option("--upstream", "upstreams", multiple=True, metavar="URL",
              help="OpenAI-compatible engine (vLLM, TGI) to generate with instead (default serve.upstream). "
                   "Repeated: an ensemble of engines (one --model for all, or one per --upstream).")
@click.option("--strict", is_flag=True, help="Refuse to start when schemas/ changed since the model was trained.")
def serve(config_path, overrides, model_dirs, host, port, upstreams, strict):
    """Serve question -> checked SQL over HTTP: /v1/sql and OpenAI-compatible /v1/chat/completions."""
    from text2sql.serve import run

    run(load(config_path, overrides), list(model_dirs) or None, host=host, port=port,
        upstream=list(upstreams) or None, strict=strict)


if __name__ == "__main__":
    main()
