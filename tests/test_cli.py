"""The command line: real subprocesses for startup and exit codes, CliRunner for messages."""

import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

from tests.conftest import REPO, write_project
from text2sql.cli import main


def run_cli(*args, cwd=REPO):
    return subprocess.run([sys.executable, str(REPO / "cli.py"), *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_version_and_help_everywhere():
    runner = CliRunner()
    assert "text2sql, version" in runner.invoke(main, ["--version"]).output

    def walk(group, path):
        for name, cmd in group.commands.items():
            result = runner.invoke(main, [*path, name, "--help"])
            assert result.exit_code == 0, (path, name, result.output)
            if hasattr(cmd, "commands"):
                walk(cmd, [*path, name])

    walk(main, [])


def test_cli_import_is_light():
    """`import text2sql.cli` (what `text2sql --help` costs) loads no stage module and no third-party package but
    click: each command imports its stage when it runs (sqlglot and pydantic alone cost ~0.4 s)."""
    code = ("import json, sys, text2sql.cli; "
            "print(json.dumps(sorted(m for m in sys.modules if m.startswith('text2sql')))); "
            "print(sorted({'torch', 'transformers', 'trl', 'peft', 'bitsandbytes', 'datasets', 'duckdb', 'pyiceberg', "
            "'pyarrow', 'pandas', 'sqlglot', 'pydantic', 'yaml', 'fastapi', 'uvicorn', 'starlette', "
            "'sentence_transformers'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True).stdout
    ours, heavy = out.splitlines()
    assert json.loads(ours) == ["text2sql", "text2sql.cli", "text2sql.cli_common", "text2sql.cli_data",
                                "text2sql.errors", "text2sql.vocab"]
    assert heavy == "[]"


def test_lakehouse_schema_query_end_to_end(tmp_path):
    write_project(tmp_path)
    assert run_cli("lakehouse", "create", "--scale", "0.02", cwd=tmp_path).returncode == 0
    pulled = run_cli("schema", "pull", cwd=tmp_path)
    assert pulled.returncode == 0 and "wrote 8 tables" in pulled.stdout
    shown = run_cli("schema", "show", "sales.orders", cwd=tmp_path)
    assert "CREATE TABLE sales.orders" in shown.stdout
    query = run_cli("query", "--json", "SELECT count(*) AS n FROM core.stores", cwd=tmp_path)
    assert json.loads(query.stdout)["rows"] == [[19]]
    assert run_cli("schema", "diff", cwd=tmp_path).returncode == 0


@pytest.mark.parametrize("args, message", [
    (["schema", "pull", "--catalog", "nope"], "error: unknown catalog 'nope'"),
    (["schema", "pull", "--namespace", "nope"], "error: namespace 'nope' not found"),
    (["schema", "show", "sales.nope"], "error: no table 'sales.nope'"),
    (["query", "DROP TABLE sales.orders"], "error: refused: not a read-only query"),
    (["query", "SELECT * FROM nope.t"], "error: unknown_table"),
])
def test_bad_input_is_one_line(lakehouse_project, args, message):
    result = run_cli(*args, cwd=lakehouse_project)
    assert result.returncode == 1
    assert result.stderr.startswith(message), result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_corrupt_config_and_unreachable_rest(tmp_path):
    (tmp_path / "text2sql.yaml").write_text("catalog: [\n")
    result = run_cli("schema", "pull", cwd=tmp_path)
    assert result.returncode == 1 and "not valid YAML" in result.stderr and "Traceback" not in result.stderr
    (tmp_path / "text2sql.yaml").write_text("catalog:\n  name: rest\n  catalogs:\n    rest: {type: rest, uri: 'http://127.0.0.1:9'}\n")
    result = run_cli("schema", "pull", cwd=tmp_path)
    assert result.returncode == 1 and "catalog 'rest': cannot load or reach it" in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_lakehouse_says_what_to_run(tmp_path):
    write_project(tmp_path)
    result = run_cli("schema", "pull", cwd=tmp_path)
    assert result.returncode == 1 and "run `text2sql lakehouse create`" in result.stderr
