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
from text2sql.errors import Text2SQLError


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
    from text2sql.config import load_config

    return load_config(config_path, list(overrides))


def echo_json(obj) -> None:
    click.echo(json.dumps(obj, indent=2, default=str))


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="text2sql")
def main() -> None:
    """Fine-tune an open LLM to write SQL for your own Iceberg lakehouse.

    Pipeline: lakehouse/schema -> data -> train -> merge -> predict/eval -> serve.
    """


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
def schema_diff(config_path, overrides, catalog_name):
    """List tables and columns added, removed or retyped since the snapshot (exit 1 if any)."""
    from text2sql.catalog import diff_schemas

    changes = diff_schemas(load(config_path, overrides), catalog_name=catalog_name)
    for change in changes:
        click.echo(str(change))
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
    else:
        from text2sql.warehouse import render_table

        click.echo(render_table(result))
    if result.error_kind:
        sys.exit(1)


# ---------------------------------------------------------------- data (data helper's block)
# ---------------------------------------------------------------- end data

# ---------------------------------------------------------------- model/train/merge/predict (train helper's block)
# ---------------------------------------------------------------- end train

# ---------------------------------------------------------------- eval (eval helper's block)
# ---------------------------------------------------------------- end eval

# ---------------------------------------------------------------- serve (serve helper's block)
# ---------------------------------------------------------------- end serve


if __name__ == "__main__":
    main()
