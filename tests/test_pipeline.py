"""`text2sql demo`, the README's main command, end to end on the tiny model: every stage runs, in order."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from tinymodel import one_torch_thread

from text2sql.cli import main


@pytest.mark.slow
@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the CPU budget")
def test_demo_runs_every_stage_on_the_tiny_model(tiny_project):
    """lakehouse -> schema -> validate -> model -> train (the CPU budget) -> merge -> predict + eval -> report."""
    from text2sql.pipeline import CPU_BUDGET

    root = tiny_project.parent
    with one_torch_thread():
        result = CliRunner().invoke(main, ["demo", "--config", str(tiny_project), "--release", "smoke",
                                           "--set", "lakehouse.scale=0.05"])
    assert result.exit_code == 0, result.output
    stages = [line.split(" ", 1)[0] for line in result.output.splitlines() if line[:1].isdigit() and "/7 " in line]
    assert stages == [f"{i}/7" for i in range(1, 8)], result.output

    assert (root / ".lakehouse" / "catalog.db").is_file()
    run = root / "runs" / "smoke"
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "completed" and manifest["global_step"] == CPU_BUDGET["max_steps"]
    assert manifest["method"] == "lora"
    parity = json.loads((run / "merged" / "parity.json").read_text())
    assert parity["prompts"] > 0 and parity["agreement"] is not None
    predictions = (run / "merged" / "predictions" / "demo-test.jsonl").read_text().splitlines()
    assert len(predictions) == 3  # tinymodel.PAIRS has 3 test pairs

    report = json.loads((root / "eval" / "reports" / "smoke" / "report.json").read_text())
    assert report["metrics"]["n"] == 3 and report["split"] == "test"
    assert {p.name for p in (root / "eval" / "reports" / "smoke").iterdir()} >= {"report.json", "report.md"}
    assert "7/7 eval: " in result.output and "\n  EX " in result.output and "eval/reports/smoke/" in result.output
    # No more test pairs than the CPU's eval.max_questions: all of them are scored, and nothing claims a subset.
    assert "subset" not in report and "SUBSET" not in result.output
    assert "7/7 eval: predict and score demo/test, replies of at most" in result.output


def test_demo_stops_at_a_bad_config_value_before_building_anything(tmp_path):
    (tmp_path / "text2sql.yaml").write_text("generate:\n  batch_size: 0\n")
    result = CliRunner().invoke(main, ["demo", "--config", str(tmp_path / "text2sql.yaml")])
    assert result.exit_code == 1 and "generate.batch_size: must be >= 1, got 0" in result.output
    assert not (tmp_path / ".lakehouse").exists()
