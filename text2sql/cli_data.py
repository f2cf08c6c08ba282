"""`text2sql data ...`: curated NL/SQL pairs (add, validate, dedup, stats, split, import, synthesize, review).

Parse and call, as in `text2sql.cli`; each command imports its stage module when it runs.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from text2sql.cli_common import Group, config_option, echo_json, load, set_option, show_warehouse_engine
from text2sql.vocab import DIFFICULTIES, SPLITS


@click.group(cls=Group)
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
@click.option("--distance", is_flag=True,
              help="Also how far dev and test are from train: shared SQL templates, question similarity (embed extra).")
def data_stats(dataset, config_path, overrides, as_json, distance):
    """Coverage: tables, columns, join paths, SQL features, difficulty, question length."""
    from text2sql.data.stats import dataset_stats, held_out_distance, render_distance, render_stats

    cfg = load(config_path, overrides)
    stats = dataset_stats(cfg, dataset)
    far = held_out_distance(cfg, dataset) if distance else None
    if as_json:
        echo_json(stats.to_json() | ({"held_out_distance": far} if distance else {}))
    else:
        click.echo(render_stats(stats))
        if far:
            click.echo(render_distance(far, cfg.data.dedup_threshold))


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
@click.option("--n", "n", type=int, default=None, help="Candidates to propose.  [default: 2000]")
@click.option("--model", "model_dir", default=None, help="Model that writes the questions (default model.base).")
@click.option("--answer-model", "answer_model", default=None,
              help="Model that answers them in the round trip, with its own prompt, e.g. a merged run dir "
                   "(default: --model).")
@click.option("--seed", type=int, default=None, help="Seed of the mutations (default data.seed).")
@click.option("--keep-unconfirmed", is_flag=True, help="Keep candidates whose round trip failed (confirmed: false).")
@click.option("--reconfirm", is_flag=True, help="Only run the round trip again over synthetic.jsonl (every "
                                                  "candidate) and rewrite its confirmed flags.")
def data_synthesize(dataset, config_path, overrides, n, model_dir, answer_model, seed, keep_unconfirmed, reconfirm):
    """Propose pairs from the train split (SQL mutated, question written, round trip) into synthetic.jsonl."""
    from text2sql.synthesize import reconfirm_pairs, synthesize_pairs

    if reconfirm:
        if n is not None or seed is not None or keep_unconfirmed:
            raise click.UsageError("--reconfirm writes no candidates: it takes no --n, --seed or --keep-unconfirmed")
        cfg = load(config_path, overrides)
        return click.echo(reconfirm_pairs(cfg, dataset, answer_model=answer_model or model_dir).summary())
    click.echo(synthesize_pairs(load(config_path, overrides), dataset, n=2000 if n is None else n, model=model_dir,
                                seed=seed, keep_unconfirmed=keep_unconfirmed, answer_model=answer_model).summary())


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
