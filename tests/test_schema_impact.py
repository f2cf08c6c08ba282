"""`schema diff` says what a change breaks: pairs that read a removed or retyped column, runs trained on the
old snapshot. On a real demo catalog, changed with pyiceberg's update_schema."""

from __future__ import annotations

import json

from click.testing import CliRunner
from pyiceberg.types import LongType, StringType

from text2sql.catalog import diff_schemas, load_catalog, load_snapshot
from text2sql.cli import main
from text2sql.config import load_config
from text2sql.data.impact import schema_impact

PAIRS = [
    ("p-1", "Orders by payment method.", "SELECT o.payment_method, COUNT(*) AS n FROM sales.orders AS o "
     "GROUP BY o.payment_method ORDER BY o.payment_method"),
    ("p-2", "How many orders?", "SELECT COUNT(*) AS n FROM sales.orders AS o"),
    ("p-3", "Cash orders per store.", "SELECT s.store_name, COUNT(*) AS n FROM sales.orders AS o JOIN core.stores AS s "
     "ON s.store_id = o.store_id WHERE o.payment_method = 'cash' GROUP BY s.store_name ORDER BY s.store_name"),
    ("p-4", "Promotions per channel.", "SELECT pr.channel, COUNT(*) AS n FROM marketing.promotions AS pr "
     "GROUP BY pr.channel ORDER BY pr.channel"),
]


def write_dataset_and_runs(project):
    cfg = load_config(project / "text2sql.yaml")
    data = project / "datasets" / "demo"
    data.mkdir(parents=True)
    data.joinpath("pairs.jsonl").write_text("".join(
        json.dumps({"id": i, "question": q, "sql": s, "db": None}) + "\n" for i, q, s in PAIRS))
    fingerprint = load_snapshot(cfg).fingerprint
    for run, recorded in (("runs/today", fingerprint), ("runs/today/merged", fingerprint), ("runs/older", "0" * 64)):
        (project / run).mkdir(parents=True)
        name = "run_manifest.json" if run.endswith("merged") else "manifest.json"
        (project / run / name).write_text(json.dumps({"schema_fingerprints": {"None": recorded}}))
    return cfg


def test_schema_diff_lists_the_pairs_and_runs_a_dropped_column_breaks(project):
    cfg = write_dataset_and_runs(project)
    runner = CliRunner()
    args = ["schema", "diff", "--config", str(project / "text2sql.yaml")]
    clean = runner.invoke(main, args)
    assert clean.exit_code == 0 and "pairs whose SQL" not in clean.output and "runs trained" not in clean.output

    catalog = load_catalog(cfg)
    with catalog.load_table("sales.orders").update_schema() as update:
        update.delete_column("payment_method")
    with catalog.load_table("marketing.promotions").update_schema() as update:
        update.add_column("owner", StringType())  # an added column breaks no pair
    result = runner.invoke(main, args)
    assert result.exit_code == 1
    lines = result.output.splitlines()
    assert "removed_column  sales.orders.payment_method VARCHAR" in lines
    assert "pairs whose SQL reads a removed or retyped table or column (2):" in lines
    assert "  p-1: sales.orders.payment_method" in lines and "  p-3: sales.orders.payment_method" in lines
    assert not any(line.startswith("  p-2") or line.startswith("  p-4") for line in lines)
    assert "runs trained on the schemas/ snapshot the catalog no longer matches (2):" in lines
    assert f"  {project / 'runs' / 'today'}" in lines and f"  {project / 'runs' / 'today' / 'merged'}" in lines
    assert not any("older" in line for line in lines)


def test_a_retyped_column_and_a_dropped_table_break_their_readers(project):
    cfg = write_dataset_and_runs(project)
    catalog = load_catalog(cfg)
    with catalog.load_table("core.stores").update_schema() as update:
        update.update_column("store_id", field_type=LongType())  # INTEGER -> BIGINT
    catalog.drop_table("marketing.promotions")
    changes = diff_schemas(cfg)
    assert {c.kind for c in changes} == {"retyped_column", "removed_table"}
    impact = schema_impact(cfg, changes, load_snapshot(cfg))
    assert impact.pairs == {"p-3": ["core.stores.store_id"], "p-4": ["marketing.promotions"]}
