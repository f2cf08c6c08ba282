"""The `text2sql` command: parse, call one stage function, print.

No logic and no heavy imports here: each command imports its stage module when it runs, so
`text2sql data ...` and `text2sql eval --predictions` start fast and need no GPU libraries.
"""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path

import click

from text2sql import __version__
from text2sql.errors import ConfigError, Text2SQLError
from text2sql.vocab import DIFFICULTIES, EVAL_MODES, PREDICTION_DIALECTS, SPLITS

def catch_errors(fn):
    """Turn a Text2SQLError into one line on stderr and exit code 1; anything else keeps its traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Text2SQLError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(1)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)

    return wrapper


class Group(click.Group):
    """A click group whose commands all get the error decorator and a `--config`/`--set` pair."""

    def command(self, *args, **kwargs):
        decorator = super().command(*args, **kwargs)

        def wrap(fn):
            return decorator(catch_errors(fn))

        return wrap

    def group(self, *args, **kwargs):
        kwargs.setdefault("cls", Group)
        return super().group(*args, **kwargs)


config_option = click.option(
    "--config", "config_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
    help="Project config (default: the nearest text2sql.yaml).",
)
set_option = click.option(
    "--set", "overrides", multiple=True, metavar="SECTION.KEY=VALUE", help="Override a config value.",
)


def load(config_path: Path | None, overrides: tuple[str, ...] = ()):
    """The project config: --config FILE, or the nearest text2sql.yaml (none: an error, never silent defaults)."""
    from text2sql.config import find_config, load_config

    if config_path is None and find_config() is None:
        raise ConfigError("no text2sql.yaml here or above; run text2sql init")
    return load_config(config_path, list(overrides))


def echo_json(obj) -> None:
    click.echo(json.dumps(obj, indent=2, default=str))


def show_warehouse_engine() -> None:
    """Print the line that says which warehouse engine opened the lakehouse (and why) on stderr."""
    import logging

    class EchoToStderr(logging.Handler):  # finds stderr when it writes (click's test runner swaps it per call)
        def emit(self, record: logging.LogRecord) -> None:
            click.echo(self.format(record), err=True)

    log = logging.getLogger("text2sql.warehouse")
    if not any(type(h).__name__ == "EchoToStderr" for h in log.handlers):
        log.addHandler(EchoToStderr())
        log.setLevel(logging.INFO)


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="text2sql")
def main() -> None:
    """Fine-tune an open LLM to write SQL for your own Iceberg lakehouse.

    Pipeline: lakehouse/schema -> data -> train -> merge -> predict/eval -> serve.
    """
    from text2sql.quiet import quiet_third_party

    quiet_third_party()


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


# ---------------------------------------------------------------- data


@main.group()
def data() -> None:
    """Curated NL/SQL pairs: add, validate, dedup, stats, split, import benchmarks."""


@data.command("add")
@config_option
@set_option
@click.option("--question", "-q", default=None, help="The natural-language question.")
@click.option("--sql", "-s", default=None, help="The DuckDB query that answers it.")
@click.option("--from", "from_file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Add many: a JSONL file, or a YAML/JSON list of records.")
@click.option("--tags", default="", help="Comma-separated tags.")
@click.option("--difficulty", type=click.Choice(DIFFICULTIES), default=None,
              help="Default: computed from the SQL.")
@click.option("--author", default=None, help="Default: the OS user.")
@click.option("--notes", default="", help="Anything a reviewer should know.")
@click.option("--split", type=click.Choice(SPLITS), default=None, help="Default: unassigned.")
@click.option("--db", default=None, help="Database id of a benchmark dataset (default: the lakehouse).")
@click.option("--dataset", default=None, help="Dataset name (default data.dataset).")
@click.option("--force", is_flag=True, help="Add pairs that fail validation anyway (recorded as forced).")
def data_add(config_path, overrides, question, sql, from_file, tags, difficulty, author, notes, split, db, dataset,
             force):
    """Validate pairs, then append them to the dataset (atomically, safe with concurrent writers).
    With --from, --tags/--difficulty/--notes/--split/--db fill in what a record lacks."""
    from text2sql.data.add import add_pairs, read_pair_file
    from text2sql.data.store import new_pair

    if bool(from_file) == bool(question or sql) or (not from_file and not (question and sql)):
        raise click.UsageError("give --question and --sql, or --from FILE")
    cfg = load(config_path, overrides)
    given = {"tags": [t for t in tags.split(",") if t.strip()], "difficulty": difficulty, "notes": notes,
             "split": split, "db": db}
    records = read_pair_file(from_file) if from_file else [{"question": question, "sql": sql}]
    for record in records:  # the options fill in what a record lacks
        if isinstance(record, dict):
            record.update({k: v for k, v in given.items() if v and not record.get(k)})
    result = add_pairs(cfg, [new_pair(r, author) for r in records], dataset=dataset, force=force)
    for pair, checked in zip(result.added, result.report.pairs if result.report else []):
        for problem in checked.problems:
            click.echo(f"{'forced' if problem.severity == 'error' else 'warning'} {pair.id}: {problem}", err=True)
    for pair in result.added:
        click.echo(f"added {pair.id} ({pair.difficulty}){' [forced]' if pair.forced else ''}")


@data.command("validate")
@click.argument("dataset", required=False)
@config_option
@set_option
@click.option("--json", "as_json", is_flag=True, help="Print the per-pair report as JSON.")
@click.option("--strict", is_flag=True, help="Warnings fail too.")
@click.option("--split", type=click.Choice(SPLITS), default=None, help="Only this split.")
@click.option("--timeout-s", type=float, default=None, help="Per query (default warehouse.timeout_s).")
@click.option("--verbose", "-v", is_flag=True, help="List the pairs that pass too.")
def data_validate(dataset, config_path, overrides, as_json, strict, split, timeout_s, verbose):
    """Check, run and probe every pair; exit 1 on errors (CI on pull requests)."""
    from text2sql.data import load_pairs, validate_pairs

    cfg = load(config_path, overrides)
    show_warehouse_engine()
    report = validate_pairs(cfg, load_pairs(cfg, dataset, split), dataset=dataset, timeout_s=timeout_s,
                            with_definitions=True)
    if as_json:
        echo_json(report.to_json())
    else:
        for problem in report.definitions:
            click.echo(f"error   {problem}")
        for r in report.pairs:
            if r.status != "ok" or verbose:
                click.echo(f"{r.status:7s} {r.id}" + "".join(f"\n        {p}" for p in r.problems))
        click.echo(report.summary())
    if not report.passed(strict):
        sys.exit(1)


@data.command("dedup")
@click.argument("dataset", required=False)
@config_option
@set_option
@click.option("--threshold", type=float, default=None, help="Cosine similarity (default data.dedup_threshold).")
@click.option("--apply", "apply_", is_flag=True, help="Keep one pair per group (the earliest) and remove the rest.")
@click.option("--exact-only", is_flag=True, help="Skip the embedding model: exact duplicates only.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def data_dedup(dataset, config_path, overrides, threshold, apply_, exact_only, as_json):
    """Report exact and near-duplicate pairs; with --apply, remove all but one of each group."""
    from text2sql.data import dedup_pairs

    cfg = load(config_path, overrides)
    report = dedup_pairs(cfg, dataset, threshold=threshold, apply=apply_, semantic=not exact_only)
    if as_json:
        echo_json(report.to_json())
        return
    for group in report.exact:
        click.echo(f"exact   {', '.join(group)}: {report.questions[group[0]]!r}")
    for a, b, score in report.near:
        click.echo(f"near    {a} ~ {b} ({score:.3f}): {report.questions[a]!r} ~ {report.questions[b]!r}")
    outcome = f"; removed {len(report.removed)}" if apply_ else "; --apply keeps one per group" if report.groups else ""
    click.echo(f"{len(report.exact)} exact group(s), {len(report.near)} near-duplicate pair(s), "
               f"{len(report.groups)} group(s) at threshold {report.threshold:g}{outcome}")


@data.command("stats")
@click.argument("dataset", required=False)
@config_option
@set_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def data_stats(dataset, config_path, overrides, as_json):
    """Coverage: tables, columns, join paths, SQL features, difficulty, question length."""
    from text2sql.data.stats import dataset_stats, render_stats

    stats = dataset_stats(load(config_path, overrides), dataset)
    if as_json:
        echo_json(stats.to_json())
    else:
        click.echo(render_stats(stats))


@data.command("split")
@click.argument("dataset", required=False)
@config_option
@set_option
@click.option("--seed", type=int, default=None, help="Default data.seed.")
@click.option("--ratios", default=None, metavar="train=0.6,dev=0.1,test=0.3", help="Default data.split_ratios.")
@click.option("--reassign", is_flag=True, help="Redo every assignment (default: pairs keep the split they have).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def data_split(dataset, config_path, overrides, seed, ratios, reassign, as_json):
    """Assign train/dev/test: seeded, stratified by difficulty, SQL templates never straddle splits."""
    from text2sql.data.split import parse_ratios, split_pairs

    cfg = load(config_path, overrides)
    report = split_pairs(cfg, dataset, seed=seed, ratios=parse_ratios(ratios) if ratios else None, reassign=reassign)
    if as_json:
        echo_json(report.to_json())
        return
    click.echo(f"{'split':6s} " + " ".join(f"{d:>6s}" for d in DIFFICULTIES) + "  total")
    for split, counts in report.counts.items():
        click.echo(f"{split:6s} " + " ".join(f"{counts[d]:6d}" for d in DIFFICULTIES) + f"  {sum(counts.values()):5d}")
    click.echo(f"{report.groups} SQL templates; {report.changed} pair(s) assigned or moved (seed {report.seed})")
    if report.straddling:
        click.echo(f"warning: {len(report.straddling)} template group(s) already straddle splits; "
                   "--reassign fixes them", err=True)


@data.group("import")
def data_import() -> None:
    """Import a benchmark as a dataset."""


@data_import.command("spider")
@click.argument("path", type=click.Path(exists=True, file_okay=False, path_type=Path))
@config_option
@set_option
@click.option("--name", default="spider-sample", help="Dataset name to create.")
@click.option("--split", default="dev", help="Which <split>.json to import.")
@click.option("--force", is_flag=True, help="Replace dataset --name if it exists (its pairs are lost).")
@click.option("--json", "as_json", is_flag=True, help="Print the import report as JSON.")
def data_import_spider(path, config_path, overrides, name, split, force, as_json):
    """Spider format (dev.json, tables.json, database/*/*.sqlite) -> pairs + DuckDB files; keeps golds that agree."""
    from text2sql.data import import_spider
    from text2sql.data.spider import REPORT_FILE

    report = import_spider(load(config_path, overrides), path, name=name, split=split, force=force)
    if as_json:
        echo_json(report.to_json())
        return
    for d in report.dropped:
        click.echo(f"dropped {d['db']}[{d['index']}] {d['reason']}")
    for db, info in report.databases.items():
        click.echo(f"database {db}: {info['tables']} tables, {info['rows']} rows" +
                   "".join(f"\n  {note}" for note in info["notes"]))
    reasons = ", ".join(f"{k} {n}" for k, n in report.reasons().items())
    ties = f", {len(report.ties)} of them up to rows tied at a LIMIT (see ties in {REPORT_FILE})" if report.ties else ""
    click.echo(f"kept {report.kept} of {report.questions} questions whose SQLite and DuckDB results agree{ties}"
               + (f" (dropped: {reasons})" if reasons else "") + f" in {report.seconds:.1f}s")


@data.command("synthesize")
@click.argument("dataset", required=False)
@config_option
@set_option
@click.option("--n", "n", type=int, default=2000, show_default=True, help="Candidates to propose.")
@click.option("--model", "model_dir", default=None, help="Model that writes and answers the questions (default model.base).")
@click.option("--seed", type=int, default=None, help="Seed of the mutations (default data.seed).")
@click.option("--keep-unconfirmed", is_flag=True, help="Keep candidates whose round trip failed (confirmed: false).")
def data_synthesize(dataset, config_path, overrides, n, model_dir, seed, keep_unconfirmed):
    """Propose pairs from the train split (SQL mutated, question written, round trip) into synthetic.jsonl."""
    from text2sql.synthesize import synthesize_pairs

    click.echo(synthesize_pairs(load(config_path, overrides), dataset, n=n, model=model_dir, seed=seed,
                                keep_unconfirmed=keep_unconfirmed).summary())


@data.command("review")
@click.argument("dataset", required=False)
@config_option
@set_option
@click.option("--source", type=click.Choice(["synthetic", "feedback"]), default="synthetic", show_default=True)
@click.option("--list", "list_", is_flag=True, help="List the proposed pairs (the default without --accept/--reject).")
@click.option("--accept", multiple=True, metavar="ID", help="Move this pair into pairs.jsonl (repeatable).")
@click.option("--reject", multiple=True, metavar="ID", help="Drop this pair (repeatable).")
@click.option("--accept-all", is_flag=True, help="Accept every proposed pair.")
@click.option("--confirmed-only", is_flag=True, help="With --accept-all: only pairs the round trip confirmed.")
def data_review(dataset, config_path, overrides, source, list_, accept, reject, accept_all, confirmed_only):
    """List proposed pairs (synthetic.jsonl or serve's feedback.jsonl), or accept/reject them by id: accepted pairs
    move into pairs.jsonl (train)."""
    from text2sql.data.review import list_entries, render_entries, review_pairs

    cfg = load(config_path, overrides)
    if list_ or not (accept or reject or accept_all):
        return click.echo(render_entries(list_entries(cfg, dataset, source)))
    click.echo(review_pairs(cfg, dataset, source, list(accept), list(reject), accept_all, confirmed_only).summary())

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
@click.option("--force", is_flag=True, help="Replace the merged dir if it exists.")
def merge_cmd(run, config_path, overrides, out, checkpoint, force):
    """Merge a run's LoRA adapter into its bf16 base and check greedy parity; prints the merged dir.
    RUN defaults to train.run_name, else the newest run under train.output_dir."""
    from text2sql.merge import PARITY_FILE, latest_run, merge_run

    if run is None:
        run = latest_run(load(config_path, overrides))
    elif config_path or overrides:
        raise click.UsageError("--config/--set pick the run (train.run_name, output_dir) only when RUN is not given")
    merged = merge_run(run, out, checkpoint=checkpoint, force=force)
    parity = json.loads((merged / PARITY_FILE).read_text())
    if parity["prompts"]:
        same = sum(item["same"] for item in parity["items"])
        click.echo(f"parity: adapter and merged model agree on {same}/{parity['prompts']} held prompts", err=True)
    click.echo(merged)


@main.command("predict")
@config_option
@set_option
@click.option("--model", "model_dir", required=True,
              help="A base model dir or name, an adapter run (or checkpoint) dir, or a merged dir.")
@click.option("--split", default="test", show_default=True, help="Split to predict.")
@click.option("--dataset", default=None, help="Dataset name (default data.dataset).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="JSONL output (default MODEL/predictions/<dataset>-<split>.jsonl).")
@click.option("--strict", is_flag=True, help="Refuse when schemas/ changed since the model was trained.")
@click.option("--select", "select_", is_flag=True,
              help="With generate.num_candidates > 1: pick each answer here on the warehouse (default: eval does).")
def predict_cmd(config_path, overrides, model_dir, split, dataset, out, strict, select_):
    """Generate SQL for every question of a split (batched greedy); writes JSONL {id, sql, raw}, prints its path."""
    from text2sql.generate import predict

    click.echo(predict(load(config_path, overrides), model_dir, split=split, out=out, dataset=dataset, strict=strict,
                       select=select_))


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


# ---------------------------------------------------------------- serve


@main.command("serve")
@config_option
@set_option
@click.option("--model", "model_dir", default=None,
              help="Model dir (merged, adapter run or base) to generate with; with --upstream only its tokenizer "
                   "and prompt.json are used.")
@click.option("--host", default=None, help="Bind address (default serve.host).")
@click.option("--port", type=int, default=None, help="Bind port (default serve.port).")
@click.option("--upstream", default=None, metavar="URL",
              help="OpenAI-compatible engine (vLLM, TGI) to generate with instead (default serve.upstream).")
@click.option("--strict", is_flag=True, help="Refuse to start when schemas/ changed since the model was trained.")
def serve(config_path, overrides, model_dir, host, port, upstream, strict):
    """Serve question -> checked SQL over HTTP: /v1/sql and OpenAI-compatible /v1/chat/completions."""
    from text2sql.serve import run

    run(load(config_path, overrides), model_dir, host=host, port=port, upstream=upstream, strict=strict)


if __name__ == "__main__":
    main()
