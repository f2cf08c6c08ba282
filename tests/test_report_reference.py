"""Evaluation reports of the committed predictions stay byte-identical (issue 17: the evaluate split and any later
refactor must not change what `eval` writes).

The committed `eval/reports/<release>/report.json` files hold each example's predicted SQL. Their predictions are
re-scored on the small demo lakehouse and the three report files compared byte for byte with references under
tests/fixtures/reports/, written by the code before the split. Only what must differ between runs is pinned
first: the creation time, the elapsed seconds, the predictions file's path and the installed versions.

To rewrite the references after an intended change of the report: `T2S_WRITE_REFERENCE=1 pytest
tests/test_report_reference.py` (and say why in the commit).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from text2sql.config import load_config
from text2sql.evaluate import evaluate, write_report

REPO = Path(__file__).resolve().parents[1]
REFERENCES = Path(__file__).parent / "fixtures" / "reports"
RELEASES = ["v0.1-full8", "v0.1-base-3shot"]
"""Committed reports with the widest spread of verdicts (correct, wrong_result with diffs, every error kind)."""
FILES = ("report.json", "report.md", "report.html")


def _pinned(report: dict) -> dict:
    """The report with the fields that differ from run to run set to fixed values."""
    body = json.loads(json.dumps({k: v for k, v in report.items() if k != "path"}, default=str))
    body["created"] = "2026-01-01T00:00:00+00:00"
    body["metrics"]["elapsed_s"] = 0.0
    body["inputs"]["predictions"]["path"] = "predictions.jsonl"
    body["inputs"]["versions"] = {name: "pinned" for name in body["inputs"]["versions"]}
    return body


@pytest.fixture
def demo_eval_project(tmp_path, lakehouse_project) -> Path:
    """The repo's demo dataset on the shared small lakehouse (read-only), reports and caches kept private."""
    lake = lakehouse_project
    (tmp_path / "text2sql.yaml").write_text(yaml.safe_dump({
        "catalog": {"name": "demo", "schemas_dir": str(lake / "schemas"), "catalogs": {"demo": {
            "type": "sql", "uri": f"sqlite:///{lake / '.lakehouse' / 'catalog.db'}",
            "warehouse": (lake / ".lakehouse" / "warehouse").as_uri()}}},
        "warehouse": {"cache_dir": str(lake / ".cache" / "warehouse"), "timeout_s": 10},
        "data": {"datasets_dir": str(REPO / "datasets")},
        "eval": {"workers": 2},
    }))
    return tmp_path


@pytest.mark.parametrize("release", RELEASES)
def test_committed_predictions_score_to_the_reference_report(demo_eval_project, release):
    committed = json.loads((REPO / "eval" / "reports" / release / "report.json").read_text())
    predictions = demo_eval_project / "predictions.jsonl"
    predictions.write_text("".join(json.dumps({"id": e["id"], "sql": e["predicted"]}) + "\n"
                                   for e in committed["examples"]))
    cfg = load_config(demo_eval_project / "text2sql.yaml")
    report = evaluate(cfg, predictions, dataset="demo", split=committed["split"], mode=committed["mode"],
                      release=release, model=committed["model"])
    written = json.loads((Path(report["path"]) / "report.json").read_text())
    assert _pinned(written) == _pinned(report)  # what eval wrote is what it returned
    out = demo_eval_project / "pinned"
    write_report(_pinned(report), out)
    reference = REFERENCES / release
    if os.environ.get("T2S_WRITE_REFERENCE"):
        for name in FILES:
            reference.mkdir(parents=True, exist_ok=True)
            (reference / name).write_bytes((out / name).read_bytes())
    for name in FILES:
        assert (out / name).read_bytes() == (reference / name).read_bytes(), f"{release}/{name} changed"
    # Same predictions, same verdicts as when the release was scored (on the full-size lakehouse): a sanity check
    # that the predictions were read back as scored, not a byte comparison (the small lakehouse's rows differ).
    assert [e["id"] for e in report["examples"]] == [e["id"] for e in committed["examples"]]
