"""What every `text2sql` command shares: the error decorator, the `--config`/`--set` options, config loading, output.

No heavy imports here, and no stage module until a command runs (see `text2sql.cli`)."""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path

import click

from text2sql.errors import ConfigError, Text2SQLError

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
