"""EX-based checkpoint selection: a tiny run scores each checkpoint on dev; merge takes the best one."""

from __future__ import annotations

import json

import pytest
from test_select import lakehouse_tiny_project
from tinymodel import one_torch_thread

from text2sql.config import load_config
from text2sql.errors import ConfigError


@pytest.fixture(scope="module")
def scored_run(tmp_path_factory, lakehouse_project, tiny_model):
    """A tiny LoRA run (6 steps, a checkpoint every 3) trained with train.select_by: dev_ex."""
    from text2sql.checkpoints import dev_ex_callbacks
    from text2sql.train import train

    root = tmp_path_factory.mktemp("ckpt")
    path = lakehouse_tiny_project(root / "proj", lakehouse_project, tiny_model,
                                  {"train": {"select_by": "dev_ex", "save_total_limit": 1}})
    cfg = load_config(path)
    with one_torch_thread():
        run = train(cfg, callbacks=dev_ex_callbacks(cfg))
    return cfg, run


@pytest.mark.slow
def test_each_checkpoint_is_scored_on_dev_and_the_curve_recorded(scored_run):
    from text2sql.checkpoints import CURVE_FILE, best_of

    cfg, run = scored_run
    manifest = json.loads((run / "manifest.json").read_text())
    curve = manifest["dev_ex_curve"]
    assert [e["step"] for e in curve] == [3, 6] and manifest["status"] == "completed"
    assert all(e["n"] == 2 and 0.0 <= e["dev_ex"] <= 1.0 and e["mode"] == "strict" for e in curve)
    assert [json.loads(line)["step"] for line in (run / CURVE_FILE).read_text().splitlines()] == [3, 6]
    assert manifest["best_checkpoint"] == best_of(curve)["checkpoint"]
    # save_total_limit 1 keeps the newest checkpoint for resuming and, beside it, the best one.
    assert (run / manifest["best_checkpoint"] / "dev_ex.json").is_file()


@pytest.mark.slow
def test_merge_takes_the_checkpoint_with_the_higher_dev_ex(scored_run, tmp_path):
    """Two checkpoints scored from known predictions: the gold SQL (EX 1) for the earlier one, a wrong query
    (EX 0) for the later one. The earlier one is best, and merge uses it unless told otherwise."""
    import shutil

    from safetensors.torch import load_file, save_file

    from text2sql.checkpoints import record_dev_ex, score_predictions
    from text2sql.data import load_pairs
    from text2sql.merge import merge_run

    cfg, run = scored_run
    if not (run / "checkpoint-3").is_dir():  # save_total_limit 1 removed it (checkpoint-6 was as good): remake it
        shutil.copytree(run / "checkpoint-6", run / "checkpoint-3")
        adapter = run / "checkpoint-3" / "adapter_model.safetensors"
        save_file({k: v * 2 for k, v in load_file(adapter).items()}, adapter)  # another adapter, to tell merges apart
    dev = load_pairs(cfg, "demo", "dev")
    right = score_predictions(cfg, dev, {p.id: p.sql for p in dev}, "demo")
    wrong = score_predictions(cfg, dev, {p.id: "SELECT count(*) FROM core.products" for p in dev}, "demo")
    assert (right["dev_ex"], wrong["dev_ex"]) == (1.0, 0.0)
    record_dev_ex(run, "checkpoint-3", right)
    best = record_dev_ex(run, "checkpoint-6", wrong)
    assert best["checkpoint"] == "checkpoint-3"
    assert json.loads((run / "manifest.json").read_text())["best_checkpoint"] == "checkpoint-3"

    with one_torch_thread():
        merged = merge_run(run, tmp_path / "best", dtype="float32")
        by_name = merge_run(run, tmp_path / "three", dtype="float32", checkpoint="checkpoint-3")
        last = merge_run(run, tmp_path / "last", dtype="float32", checkpoint="last")
    assert json.loads((merged / "parity.json").read_text())["merged_from"] == {"checkpoint": "checkpoint-3", "step": 3,
                                                                              "dev_ex": 1.0, "onto": "bf16"}
    assert json.loads((merged / "run_manifest.json").read_text())["merged_from"]["checkpoint"] == "checkpoint-3"
    best_weights, three, final = (load_file(d / "model.safetensors") for d in (merged, by_name, last))
    assert all((best_weights[k] == three[k]).all() for k in best_weights)
    assert any(not (best_weights[k] == final[k]).all() for k in best_weights)


@pytest.mark.slow
def test_saves_before_select_from_are_kept_but_not_scored(tmp_path, lakehouse_project, tiny_model):
    """train.select_from 0.5 of 6 steps, a save every 2: checkpoint-2 stays for --resume, unscored; 4 and 6 are scored."""
    from text2sql.checkpoints import dev_ex_callbacks
    from text2sql.train import train

    path = lakehouse_tiny_project(tmp_path / "proj", lakehouse_project, tiny_model,
                                  {"train": {"select_by": "dev_ex", "save_steps": 2, "select_from": 0.5}})
    cfg = load_config(path)
    with one_torch_thread():
        run = train(cfg, callbacks=dev_ex_callbacks(cfg))
    assert [e["step"] for e in json.loads((run / "manifest.json").read_text())["dev_ex_curve"]] == [4, 6]
    assert (run / "checkpoint-2").is_dir() and not (run / "checkpoint-2" / "dev_ex.json").exists()
    with pytest.raises(ConfigError, match=r"train.select_from: must be in \[0, 1\), got 1.0"):
        load_config(path, ["train.select_from=1.0"])


def test_select_by_dev_ex_without_a_dev_split_is_a_config_error(tmp_path, lakehouse_project, tiny_model):
    from text2sql.checkpoints import dev_ex_callbacks

    path = lakehouse_tiny_project(tmp_path / "proj", lakehouse_project, tiny_model, {"train": {"select_by": "dev_ex"}})
    pairs = tmp_path / "proj" / "datasets" / "demo" / "pairs.jsonl"
    pairs.write_text("".join(line.replace('"split": "dev"', '"split": "train"') + "\n"
                             for line in pairs.read_text().splitlines()))
    with pytest.raises(ConfigError, match="train.select_by: dev_ex needs a dev split in dataset 'demo'"):
        dev_ex_callbacks(load_config(path))
    assert dev_ex_callbacks(load_config(path, ["train.select_by=auto"])) == []
    assert dev_ex_callbacks(load_config(path, ["train.select_by=last"])) == []


@pytest.mark.slow
def test_merge_cli_names_a_checkpoint_that_has_no_adapter(scored_run):
    from click.testing import CliRunner

    from text2sql.cli import main

    _, run = scored_run
    result = CliRunner().invoke(main, ["merge", str(run), "--checkpoint", "checkpoint-99"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert f"error: cannot merge {run / 'checkpoint-99'}: no adapter_config.json" in result.output
